//! Sandboxed WASM providers: the shipped ones work through pools and the runtime, and a
//! hostile guest (hand-written WAT) is quarantined for each way it can misbehave, while
//! the host keeps running and loses no buffer.

use super::*;
use memplex::pool::{Pool, PoolErrorKind};
use memplex::provider::wasm::WasmLimits;
use memplex::provider::{Fault, Netmem};
use memplex_abi::ErrorKind;
use std::time::{Duration, Instant};

fn wasm(name: &str) -> ProviderPlugin {
    let path = build_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask test` builds the WASM providers",
        path.display()
    );
    ProviderPlugin::open(&path).unwrap()
}

/// A guest whose `mpx_alloc_bulk` body is `alloc` (it gets `$out` and `$max`), whose
/// `mpx_release_bulk` returns `release`, reporting ABI `version`, with 2 pages of memory.
fn guest(alloc: &str, release: i32, version: i32) -> ProviderPlugin {
    guest_declaring(alloc, release, version, 16)
}

/// As [`guest`], declaring a capacity of `capacity` buffers.
fn guest_declaring(alloc: &str, release: i32, version: i32, capacity: u32) -> ProviderPlugin {
    let wat = format!(
        r#"(module
  (memory (export "memory") 2)
  (func (export "mpx_abi_version") (result i32) i32.const {version})
  (func (export "mpx_scratch") (param i32) (result i32) i32.const 1024)
  (func (export "mpx_init") (param i32 i32 i32 i32 i32) (result i32) i32.const 0)
  (func (export "mpx_info") (param $out i32) (result i32)
    (i32.store (local.get $out) (i32.const 2048))
    (i32.store offset=4 (local.get $out) (i32.const 64))
    (i32.store offset=8 (local.get $out) (i32.const {capacity}))
    (i32.store offset=12 (local.get $out) (i32.const 0))
    i32.const 0)
  (func (export "mpx_alloc_bulk") (param $out i32) (param $max i32) (result i32) {alloc})
  (func (export "mpx_release_bulk") (param i32 i32) (result i32) i32.const {release}))"#
    );
    let dir = std::env::temp_dir().join(format!("memplex-wat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = dir.join(format!(
        "hostile{}.wat",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, wat).unwrap();
    let plugin = ProviderPlugin::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    plugin.with_wasm_limits(WasmLimits {
        memory: 1 << 20,
        deadline: Duration::from_millis(50),
        ..WasmLimits::default()
    })
}

/// Writes descriptor `i` = (offset, id) at $out.
fn desc(i: u32, offset: u64, id: u32) -> String {
    let at = i * 16;
    format!(
        "(i64.store offset={at} (local.get $out) (i64.const {offset})) (i32.store offset={} (local.get $out) (i32.const 2048)) (i32.store offset={} (local.get $out) (i32.const {id}))",
        at + 8,
        at + 12
    )
}

fn good_alloc() -> String {
    format!(
        "{} {} i32.const 2",
        desc(0, 65536, 0),
        desc(1, 65536 + 2048, 1)
    )
}

fn quarantined(plugin: &ProviderPlugin) -> (Fault, Pool) {
    let mut pool = Pool::new(plugin.instantiate(&params(&[])).unwrap(), 64);
    let mut held = Vec::new();
    let err = loop {
        match pool.alloc() {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
        assert!(held.len() < 100, "the hostile guest was never caught");
    };
    for b in held {
        pool.recycle(b).unwrap();
    }
    match err.into_kind() {
        PoolErrorKind::Quarantined { fault, .. } => (fault, pool),
        other => panic!("expected quarantine, got {other:?}"),
    }
}

#[test]
fn shipped_wasm_providers_place_bytes_into_guest_memory() {
    for name in ["slab", "ring"] {
        let plugin = wasm(name);
        assert!(plugin.is_wasm());
        let mut pool = Pool::new(plugin.instantiate(&params(&[])).unwrap(), 64);
        let mut bufs: Vec<_> = (0..200).map(|_| pool.alloc().unwrap()).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            pool.place(b, 100, &[i as u8; 1000]).unwrap();
            assert!(
                b.as_slice().is_none(),
                "guest memory is not host-readable through an address"
            );
        }
        let err = pool.place(&mut bufs[0], 2000, &[0; 100]).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        for b in bufs {
            pool.recycle(b).unwrap();
        }
        let report = pool.shutdown(Duration::from_millis(10));
        assert_eq!((report.leaked, report.fault), (0, None));
    }
}

#[test]
fn ring_wasm_hands_out_in_fifo_order() {
    let mut p = wasm("ring")
        .instantiate(&params(&[("buffers", "4")]))
        .unwrap();
    let mut out = [memplex::provider::Netmem::EMPTY; 2];
    assert_eq!(p.alloc_bulk(&mut out).unwrap(), 2);
    assert_eq!([out[0].id, out[1].id], [0, 1]);
    p.release_bulk(&out[..1]);
    assert_eq!(p.alloc_bulk(&mut out).unwrap(), 2);
    assert_eq!(
        [out[0].id, out[1].id],
        [2, 3],
        "a released buffer waits its turn"
    );
}

#[test]
fn a_good_hand_written_guest_works() {
    let p = guest(&good_alloc(), 0, 1)
        .instantiate(&params(&[]))
        .unwrap();
    assert_eq!(p.info().capacity, 16);
    let mut pool = Pool::new(p, 64);
    let mut b = pool.alloc().unwrap();
    pool.place(&mut b, 0, b"into the sandbox").unwrap();
    pool.recycle(b).unwrap();
}

#[test]
fn a_trapping_guest_is_quarantined() {
    let (fault, _) = quarantined(&guest("unreachable", 0, 1));
    assert!(fault.is_poisoning());
    assert!(fault.to_string().contains("trapped"), "{fault}");
}

#[test]
fn a_looping_guest_hits_its_deadline() {
    let start = Instant::now();
    let (fault, _) = quarantined(&guest("(loop $l (br $l)) i32.const 0", 0, 1));
    // One line, naming the limit and its value.
    let text = fault.to_string();
    assert!(
        text.contains("ran past its call deadline of 50 ms (call_deadline_ms)")
            && !text.contains('\n'),
        "{text}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the deadline stopped it: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_guest_growing_past_its_memory_cap_is_quarantined() {
    // 1 MiB cap = 16 pages; the guest asks for 100 more.
    let (fault, _) = quarantined(&guest(
        "(drop (memory.grow (i32.const 100))) i32.const 0",
        0,
        1,
    ));
    let text = fault.to_string();
    assert!(
        text.contains("grew its memory past the limit of 1 MiB (max_memory_mib)")
            && !text.contains('\n'),
        "{text}"
    );
}

#[test]
fn out_of_bounds_descriptors_are_refused() {
    let (fault, _) = quarantined(&guest(
        &format!("{} i32.const 1", desc(0, 10_000_000, 0)),
        0,
        1,
    ));
    assert!(fault.to_string().contains("outside its memory"), "{fault}");
}

#[test]
fn duplicate_descriptors_are_refused() {
    let (fault, _) = quarantined(&guest(
        &format!("{} {} i32.const 2", desc(0, 65536, 0), desc(1, 65536, 0)),
        0,
        1,
    ));
    assert!(matches!(fault, Fault::Duplicate { id: 0 }), "{fault:?}");
}

#[test]
fn a_guest_refusing_its_own_buffers_is_quarantined() {
    // -3 is the ABI's ERR_BAD_BUFFER: "not one of mine", for buffers it did hand out.
    let plugin = guest(&good_alloc(), -3, 1);
    let mut pool = Pool::new(plugin.instantiate(&params(&[])).unwrap(), 64);
    let (a, b) = (pool.alloc().unwrap(), pool.alloc().unwrap());
    pool.recycle(a).unwrap();
    pool.recycle(b).unwrap();
    let report = pool.shutdown(Duration::from_millis(10));
    assert!(report.fault.is_some(), "refusing a release quarantines");
    assert_eq!(report.leaked, 0);
    assert_eq!(
        report.provider_counters.stranded, 2,
        "the buffers it refused are counted, not lost"
    );
}

#[test]
fn a_guest_of_another_abi_version_is_refused() {
    let err = guest(&good_alloc(), 0, 2)
        .instantiate(&params(&[]))
        .unwrap_err();
    assert!(
        err.to_string().contains("WASM ABI 2") && err.to_string().contains("speaks 1"),
        "{err}"
    );
}

#[test]
fn a_module_that_is_not_a_provider_is_refused() {
    let dir = std::env::temp_dir().join(format!("memplex-wat-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("imports.wat");
    std::fs::write(
        &path,
        r#"(module (import "env" "f" (func)) (memory (export "memory") 1))"#,
    )
    .unwrap();
    let err = ProviderPlugin::open(&path).unwrap_err().to_string();
    assert!(err.contains("imports `env::f`"), "{err}");
    std::fs::write(&path, r#"(module (memory (export "memory") 1))"#).unwrap();
    let err = ProviderPlugin::open(&path).unwrap_err().to_string();
    assert!(err.contains("does not export `mpx_abi_version`"), "{err}");
    std::fs::write(&path, "not wasm").unwrap();
    let err = ProviderPlugin::open(&path).unwrap_err().to_string();
    assert!(err.contains("not a valid WASM module"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn guest_memory_reads_back_through_the_provider() {
    let plugin = ProviderPlugin::load("slab.wasm", &plugin_path()).unwrap();
    assert!(
        matches!(plugin.origin(), memplex::provider::Origin::Wasm(p) if p.ends_with("slab.wasm")),
        "a WASM plugin says so: {:?}",
        plugin.origin()
    );
    let mut pool = Pool::new(plugin.instantiate(&params(&[])).unwrap(), 64);
    let mut a = pool.alloc().unwrap();
    let b = pool.alloc().unwrap();
    assert!(
        a.as_slice().is_none(),
        "guest memory is not readable by address"
    );
    pool.place(&mut a, 100, b"sandboxed bytes").unwrap();
    let mut out = b"prefix:".to_vec();
    assert!(pool.read(&a, 115, &mut out));
    assert_eq!(&out[..7], b"prefix:");
    assert_eq!(&out[107..], b"sandboxed bytes");
    // More than the buffer holds is refused, and `out` is left as it was.
    let before = out.len();
    assert!(!pool.read(&b, b.len() + 1, &mut out));
    assert_eq!(out.len(), before);
    pool.recycle(a).unwrap();
    pool.recycle(b).unwrap();
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

/// A guest that grows its memory in every call and hands out a buffer in the new pages:
/// the host fills and reads each there, the second after a call that grew the memory
/// again (its view of guest memory is taken afresh after every call, which may have
/// moved or grown it).
#[test]
fn buffers_in_memory_a_guest_grew_are_filled_and_read() {
    // One buffer a call, at the first new page, named by that page's number.
    let alloc = "(local $p i32)
        (local.set $p (memory.grow (i32.const 2)))
        (i64.store (local.get $out)
            (i64.extend_i32_u (i32.mul (local.get $p) (i32.const 65536))))
        (i32.store offset=8 (local.get $out) (i32.const 2048))
        (i32.store offset=12 (local.get $out) (local.get $p))
        i32.const 1";
    let plugin = guest(alloc, 0, 1);
    let mut pool = Pool::new(plugin.instantiate(&params(&[])).unwrap(), 64);
    let mut a = pool.alloc().unwrap();
    assert_eq!(
        a.netmem().addr,
        2 * 65536,
        "in the pages the first call grew"
    );
    pool.place(&mut a, 0, b"in the grown pages").unwrap();
    // A second call grows the memory again; its buffer lies past the first view's end.
    let mut b = pool.alloc().unwrap();
    assert_eq!(
        b.netmem().addr,
        4 * 65536,
        "in the pages the second call grew"
    );
    pool.place(&mut b, 2038, b"last ten!!").unwrap();
    let mut out = Vec::new();
    assert!(pool.read(&a, 18, &mut out));
    assert_eq!(out, b"in the grown pages");
    out.clear();
    assert!(pool.read(&b, 2048, &mut out));
    assert_eq!(&out[2038..], b"last ten!!");
    pool.recycle(a).unwrap();
    pool.recycle(b).unwrap();
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn frames_of_a_faulting_guest_go_to_its_fallback_not_the_floor() {
    let dir = std::env::temp_dir().join(format!("memplex-wat-fb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wat = dir.join("trap.wat");
    // A guest that traps on every allocation.
    std::fs::write(
        &wat,
        r#"(module (memory (export "memory") 2)
  (func (export "mpx_abi_version") (result i32) i32.const 1)
  (func (export "mpx_scratch") (param i32) (result i32) i32.const 1024)
  (func (export "mpx_init") (param i32 i32 i32 i32 i32) (result i32) i32.const 0)
  (func (export "mpx_info") (param $o i32) (result i32)
    (i32.store (local.get $o) (i32.const 2048)) (i32.store offset=4 (local.get $o) (i32.const 64))
    (i32.store offset=8 (local.get $o) (i32.const 16)) i32.const 0)
  (func (export "mpx_alloc_bulk") (param i32 i32) (result i32) unreachable)
  (func (export "mpx_release_bulk") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let text = std::fs::read_to_string(configs.join("wasm.toml"))
        .unwrap()
        .replace("\"slab.wasm\"", &format!("{:?}", wat.display().to_string()));
    let config =
        memplex::config::Config::from_toml(&text, "wasm.toml", Default::default(), Some(&configs))
            .unwrap();
    let engine = memplex::runtime::Engine::new(config, &plugin_path()).unwrap();
    let report = engine
        .run(
            engine.open_device().unwrap(),
            &memplex::runtime::RunControl::default(),
        )
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    let t = report.total();
    assert_eq!(t.dropped.sum(), 0, "nothing dropped: {:?}", t.dropped);
    assert!(t.fallback > 0, "TCP payload went to the fallback provider");
    let sandboxed = t.providers.iter().find(|p| p.name == "sandboxed").unwrap();
    assert!(
        sandboxed
            .fault
            .as_deref()
            .is_some_and(|f| f.contains("trapped")),
        "{sandboxed:?}"
    );
    assert_eq!(report.leaked(), 0);
}

#[test]
fn host_bookkeeping_grows_with_buffers_handed_out_not_with_declared_capacity() {
    // 16 Mi buffers declared, under a 1 MiB memory cap: the host used to keep a slot for
    // each (256 MiB an instance); now it keeps pages for the ids it has seen.
    let plugin = guest_declaring(&good_alloc(), 0, 1, 1 << 24);
    let mut instances = Vec::new();
    for queue in 0..8 {
        let p = plugin
            .instantiate(&InitParams::new(queue, 2048, 256))
            .unwrap();
        instances.push(Pool::new(p, 64));
    }
    for pool in &mut instances {
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.recycle(a).unwrap();
        pool.recycle(b).unwrap();
        let bytes = pool.provider().bookkeeping_bytes();
        assert!(
            bytes < 64 << 10,
            "{bytes} bytes of bookkeeping for 2 buffers"
        );
    }
    for pool in instances {
        assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
    }
}

#[test]
fn a_guest_refusing_its_settings_says_which_one() {
    let slab = wasm("slab");
    for (settings, want) in [
        (
            &[("buferz", "8")][..],
            "unknown setting `buferz`; known: buffers",
        ),
        (
            &[("buffers", "lots")][..],
            "setting `buffers` is `lots`, not a whole number",
        ),
        (
            &[("buffers", "0")][..],
            "setting `buffers` is 0; 1 to 1048576",
        ),
    ] {
        let err = slab.instantiate(&params(settings)).unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains("init"),
            "{settings:?}: {err}"
        );
    }
    // A guest without `mpx_error` still says which call failed and with what code.
    let plain = guest(&good_alloc(), 0, 1);
    assert!(plain.instantiate(&params(&[])).is_ok());
}

#[test]
fn a_buffer_over_the_hosts_descriptor_area_is_refused() {
    // mpx_scratch says 1024: the host writes descriptors there; a buffer on top of it
    // would have frame bytes overwritten by the next release (a fuzzer found this).
    let (fault, _) = quarantined(&guest(&format!("{} i32.const 1", desc(0, 1024, 0)), 0, 1));
    assert!(
        fault
            .to_string()
            .contains("overlapping the host's descriptor area"),
        "{fault}"
    );
}

#[test]
fn a_bad_descriptor_anywhere_in_a_batch_is_refused() {
    // The host checks a batch four descriptors at a time on 32-bit words, then the rest
    // one by one: a bad one must be caught in every position, for every way to be bad.
    let cases: [(u64, &str); 4] = [
        (10_000_000, "outside its memory"),
        // A high word set: at 4 GiB + 64 KiB, though its low word is a good offset.
        ((1 << 32) + 65536, "outside its memory"),
        // The low word plus the length wraps past 4 GiB.
        (0xFFFF_FC00, "outside its memory"),
        (1024, "overlapping the host's descriptor area"),
    ];
    for (offset, why) in cases {
        for bad in [0, 3, 4, 6, 8] {
            let alloc = (0..9)
                .map(|i| match i == bad {
                    true => desc(i, offset, i),
                    false => desc(i, 65536 + u64::from(i) * 2048, i),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let (fault, _) = quarantined(&guest(&format!("{alloc} i32.const 9"), 0, 1));
            let fault = fault.to_string();
            assert!(
                fault.contains(why) && fault.contains(&format!("buffer id {bad} ")),
                "descriptor {bad} at {offset:#x}: {fault}"
            );
        }
    }
    // The same nine, all good, are taken.
    let alloc = (0..9)
        .map(|i| desc(i, 65536 + u64::from(i) * 2048, i))
        .collect::<Vec<_>>()
        .join(" ");
    let mut pool = Pool::new(
        guest(&format!("{alloc} i32.const 9"), 0, 1)
            .instantiate(&params(&[]))
            .unwrap(),
        64,
    );
    let b = pool.alloc().unwrap();
    pool.recycle(b).unwrap();
}

#[test]
fn shipped_wasm_providers_refuse_a_foreign_descriptor_anywhere_in_a_release() {
    // The SDK checks released descriptors eight at a time, then the rest one by one.
    for name in ["slab", "ring"] {
        let mut p = wasm(name).instantiate_unchecked(&params(&[])).unwrap();
        let mut out = [Netmem::EMPTY; 64];
        let n = p.alloc_bulk(&mut out).unwrap();
        assert_eq!(n, 64, "{name}");
        let capacity = p.info().capacity;
        for at in [0, 5, 7, 8, 31, 60, 63] {
            for (field, bad) in [
                (
                    "an id out of range",
                    Netmem {
                        id: capacity,
                        ..out[at]
                    },
                ),
                (
                    "another length",
                    Netmem {
                        len: out[at].len - 1,
                        ..out[at]
                    },
                ),
                (
                    "a longer length",
                    Netmem {
                        len: out[at].len + 64,
                        ..out[at]
                    },
                ),
            ] {
                let mut batch = out;
                batch[at] = bad;
                let err = p
                    .release_bulk(&batch)
                    .expect_err(&format!("{name} took descriptor {at} with {field}"));
                assert_eq!(err.kind, ErrorKind::BAD_BUFFER, "{name}: {err}");
            }
        }
        // The remainder path alone: fewer than eight.
        let mut few = [out[0], out[1], out[2]];
        few[2].id = capacity;
        assert!(p.release_bulk(&few).is_err(), "{name} took a foreign id");
        p.release_bulk(&out).unwrap();
    }
}

#[test]
fn a_guest_overcount_is_refused_not_clamped() {
    let (fault, _) = quarantined(&guest(&format!("{} i32.const 70", desc(0, 65536, 0)), 0, 1));
    assert!(
        matches!(
            fault,
            Fault::Overcount {
                claimed: 70,
                room: 64
            }
        ),
        "{fault}"
    );
}
