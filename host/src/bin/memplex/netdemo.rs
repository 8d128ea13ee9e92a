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
