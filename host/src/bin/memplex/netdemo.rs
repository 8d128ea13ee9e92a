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
fn stop_on_signal(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm => {}
            }
            eprintln!("\nstopping; cleaning up ...");
            stop.store(true, Relaxed);
        })
    });
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
    dropped: u64,
    bytes: u64,
    frames: u64,
    gso: u64,
    secs: f64,
}

/// The TAP's `tx_dropped`: frames the kernel could not queue because the reader fell behind.
fn tap_dropped(net: &TestNet) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["-n", &net.ns_a, "-s", "-j", "link", "show", &net.tap])
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v[0]["stats64"]["tx"]["dropped"].as_u64())
        .unwrap_or(0)
}

/// Sends the demo's traffic for `seconds` while `reader` runs, then stops it.
fn timed<T>(
    net: &TestNet,
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
        while Instant::now() < deadline && result.is_ok() {
            result = net.send_mix(32 << 20, stop).map(|_| ());
        }
        std::thread::sleep(Duration::from_millis(200));
        let secs = start.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        let out = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        result?;
        Ok((out, secs))
    })
}

/// `memplex demo --compare N`: the engine against a bare TAP read loop that only counts,
/// in alternating rounds on the same traffic, as medians and a same-run ratio.
pub fn compare(
    path: &PluginPath,
    config: Option<PathBuf>,
    seconds: f64,
    pairs: usize,
) -> Result<i32> {
    anyhow::ensure!(
        testnet::privileged(),
        "--compare needs root: it builds the demo network"
    );
    TestNet::sweep_stale();
    let net = TestNet::create(2).context("building the demo network")?;
    let config = load(
        &config,
        &[
            ("MEMPLEX_DEVICE__INTERFACE", net.tap.clone()),
            ("MEMPLEX_RUNTIME__SINK", "count".into()),
        ],
    )?;
    let (queues, gso) = (config.device.queues, config.device.gso);
    let engine = Engine::new(config, path)?;
    let mut rounds = Vec::new();
    for i in 0..pairs * 2 {
        let use_engine = i % 2 == 0;
        let control = RunControl::default();
        let dropped_before = tap_dropped(&net);
        let round = if use_engine {
            let rx = TestNet::in_ns(&net.ns_a, || engine.open_device())??;
            let (report, secs) = timed(&net, seconds, &control.stop, || engine.run(rx, &control))?;
            let t = report?.total();
            Round {
                engine: true,
                dropped: 0,
                bytes: t.received.bytes,
                frames: t.received.frames,
                gso: t.device.gso_frames,
                secs,
            }
        } else {
            let rx = TestNet::in_ns(&net.ns_a, || {
                memplex::device::tap::open(&net.tap, queues, gso)
            })??;
            let stop = &control.stop;
            let (counts, secs) = timed(&net, seconds, stop, || {
                std::thread::scope(|s| {
                    let hs: Vec<_> = rx
                        .into_iter()
                        .map(|mut q| {
                            s.spawn(move || {
                                use memplex::device::RxQueue;
                                let (mut frames, mut bytes) = (0u64, 0u64);
                                while !stop.load(Relaxed) {
                                    let r = q.poll(64, Duration::from_millis(100), &mut |f| {
                                        frames += 1;
                                        bytes += f.len() as u64;
                                    });
                                    if r.is_err() {
                                        break;
                                    }
                                }
                                (frames, bytes, q.gso_frames)
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .filter_map(|h| h.join().ok())
                        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
                })
            })?;
            Round {
                engine: false,
                dropped: 0,
                frames: counts.0,
                bytes: counts.1,
                gso: counts.2,
                secs,
            }
        };
        let round = Round {
            dropped: tap_dropped(&net).saturating_sub(dropped_before),
            ..round
        };
        eprintln!(
            "  round {}: {:>7} {:>8.3} Gbit/s received, {} frames ({} GSO), {} dropped by the TAP",
            i + 1,
            if round.engine { "memplex" } else { "bare" },
            round.bytes as f64 * 8.0 / round.secs / 1e9,
            round.frames,
            round.gso,
            round.dropped
        );
        rounds.push(round);
    }
    let median = |engine: bool| {
        let mut v: Vec<f64> = rounds
            .iter()
            .filter(|r| r.engine == engine)
            .map(|r| r.bytes as f64 * 8.0 / r.secs / 1e9)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m, b) = (median(true), median(false));
    println!(
        "TAP, GSO on, {queues} queues, {pairs} pairs of {seconds} s rounds, alternating:\n  memplex (split + place + count): median {m:.3} Gbit/s\n  bare TAP read loop (count only): median {b:.3} Gbit/s\n  ratio memplex / bare: {:.3}",
        m / b
    );
    drop(net);
    Ok(0)
}
