//! `memplex demo`: the default config on real kernel traffic, in a network it makes;
//! without privileges, on a replayed capture; with `--synthetic`, each provider alone
//! on the default mix replayed from memory, through the same engine.

use anyhow::{Context, Result};
use memplex::config::Config;
use memplex::device;
use memplex::device::replay::{self, Recorded};
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex_testkit::net::{self as testnet, TestNet};
use memplex_testkit::traffic;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The config the demo runs when none is given: `configs/default.toml`, built in.
const DEFAULT: &str = include_str!("../../../configs/default.toml");

pub(crate) fn load(config: &Option<PathBuf>, env: &[(&str, String)]) -> Result<Config> {
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

/// The built-in config with its TCP route delivered to a consumer process, `demo`, that
/// verifies every frame in place: heads inline (heap cannot share), payload in the
/// slab's and hugepage's memfds (hugepage asked for shared memory).
fn with_demo_consumer(mut config: Config) -> Config {
    use memplex::config::{ConsumerConfig, DeliverPolicy, Scalar};
    let socket = std::env::temp_dir().join(format!("memplex-demo-{}.sock", std::process::id()));
    config.consumers.insert(
        "demo".into(),
        ConsumerConfig {
            quota: Some(8192),
            checksum: true,
            // Bounded back-pressure: the first frames wait for the consumer to connect.
            policy: DeliverPolicy::Wait,
            wait_ms: 2000,
            max_sessions: 1,
            ..ConsumerConfig::new(socket)
        },
    );
    if let Some(r) = config.routes.first_mut() {
        r.deliver = Some("demo".into());
    }
    // GSO super-frames lend up to 17 buffers each: room for a consumer's quota of them
    // beside the pools' caches.
    for name in ["payload", "spill"] {
        if let Some(p) = config.providers.get_mut(name) {
            p.settings.insert("buffers".into(), Scalar::Int(32768));
        }
    }
    if let Some(p) = config.providers.get_mut("spill") {
        p.settings.insert("shared".into(), Scalar::Bool(true));
    }
    config
}

/// The consumer processes of a run: `memplex consume` for each configured consumer,
/// verifying where the consumer has checksums. Started once their sockets exist.
struct Consumers(Vec<(String, std::process::Child)>);

impl Consumers {
    fn start(config: &Config) -> Result<Consumers> {
        let mut out = Vec::new();
        for (name, c) in &config.consumers {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !c.socket.exists() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "consumer socket {} never appeared",
                    c.socket.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut cmd = std::process::Command::new(std::env::current_exe()?);
            cmd.args(["consume", "--json", "--name", name, "--mode"])
                .arg(if c.checksum { "verify" } else { "count" })
                .arg("--socket")
                .arg(&c.socket);
            if c.transmit.is_some() {
                // An inline middlebox: every frame's verdict is "forward".
                cmd.arg("--forward");
            }
            let child = cmd
                .stdout(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("starting the consumer process for `{name}`"))?;
            out.push((name.clone(), child));
        }
        // Let them connect before traffic starts.
        if !out.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(Consumers(out))
    }

    /// Waits for each to end (the run's end tells them) and prints what it saw; false
    /// when one failed or found a frame that did not match.
    fn report(self, json: bool) -> bool {
        let mut ok = true;
        for (name, child) in self.0 {
            let pid = child.id();
            let Ok(out) = child.wait_with_output() else {
                ok = false;
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(r) = text
                .lines()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            else {
                println!("consumer process `{name}` (pid {pid}) gave no report");
                ok = false;
                continue;
            };
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let us = |k: &str| r["latency_ns"][k].as_u64().unwrap_or(0) as f64 / 1e3;
            ok &= out.status.success() && n("mismatched") == 0 && n("frames") > 0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "consumer": name, "pid": pid, "report": r })
                );
                continue;
            }
            println!(
                "consumer process `{name}` (pid {pid}) read {} frames ({:.1} MB) in place: verified {}, mismatched {}, heads inline {}, {} parts read in provider memory; latency p50 {:.1} us, p99 {:.1} us",
                n("frames"),
                n("bytes") as f64 / 1e6,
                n("verified"),
                n("mismatched"),
                n("head_inline"),
                n("parts_in_place"),
                us("p50"),
                us("p99")
            );
            if r.get("forwarded")
                .is_some_and(|_| n("forwarded") + n("forward_refused") > 0)
            {
                println!(
                    "consumer process `{name}`: verdicts: {} frames forwarded through its transmit ring, {} could not be",
                    n("forwarded"),
                    n("forward_refused")
                );
            }
        }
        ok
    }
}

/// Runs the demo for `seconds`.
pub fn run(path: &PluginPath, config: Option<PathBuf>, seconds: f64, json: bool) -> Result<i32> {
    if !testnet::privileged() {
        return unprivileged(path, config, json);
    }
    // Signals are caught from here on: one that comes while the network is being built
    // ends the demo once it stands, and dropping it removes it again.
    let control = RunControl::default();
    crate::signal::stop_on_signal_thread(control.stop.clone())?;
    TestNet::sweep_stale();
    let net = TestNet::create(2)
        .context("building the demo network (two namespaces, a veth pair, a TAP device)")?;
    if control.stop.load(Relaxed) {
        drop(net);
        eprintln!("interrupted while building the demo network; removed it again");
        return Ok(130);
    }
    let builtin = config.is_none();
    let mut config = load(&config, &[("MEMPLEX_DEVICE__INTERFACE", net.tap.clone())])?;
    if builtin {
        config = with_demo_consumer(config);
    }
    println!(
        "memplex demo: namespaces {} and {} joined by a veth pair; everything host A sends is mirrored into TAP {} ({} queues, GSO on).\n\
         Host A sends a TCP stream, UDP over IPv4, IPv6 and VXLAN, and UDP on VLAN 100 to host B for {seconds} s;\n\
         memplex splits what arrives on the TAP with `split.mode = {:?}` and places it as configs/default.toml routes it{}.\n",
        net.ns_a, net.ns_b, net.tap, config.device.queues, config.split.mode,
        if builtin {
            "; the TCP route delivers to a consumer process (`memplex consume`), which verifies every frame in place"
        } else {
            ""
        }
    );
    let consumer_config = config.clone();
    let allow_fault_drops = config.runtime.allow_fault_drops;
    let engine = Engine::new(config, path)?;
    let queues = TestNet::in_ns(&net.ns_a, || engine.open_device())??;
    let (report, sent, consumers_ok) = std::thread::scope(|s| -> Result<_> {
        let run = s.spawn(|| engine.run(queues, &control));
        let consumers = Consumers::start(&consumer_config);
        if consumers.is_err() {
            control.stop.store(true, Relaxed);
        }
        let consumers = consumers?;
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
        crate::run::print_report(&report, json);
        let consumers_ok = consumers.report(json);
        Ok((report, (sent, rounds), consumers_ok))
    })?;
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
    let verdict = crate::run::verdict(&report, allow_fault_drops);
    Ok(if verdict == 0 && !consumers_ok {
        1
    } else {
        verdict
    })
}

fn unprivileged(path: &PluginPath, config: Option<PathBuf>, json: bool) -> Result<i32> {
    eprintln!(
        "memplex demo needs root, with CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN: it creates two network namespaces,\n\
         a veth pair and a TAP device, and sends real traffic between them. Run it with sudo for that.\n\
         Without privileges, memplex replays the same traffic mix from memory instead (as `kind = \"pcap\"` replays\n\
         a capture), which is what follows:\n\
         the same config, the same engine. See also `memplex run -c configs/tcp-split.toml`.\n"
    );
    let builtin = config.is_none();
    let mut config = load(&config, &[])?;
    if builtin {
        config = with_demo_consumer(config);
    }
    let queues = config.device.queues;
    let allow_fault_drops = config.runtime.allow_fault_drops;
    let consumer_config = config.clone();
    let engine = Engine::new(config, path)?;
    let frames = Recorded::synthetic(traffic::mix("default", 3000).expect("built-in mix"));
    let rx = replay::queues("default mix", frames.into(), queues, 100, None)?;
    let control = RunControl::default();
    let (report, consumers_ok) = std::thread::scope(|s| -> Result<_> {
        let run = s.spawn(|| engine.run(device::boxed(rx), &control));
        let consumers = Consumers::start(&consumer_config);
        if consumers.is_err() {
            control.stop.store(true, Relaxed);
        }
        let consumers = consumers?;
        let report = run
            .join()
            .map_err(|_| anyhow::anyhow!("the run panicked"))??;
        crate::run::print_report(&report, json);
        Ok((report, consumers.report(json)))
    })?;
    let verdict = crate::run::verdict(&report, allow_fault_drops);
    Ok(if verdict == 0 && !consumers_ok {
        1
    } else {
        verdict
    })
}

/// The config `demo --synthetic` runs each provider in: the default mix replayed from
/// memory, split after L4, heads in 128 B buffers and payload in 1 KiB frags from two
/// instances of the provider under test, every frame verified.
const SYNTHETIC: &str = r#"
[device]
kind = "pcap"
path = "(the default mix, in memory)"

[split]
mode = "l4"

[providers.head]
plugin = "heap"
buf_size = 128
unverified = true    # heap declares no memory region

[providers.frags]
plugin = "heap"
buf_size = 1024
unverified = true    # shown in the report for a provider under test that declares none

[[route]]
head = "head"
frags = "frags"

[runtime]
sink = "verify"
"#;

/// `memplex demo --synthetic`: every provider through the real engine on the default
/// mix, replayed from memory (no device, no privileges).
pub fn synthetic(path: &PluginPath, frames: u64, providers: Vec<String>) -> Result<i32> {
    anyhow::ensure!(frames > 0, "--frames must be at least 1");
    let providers = if providers.is_empty() {
        vec!["heap".into(), "slab".into(), "hugepage".into()]
    } else {
        providers
    };
    let mix: std::sync::Arc<[Recorded]> =
        Recorded::synthetic(traffic::mix("default", 1024).expect("built-in mix")).into();
    println!(
        "memplex demo --synthetic: {frames} frames of the default mix (TCP, VLAN, UDP, IPv6, ICMP; 60-1514 B) per provider,\n\
         replayed from memory through the engine: split after the L4 header, heads in 128 B buffers, payload in 1 KiB frags,\n\
         every frame verified byte for byte.\n"
    );
    let mut t = crate::table(&[
        "provider",
        "frames",
        "Mpps",
        "Gbit/s",
        "split",
        "frag bufs",
        "verified",
        "dropped",
        "leaked",
    ]);
    let mut p = crate::table(&[
        "pool",
        "alloc_fast",
        "alloc_refill",
        "alloc_slow",
        "recycle_cached",
        "hit rate",
        "provider calls",
    ]);
    let mut bad = false;
    for (i, spec) in providers.iter().enumerate() {
        let mut config =
            Config::from_toml(SYNTHETIC, "demo --synthetic", Default::default(), None)?;
        for p in config.providers.values_mut() {
            p.plugin.clone_from(spec);
        }
        let engine =
            Engine::new(config, path).with_context(|| format!("loading provider `{spec}`"))?;
        let label = engine
            .plugins()
            .next()
            .map_or_else(|| spec.clone(), |(_, p)| p.label());
        eprintln!("[{}/{}] {label} ...", i + 1, providers.len());
        let rx = replay::queues("default mix", mix.clone(), 1, u32::MAX, None)?
            .into_iter()
            .map(|q| q.limit(frames));
        let report = engine
            .run(device::boxed(rx), &RunControl::default())
            .with_context(|| format!("running the demo on `{spec}`"))?;
        let tot = report.total();
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        let verified = tot.sink.verified == tot.received.frames;
        bad |= !verified || report.leaked() > 0;
        t.add_row(vec![
            label,
            tot.received.frames.to_string(),
            format!("{:.2}", tot.received.frames as f64 / secs / 1e6),
            format!("{:.2}", tot.received.bytes as f64 * 8.0 / secs / 1e9),
            tot.split.sum().to_string(),
            tot.providers
                .iter()
                .find(|p| p.name == "frags")
                .map_or(0, |p| p.placed.frames)
                .to_string(),
            if verified {
                "all".into()
            } else {
                format!("{} of {}", tot.sink.verified, tot.received.frames)
            },
            tot.dropped.sum().to_string(),
            report.leaked().to_string(),
        ]);
        for ps in &tot.providers {
            let s = ps.pool;
            let c = ps.checks;
            p.add_row(vec![
                format!("{spec} {}", ps.name),
                s.alloc_fast.to_string(),
                s.alloc_refill.to_string(),
                s.alloc_slow.to_string(),
                s.recycle_cached.to_string(),
                format!("{:.2}%", s.hit_rate() * 100.0),
                (c.alloc_calls + c.release_calls).to_string(),
            ]);
        }
    }
    println!("{t}\n\n{p}");
    if bad {
        println!("FAILED: some frames did not reassemble or some buffers did not come back");
        return Ok(1);
    }
    println!("every frame reassembled byte for byte; every buffer returned to its provider.");
    Ok(0)
}

/// The config `demo --forward` runs when none is given: `configs/forward.toml`.
const FORWARD: &str = include_str!("../../../configs/forward.toml");
const MIDDLEBOX: &str = include_str!("../../../configs/middlebox.toml");

/// `memplex demo --forward`: two namespaces whose only link runs through memplex (a TAP
/// each, see `ForwardNet`); real pings, TCP and UDP from iperf3, both directions, IPv4
/// and IPv6, with the kernel checking every segment on arrival.
pub fn forward(
    path: &PluginPath,
    config: Option<PathBuf>,
    seconds: f64,
    json: bool,
    device: &str,
    gso: bool,
    middlebox: bool,
) -> Result<i32> {
    let af_packet = match device {
        "tap" => false,
        "af_packet" => true,
        other => anyhow::bail!("--device `{other}`: demo --forward runs on tap or af_packet"),
    };
    anyhow::ensure!(
        testnet::privileged(),
        "memplex demo --forward needs root, with CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN: it creates two network namespaces with a TAP device each"
    );
    let control = RunControl::default();
    crate::signal::stop_on_signal_thread(control.stop.clone())?;
    TestNet::sweep_stale();
    let net = if af_packet {
        testnet::ForwardNet::create_veth(gso).context(
            "building the demo network (two namespaces with a veth each, their peers in a third)",
        )?
    } else {
        testnet::ForwardNet::create()
            .context("building the demo network (two namespaces with a TAP device each)")?
    };
    if control.stop.load(Relaxed) {
        drop(net);
        eprintln!("interrupted while building the demo network; removed it again");
        return Ok(130);
    }
    let mut config = match &config {
        Some(_) => load(&config, &[])?,
        None if middlebox => Config::from_toml(
            MIDDLEBOX,
            "configs/middlebox.toml (built in)",
            Default::default(),
            None,
        )?,
        None => Config::from_toml(
            FORWARD,
            "configs/forward.toml (built in)",
            Default::default(),
            None,
        )?,
    };
    // Sockets of this run's own, so demos side by side do not meet.
    for (name, c) in config.consumers.iter_mut() {
        c.socket =
            std::env::temp_dir().join(format!("memplex-fwd-{}-{name}.sock", std::process::id()));
    }
    let extra = config
        .devices
        .values_mut()
        .next()
        .context("demo --forward needs a config with a second device ([devices.NAME])")?;
    for (d, name) in [(extra, &net.dev_b), (&mut config.device, &net.dev_a)] {
        d.interface = Some(name.clone());
        if af_packet {
            d.kind = memplex::config::DeviceKind::AfPacket;
        }
        d.gso = gso;
    }
    let dev_a = config.device.clone();
    let dev_b = config
        .devices
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| dev_a.clone());
    let secs = seconds.ceil().max(1.0) as u32;
    let how = if af_packet {
        format!(
            "host A's veth and host B's veth have their peers {} and {} in namespace {}, where memplex reads and writes them with AF_PACKET{}",
            net.dev_a,
            net.dev_b,
            net.ns_dev_a(),
            if gso { " (vnet headers: TCP's GSO super-frames go through whole)" } else { " (no offloads: finished frames)" }
        )
    } else {
        format!(
            "host A's interface is TAP {}, host B's is TAP {}",
            net.dev_a, net.dev_b
        )
    };
    println!(
        "memplex demo --forward: namespaces {} and {} are joined only through memplex: {how}.\n\
         memplex splits each frame with `split.mode = {:?}`, places head and frags in the providers the routes name, and sends\n\
         it out of the other device from those buffers. Pings, then iperf3 TCP and UDP for {secs} s each way, IPv4 and IPv6.\n",
        net.ns_a, net.ns_b, config.split.mode
    );
    let allow_fault_drops = config.runtime.allow_fault_drops;
    let consumer_config = config.clone();
    let engine = Engine::new(config, path)?;
    // Each device is opened inside its namespace; the queues stay bound to it.
    let mut queues = TestNet::in_ns(net.ns_dev_a(), || device::open(&dev_a))??;
    for q in TestNet::in_ns(net.ns_dev_b(), || device::open(&dev_b))?? {
        queues.push(Box::new(device::OnDevice {
            device: 1,
            queue: q,
        }));
    }
    let (report, results) = std::thread::scope(|s| -> Result<_> {
        let run = s.spawn(|| engine.run(queues, &control));
        let consumers = Consumers::start(&consumer_config);
        if consumers.is_err() {
            control.stop.store(true, Relaxed);
        }
        let consumers = consumers?;
        let steps = (|| -> Result<Vec<(String, String, bool)>> {
            let mut out = Vec::new();
            for (from_a, v6, what) in [
                (true, false, "ping A -> B, IPv4"),
                (false, true, "ping B -> A, IPv6"),
            ] {
                let ok = net.ping(from_a, v6, 5)?;
                out.push((
                    what.into(),
                    if ok {
                        "5 of 5 replies".into()
                    } else {
                        "replies missing".into()
                    },
                    ok,
                ));
            }
            for (udp, reverse, v6, what) in [
                (None, false, false, "TCP A -> B, IPv4"),
                (None, true, false, "TCP B -> A, IPv4"),
                (None, false, true, "TCP A -> B, IPv6"),
                (
                    Some(200_000_000),
                    false,
                    false,
                    "UDP A -> B, 200 Mbit/s offered",
                ),
            ] {
                if control.stop.load(Relaxed) {
                    break;
                }
                let r = net.iperf3(secs, udp, reverse, v6)?;
                let figures = match udp {
                    None => format!(
                        "{:.2} Gbit/s, {} MB, {} retransmissions",
                        r.bits_per_second / 1e9,
                        r.bytes >> 20,
                        r.retransmits
                    ),
                    Some(_) => format!(
                        "{:.0} Mbit/s, {} datagrams lost",
                        r.bits_per_second / 1e6,
                        r.lost
                    ),
                };
                out.push((what.into(), figures, r.bytes > 0));
            }
            Ok(out)
        })();
        control.stop.store(true, Relaxed);
        let report = run
            .join()
            .map_err(|_| anyhow::anyhow!("the run panicked"))??;
        crate::run::print_report(&report, json);
        let consumers_ok = consumers.report(json);
        Ok((report, steps.map(|s| (s, consumers_ok))))
    })?;
    let (results, consumers_ok) = results?;
    for (what, figures, _) in &results {
        println!("{what:<32} {figures}");
    }
    let t = report.total();
    let (sent, sent_bytes) = if consumer_config.consumers.is_empty() {
        (t.forwarded.frames, t.forwarded.bytes)
    } else {
        // Sent on by the consumers' verdicts, through their transmit rings.
        t.consumers.iter().fold((0, 0), |(f, b), c| {
            (f + c.counters.transmitted, b + c.counters.transmitted_bytes)
        })
    };
    println!(
        "memplex {} {} frames ({} MB) of {} received; {} GSO super-frames went through whole (largest {} bytes).",
        if consumer_config.consumers.is_empty() { "forwarded" } else { "sent, on its consumers' verdicts," },
        sent,
        sent_bytes >> 20,
        t.received.frames,
        t.device.gso_frames,
        t.device.largest
    );
    drop(net);
    println!("removed the demo's namespaces and their devices.");
    let verdict = crate::run::verdict(&report, allow_fault_drops);
    let all_ok = results.iter().all(|(_, _, ok)| *ok) && consumers_ok;
    if !all_ok {
        eprintln!("memplex demo --forward: some traffic did not get through (above)");
    }
    Ok(if verdict == 0 && !all_ok { 1 } else { verdict })
}
