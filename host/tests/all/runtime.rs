//! The runtime on the committed configs and captures: every frame reassembles, goes where
//! its route says, and every buffer comes back.

use super::*;
use memplex::config::Config;
use memplex::runtime::{Engine, PlacedBurst, RunControl, RunReport, Sink};
use memplex::stats::SinkCounters;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn run_config(name: &str, env: &[(&str, &str)]) -> RunReport {
    let engine = engine_for(name, env);
    let queues = engine.open_device().unwrap();
    engine.run(queues, &RunControl::default()).unwrap()
}

fn frames_in(capture: &str) -> u64 {
    memplex::device::pcap::read_frames(&configs().join("captures").join(capture))
        .unwrap()
        .len() as u64
}

#[test]
fn tcp_split_places_tcp_payload_in_the_slab() {
    let r = run_config("tcp-split.toml", &[("MEMPLEX_DEVICE__REPEAT", "3")]);
    let t = r.total();
    assert_eq!(t.received.frames, 3 * frames_in("default.pcap"));
    assert_eq!(t.sink.verified, t.received.frames, "{t:#?}");
    assert_eq!(r.leaked(), 0);
    let by_name = |n: &str| t.providers.iter().find(|p| p.name == n).unwrap().clone();
    // Route 0 (TCP) is half of the default mix; its payload is in the slab.
    assert_eq!(t.routes[0].frames, t.received.frames / 2);
    assert!(
        by_name("payload").placed.frames > 0
            && by_name("payload").placed.frames <= t.routes[0].frames
    );
    assert_eq!(
        by_name("payload").placed.bytes + by_name("hdr").placed.bytes,
        t.received.bytes
    );
    assert!(
        t.unsplit.by_name("below_threshold") > 0,
        "hds_threshold = 64 leaves small frames whole"
    );
}

#[test]
fn nvme_tcp_data_lands_alone_in_huge_pages() {
    let r = run_config("nvme-tcp.toml", &[("MEMPLEX_DEVICE__REPEAT", "2")]);
    let t = r.total();
    assert_eq!(t.sink.verified, t.received.frames);
    assert_eq!(
        t.split.by_name("app"),
        t.received.frames / 2,
        "{:?}",
        t.split
    );
    let data = t.providers.iter().find(|p| p.name == "data").unwrap();
    let hdr = t.providers.iter().find(|p| p.name == "hdr").unwrap();
    assert!(data.placed.frames > 0);
    // Every NVMe/TCP head buffer holds Ethernet + IPv4 + TCP (32 with options) + the PDU header.
    assert_eq!(hdr.placed.frames, t.received.frames);
    assert_eq!(r.leaked(), 0);
}

#[test]
fn tunnel_routes_by_vni_over_two_queues() {
    let r = run_config("tunnel.toml", &[("MEMPLEX_DEVICE__REPEAT", "2")]);
    assert_eq!(r.queues.len(), 2);
    assert!(
        r.queues.iter().all(|q| q.received.frames > 0),
        "both queues got flows"
    );
    let t = r.total();
    assert_eq!(t.sink.verified, t.received.frames);
    // One in three tunnel frames is GENEVE (VNI 42); VXLAN alternates VNI 10 and 20.
    let vxlan10 = (0..300).filter(|i| i % 3 != 0 && i % 2 == 0).count() as u64;
    assert_eq!(t.routes[0].frames, 2 * vxlan10);
    assert_eq!(t.split.by_name("l4"), t.received.frames);
}

#[test]
fn malformed_frames_are_placed_whole_and_counted() {
    let dir = std::env::temp_dir().join(format!("memplex-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = run_config(
        "tcp-split.toml",
        &[
            (
                "MEMPLEX_DEVICE__PATH",
                &configs()
                    .join("captures/malformed.pcap")
                    .display()
                    .to_string(),
            ),
            ("MEMPLEX_DEVICE__REPEAT", "1"),
        ],
    );
    let t = r.total();
    assert_eq!(t.received.frames, 300);
    assert_eq!(
        t.sink.verified, 300,
        "malformed frames still reassemble: they are placed whole"
    );
    assert_eq!(t.unsplit.by_name("truncated_l3"), 75, "{:?}", t.unsplit);
    assert_eq!(t.unsplit.by_name("malformed_l3"), 75);
    assert_eq!(t.unsplit.by_name("malformed_l4"), 75);
    assert_eq!(r.leaked(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pcap_sink_writes_the_original_traffic() {
    let dir = std::env::temp_dir().join(format!("memplex-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.pcap");
    let r = run_config(
        "tunnel.toml",
        &[
            ("MEMPLEX_RUNTIME__SINK", "pcap"),
            ("MEMPLEX_RUNTIME__SINK_PATH", &out.display().to_string()),
            ("MEMPLEX_DEVICE__QUEUES", "1"),
            ("MEMPLEX_DEVICE__REPEAT", "2"),
        ],
    );
    assert_eq!(r.total().sink.written, 600);
    let written = memplex::device::pcap::read_frames(&out).unwrap();
    let original =
        memplex::device::pcap::read_frames(&configs().join("captures/tunnel.pcap")).unwrap();
    assert_eq!(written.len(), 600);
    assert_eq!(
        &written[..300],
        &original[..],
        "reassembled frames are the captured frames, in order, with their capture times and lengths"
    );
    assert_eq!(
        &written[300..],
        &original[..],
        "a repeat keeps the capture's times"
    );
    // A capture tool reads it back with the original times, link type and snaplen.
    if let Some((header, times)) = tcpdump(&out) {
        assert!(
            header.contains("link-type EN10MB (Ethernet)")
                && header.contains("snapshot length 262144"),
            "{header}"
        );
        let (_, want) = tcpdump(&configs().join("captures/tunnel.pcap")).unwrap();
        assert_eq!(times.len(), 600);
        assert_eq!(
            &times[..300],
            &want[..],
            "tcpdump shows the capture's times"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `tcpdump -r FILE`'s header line and each packet's timestamp (ns precision), or None
/// where tcpdump is missing outside CI (`cargo xtask test` installs it; under CI=true a
/// missing tcpdump fails the test).
fn tcpdump(file: &Path) -> Option<(String, Vec<String>)> {
    let out = match std::process::Command::new("tcpdump")
        .args(["-r"])
        .arg(file)
        .args(["-n", "-tt", "--time-stamp-precision=nano"])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tcpdump is needed under CI=true ({e}); `cargo xtask test` installs it"
            );
            eprintln!("skipping the tcpdump check: {e} (`cargo xtask test` installs tcpdump)");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A packet's line starts with its time (SECONDS.NANOSECONDS); a tunnel's inner
    // packet is printed on a line of its own after it.
    let is_time = |t: &str| t.contains('.') && t.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let times = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().filter(|t| is_time(t)))
        .map(str::to_string)
        .collect();
    Some((String::from_utf8_lossy(&out.stderr).into_owned(), times))
}

#[test]
fn a_dry_provider_drops_and_counts_or_falls_back() {
    // One frame needs more 256-byte buffers than a 64-buffer provider has: dropped as dry.
    let r = run_config(
        "tcp-split.toml",
        &[
            ("MEMPLEX_PROVIDERS__HDR__SETTINGS__BUFFERS", "2"),
            ("MEMPLEX_DEVICE__REPEAT", "1"),
        ],
    );
    let t = r.total();
    assert!(t.dropped.by_name("dry") > 0, "{:?}", t.dropped);
    assert_eq!(t.sink.verified + t.dropped.sum(), t.received.frames);
    assert_eq!(r.leaked(), 0);
}

fn engine_for(name: &str, env: &[(&str, &str)]) -> std::sync::Arc<Engine> {
    let path = configs().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_toml(&text, name, env, path.parent()).unwrap();
    std::sync::Arc::new(Engine::new(config, &plugin_path()).unwrap())
}

#[test]
fn a_tokio_stream_of_frames_returns_buffers_across_threads() {
    use tokio_stream::StreamExt;
    let engine = engine_for("tunnel.toml", &[("MEMPLEX_DEVICE__REPEAT", "3")]);
    let queues = engine.open_device().unwrap();
    let (mut frames, run) = Engine::stream(engine, queues, 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut got: Vec<Vec<u8>> = rt.block_on(async {
        let mut got = Vec::new();
        let mut held = Vec::new();
        while let Some(frame) = frames.next().await {
            got.push(frame.to_vec().unwrap());
            assert!(frame.parts().len() >= 2, "split frames have head and frags");
            // Hold some frames for a while, then drop them on another task's thread.
            held.push(frame);
            if held.len() == 32 {
                let batch = std::mem::take(&mut held);
                tokio::spawn(async move { drop(batch) });
            }
        }
        got
    });
    let report = run.thread.join().unwrap().unwrap();
    let mut want: Vec<Vec<u8>> =
        memplex::device::pcap::read_frames(&configs().join("captures/tunnel.pcap"))
            .unwrap()
            .into_iter()
            .flat_map(|f| std::iter::repeat_n(f.data.to_vec(), 3))
            .collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 900);
    assert!(
        got == want,
        "every frame reassembles to a captured one, none missing"
    );
    let leaks: Vec<_> = report
        .pools
        .iter()
        .flatten()
        .filter(|p| p.leaked > 0)
        .map(|p| (p.provider.to_string(), p.leaked, p.stats))
        .collect();
    assert_eq!(
        report.leaked(),
        0,
        "every buffer came back from the consumer: {leaks:#?}"
    );
    assert!(
        report
            .total()
            .providers
            .iter()
            .any(|p| p.pool.recycle_ring > 0),
        "returns crossed threads through the ring"
    );
}

#[test]
fn dropping_the_stream_ends_the_run() {
    use tokio_stream::StreamExt;
    let engine = engine_for("tcp-split.toml", &[("MEMPLEX_DEVICE__REPEAT", "1000000")]);
    let queues = engine.open_device().unwrap();
    let (mut frames, run) = Engine::stream(engine, queues, 8);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..100 {
            frames.next().await.unwrap();
        }
    });
    drop(frames);
    let report = run.thread.join().unwrap().unwrap();
    assert!(
        report.total().received.frames < 1_000_000 * 300,
        "stopped long before the capture ran out"
    );
    assert_eq!(report.leaked(), 0);
}

#[test]
fn wasm_config_places_payload_in_the_sandbox() {
    let r = run_config("wasm.toml", &[("MEMPLEX_DEVICE__REPEAT", "3")]);
    let t = r.total();
    assert_eq!(t.received.frames, 3 * frames_in("default.pcap"));
    assert_eq!(t.dropped.sum(), 0, "{:?}", t.dropped);
    let sandboxed = t.providers.iter().find(|p| p.name == "sandboxed").unwrap();
    assert!(
        sandboxed.placed.frames > 0 && sandboxed.fault.is_none(),
        "{sandboxed:?}"
    );
    assert_eq!(t.fallback, 0, "a healthy guest needs no fallback");
    assert_eq!(r.leaked(), 0);
    // The verify sink reads guest memory through the provider's `read` op: every frame
    // reassembles byte for byte, none is reported unreadable.
    assert_eq!(
        (t.sink.verified, t.sink.mismatched, t.sink.unreadable),
        (t.received.frames, 0, 0),
        "{:?}",
        t.sink
    );
}

#[test]
fn wasm_instance_limit_is_enforced_per_provider() {
    let env = [
        ("MEMPLEX_DEVICE__QUEUES", "2"),
        ("MEMPLEX_PROVIDERS__SANDBOXED__MAX_INSTANCES", "1"),
    ];
    let engine = engine_for("wasm.toml", &env);
    let queues = engine.open_device().unwrap();
    let err = engine
        .run(queues, &RunControl::default())
        .expect_err("two queues, one instance allowed");
    let text = format!("{err:#}");
    assert!(
        text.contains("sandboxed") && text.contains("limited to 1 instance"),
        "{text}"
    );
    // Within the limit the same config runs, and the slots are freed afterwards.
    let env = [
        ("MEMPLEX_DEVICE__QUEUES", "2"),
        ("MEMPLEX_PROVIDERS__SANDBOXED__MAX_INSTANCES", "2"),
    ];
    for _ in 0..2 {
        let r = run_config("wasm.toml", &env);
        assert!(r.total().received.frames > 0);
    }
}

#[test]
fn pcap_replay_keeps_to_the_given_rate() {
    // default.pcap replayed 3 times at 4000 frames/s: never faster than the rate allows
    // (a lower bound only, so a slow machine cannot fail it).
    let frames = 3 * frames_in("default.pcap");
    let r = run_config(
        "tcp-split.toml",
        &[
            ("MEMPLEX_DEVICE__REPEAT", "3"),
            ("MEMPLEX_DEVICE__RATE", "4000"),
        ],
    );
    assert_eq!(r.total().received.frames, frames);
    let least = std::time::Duration::from_secs_f64((frames - 2) as f64 / 4000.0);
    assert!(r.elapsed >= least, "{:?} < {least:?}", r.elapsed);
}

/// A frame's receive metadata, head length and L4 offset.
type Logged = (memplex::device::RxMeta, usize, Option<u16>);

/// Records every frame's receive metadata, per queue.
struct MetaLog(Arc<Mutex<Vec<Logged>>>);

impl Sink for MetaLog {
    fn consume(&mut self, burst: &PlacedBurst<'_>) {
        assert!(burst.len() <= memplex::device::BURST);
        let mut log = self.0.lock().unwrap();
        for f in burst.frames() {
            log.push((*f.rx, f.split.head_len, f.split.l4_offset));
        }
    }
    fn counters(&self) -> SinkCounters {
        SinkCounters::default()
    }
}

#[test]
fn bursts_carry_capture_times_lengths_and_sequence_numbers_to_the_sink() {
    let engine = engine_for(
        "tunnel.toml",
        &[
            ("MEMPLEX_DEVICE__QUEUES", "2"),
            ("MEMPLEX_DEVICE__REPEAT", "2"),
        ],
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let queues = engine.open_device().unwrap();
    let report = engine
        .run_with(queues, &RunControl::default(), |_| {
            Box::new(MetaLog(Arc::clone(&log)))
        })
        .unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len() as u64, report.total().received.frames);
    assert_eq!(log.len(), 600);
    let captured =
        memplex::device::pcap::read_frames(&configs().join("captures/tunnel.pcap")).unwrap();
    for q in 0..2u16 {
        let mine: Vec<_> = log.iter().filter(|(m, ..)| m.queue == q).collect();
        assert!(!mine.is_empty(), "queue {q} got flows");
        assert!(
            mine.iter()
                .enumerate()
                .all(|(i, (m, ..))| m.seq == i as u64),
            "queue {q} numbers its frames 0, 1, 2 ... in order"
        );
        assert!(mine
            .windows(2)
            .all(|w| w[0].0.rx_mono_ns <= w[1].0.rx_mono_ns));
    }
    for (m, head_len, l4) in log.iter() {
        assert!(
            captured.iter().any(|c| c.timestamp_ns == m.timestamp_ns
                && c.orig_len == m.orig_len
                && c.data.len() == m.cap_len as usize),
            "every frame carries a captured record's time and lengths: {m:?}"
        );
        assert!(l4.is_some_and(|o| usize::from(o) < *head_len), "{m:?}");
    }
    let distinct: std::collections::BTreeSet<u64> =
        log.iter().map(|(m, ..)| m.timestamp_ns).collect();
    assert_eq!(
        distinct.len(),
        300,
        "each record's own timestamp, repeated once"
    );
}

#[test]
fn a_full_disk_under_the_pcap_sink_is_reported_with_the_path_and_the_os_error() {
    let engine = engine_for(
        "tunnel.toml",
        &[
            ("MEMPLEX_RUNTIME__SINK", "pcap"),
            ("MEMPLEX_RUNTIME__SINK_PATH", "/dev/full"),
            ("MEMPLEX_DEVICE__QUEUES", "1"),
            ("MEMPLEX_DEVICE__REPEAT", "50"),
        ],
    );
    let queues = engine.open_device().unwrap();
    let err = engine
        .run(queues, &RunControl::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/dev/full") && err.contains("No space left on device"),
        "{err}"
    );
}

/// A replay larger than L2 has each queue measure whether asking for its next frames
/// ahead pays (`runtime/read_ahead.rs`), after a warm-up, and report what it chose; one
/// that fits never measures. Either way every frame is placed and verified.
#[test]
fn a_cold_replay_measures_whether_to_read_ahead_and_says_what_it_chose() {
    use memplex::device::{self, replay, RxQueue};
    use memplex_testkit::traffic::{generate, Proto, Shape};
    let toml = r#"
        [device]
        kind = "pcap"
        path = "(in memory)"
        [split]
        mode = "l4"
        [providers.hdr]
        plugin = "builtin:slab"
        buf_size = 256
        [providers.payload]
        plugin = "builtin:slab"
        buf_size = 2048
        [[route]]
        head = "hdr"
        frags = "payload"
        [runtime]
        sink = "verify"
    "#;
    let config = Config::from_toml(toml, "read-ahead.toml", Default::default(), None).unwrap();
    let engine = Engine::new(config, &plugin_path()).unwrap();
    // 4 MiB of distinct frames (cold), then 64 KiB (warm), each replayed for 120 MB:
    // past the warm-up (512 bursts) and two probes (16 epochs of 2 MiB each).
    for (flows, cold) in [(2800u16, true), (44, false)] {
        let frames = generate(Shape {
            frame_size: 1500,
            flows,
            proto: Proto::Tcp,
            vlan: None,
        })
        .unwrap();
        let queues = replay::queues(
            "read-ahead",
            replay::Recorded::synthetic(frames).into(),
            1,
            u32::MAX,
            None,
        )
        .unwrap();
        assert_eq!(queues[0].frames_cold(), cold, "{flows} flows");
        let n = 80_000;
        let queues = device::boxed(queues.into_iter().map(|q| q.limit(n)));
        let r = engine.run(queues, &RunControl::default()).unwrap();
        let t = r.total();
        assert_eq!(t.received.frames, n);
        assert_eq!(t.sink.verified, n, "{t:#?}");
        assert_eq!(r.leaked(), 0);
        let ra = t.read_ahead;
        // Cold: one probe that keeps the way the queue starts with (off), or one that
        // chose ahead and the probe right after it that confirmed it or not (both fit in
        // the run). Warm: never a probe.
        match (cold, ra.probes) {
            (true, 1) => assert_eq!(ra.chose_ahead, 0, "{ra:?}"),
            (true, 2) => assert!(ra.chose_ahead >= 1, "{ra:?}"),
            (false, 0) => {}
            _ => panic!(
                "{} probes of a {} replay: {ra:?}",
                ra.probes,
                ["warm", "cold"][usize::from(cold)]
            ),
        }
        assert!(ra.chose_ahead <= ra.probes, "{ra:?}");
        // The report says it too.
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["read_ahead"]["probes"], ra.probes);
    }
}

/// `n` generated TCP frames of `size` bytes (64 flows) through a config whose head goes
/// to a built-in slab and whose frags go to 2 KiB buffers of `frags` (a plugin file, with
/// `settings`; the head's slab is its fallback), in memory on one queue, with the count
/// sink.
fn run_to_frags(frags: &Path, settings: &str, size: usize, n: u64) -> RunReport {
    use memplex::device::{self, replay};
    use memplex_testkit::traffic::{generate, Proto, Shape};
    let toml = format!(
        r#"
        [device]
        kind = "pcap"
        path = "(in memory)"
        [split]
        mode = "l4"
        [providers.hdr]
        plugin = "builtin:slab"
        buf_size = 256
        [providers.frags]
        plugin = "{}"
        buf_size = 2048
        settings = {{ {settings} }}
        fallback = "spare"
        [providers.spare]
        plugin = "builtin:slab"
        buf_size = 2048
        [[route]]
        head = "hdr"
        frags = "frags"
        [runtime]
        allow_fault_drops = true
        "#,
        frags.display()
    );
    let config = Config::from_toml(&toml, "frags.toml", Default::default(), None).unwrap();
    let engine = Engine::new(config, &plugin_path()).unwrap();
    let frames = generate(Shape {
        frame_size: size,
        flows: 64,
        proto: Proto::Tcp,
        vlan: None,
    })
    .unwrap();
    let queues = replay::queues(
        "frags",
        replay::Recorded::synthetic(frames).into(),
        1,
        u32::MAX,
        None,
    )
    .unwrap();
    let queues = device::boxed(queues.into_iter().map(|q| q.limit(n)));
    engine.run(queues, &RunControl::default()).unwrap()
}

/// Memory the host may not write (the devmem fixture: a `.so` built against ABI 0.1.2,
/// mapped with no access in this process) takes each burst's parts in one
/// `fill_gather`, not one `fill_bulk` per frame. A call that fails drops the frames with
/// a part in it alone, counted as faults, with no buffer lost; the rest are placed.
/// Jumbo frames (9000 B: five frag buffers each, 320 parts a burst) take two calls a
/// burst (256 ops, then 64), the first ending inside a frame: a failure of that call
/// drops the frame it splits too, and the frames after it keep all their parts.
#[test]
fn a_vectors_parts_reach_memory_the_host_cannot_write_in_one_gathered_fill() {
    use memplex::stats::DropReason;
    let n = 4096u64;
    // (frame size, the call that fails, calls a burst, frames that call drops)
    for (size, fail_fill, calls, dropped) in [
        (1500, 0u32, 1, 0u64),
        (1500, 3, 1, 64),
        (9000, 0, 2, 0),
        // The 5th call is the third burst's first: 256 ops, 51 frames and the first of
        // the 52nd's five parts.
        (9000, 5, 2, 52),
        // The 6th is that burst's second: the 52nd frame's other four parts, and the
        // 12 frames after it.
        (9000, 6, 2, 13),
    ] {
        let r = run_to_frags(
            &so("memplex_fixture_devmem"),
            &format!("buffers = 8192, fail_fill = {fail_fill}"),
            size,
            n,
        );
        let t = r.total();
        let dev = t.providers.iter().find(|p| p.name == "frags").unwrap();
        // Bursts of 64, each one vector: 64 bursts, and every part in one op of its
        // burst's call (or calls).
        assert_eq!(dev.checks.fill_gather_calls, n / 64 * calls, "{dev:#?}");
        assert_eq!(dev.checks.fill_bulk_calls, 0, "{dev:#?}");
        assert_eq!(dev.checks.fill_calls, 0, "{dev:#?}");
        assert_eq!(t.received.frames, n);
        assert_eq!(t.dropped.get(DropReason::Fault), dropped, "{t:#?}");
        assert_eq!(dev.dropped.get(DropReason::Fault), dropped, "{dev:#?}");
        let parts = if size > 2048 { 5 } else { 1 };
        assert_eq!(dev.placed.frames, (n - dropped) * parts, "{dev:#?}");
        assert_eq!(t.routes[0].frames, n - dropped, "{t:#?}");
        assert_eq!(
            dev.quarantined, 0,
            "an error that is not fatal quarantines nothing"
        );
        assert_eq!(r.leaked(), 0);
    }
}

/// A WASM provider's memory is written by the host's own copies into the guest, so it
/// takes a vector's parts (8 frames) in one `fill_gather`, not a whole burst's as a
/// native provider of device memory does (`Gathering`: whole bursts placed x0.92 to
/// x0.93 as fast into `slab.wasm`): 4096 frames in bursts of 64 are 512 calls.
#[test]
fn a_wasm_providers_parts_are_gathered_a_vector_at_a_time() {
    let n = 4096u64;
    let r = run_to_frags(&build_dir().join("slab.wasm"), "", 1500, n);
    let t = r.total();
    let guest = t.providers.iter().find(|p| p.name == "frags").unwrap();
    assert_eq!(guest.checks.fill_gather_calls, n / 8, "{guest:#?}");
    assert_eq!(guest.checks.fill_bulk_calls, 0, "{guest:#?}");
    assert_eq!(guest.placed.frames, n, "{guest:#?}");
    assert_eq!(t.dropped.sum(), 0, "{t:#?}");
    assert_eq!(r.leaked(), 0);
}

/// A provider whose `fill_gather` claims fewer ops than it was given breaks the contract:
/// it is quarantined, and the burst whose call it was is placed again on its fallback,
/// whole. No frame is lost, and every buffer comes back.
#[test]
fn a_gathered_fill_that_claims_too_few_quarantines_and_the_fallback_takes_the_vector() {
    use memplex::stats::DropReason;
    let n = 4096u64;
    let r = run_to_frags(
        &so("memplex_fixture_devmem"),
        "buffers = 8192, short_fill = 5",
        1500,
        n,
    );
    let t = r.total();
    let dev = t.providers.iter().find(|p| p.name == "frags").unwrap();
    let spare = t.providers.iter().find(|p| p.name == "spare").unwrap();
    assert_eq!(dev.quarantined, 1, "{dev:#?}");
    assert!(
        dev.fault
            .as_deref()
            .is_some_and(|f| f.contains("fill_gather said it did 63 of the 64 ops")),
        "{dev:#?}"
    );
    // Four bursts filled before, the fifth placed again on the spare, and the rest
    // there too: every frame counted once, none dropped.
    assert_eq!(dev.checks.fill_gather_calls, 5, "{dev:#?}");
    assert_eq!(dev.placed.frames, 4 * 64, "{dev:#?}");
    assert_eq!(spare.placed.frames, n - 4 * 64, "{spare:#?}");
    assert_eq!(t.routes[0].frames, n, "{t:#?}");
    assert_eq!(t.dropped.get(DropReason::Fault), 0, "{t:#?}");
    assert_eq!(r.leaked(), 0);
}

/// A plugin built against ABI 0.1.1 (before gathered fill, `plugins/fixtures/abi-0.1.1`),
/// whose memory the host may not write, still loads and works: the host fills it a frame
/// at a time through 0.1.1's `fill_bulk`, as it did before 0.1.2.
#[test]
fn a_plugin_built_against_abi_0_1_1_is_filled_a_frame_at_a_time() {
    let file = so("memplex_fixture_abi_0_1_1");
    let plugin = ProviderPlugin::open(&file).unwrap();
    assert_eq!(plugin.abi_revision(), Some("0.1.1"));
    let n = 1024u64;
    let r = run_to_frags(&file, "buffers = 4096", 1500, n);
    let t = r.total();
    let old = t.providers.iter().find(|p| p.name == "frags").unwrap();
    assert_eq!(old.placed.frames, n, "{old:#?}");
    assert_eq!(old.checks.fill_bulk_calls, n, "{old:#?}");
    assert_eq!(old.checks.fill_gather_calls, 0, "{old:#?}");
    assert_eq!(old.checks.fill_calls, 0, "{old:#?}");
    assert_eq!(t.dropped.sum(), 0, "{t:#?}");
    assert_eq!(r.leaked(), 0);
}
