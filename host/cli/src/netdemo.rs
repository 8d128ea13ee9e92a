//! `memplex demo`: the default config on real kernel traffic, in a network it makes.

use anyhow::{Context, Result};
use memplex::config::Config;
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex::testnet::{self, TestNet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The config the demo runs when none is given: `configs/default.toml`, built in.
const DEFAULT: &str = include_str!("../../../../configs/default.toml");

fn load(config: &Option<PathBuf>, env: &[(&str, String)]) -> Result<Config> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Ok(match config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_toml(&text, &p.display().to_string(), env, p.parent())?
        }
        None => Config::from_toml(DEFAULT, "configs/default.toml (built in)", env, None)?,
    })
}

/// Sets `stop` on Ctrl-C or SIGTERM, so the demo cleans up instead of dying.
pub(crate) fn stop_on_signal(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || rt.block_on(crate::run::stop_on_signal(stop)));
    Ok(())
}

/// Runs the demo for `seconds`.
pub fn run(path: &PluginPath, config: Option<PathBuf>, seconds: f64, json: bool) -> Result<i32> {
    if !testnet::privileged() {
        return unprivileged(path, config, json);
    }
    TestNet::sweep_stale();
    let net = TestNet::create(2)
        .context("building the demo network (two namespaces, a veth pair, a TAP device)")?;
    let config = load(&config, &[("MEMPLEX_DEVICE__INTERFACE", net.tap.clone())])?;
    println!(
        "memplex demo: namespaces {} and {} joined by a veth pair; everything host A sends is mirrored into TAP {} ({} queues, GSO on).\n\
         Host A sends a TCP stream, UDP over IPv4, IPv6 and VXLAN, and UDP on VLAN 100 to host B for {seconds} s;\n\
         memplex splits what arrives on the TAP with `split.mode = {:?}` and places it as configs/default.toml routes it.\n",
        net.ns_a, net.ns_b, net.tap, config.device.queues, config.split.mode
    );
    let engine = Engine::new(config, path)?;
    let queues = TestNet::in_ns(&net.ns_a, || engine.open_device())??;
    let control = RunControl::default();
    stop_on_signal(control.stop.clone())?;
    let (report, sent) = std::thread::scope(|s| -> Result<_> {
        let run = s.spawn(|| engine.run(queues, &control));
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(seconds);
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last_line = start;
        let mut sent = testnet::MixSent::default();
        let mut rounds = 0;
        let result = (|| -> Result<()> {
            while Instant::now() < deadline && !control.stop.load(Relaxed) {
                let m = net.send_mix(32 << 20, &control.stop)?;
                sent.tcp_bytes += m.tcp_bytes;
                sent.udp += m.udp;
                sent.vlan += m.vlan;
                rounds += 1;
                let line = format!(
                    "  {:.1} s: sent {} MB of TCP, {} UDP datagrams, {} VLAN frames",
                    start.elapsed().as_secs_f64(),
                    sent.tcp_bytes >> 20,
                    sent.udp,
                    sent.vlan
                );
                if tty {
                    eprint!("\r{line}");
                } else if last_line.elapsed() >= Duration::from_secs(1) {
                    eprintln!("{line}");
                    last_line = Instant::now();
                }
            }
            Ok(())
        })();
        if tty {
            eprintln!();
        }
        std::thread::sleep(Duration::from_millis(300));
        control.stop.store(true, Relaxed);
        let report = run
            .join()
            .map_err(|_| anyhow::anyhow!("the run panicked"))??;
        result?;
        Ok((report, (sent, rounds)))
    })?;
    crate::run::print_report(&report, json);
    let t = report.total();
    println!(
        "host A sent {} MB of TCP in {} connections, {} UDP datagrams and {} VLAN frames;\n\
         the TAP delivered {} GSO super-frames (largest {} bytes), each placed across several frags.",
        sent.0.tcp_bytes >> 20,
        sent.1,
        sent.0.udp,
        sent.0.vlan,
        t.device.gso_frames,
        t.device.largest
    );
    drop(net);
    println!("removed the demo's namespaces, veth pair and TAP device.");
    if report.leaked() > 0 || t.sink.mismatched > 0 {
        eprintln!(
            "FAILED: {} buffers leaked, {} frames did not reassemble",
            report.leaked(),
            t.sink.mismatched
        );
        return Ok(1);
    }
    Ok(0)
}

fn unprivileged(path: &PluginPath, config: Option<PathBuf>, json: bool) -> Result<i32> {
    eprintln!(
        "memplex demo needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): it creates two network namespaces,\n\
         a veth pair and a TAP device, and sends real traffic between them. Run it with sudo for that.\n\
         Without privileges, memplex can replay a capture instead (`kind = \"pcap\"`), which is what follows:\n\
         the same config on a generated traffic mix. See also `memplex run -c configs/tcp-split.toml`.\n"
    );
    let capture = std::env::temp_dir().join(format!("memplex-demo-{}.pcap", std::process::id()));
    let frames = memplex::traffic::mix("default", 3000).expect("built-in mix");
    memplex::traffic::write_pcap(&capture, &frames)
        .with_context(|| format!("writing {}", capture.display()))?;
    let config = load(
        &config,
        &[
            ("MEMPLEX_DEVICE__KIND", "pcap".into()),
            ("MEMPLEX_DEVICE__PATH", capture.display().to_string()),
            ("MEMPLEX_DEVICE__REPEAT", "100".into()),
        ],
    );
    let result = config.and_then(|config| {
        let engine = Engine::new(config, path)?;
        let queues = engine.open_device()?;
        Ok(engine.run(queues, &RunControl::default())?)
    });
    let _ = std::fs::remove_file(&capture);
    let report = result?;
    crate::run::print_report(&report, json);
    Ok(
        if report.leaked() > 0 || report.total().sink.mismatched > 0 {
            1
        } else {
            0
        },
    )
}

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
                        source: e,
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
    let config = load(&config, &env)?;
    let d = config.device.clone();
    let (ns, load_kind) = if tap {
        (net.ns_a.clone(), Load::Mix)
    } else {
        (net.ns_b.clone(), Load::Flood(frame_size))
    };
    let engine = Engine::new(config, path)?;
    let open_bare = || -> Result<Vec<Box<dyn memplex::device::RxQueue>>> {
        Ok(if tap {
            memplex::device::tap::open(&net.tap, d.queues, d.gso)?
                .into_iter()
                .map(|q| Box::new(q) as Box<dyn memplex::device::RxQueue>)
                .collect()
        } else {
            memplex::device::af_packet::open("vb", d.queues, d.block_size, d.block_count)?
                .into_iter()
                .map(|q| Box::new(q) as Box<dyn memplex::device::RxQueue>)
                .collect()
        })
    };
    let mut rounds = Vec::new();
    for i in 0..pairs * 2 {
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
                crate::bench::bare_read(rx, stop, false)
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
