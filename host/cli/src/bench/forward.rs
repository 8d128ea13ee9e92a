//! `memplex bench --source forward`: memplex as a bump in the wire, measured with real
//! TCP and UDP from iperf3 between two namespaces (see `ForwardNet`), against two
//! baselines in the same run, rounds interleaved:
//!
//! - **bare**: a forwarder on the same TAP devices, with the same queues, GSO setting and
//!   bursts, that only moves each burst from one device to the other (no split, no
//!   providers): what the devices allow;
//! - **veth**: the same two hosts joined directly by a veth pair, no memplex at all.
//!
//! Per variant and traffic: the median throughput (TCP in Gbit/s, small UDP datagrams in
//! frames per second at the receiver), TCP retransmissions, and the CPU time memplex's
//! process spent per KiB moved (on 2 cores, throughput alone shows who got the CPU).

use super::BenchArgs;
use anyhow::{ensure, Context, Result};
use memplex::config::Config;
use memplex::device::{self, RxQueue, TxQueue};
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex_testkit::net::{ForwardNet, Iperf, TestNet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

const FORWARD: &str = include_str!("../../../../configs/forward.toml");
const BARE: &str = "bare";
const VETH: &str = "veth";

/// The traffic of one measurement.
#[derive(Clone, Copy, PartialEq)]
enum Traffic {
    /// iperf3 TCP from A to B.
    Tcp,
    /// iperf3 UDP, 64-byte datagrams, as fast as the sender goes.
    SmallUdp,
}

impl Traffic {
    fn label(self) -> &'static str {
        match self {
            Traffic::Tcp => "tcp A->B",
            Traffic::SmallUdp => "udp 64 B A->B",
        }
    }
}

/// One round's figures.
#[derive(Clone, Copy, Default, serde::Serialize)]
struct Figures {
    /// Gbit/s (TCP) or frames per second at the receiver (UDP).
    rate: f64,
    retransmits: u64,
    /// CPU seconds of this process (memplex) per KiB moved; None for the veth pair.
    cpu_ns_per_kib: Option<f64>,
    /// memplex's resident memory growth over the round, in MiB, from its first minute
    /// on (from its start in rounds shorter than two minutes); None for the baselines.
    rss_growth_mib: Option<f64>,
}

/// `--source forward`: the exit code.
pub fn bench(path: &PluginPath, args: &BenchArgs) -> Result<i32> {
    ensure!(
        memplex_testkit::net::privileged(),
        "--source forward needs root: it builds network namespaces with TAP devices and veth pairs"
    );
    let secs = args.seconds.ceil().max(1.0) as u32;
    let mut variants: Vec<(String, Config)> = Vec::new();
    if args.configs.is_empty() {
        variants.push((
            "forward".into(),
            Config::from_toml(
                FORWARD,
                "configs/forward.toml (built in)",
                Default::default(),
                None,
            )?,
        ));
    }
    for c in &args.configs {
        let label = c.file_stem().map_or_else(
            || c.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        variants.push((label, Config::load(c)?));
    }
    for (label, c) in &variants {
        ensure!(
            c.devices.len() == 1,
            "{label}: --source forward needs a config with one [devices.NAME] beside [device] (see configs/forward.toml)"
        );
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    crate::signal::stop_on_signal_thread(interrupted.clone())?;
    TestNet::sweep_stale();
    let net = ForwardNet::create().context("building the TAP network")?;
    let direct = ForwardNet::create_direct().context("building the veth pair")?;
    // The bare forwarder runs on devices like the first config's.
    let template = variants[0].1.device.clone();
    let mut names: Vec<String> = variants.iter().map(|(l, _)| l.clone()).collect();
    if !args.no_bare {
        names.push(BARE.into());
    }
    names.push(VETH.into());
    let traffics: Vec<Traffic> = match args.forward_traffic {
        super::ForwardTraffic::Tcp => vec![Traffic::Tcp],
        super::ForwardTraffic::Udp => vec![Traffic::SmallUdp],
        super::ForwardTraffic::Both => vec![Traffic::Tcp, Traffic::SmallUdp],
    };
    // rounds[traffic][variant] = figures of each repeat.
    let mut rounds = vec![vec![Vec::<Figures>::new(); names.len()]; traffics.len()];
    let bar = indicatif::ProgressBar::new(
        (traffics.len() * names.len()) as u64 * u64::from(args.repeats),
    );
    for repeat in 0..args.repeats {
        for (ti, &traffic) in traffics.iter().enumerate() {
            for (vi, name) in names.iter().enumerate() {
                if interrupted.load(Relaxed) {
                    break;
                }
                bar.set_message(format!("{} {name} #{}", traffic.label(), repeat + 1));
                let f = if name == VETH {
                    run_iperf(&direct, traffic, secs).map(|r| figures(traffic, &r, None))
                } else if name == BARE {
                    round_bare(&net, &template, traffic, secs)
                } else {
                    round_memplex(&net, path, &variants[vi].1, traffic, secs)
                }
                .with_context(|| {
                    format!("round {} of `{name}` on {}", repeat + 1, traffic.label())
                })?;
                rounds[ti][vi].push(f);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    drop(net);
    drop(direct);
    print(&names, &traffics, &rounds, args);
    Ok(if interrupted.load(Relaxed) { 130 } else { 0 })
}

fn run_iperf(net: &ForwardNet, traffic: Traffic, secs: u32) -> Result<Iperf> {
    Ok(match traffic {
        Traffic::Tcp => net.iperf3(secs, None, false, false)?,
        Traffic::SmallUdp => net.iperf3_sized(secs, Some((0, 64)), false, false)?,
    })
}

fn figures(traffic: Traffic, r: &Iperf, cpu_secs: Option<f64>) -> Figures {
    let kib = r.bytes as f64 / 1024.0;
    Figures {
        rate: match traffic {
            Traffic::Tcp => r.bits_per_second / 1e9,
            Traffic::SmallUdp => r.packets.saturating_sub(r.lost) as f64 / r.seconds.max(1e-9),
        },
        retransmits: r.retransmits,
        cpu_ns_per_kib: cpu_secs.filter(|_| kib > 0.0).map(|c| c * 1e9 / kib),
        rss_growth_mib: None,
    }
}

/// The TAP queues of both sides, side B's marked as device 1.
fn open(
    net: &ForwardNet,
    a: &memplex::config::DeviceConfig,
    b: &memplex::config::DeviceConfig,
) -> Result<Vec<Box<dyn RxQueue>>> {
    let mut queues = TestNet::in_ns(net.ns_dev_a(), || device::open(a))??;
    for q in TestNet::in_ns(net.ns_dev_b(), || device::open(b))?? {
        queues.push(Box::new(device::OnDevice {
            device: 1,
            queue: q,
        }));
    }
    Ok(queues)
}

fn round_memplex(
    net: &ForwardNet,
    path: &PluginPath,
    config: &Config,
    traffic: Traffic,
    secs: u32,
) -> Result<Figures> {
    let mut config = config.clone();
    config.device.interface = Some(net.dev_a.clone());
    for d in config.devices.values_mut() {
        d.interface = Some(net.dev_b.clone());
    }
    let a = config.device.clone();
    let b = config
        .devices
        .values()
        .next()
        .cloned()
        .context("a config with a second device")?;
    let engine = Engine::new(config, path)?;
    let queues = open(net, &a, &b)?;
    let control = RunControl::default();
    let cpu0 = super::measure::cpu_secs();
    let (report, r, rss) = std::thread::scope(|s| -> Result<_> {
        let run = s.spawn(|| engine.run(queues, &control));
        // RSS once a second while the round runs.
        let sampler = s.spawn(|| {
            let mut kib = Vec::new();
            while !control.stop.load(Relaxed) {
                kib.extend(rss_kib());
                for _ in 0..10 {
                    if control.stop.load(Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            kib
        });
        let r = run_iperf(net, traffic, secs);
        control.stop.store(true, Relaxed);
        let report = run
            .join()
            .map_err(|_| anyhow::anyhow!("the run panicked"))??;
        let rss = sampler.join().unwrap_or_default();
        Ok((report, r?, rss))
    })?;
    let cpu = super::measure::cpu_secs() - cpu0;
    ensure!(
        report.leaked() == 0,
        "memplex leaked {} buffers in a round",
        report.leaked()
    );
    let mut f = figures(traffic, &r, Some(cpu));
    let from = if rss.len() > 120 { 60 } else { 0 };
    f.rss_growth_mib = match (rss.get(from), rss.last()) {
        (Some(a), Some(b)) => Some((*b as f64 - *a as f64) / 1024.0),
        _ => None,
    };
    Ok(f)
}

/// Moves every burst of each queue out of the other device's queue of the same index,
/// as it came in: the devices' own cost, nothing of memplex's.
fn round_bare(
    net: &ForwardNet,
    template: &memplex::config::DeviceConfig,
    traffic: Traffic,
    secs: u32,
) -> Result<Figures> {
    let dev = |name: &str| memplex::config::DeviceConfig {
        interface: Some(name.to_string()),
        ..template.clone()
    };
    let (a, b) = (dev(&net.dev_a), dev(&net.dev_b));
    let rx = open(net, &a, &b)?;
    let tx: Vec<Vec<Arc<dyn TxQueue>>> = {
        let mut t = vec![Vec::new(), Vec::new()];
        for q in &rx {
            if let Some(x) = q.transmitter() {
                t[usize::from(q.device())].push(x);
            }
        }
        t
    };
    ensure!(
        !tx[0].is_empty() && !tx[1].is_empty(),
        "the TAP queues cannot send"
    );
    let stop = AtomicBool::new(false);
    let cpu0 = super::measure::cpu_secs();
    let r = std::thread::scope(|s| {
        let mut per_device = [0usize; 2];
        for mut q in rx {
            let d = usize::from(q.device());
            let outs = &tx[1 - d];
            let out = Arc::clone(&outs[per_device[d] % outs.len()]);
            per_device[d] += 1;
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Relaxed) {
                    let polled = q.poll(std::time::Duration::from_millis(50), &mut |burst| {
                        for f in burst {
                            let _ = out.send(&f.meta.vnet, &[f.data]);
                        }
                    });
                    if polled.is_err() {
                        break;
                    }
                }
            });
        }
        let r = run_iperf(net, traffic, secs);
        stop.store(true, Relaxed);
        r
    })?;
    let cpu = super::measure::cpu_secs() - cpu0;
    Ok(figures(traffic, &r, Some(cpu)))
}

/// This process's resident set, in KiB.
fn rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn print(names: &[String], traffics: &[Traffic], rounds: &[Vec<Vec<Figures>>], args: &BenchArgs) {
    println!(
        "forwarding: iperf3 between two namespaces, {} rounds of {} s per variant, interleaved; medians. \
         bare = the same TAP devices with a forwarder that only moves bursts; veth = the hosts joined directly",
        args.repeats,
        args.seconds.ceil().max(1.0)
    );
    let mut t = crate::table(&[
        "traffic",
        "variant",
        "throughput",
        "x bare",
        "x veth",
        "retransmits",
        "CPU ns/KiB",
        "RSS growth MiB",
    ]);
    let mut json = Vec::new();
    for (ti, traffic) in traffics.iter().enumerate() {
        let med = |vi: usize| median(&rounds[ti][vi].iter().map(|f| f.rate).collect::<Vec<_>>());
        let bare = names.iter().position(|n| n == BARE).map(med).unwrap_or(0.0);
        let veth = names.iter().position(|n| n == VETH).map(med).unwrap_or(0.0);
        for (vi, name) in names.iter().enumerate() {
            let rs = &rounds[ti][vi];
            if rs.is_empty() {
                continue;
            }
            let rate = med(vi);
            let retrans = median(&rs.iter().map(|f| f.retransmits as f64).collect::<Vec<_>>());
            let cpu: Vec<f64> = rs.iter().filter_map(|f| f.cpu_ns_per_kib).collect();
            let ratio = |base: f64| {
                if base > 0.0 {
                    format!("{:.3}", rate / base)
                } else {
                    "-".into()
                }
            };
            t.add_row(vec![
                traffic.label().to_string(),
                name.clone(),
                match traffic {
                    Traffic::Tcp => format!("{rate:.2} Gbit/s"),
                    Traffic::SmallUdp => format!("{:.3} Mfps", rate / 1e6),
                },
                ratio(bare),
                ratio(veth),
                match traffic {
                    Traffic::Tcp => format!("{retrans:.0}"),
                    Traffic::SmallUdp => "-".into(),
                },
                if cpu.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0}", median(&cpu))
                },
                match rs.iter().filter_map(|f| f.rss_growth_mib).reduce(f64::max) {
                    Some(g) => format!("{g:.2}"),
                    None => "-".into(),
                },
            ]);
            json.push(serde_json::json!({
                "traffic": traffic.label(), "variant": name, "rate": rate,
                "of_bare": if bare > 0.0 { Some(rate / bare) } else { None },
                "of_veth": if veth > 0.0 { Some(rate / veth) } else { None },
                "retransmits": retrans, "rounds": rs,
            }));
        }
    }
    println!("{t}");
    if let Some(p) = &args.json {
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&json).unwrap_or_default()) {
            eprintln!("writing {}: {e}", p.display());
        }
    }
}
