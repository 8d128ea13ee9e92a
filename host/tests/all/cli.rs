//! The `memplex` binary, run as a user would.

use super::*;
use std::process::Command;

fn memplex(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(args)
        .env("MEMPLEX_PLUGIN_PATH", "")
        .output()
        .expect("run memplex");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn providers_lists_builtins_and_native_plugins_but_not_fixtures() {
    let (code, out) = memplex(&[
        "--plugin-dir",
        &build_dir().display().to_string(),
        "providers",
    ]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "builtin:slab",
        "libmemplex_plugin_hugepage.so",
        "libmemplex_plugin_heap.so",
    ] {
        assert!(out.contains(needle), "missing {needle}:\n{out}");
    }
    // With the build dir given explicitly, every .so in it is listed, fixtures included,
    // and the broken ones say why.
    assert!(out.contains("0.0.1"), "{out}");
}

#[test]
fn inspect_shows_info() {
    let slab = so("memplex_plugin_slab").display().to_string();
    let (code, out) = memplex(&["providers", "inspect", &slab, "--set", "buffers=100"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("capacity") && out.contains("100") && out.contains("anonymous mmap"),
        "{out}"
    );
}

#[test]
fn check_provider_passes_the_shipped_providers() {
    for name in ["heap", "slab", "hugepage"] {
        let path = so(&format!("memplex_plugin_{name}")).display().to_string();
        let (code, out) = memplex(&["check-provider", &path]);
        assert_eq!(code, 0, "{name}:\n{out}");
        assert!(
            out.contains("checks passed") && out.contains("ns per buffer"),
            "{out}"
        );
    }
}

#[test]
fn check_provider_fails_each_broken_provider_with_a_named_reason() {
    let faulty = so("memplex_fixture_faulty").display().to_string();
    for (fault, reason) in [
        ("null", "null buffer"),
        ("duplicate", "again while the host still holds it"),
        ("short", "at least 2048 were asked for"),
        ("misaligned", "not aligned to the promised 64 bytes"),
        ("overlap", "overlapping buffer id"),
        ("id-range", "declared a capacity of 256"),
        ("panic-alloc", "deliberate panic in alloc_bulk"),
        ("panic-init", "deliberate panic in init"),
        ("panic-release", "deliberate panic in release_bulk"),
    ] {
        let (code, out) = memplex(&[
            "check-provider",
            &faulty,
            "--set",
            &format!("fault={fault}"),
        ]);
        assert_eq!(code, 1, "fault {fault} must fail:\n{out}");
        assert!(
            out.contains(reason),
            "fault {fault}: expected `{reason}` in:\n{out}"
        );
        assert!(
            !out.contains("panicked at") || fault.starts_with("panic"),
            "{out}"
        );
    }
    let (code, out) = memplex(&["check-provider", &faulty, "--set", "fault=none"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN") && out.contains("accepted a buffer it never handed out"),
        "{out}"
    );
}

#[test]
fn check_provider_refuses_what_is_not_a_provider() {
    for (lib, reason) in [
        ("memplex_fixture_old_abi", "built against memplex-abi 0.0.1"),
        ("memplex_fixture_not_a_provider", "not a memplex provider"),
    ] {
        let (code, out) = memplex(&["check-provider", &so(lib).display().to_string()]);
        assert_eq!(code, 1, "{out}");
        assert!(out.starts_with("error: ") && out.contains(reason), "{out}");
    }
    let (code, out) = memplex(&["check-provider", "/no/such/file.so"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("/no/such/file.so") && out.contains("No such file"),
        "{out}"
    );
}

#[test]
fn demo_runs_and_verifies_every_frame() {
    let (code, out) = memplex(&["demo", "--synthetic", "--frames", "5000"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("every frame reassembled byte for byte"),
        "{out}"
    );
    assert!(out.contains("libmemplex_plugin_slab.so"), "{out}");
}

#[test]
fn out_of_tree_provider_passes_check_provider() {
    let lib = build_dir().join("libacme_ring_provider.so");
    assert!(
        lib.is_file(),
        "{} is missing: `cargo xtask test` builds examples/third-party-provider",
        lib.display()
    );
    let (code, out) = memplex(&["check-provider", &lib.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("acme-ring"), "{out}");
}
