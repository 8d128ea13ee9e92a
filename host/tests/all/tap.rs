//! Real kernel traffic through a TAP device in network namespaces the test makes.
//!
//! Needs root. Under `CI=true` these tests fail rather than skip without it; elsewhere
//! they skip with a message. The network is torn down when the test ends, also when it
//! fails (the `TestNet` guard's Drop runs during unwinding).

use super::*;
use memplex::config::Config;
use memplex::device::Gso;
use memplex::runtime::{Engine, PlacedBurst, RunControl, Sink};
use memplex::stats::SinkCounters;
use memplex_testkit::net::{privileged, MixSent, TestNet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

fn net_or_skip(queues: u16) -> Option<TestNet> {
    if !privileged() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not root: the TAP tests must run in CI"
        );
        eprintln!("skipping: the TAP tests need root (they create network namespaces)");
        return None;
    }
    TestNet::sweep_stale();
    Some(TestNet::create(queues).expect("build the test network"))
}

/// Checks every frame: reassembly, that each part came from the provider its route
/// names (head, frags, frags_rest), and its receive metadata (sequence numbers without
/// gaps on each queue, the vnet header's GSO type and size on super-frames).
struct RouteCheck {
    expected: Arc<Vec<(usize, usize, usize)>>,
    counters: SinkCounters,
    seen: Arc<Counts>,
    /// The next sequence number expected on this sink's queue.
    next_seq: Option<u64>,
}

/// What the route-checking sinks count, shared between queues.
#[derive(Default)]
struct Counts {
    wrong_provider: AtomicU64,
    vlan: AtomicU64,
    ipv6: AtomicU64,
    multi_frag: AtomicU64,
    /// TCP super-frames whose vnet header gave a GSO size (segment payload) in range.
    gso_sized: AtomicU64,
    /// Super-frames without a plausible GSO type and size.
    gso_bad: AtomicU64,
    /// Frames whose sequence number was not the one after the previous frame's.
    seq_gaps: AtomicU64,
}

impl Sink for RouteCheck {
    fn consume(&mut self, burst: &PlacedBurst<'_>) {
        for f in burst.frames() {
            let (head, frags, rest) = self.expected[f.rule];
            for (i, p) in f.parts.iter().enumerate() {
                let want = match i {
                    0 => head,
                    1 => frags,
                    _ => rest,
                };
                if p.provider != want {
                    self.seen.wrong_provider.fetch_add(1, Relaxed);
                }
            }
            let mut at = 0;
            let mut ok = true;
            for p in f.parts {
                ok &= p.buf.as_slice().map(|b| &b[..p.len]) == f.original.get(at..at + p.len);
                at += p.len;
            }
            if ok && at == f.original.len() {
                self.counters.verified += 1;
            } else {
                self.counters.mismatched += 1;
            }
            match u16::from_be_bytes([f.original[12], f.original[13]]) {
                0x8100 => self.seen.vlan.fetch_add(1, Relaxed),
                0x86dd => self.seen.ipv6.fetch_add(1, Relaxed),
                _ => 0,
            };
            if f.parts.len() > 2 {
                self.seen.multi_frag.fetch_add(1, Relaxed);
            }
            // Super-frames longer than one MTU carry their GSO type and segment size.
            if f.original.len() > 1514 {
                let v = f.rx.vnet;
                let tcp = matches!(v.gso(), Gso::Tcpv4 | Gso::Tcpv6);
                if tcp && (500..=9000).contains(&v.gso_size) {
                    self.seen.gso_sized.fetch_add(1, Relaxed);
                } else if tcp || v.gso() == Gso::None {
                    self.seen.gso_bad.fetch_add(1, Relaxed);
                }
            }
            if self.next_seq.is_some_and(|n| n != f.rx.seq) {
                self.seen.seq_gaps.fetch_add(1, Relaxed);
            }
            self.next_seq = Some(f.rx.seq + 1);
            assert_eq!(f.rx.cap_len as usize, f.original.len());
        }
    }

    fn counters(&self) -> SinkCounters {
        self.counters
    }
}

/// What the route-checking sinks of a run saw.
struct Seen {
    wrong_provider: u64,
    vlan: u64,
    ipv6: u64,
    multi_frag: u64,
    gso_sized: u64,
    gso_bad: u64,
    seq_gaps: u64,
}

/// Runs configs/default.toml with `env` overrides, reading its device in namespace `ns`,
/// while host A sends the mix (8 MB of TCP) and then `after_mix` runs; every frame goes
/// through a [`RouteCheck`] sink.
fn run_default(
    net: &TestNet,
    ns: &str,
    env: &[(&str, &str)],
    after_mix: impl FnOnce(),
) -> (memplex::runtime::RunReport, MixSent, Seen) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/default.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_toml(&text, "default.toml", env, path.parent()).unwrap();
    let names: Vec<String> = config.providers.keys().cloned().collect();
    let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
    let expected: Arc<Vec<_>> = Arc::new(
        config
            .routes
            .iter()
            .map(|r| {
                (
                    idx(&r.head),
                    idx(&r.frags),
                    idx(r.frags_rest.as_deref().unwrap_or(&r.frags)),
                )
            })
            .collect(),
    );
    let engine = Engine::new(config, &plugin_path()).unwrap();
    let queues = TestNet::in_ns(ns, || engine.open_device())
        .unwrap()
        .unwrap();
    assert_eq!(queues.len(), 2);
    let control = RunControl::default();
    let counts = Arc::new(Counts::default());
    /// Stops the run when dropped, so a panicking test fails instead of hanging.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Relaxed);
        }
    }
    let (report, sent) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&control.stop);
        let run = s.spawn(|| {
            engine.run_with(queues, &control, |_| {
                Box::new(RouteCheck {
                    expected: Arc::clone(&expected),
                    counters: SinkCounters::default(),
                    seen: Arc::clone(&counts),
                    next_seq: None,
                })
            })
        });
        let sent = net
            .send_mix(8 << 20, &std::sync::atomic::AtomicBool::new(false))
            .unwrap();
        after_mix();
        std::thread::sleep(Duration::from_millis(500));
        control.stop.store(true, Relaxed);
        (run.join().unwrap().unwrap(), sent)
    });
    let seen = Seen {
        wrong_provider: counts.wrong_provider.load(Relaxed),
        vlan: counts.vlan.load(Relaxed),
        ipv6: counts.ipv6.load(Relaxed),
        multi_frag: counts.multi_frag.load(Relaxed),
        gso_sized: counts.gso_sized.load(Relaxed),
        gso_bad: counts.gso_bad.load(Relaxed),
        seq_gaps: counts.seq_gaps.load(Relaxed),
    };
    (report, sent, seen)
}

#[test]
fn real_traffic_through_tap_reassembles_and_lands_where_routes_say() {
    let Some(net) = net_or_skip(2) else { return };
    let malformed: Vec<Vec<u8>> = memplex_testkit::traffic::mix("malformed", 80)
        .unwrap()
        .into_iter()
        .filter(|f| f.len() <= 1514)
        .take(40)
        .collect();
    let (report, sent, seen) = run_default(
        &net,
        &net.ns_a,
        &[("MEMPLEX_DEVICE__INTERFACE", &net.tap)],
        || TestNet::send_raw(&net.ns_a, &net.veth_a, &malformed).unwrap(),
    );
    let t = report.total();
    assert_eq!(sent.tcp_bytes, 8 << 20, "the TCP stream itself worked");
    assert_eq!(sent.vlan, 200);
    assert!(t.received.frames > 500, "{t:#?}");
    assert_eq!(
        t.sink.mismatched, 0,
        "every frame reassembles byte for byte"
    );
    assert_eq!(t.dropped.sum(), 0, "{:?}", t.dropped);
    assert_eq!(t.sink.verified, t.received.frames);
    assert_eq!(
        seen.wrong_provider, 0,
        "every part came from the provider its route names"
    );
    assert!(
        t.device.gso_frames > 0 && t.device.largest > 1514,
        "GSO super-frames arrived whole: {:?}",
        t.device
    );
    assert!(seen.multi_frag > 0, "GSO frames span several frags");
    assert!(
        seen.gso_sized > 0 && seen.gso_bad == 0,
        "super-frames carry the vnet header's GSO type and size: {} sized, {} not",
        seen.gso_sized,
        seen.gso_bad
    );
    assert_eq!(
        seen.seq_gaps, 0,
        "each queue numbers its frames without gaps"
    );
    let spill = t.providers.iter().find(|p| p.name == "spill").unwrap();
    assert!(
        spill.placed.frames > 0,
        "frags past the first went to frags_rest"
    );
    // A frame the kernel could not queue for a slow reader is counted, not lost.
    let dropped = net.tap_dropped();
    assert!(
        seen.vlan + dropped >= 200,
        "VLAN frames: {} (+{dropped} dropped by the TAP)",
        seen.vlan
    );
    assert!(
        seen.ipv6 + dropped >= 200,
        "IPv6 frames: {} (+{dropped} dropped by the TAP)",
        seen.ipv6
    );
    assert!(
        report.queues.iter().all(|q| q.received.frames > 0),
        "flows spread over both queues"
    );
    assert_eq!(
        t.routes.iter().map(|r| r.frames).sum::<u64>(),
        t.received.frames
    );
    let malformed_seen: u64 = t
        .unsplit
        .iter()
        .filter(|(k, _)| k.starts_with("truncated") || k.starts_with("malformed"))
        .map(|(_, v)| v)
        .sum::<u64>();
    assert!(
        malformed_seen >= 30,
        "the injected malformed frames were counted: {:?}",
        t.unsplit
    );
    assert_eq!(report.leaked(), 0, "every buffer came back");
}

#[test]
fn af_packet_ring_on_a_veth_reassembles_every_frame_and_restores_vlan_tags() {
    let Some(net) = net_or_skip(1) else { return };
    let env = [
        ("MEMPLEX_DEVICE__KIND", "af_packet"),
        ("MEMPLEX_DEVICE__INTERFACE", "vb"),
        ("MEMPLEX_DEVICE__BLOCK_COUNT", "8"),
    ];
    let (report, sent, seen) = run_default(&net, &net.ns_b, &env, || {});
    let t = report.total();
    assert_eq!(sent.tcp_bytes, 8 << 20);
    assert!(t.received.frames > 500, "{t:#?}");
    assert_eq!(t.sink.mismatched, 0);
    assert_eq!(t.sink.verified, t.received.frames);
    assert_eq!(seen.wrong_provider, 0);
    // Frames the ring had no room for (a loaded machine) are counted by the kernel.
    let dropped = t.device.kernel_drops;
    assert!(
        seen.vlan + dropped >= 200,
        "VLAN tags put back: {} (+{dropped} dropped by the ring)",
        seen.vlan
    );
    assert!(
        seen.ipv6 + dropped >= 200,
        "IPv6: {} (+{dropped} dropped by the ring)",
        seen.ipv6
    );
    assert!(
        t.device.largest > 1514,
        "GSO-sized frames through the ring: {:?}",
        t.device
    );
    assert!(
        report.queues.iter().all(|q| q.received.frames > 0),
        "fanout spread flows over both queues"
    );
    assert_eq!(report.leaked(), 0);
}

#[test]
fn the_network_is_gone_after_the_test() {
    let Some(net) = net_or_skip(1) else { return };
    let (a, b) = (net.ns_a.clone(), net.ns_b.clone());
    assert!(Path::new(&format!("/run/netns/{a}")).exists());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _net = net;
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(
        !Path::new(&format!("/run/netns/{a}")).exists(),
        "cleaned up after a panic"
    );
    assert!(!Path::new(&format!("/run/netns/{b}")).exists());
}
