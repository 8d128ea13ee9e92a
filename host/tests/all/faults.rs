//! A provider that faults in the middle of a run loses no frame when it has a fallback:
//! nothing of it is handed out once it is quarantined, frames being placed when it
//! faults complete on the fallback, and every buffer is accounted for. Without a
//! fallback, the frames are dropped as `fault` and `memplex run` fails.
//!
//! Each case runs 400 frames of 1500 B TCP whose payload goes to the faulting provider
//! in 64-byte frags (23 a frame, so its pool calls `alloc_bulk` several times in the first
//! vector alone), faulting at the first call or from the third on.

use super::*;
use memplex::config::{Config, SinkKind};
use memplex::device::{self, replay};
use memplex::runtime::{Engine, RunControl, RunReport};
use memplex::stats::DropReason;
use memplex_testkit::traffic::{generate, Proto, Shape};

/// What a hostile guest does once its fault starts.
#[derive(Clone, Copy, Debug)]
enum GuestFault {
    /// Traps.
    Trap,
    /// Loops until the call deadline stops it.
    Deadline,
    /// Hands out buffer id 0 again while the host holds it.
    Duplicate,
}

/// A WASM guest handing out fresh 64-byte buffers (ids 0..1024, never reused), which
/// faults from its `after`-th `alloc_bulk` call on.
fn wat_guest(fault: GuestFault, after: u32) -> std::path::PathBuf {
    let fault = match fault {
        GuestFault::Trap => "unreachable".to_string(),
        GuestFault::Deadline => "(loop $spin (br $spin))".to_string(),
        GuestFault::Duplicate => "(i64.store (local.get $out) (i64.const 65536)) \
             (i32.store offset=8 (local.get $out) (i32.const 64)) \
             (i32.store offset=12 (local.get $out) (i32.const 0)) \
             (return (i32.const 1))"
            .to_string(),
    };
    let wat = format!(
        r#"(module
  (memory (export "memory") 4)
  (global $calls (mut i32) (i32.const 0))
  (global $next (mut i32) (i32.const 0))
  (func (export "mpx_abi_version") (result i32) i32.const 1)
  (func (export "mpx_scratch") (param i32) (result i32) i32.const 1024)
  (func (export "mpx_init") (param i32 i32 i32 i32 i32) (result i32) i32.const 0)
  (func (export "mpx_info") (param $out i32) (result i32)
    (i32.store (local.get $out) (i32.const 64))
    (i32.store offset=4 (local.get $out) (i32.const 64))
    (i32.store offset=8 (local.get $out) (i32.const 1024))
    (i32.store offset=12 (local.get $out) (i32.const 0))
    i32.const 0)
  (func (export "mpx_alloc_bulk") (param $out i32) (param $max i32) (result i32)
    (local $i i32) (local $at i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.ge_u (global.get $calls) (i32.const {after})) (then {fault}))
    (block $done (loop $more
      (br_if $done (i32.ge_u (local.get $i) (local.get $max)))
      (br_if $done (i32.ge_u (global.get $next) (i32.const 1024)))
      (local.set $at (i32.add (local.get $out) (i32.mul (local.get $i) (i32.const 16))))
      (i64.store (local.get $at)
        (i64.extend_i32_u (i32.add (i32.const 65536) (i32.mul (global.get $next) (i32.const 64)))))
      (i32.store offset=8 (local.get $at) (i32.const 64))
      (i32.store offset=12 (local.get $at) (global.get $next))
      (global.set $next (i32.add (global.get $next) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $more)))
    (local.get $i))
  (func (export "mpx_release_bulk") (param i32 i32) (result i32) i32.const 0))"#
    );
    let dir = std::env::temp_dir().join(format!("memplex-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = dir.join(format!(
        "faulting{}.wat",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, wat).unwrap();
    path
}

/// Runs 400 frames of 1500 B TCP: heads to `native` (slab), payload to `faulting` in
/// 64-byte frags, with `native` as its fallback when `fallback`; every frame verified.
fn run(faulting: &str, settings: &str, fallback: bool) -> RunReport {
    run_falling_to(faulting, settings, fallback.then_some("native"), "")
}

/// [`run`] with `faulting`'s fallback named (`extra` defines more providers).
fn run_falling_to(
    faulting: &str,
    settings: &str,
    fallback: Option<&str>,
    extra: &str,
) -> RunReport {
    let toml = format!(
        r#"
[device]
kind = "pcap"
path = "(in memory)"

[providers.native]
plugin = "builtin:slab"
buf_size = 2048

[providers.faulting]
plugin = "{faulting}"
buf_size = 64
pool_size = 64
call_deadline_ms = 20
settings = {{ {settings} }}
{}
{extra}

[[route]]
head = "native"
frags = "faulting"

[runtime]
sink = "verify"
"#,
        fallback.map_or(String::new(), |f| format!("fallback = {f:?}"))
    );
    let mut config = Config::from_toml(&toml, "faults.toml", Default::default(), None).unwrap();
    config.runtime.sink = SinkKind::Verify;
    let engine = Engine::new(config, &plugin_path()).unwrap();
    let frames = generate(Shape {
        frame_size: 1500,
        flows: 400,
        proto: Proto::Tcp,
        vlan: None,
    })
    .unwrap();
    let queues = replay::queues(
        "faults",
        replay::Recorded::synthetic(frames).into(),
        1,
        1,
        None,
    )
    .unwrap();
    engine
        .run(device::boxed(queues), &RunControl::default())
        .unwrap()
}

/// Every frame placed and verified, the faulting provider quarantined with `want` in its
/// fault, the fallback used, every buffer accounted for.
fn assert_nothing_lost(r: &RunReport, want: &str, at_first_call: bool) {
    let t = r.total();
    assert_eq!(t.received.frames, 400);
    assert_eq!(t.dropped.sum(), 0, "no frame lost: {:?}", t.dropped);
    assert_eq!(
        t.sink.verified, 400,
        "every frame reassembles: {:?}",
        t.sink
    );
    // Counted once each, though a vector placed when the provider faulted was placed
    // again: the route's frames, and every byte in exactly one provider's buffer.
    assert_eq!(t.routes[0].frames, 400, "{:?}", t.routes);
    assert_eq!(t.routes[0].bytes, t.received.bytes, "{:?}", t.routes);
    let placed: u64 = t.providers.iter().map(|p| p.placed.bytes).sum();
    assert_eq!(placed, t.received.bytes, "{:?}", t.providers);
    let faulting = t.providers.iter().find(|p| p.name == "faulting").unwrap();
    let fault = faulting.fault.as_deref().unwrap_or_default();
    assert!(fault.contains(want), "quarantined for {want}: {fault:?}");
    assert!(t.fallback > 0, "the fallback took over");
    assert_eq!(faulting.quarantined, 1, "the stats say it is quarantined");
    assert_eq!(
        faulting.fallbacks, t.fallback,
        "and whose fallback took over"
    );
    if at_first_call {
        assert_eq!(
            faulting.placed.frames, 0,
            "nothing placed in it: {faulting:?}"
        );
    } else {
        assert!(
            faulting.checks.handed_out > 0,
            "it worked before: {faulting:?}"
        );
    }
    // Nothing of the quarantined provider is parked in its pool or handed out after the
    // fault: what it handed out came back to it, or is counted stranded.
    let c = faulting.checks;
    assert_eq!(
        c.handed_out,
        c.released + c.stranded,
        "every buffer returned or stranded: {c:?}"
    );
    assert_eq!(r.leaked(), 0);
}

#[test]
fn a_guest_trapping_mid_run_loses_no_frame() {
    let guest = wat_guest(GuestFault::Trap, 3);
    let r = run(guest.to_str().unwrap(), "", true);
    assert_nothing_lost(&r, "trap", false);
}

#[test]
fn a_guest_trapping_at_its_first_call_loses_no_frame() {
    let guest = wat_guest(GuestFault::Trap, 1);
    let r = run(guest.to_str().unwrap(), "", true);
    assert_nothing_lost(&r, "trap", true);
}

#[test]
fn a_guest_running_past_its_deadline_mid_run_loses_no_frame() {
    let guest = wat_guest(GuestFault::Deadline, 3);
    let r = run(guest.to_str().unwrap(), "", true);
    assert_nothing_lost(&r, "deadline", false);
}

#[test]
fn a_guest_handing_out_a_duplicate_mid_run_loses_no_frame() {
    let guest = wat_guest(GuestFault::Duplicate, 3);
    let r = run(guest.to_str().unwrap(), "", true);
    assert_nothing_lost(&r, "again while the host still holds it", false);
}

#[test]
fn a_native_provider_panicking_mid_run_loses_no_frame() {
    let faulty = so("memplex_fixture_faulty").display().to_string();
    let r = run(&faulty, r#"fault = "panic-alloc", after = 3"#, true);
    assert_nothing_lost(&r, "panic", false);
    let r = run(&faulty, r#"fault = "panic-alloc", after = 1"#, true);
    assert_nothing_lost(&r, "panic", true);
}

#[test]
fn a_native_provider_handing_out_bad_descriptors_mid_run_loses_no_frame() {
    let faulty = so("memplex_fixture_faulty").display().to_string();
    for (fault, want) in [
        ("duplicate", "again while the host still holds it"),
        ("null", "null"),
        ("misaligned", "not aligned"),
        ("id-range", "capacity"),
    ] {
        let r = run(&faulty, &format!(r#"fault = "{fault}", after = 3"#), true);
        assert_nothing_lost(&r, want, false);
    }
}

/// A provider whose memory the host writes, falling back to one it may not write (a
/// WASM guest, whose buffers are filled through the provider): the worker places a
/// rule's frames directly only when every provider it may end up in, fallbacks
/// included, takes direct writes, so these are filled, not dropped.
#[test]
fn a_native_provider_falling_back_to_a_guest_loses_no_frame() {
    let faulty = so("memplex_fixture_faulty").display().to_string();
    let sandboxed = r#"
[providers.sandboxed]
plugin = "slab.wasm"
buf_size = 2048
"#;
    let r = run_falling_to(
        &faulty,
        r#"fault = "panic-alloc", after = 3"#,
        Some("sandboxed"),
        sandboxed,
    );
    assert_nothing_lost(&r, "panic", false);
    let t = r.total();
    let guest = t.providers.iter().find(|p| p.name == "sandboxed").unwrap();
    assert!(
        guest.placed.bytes > 0 && guest.fallbacks == 0,
        "the guest took the payload: {guest:?}"
    );
}

#[test]
fn without_a_fallback_the_frames_are_dropped_as_fault_and_counted() {
    let guest = wat_guest(GuestFault::Trap, 3);
    let r = run(guest.to_str().unwrap(), "", false);
    let t = r.total();
    assert!(t.dropped.get(DropReason::Fault) > 0, "{:?}", t.dropped);
    let faulting = t.providers.iter().find(|p| p.name == "faulting").unwrap();
    assert_eq!(
        faulting.dropped.get(DropReason::Fault),
        t.dropped.get(DropReason::Fault),
        "the drops are the faulting provider's"
    );
    assert_eq!(
        t.sink.verified + t.dropped.sum(),
        400,
        "every frame placed or counted dropped"
    );
    assert_eq!(r.leaked(), 0);
}

#[test]
fn a_quarantined_pool_hands_out_nothing_it_had_cached() {
    let plugin = faulty();
    let params = params(&[("fault", "duplicate"), ("after", "2")]);
    let mut pool = memplex::pool::Pool::new(plugin.instantiate(&params).unwrap(), 64);
    // The first batch is good: take one buffer and give it back, so the cache holds 64.
    let b = pool.alloc().unwrap();
    pool.recycle(b).unwrap();
    let mut held = Vec::new();
    let err = loop {
        match pool.alloc() {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err.kind(), memplex::pool::PoolErrorKind::Quarantined { .. }),
        "{err}"
    );
    // Giving back what it held does not make any of it available again.
    for b in held.drain(..) {
        pool.recycle(b).unwrap();
    }
    assert!(
        pool.alloc().is_err(),
        "a quarantined pool hands out nothing"
    );
    let report = pool.shutdown(std::time::Duration::from_millis(10));
    assert_eq!(report.leaked, 0);
    let c = report.provider_counters;
    assert_eq!(c.handed_out, c.released + c.stranded, "{c:?}");
}

/// The burst API keeps the same promise: once the provider is quarantined, a burst
/// given back goes to the provider, not to the cache, and no burst is served again.
#[test]
fn a_quarantined_pool_takes_a_burst_back_without_caching_it() {
    let plugin = faulty();
    let params = params(&[("fault", "duplicate"), ("after", "2")]);
    let mut pool = memplex::pool::Pool::new(plugin.instantiate(&params).unwrap(), 64);
    let mut burst = pool.burst(256);
    let err = pool.alloc_burst(256, &mut burst).unwrap_err();
    assert!(
        matches!(err.kind(), memplex::pool::PoolErrorKind::Quarantined { .. }),
        "{err}"
    );
    assert!(!burst.is_empty(), "the first, good batch was taken");
    let held = burst.len() as u64;
    pool.recycle_burst(&mut burst).unwrap();
    assert!(burst.is_empty());
    let s = pool.stats();
    assert_eq!(s.recycle_cached, 0, "nothing cached after the fault: {s:?}");
    assert!(s.recycle_released >= held, "{s:?}");
    assert!(
        pool.alloc_burst(1, &mut burst).is_err() && burst.is_empty(),
        "a quarantined pool hands out nothing"
    );
    let report = pool.shutdown(std::time::Duration::from_millis(10));
    assert_eq!(report.leaked, 0);
    let c = report.provider_counters;
    assert_eq!(c.handed_out, c.released + c.stranded, "{c:?}");
}
