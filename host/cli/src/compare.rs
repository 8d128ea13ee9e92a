//! `memplex demo --compare N`: the engine against the bare read loop on the demo
//! network, in alternating rounds on the same traffic, as medians and a same-run ratio.

use anyhow::{Context, Result};
use memplex::device::{self, RxQueue};
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex_testkit::net::{self as testnet, TestNet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// One timed round of `--compare`.
struct Round {
    engine: bool,
    /// Frames the TAP (tx_dropped) or the packet socket (ring overruns) dropped.
    dropped: u64,
    bytes: u64,
    frames: u64,
    gso: u64,
    secs: f64,
}

/// What `--compare` sends.
#[derive(Clone, Copy)]
enum Load {
    /// The demo's mix (TCP stream with GSO, UDP, IPv6, VXLAN, VLAN).
    Mix,
    /// A UDP flood of frames of this size, from host A to host B.
    Flood(usize),
}

fn flood(frame: usize, until: Instant) -> std::io::Result<u64> {
    let payload = vec![0x5a; frame.saturating_sub(14 + 20 + 8).max(1)];
    let sock = std::net::UdpSocket::bind((testnet::addr::A4, 0))?;
    sock.connect((testnet::addr::B4, 9000))?;
    let mut sent = 0;
    while Instant::now() < until {
        for _ in 0..256 {
            // The kernel may refuse with ENOBUFS under load; that is part of a flood.
            if sock.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// Sends traffic for `seconds` while `reader` runs, then stops it.
fn timed<T>(
    net: &TestNet,
    load: Load,
    seconds: f64,
    stop: &std::sync::atomic::AtomicBool,
    reader: impl FnOnce() -> T + Send,
) -> Result<(T, f64)>
where
    T: Send,
{
    std::thread::scope(|s| {
        let start = Instant::now();
        let h = s.spawn(reader);
        let deadline = start + Duration::from_secs_f64(seconds);
        let mut result = Ok(());
        match load {
            Load::Mix => {
                while Instant::now() < deadline && result.is_ok() {
                    result = net.send_mix(32 << 20, stop).map(|_| ());
                }
            }
            Load::Flood(size) => {
                let sink = TestNet::in_ns(&net.ns_b, || {
                    std::net::UdpSocket::bind((testnet::addr::B4, 9000))
                })??;
                result = TestNet::in_ns(&net.ns_a, || flood(size, deadline))?
                    .map(|_| ())
                    .map_err(|e| testnet::NetError::Sys {
                        what: "UDP flood".into(),
                        cause: e,
                    });
                drop(sink);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let secs = start.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        let out = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        result?;
        Ok((out, secs))
    })
}

/// `memplex demo --compare N`: the engine against a bare read loop that only counts, in
/// alternating rounds on the same traffic, as medians and a same-run ratio. `device` is
/// `tap` (the demo's mix through the mirrored TAP, GSO on) or `af_packet` (a UDP flood of
/// `frame_size`-byte frames, read from host B's veth end with a TPACKET_V3 ring).
pub fn compare(
    path: &PluginPath,
    config: Option<PathBuf>,
    seconds: f64,
    pairs: usize,
    device: &str,
    frame_size: usize,
) -> Result<i32> {
    anyhow::ensure!(
        testnet::privileged(),
        "--compare needs root: it builds the demo network"
    );
    anyhow::ensure!(
        device == "tap" || device == "af_packet",
        "--device must be tap or af_packet, not `{device}`"
    );
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::signal::stop_on_signal_thread(interrupted.clone())?;
    TestNet::sweep_stale();
    let net = TestNet::create(2).context("building the demo network")?;
    let tap = device == "tap";
    let mut env = vec![("MEMPLEX_RUNTIME__SINK", "count".to_string())];
    if tap {
        env.push(("MEMPLEX_DEVICE__INTERFACE", net.tap.clone()));
    } else {
        env.push(("MEMPLEX_DEVICE__KIND", "af_packet".into()));
        env.push(("MEMPLEX_DEVICE__INTERFACE", "vb".into()));
    }
    let config = crate::demo::load(&config, &env)?;
    let d = config.device.clone();
    let (ns, load_kind) = if tap {
        (net.ns_a.clone(), Load::Mix)
    } else {
        (net.ns_b.clone(), Load::Flood(frame_size))
    };
    let engine = Engine::new(config, path)?;
    let open_bare = || -> Result<Vec<Box<dyn RxQueue>>> { Ok(device::open(&d)?) };
    let mut rounds = Vec::new();
    for i in 0..pairs * 2 {
        if interrupted.load(Relaxed) {
            eprintln!("interrupted after {i} rounds; removing the network");
            return Ok(130);
        }
        let use_engine = i % 2 == 0;
        let control = RunControl::default();
        let dropped_before = if tap { net.tap_dropped() } else { 0 };
        let round = if use_engine {
            let rx = TestNet::in_ns(&ns, || engine.open_device())??;
            let (report, secs) = timed(&net, load_kind, seconds, &control.stop, || {
                engine.run(rx, &control)
            })?;
            let t = report?.total();
            Round {
                engine: true,
                dropped: t.device.kernel_drops,
                bytes: t.received.bytes,
                frames: t.received.frames,
                gso: t.device.gso_frames,
                secs,
            }
        } else {
            let rx = TestNet::in_ns(&ns, open_bare)??;
            let stop = &control.stop;
            let (counts, secs) = timed(&net, load_kind, seconds, stop, || {
                crate::bare::bare_read(rx, stop, false)
            })?;
            Round {
                engine: false,
                dropped: counts.kernel_drops,
                frames: counts.frames,
                bytes: counts.bytes,
                gso: counts.gso_frames,
                secs,
            }
        };
        let round = if tap {
            Round {
                dropped: net.tap_dropped().saturating_sub(dropped_before),
                ..round
            }
        } else {
            round
        };
        eprintln!(
            "  round {}: {:>7} {:>9.0} frames/s {:>8.3} Gbit/s, {} frames ({} GSO), {} dropped by the kernel",
            i + 1,
            if round.engine { "memplex" } else { "bare" },
            round.frames as f64 / round.secs,
            round.bytes as f64 * 8.0 / round.secs / 1e9,
            round.frames,
            round.gso,
            round.dropped
        );
        rounds.push(round);
    }
    let median = |engine: bool, f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds
            .iter()
            .filter(|r| r.engine == engine)
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let pps = |r: &Round| r.frames as f64 / r.secs;
    let gbps = |r: &Round| r.bytes as f64 * 8.0 / r.secs / 1e9;
    let what = if tap {
        "TAP, GSO on, the demo's mix".to_string()
    } else {
        format!("AF_PACKET TPACKET_V3 on a veth, {frame_size}-byte UDP frames")
    };
    println!(
        "{what}, {} queues, {pairs} pairs of {seconds} s rounds, alternating (medians):\n  memplex (split + route + place + count): {:.0} frames/s, {:.3} Gbit/s\n  bare read loop (count only):              {:.0} frames/s, {:.3} Gbit/s\n  ratio memplex / bare: {:.3} (frames/s), {:.3} (Gbit/s)",
        d.queues,
        median(true, &pps),
        median(true, &gbps),
        median(false, &pps),
        median(false, &gbps),
        median(true, &pps) / median(false, &pps),
        median(true, &gbps) / median(false, &gbps),
    );
    drop(net);
    Ok(0)
}
