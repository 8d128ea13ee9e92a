//! Finding and loading plugins, and refusing everything that is not a good one.

use super::*;
use memplex::provider::{LoadError, Origin, Trust};

#[test]
fn native_plugins_load_by_name_and_match_the_builtins() {
    for name in ["heap", "slab", "hugepage", "shm"] {
        let native = ProviderPlugin::load(name, &plugin_path())
            .unwrap()
            .with_trust(Trust::Unverified);
        assert_eq!(
            native.origin(),
            &Origin::Native(so(&format!("memplex_plugin_{name}")))
        );
        let builtin = ProviderPlugin::load(&format!("builtin:{name}"), &plugin_path())
            .unwrap()
            .with_trust(Trust::Unverified);
        assert_eq!(builtin.origin(), &Origin::Builtin);
        assert_eq!(native.description(), builtin.description());
        let a = native.instantiate(&params(&[])).unwrap();
        let b = builtin.instantiate(&params(&[])).unwrap();
        assert_eq!(
            (a.info().buf_size, a.info().capacity, a.info().caps),
            (b.info().buf_size, b.info().capacity, b.info().caps)
        );
        // Only heap, one allocation per buffer, has no region to declare.
        assert_eq!(a.is_unverified(), name == "heap", "{name}");
        assert_eq!(b.is_unverified(), name == "heap", "{name}");
    }
}

#[test]
fn a_provider_read_by_address_without_a_declared_region_is_refused_unless_trusted() {
    for spec in ["heap", "builtin:heap"] {
        let plugin = ProviderPlugin::load(spec, &plugin_path()).unwrap();
        assert_eq!(plugin.trust(), Trust::Checked, "checked by default");
        let err = plugin.instantiate(&params(&[])).unwrap_err();
        assert!(matches!(err, LoadError::NoRegion { .. }), "{err:?}");
        let msg = err.to_string();
        for part in [
            "heap",
            "declares no memory region",
            "ProviderInfo::region(base, len)",
            "unverified = true",
        ] {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
        let trusted = plugin.with_trust(Trust::Unverified);
        let p = trusted.instantiate(&params(&[])).unwrap();
        assert!(p.is_unverified());
    }
    // A provider with a region is verified whatever the trust.
    let slab = ProviderPlugin::load("slab", &plugin_path()).unwrap();
    assert!(!slab.instantiate(&params(&[])).unwrap().is_unverified());
    let trusted = slab.with_trust(Trust::Unverified);
    assert!(!trusted.instantiate(&params(&[])).unwrap().is_unverified());
}

#[test]
fn two_plugins_loaded_in_one_process_stay_distinct() {
    // abi_stable caches one library per root-module type; memplex must not.
    let heap = ProviderPlugin::open(&so("memplex_plugin_heap")).unwrap();
    let slab = ProviderPlugin::open(&so("memplex_plugin_slab")).unwrap();
    assert_eq!(heap.description().name.as_str(), "heap");
    assert_eq!(slab.description().name.as_str(), "slab");
}

#[test]
fn missing_file_is_named() {
    let err = ProviderPlugin::load("/nonexistent/libnothing.so", &plugin_path()).unwrap_err();
    assert!(matches!(err, LoadError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/libnothing.so"),
        "{err}"
    );
}

#[test]
fn unknown_name_lists_where_it_looked() {
    let err = ProviderPlugin::load("no-such-provider", &plugin_path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-provider") && msg.contains(&build_dir().display().to_string()),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let path = std::env::temp_dir().join(format!("memplex-not-elf-{}.so", std::process::id()));
    std::fs::write(&path, b"this is text, not ELF").unwrap();
    let err = ProviderPlugin::open(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(err, LoadError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not a loadable shared library"),
        "{err}"
    );
}

#[test]
fn a_library_without_a_provider_is_refused() {
    let path = so("memplex_fixture_not_a_provider");
    let err = ProviderPlugin::open(&path).unwrap_err();
    assert!(matches!(err, LoadError::NotAProvider { .. }), "{err:?}");
    assert!(err.to_string().contains("not a memplex provider"), "{err}");
}

#[test]
fn a_plugin_built_against_another_abi_is_refused_with_both_versions() {
    let path = so("memplex_fixture_old_abi");
    let err = ProviderPlugin::open(&path).unwrap_err();
    match &err {
        LoadError::IncompatibleAbi {
            path: p,
            expected,
            found,
        } => {
            assert_eq!(p, &path);
            assert_eq!(expected, memplex_abi::ABI_VERSION);
            assert_eq!(found, "0.0.1");
        }
        other => panic!("expected IncompatibleAbi, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("memplex_fixture_old_abi")
            && msg.contains("0.0.1")
            && msg.contains(memplex_abi::ABI_VERSION),
        "{msg}"
    );
}

#[test]
fn a_panic_in_init_comes_back_as_an_error() {
    let err = faulty()
        .instantiate(&params(&[("fault", "panic-init")]))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("panicked") && msg.contains("deliberate panic in init"),
        "{msg}"
    );
}

#[test]
fn bad_settings_are_named() {
    let err = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&params(&[("bufers", "10")]))
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown setting `bufers`"),
        "{err}"
    );
    let err = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&params(&[("buffers", "many")]))
        .unwrap_err();
    assert!(err.to_string().contains("`buffers` = \"many\""), "{err}");
    let err = ProviderPlugin::builtin("hugepage")
        .unwrap()
        .instantiate(&params(&[("mode", "giant")]))
        .unwrap_err();
    assert!(err.to_string().contains("auto, hugetlb, thp"), "{err}");
}

#[test]
fn hugepage_says_which_pages_it_got() {
    let p = ProviderPlugin::load("hugepage", &plugin_path())
        .unwrap()
        .instantiate(&params(&[]))
        .unwrap();
    let backing = p.info().backing.as_str();
    assert!(
        backing.contains("hugetlbfs")
            || backing.contains("transparent huge pages")
            || backing.contains("4 KiB"),
        "{backing}"
    );
    let thp = ProviderPlugin::builtin("hugepage")
        .unwrap()
        .instantiate(&params(&[("mode", "thp"), ("shared", "false")]))
        .unwrap();
    let backing = thp.info().backing.as_str();
    assert!(
        backing.starts_with("anonymous, transparent huge pages")
            || backing.starts_with("anonymous, 4 KiB"),
        "{backing}"
    );
    // THP-backed buffers start on a 2 MiB boundary.
    assert_eq!(thp.info().regions[0].base % (2 << 20), 0);
}

#[test]
fn a_provider_is_found_by_the_name_it_reports_and_a_miss_says_what_was_tried() {
    let path = PluginPath::with_dirs([build_dir()]);
    // The example's file is libacme_ring_provider.so; it reports itself as `acme-ring`.
    let acme = ProviderPlugin::load("acme-ring", &path).unwrap();
    assert_eq!(acme.description().name.as_str(), "acme-ring");
    assert!(
        matches!(acme.origin(), Origin::Native(p) if p.ends_with("libacme_ring_provider.so")),
        "{:?}",
        acme.origin()
    );
    // A WASM provider by its name too, not only by `ring.wasm`.
    let ring = ProviderPlugin::load("ring", &path).unwrap();
    assert!(ring.is_wasm(), "{:?}", ring.origin());
    let err = ProviderPlugin::load("no-such-pool", &path)
        .unwrap_err()
        .to_string();
    for want in [
        "no provider plugin named `no-such-pool`",
        "libmemplex_plugin_no_such_pool.so, libno_such_pool.so, no_such_pool.so",
        &build_dir().display().to_string(),
        "providers found there:",
        "acme-ring (libacme_ring_provider.so)",
        "slab (libmemplex_plugin_slab.so)",
        "built-in providers: heap, slab, hugepage, shm",
    ] {
        assert!(err.contains(want), "`{want}` in: {err}");
    }
}

#[test]
fn a_truncated_library_is_refused_before_dlopen_sees_it() {
    let dir = std::env::temp_dir().join(format!("memplex-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let whole = std::fs::read(so("memplex_plugin_slab")).unwrap();
    for (name, len) in [
        ("half.so", whole.len() / 2),
        ("head.so", 64),
        ("ten.so", 10),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &whole[..len]).unwrap();
        let err = ProviderPlugin::open(&path).unwrap_err();
        assert!(matches!(err, LoadError::Open { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(name) && (text.contains("truncated") || text.contains("not an ELF")),
            "{text}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_fuzz_seed_and_regression_input_still_passes() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut ran = 0;
    for (target, body) in [
        ("config", memplex_testkit::fuzz::config as fn(&[u8])),
        ("wasm_boundary", memplex_testkit::fuzz::wasm_boundary),
    ] {
        for entry in std::fs::read_dir(seeds.join(target)).unwrap() {
            let path = entry.unwrap().path();
            body(&std::fs::read(&path).unwrap());
            ran += 1;
        }
    }
    assert!(ran >= 8, "{ran} seeds");
}

#[test]
fn a_plugin_built_against_the_previous_abi_loads_and_works() {
    // Built by `cargo xtask build` against a frozen copy of memplex-abi 0.1.0: no typed
    // regions, no bulk fill in its vtable. It loads, places and reads back, and is not
    // exportable (its one region is plain host memory).
    let plugin = ProviderPlugin::open(&so("memplex_fixture_abi_0_1_0")).unwrap();
    assert_eq!(plugin.description().name.as_str(), "vintage");
    assert_eq!(plugin.abi_revision(), Some("0.1.0"));
    let slab = ProviderPlugin::load("slab", &plugin_path()).unwrap();
    assert_eq!(
        slab.abi_revision(),
        Some("0.1.2"),
        "driven through the newest extension"
    );
    let p = plugin.instantiate(&params(&[])).unwrap();
    assert!(!p.is_unverified());
    assert_eq!(p.memory().len(), 1);
    assert_eq!(p.memory()[0].kind, memplex_abi::RegionKind::HOST);
    let why = p.not_exportable().expect("0.1.0 memory cannot be shared");
    assert!(why.contains("no file descriptor"), "{why}");
    assert!(!p.info().caps.contains(memplex_abi::Capabilities::EXPORTS));
    let mut pool = memplex::pool::Pool::new(p, 64);
    let mut held = Vec::new();
    for i in 0..200u32 {
        let mut b = pool.alloc().unwrap();
        pool.place(&mut b, 0, &i.to_le_bytes()).unwrap();
        held.push(b);
    }
    let mut back = Vec::new();
    for (i, b) in held.iter().enumerate() {
        back.clear();
        assert!(pool.read(b, 4, &mut back));
        assert_eq!(back, (i as u32).to_le_bytes());
    }
    for b in held {
        pool.recycle(b).unwrap();
    }
    assert_eq!(pool.provider().fault(), None);
    assert_eq!(
        pool.shutdown(std::time::Duration::from_millis(10)).leaked,
        0
    );
}

#[test]
fn a_plugin_built_against_this_abi_loads_in_a_host_built_against_the_previous_one() {
    // A 0.1.0 host (plugins/fixtures/abi-0.1.0/old-host) sees the root module a 0.1.2
    // plugin still exports, passes its layout check and gets buffers from it.
    let old_host = so("memplex_plugin_slab").with_file_name("memplex-fixture-old-host");
    for name in ["slab", "shm", "hugepage"] {
        let out = std::process::Command::new(&old_host)
            .arg(so(&format!("memplex_plugin_{name}")))
            .output()
            .expect("the old-host fixture runs (built by `cargo xtask build`)");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {text}");
        assert!(
            text.contains(&format!("ok: {name} 0.1.2 loaded by a 0.1.0 host")),
            "{name}: {text}"
        );
    }
}

#[test]
fn a_plugin_built_against_this_abi_loads_in_a_host_built_against_abi_0_1_1() {
    // A 0.1.1 host (plugins/fixtures/abi-0.1.1/old-host) drives a 0.1.2 plugin through
    // the 0.1.1 extension the plugin still exports: its layout check passes, buffers go
    // out and back, and memory the host may not write takes a fill_bulk.
    let old_host = so("memplex_plugin_slab").with_file_name("memplex-fixture-old-host-0-1-1");
    for lib in [
        "memplex_plugin_slab",
        "memplex_plugin_shm",
        "memplex_plugin_hugepage",
        "memplex_fixture_devmem",
    ] {
        let out = std::process::Command::new(&old_host)
            .arg(so(lib))
            .output()
            .expect("the 0.1.1 old-host fixture runs (built by `cargo xtask build`)");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{lib}: {text}");
        assert!(
            text.contains("0.1.2 loaded by a 0.1.1 host through its extension"),
            "{lib}: {text}"
        );
        if lib == "memplex_fixture_devmem" {
            assert!(text.contains("2 buffers filled in one fill_bulk"), "{text}");
        }
    }
}
