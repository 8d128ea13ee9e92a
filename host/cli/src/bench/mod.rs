//! `memplex bench`: several configs (or one config with a setting varied) against the
//! same traffic, interleaved over repeats (A B A B ...), with a bare read loop on the same
//! device as the baseline of what the device delivers.
//!
//! Sources: generated frames replayed in memory (no system call per frame: the host's
//! own cost), a capture replayed at full speed or a given rate, generated frames sent
//! over a veth pair from another namespace with `sendmmsg` and read with AF_PACKET, or
//! the demo's TCP/UDP mix through a TAP with GSO super-frames.
//!
//! Per config and traffic it reports the median over repeats (and the spread) of frames
//! and bits per second, drops, CPU time per frame, peak RSS, pool hit rate and buffers
//! per provider, as ratios against a named baseline and as a fraction of the bare read.

//!
//! - `variant.rs`: the variants (typed configs) and workloads, and each round's queues;
//! - `measure.rs`: one timed round, CPU time and peak RSS;
//! - `report.rs`: medians and ratios as a table, Markdown, JSON and SVG.

mod forward;
mod measure;
mod report;
mod stalls;
mod variant;

use anyhow::{ensure, Context, Result};
use memplex::device::replay::Recorded;
use memplex::provider::PluginPath;
use memplex::runtime::Engine;
use memplex_testkit::net::{self as testnet, TestNet};
use memplex_testkit::traffic::Proto;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Where the frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Generated frames replayed from memory, no system call per frame.
    Memory,
    /// A capture file (--capture) replayed from memory, at full speed or --rate.
    Pcap,
    /// Generated frames sent over a veth pair from another namespace (sendmmsg) and read
    /// with an AF_PACKET TPACKET_V3 ring (root).
    Veth,
    /// The demo's mix (a TCP stream with 64 KiB GSO super-frames, UDP, IPv6, VXLAN)
    /// through a TAP device (root).
    Tap,
    /// memplex as a bump in the wire between two namespaces (a TAP each), iperf3 TCP and
    /// small UDP through it, beside a bare forwarder on the same devices and a plain veth
    /// pair, same run (root; configs with a second device, default configs/forward.toml).
    Forward,
}

/// `memplex bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Configs to compare (default: configs/default.toml's providers and routes).
    #[arg(value_name = "CONFIG")]
    pub configs: Vec<PathBuf>,
    /// Vary one setting: KEY=V1,V2,... makes one variant per value of each config, e.g.
    /// providers.payload.plugin=slab,slab.wasm.
    #[arg(long = "vary", value_name = "KEY=V1,V2,...")]
    pub vary: Option<String>,
    /// A fixed setting for every variant, KEY=VALUE; repeatable (e.g. device.queues=2).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The traffic source.
    #[arg(long, value_enum, default_value = "memory")]
    pub source: Source,
    /// The capture for --source pcap.
    #[arg(long)]
    pub capture: Option<PathBuf>,
    /// Frames per second for --source pcap and veth (default: as fast as possible).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub rate: Option<u64>,
    /// Frame sizes in bytes for generated traffic (memory, veth), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub frame_size: Vec<usize>,
    /// Flows in generated traffic (distinct source ports).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub flows: u16,
    /// Protocols in generated traffic: udp, tcp or mix.
    #[arg(long, default_value = "udp")]
    pub proto: Proto,
    /// Tag generated frames with this VLAN id.
    #[arg(long)]
    pub vlan: Option<u16>,
    /// Rounds of every variant, interleaved.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeats: u32,
    /// Seconds per round.
    #[arg(long, default_value_t = 1.0, value_parser = crate::seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// The variant ratios are taken against (a label as shown; default: the first).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Leave out the bare read loop.
    #[arg(long)]
    pub no_bare: bool,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also write every round and the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also plot frames per second per config and traffic to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also time each stage of the host's workers (device, split, route, place, count,
    /// deliver, sink, recycle, refill) on one burst in 16, and print ns per frame per
    /// stage beside what the rate says a frame took.
    #[arg(long)]
    pub profile: bool,
    /// Also run each config delivering every frame to a consumer process (`memplex
    /// consume`) that counts frames, verifies or checksums every byte, beside the
    /// in-process sink doing the same (`count`, `verify` or `checksum`), interleaved;
    /// with latency percentiles where the consumer reads metadata.
    #[arg(long, value_enum)]
    pub consumer: Option<ConsumerMode>,
    /// How the consumer waits: busy-poll (default) or eventfd.
    #[arg(long, value_enum, default_value = "busy-poll")]
    pub wake: WakeArg,
    /// With `--wake eventfd`: the consumer polls its rings this many microseconds once
    /// they are empty before it sleeps (`memplex consume --spin-us`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub spin_us: u64,
    /// With --source forward: iperf3 TCP, small UDP, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub forward_traffic: ForwardTraffic,
}

/// `--forward-traffic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardTraffic {
    /// iperf3 TCP from A to B.
    Tcp,
    /// iperf3 UDP in 64-byte datagrams, as fast as the sender goes.
    Udp,
    /// Both.
    Both,
}

/// What the consumer process does with each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerMode {
    /// Count frames from their descriptors, with no metadata ring (the latency column
    /// stays empty); the in-process sink is `count`.
    Count,
    /// Count frames and read each one's metadata (sequence, route, flow, receive time:
    /// the latency percentiles); the in-process sink is `count`.
    Meta,
    /// Read every byte (a CRC-32 checked against the entry's); the in-process sink is
    /// `verify`, which also reads every placed byte. memplex computes each frame's
    /// CRC-32 for the entry, so the host does more here than in-process.
    Verify,
    /// Read every byte for a CRC-32 per frame, with no metadata ring; the in-process
    /// sink is `checksum`, which does the same on the worker. Both sides touch all the
    /// data and nothing else.
    Checksum,
}

/// `--wake`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeArg {
    /// The consumer spins on its rings.
    BusyPoll,
    /// The consumer sleeps on eventfds; memplex writes one per batch when it sleeps.
    Eventfd,
}

const DEFAULT: &str = include_str!("../../../../configs/default.toml");
/// The bare read loop's label.
const BARE: &str = "bare";
/// The read loop that also copies every frame into a ring of plain memory: what one
/// copy per byte costs with no split, pools or providers.
const MEMCPY: &str = "memcpy";

/// One traffic workload.
pub struct Workload {
    label: String,
    /// Frames to replay from memory (memory, pcap) or to send (veth).
    frames: Arc<[Recorded]>,
}

/// One timed round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    traffic: String,
    variant: String,
    repeat: u32,
    frames: u64,
    bytes: u64,
    secs: f64,
    /// Frames lost: dropped by memplex (no buffer, fault, no route) or by the kernel.
    drops: u64,
    cpu_secs: f64,
    /// None where the peak could not be reset for the round (it would be the process's).
    peak_rss_bytes: Option<u64>,
    /// Pool allocations served from the cache, as a fraction of all allocations.
    hit_rate: Option<f64>,
    /// Buffers each provider supplied.
    providers: BTreeMap<String, u64>,
    /// For a consumer variant: placement-to-consumer latency percentiles, in ns.
    latency: Option<measure::Latency>,
    /// For a busy-polling consumer: turns that found no frame, per frame read (near 0,
    /// the consumer never waited on the host: it was the slower side).
    consumer_idle: Option<f64>,
    /// Where the host's workers and the consumer ran, for a consumer variant.
    cores: Option<String>,
    /// For a consumer variant that measures latency: the consumer's CPU probed alone,
    /// just before the round.
    #[serde(skip)]
    stalls: Option<stalls::Sample>,
    /// With eventfd wake-ups, also the delays (ns, sorted) of waking a thread asleep on
    /// the consumer's CPU, just before the round.
    #[serde(skip)]
    wakeups: Option<Vec<u64>>,
    /// With --profile: the host's time per stage, summed over the bursts measured.
    #[serde(skip)]
    profile: Option<memplex::stats::StageTimes>,
}

/// Runs the benchmark; the exit code.
pub fn bench(path: &PluginPath, args: &BenchArgs) -> Result<i32> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be above 0 and at most 3600, not {}",
        args.seconds
    );
    ensure!(
        args.spin_us == 0 || (args.consumer.is_some() && args.wake == WakeArg::Eventfd),
        "--spin-us is how long an eventfd consumer polls before it sleeps: it goes with --consumer and --wake eventfd"
    );
    if args.source == Source::Forward {
        return forward::bench(path, args);
    }
    let variants = variant::variants(args)?;
    let workloads = variant::workloads(args)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    crate::signal::stop_on_signal_thread(interrupted.clone())?;
    let net = match args.source {
        Source::Veth | Source::Tap => {
            ensure!(
                testnet::privileged(),
                "--source {:?} needs root: it builds two network namespaces (use --source memory or pcap without root)",
                args.source
            );
            TestNet::sweep_stale();
            let queues = variants
                .iter()
                .map(|v| v.config.device.queues)
                .max()
                .unwrap_or(1);
            Some(TestNet::create(queues).context("building the benchmark network")?)
        }
        _ => None,
    };
    let mut labels: Vec<&str> = variants.iter().map(|v| v.label.as_str()).collect();
    if !args.no_bare {
        labels.extend([MEMCPY, BARE]);
    }
    if let Some(b) = &args.baseline {
        ensure!(
            labels.contains(&b.as_str()),
            "--baseline `{b}` is not one of the variants: {}",
            labels.join(", ")
        );
    }
    let total = (workloads.len() * labels.len()) as u64 * u64::from(args.repeats);
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} rounds, {elapsed} of ~{duration} {msg}",
        )
        .expect("a valid template"),
    );
    let mut rounds = Vec::new();
    let engines = variants
        .iter()
        .map(|v| {
            Engine::new(v.config.clone(), path)
                .with_context(|| format!("loading the providers of `{}`", v.label))
        })
        .collect::<Result<Vec<_>>>()?;
    'all: for t in &workloads {
        for repeat in 0..args.repeats {
            for (i, label) in labels.iter().enumerate() {
                if interrupted.load(Relaxed) {
                    break 'all;
                }
                bar.set_message(format!("{} {label}", t.label));
                // The bare and memcpy loops read the first variant's device.
                let (engine, variant) = match engines.get(i) {
                    Some(e) => (e, &variants[i]),
                    None => (&engines[0], &variants[0]),
                };
                let bare = match *label {
                    BARE => Some(false),
                    MEMCPY => Some(true),
                    _ => None,
                };
                let r = measure::round(engine, bare, variant, t, args, net.as_ref(), &interrupted)
                    .with_context(|| format!("round {} of `{label}` on {}", repeat + 1, t.label))?;
                rounds.push(Round {
                    traffic: t.label.clone(),
                    variant: label.to_string(),
                    repeat,
                    ..r
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    drop(net);
    if interrupted.load(Relaxed) {
        eprintln!("interrupted: {} of {total} rounds measured", rounds.len());
    }
    ensure!(!rounds.is_empty(), "no round finished");
    let baseline = args
        .baseline
        .clone()
        .unwrap_or_else(|| labels[0].to_string());
    // The bare and memcpy loops read the first variant's device, with its queues: a
    // variant with another number of queues gets no ratio to them.
    let queues = variants[0].config.device.queues;
    let other_queues: Vec<&str> = variants
        .iter()
        .filter(|v| v.config.device.queues != queues)
        .map(|v| v.label.as_str())
        .collect();
    let summaries = report::summarise(&rounds, &workloads, &labels, &baseline, &other_queues);
    let header = format!(
        "{} source, {} round{} of {} s per variant, interleaved; medians (spread = (max - min) / median); ratios against `{baseline}`",
        format!("{:?}", args.source).to_lowercase(),
        args.repeats,
        if args.repeats == 1 { "" } else { "s" },
        args.seconds,
    );
    println!("{header}");
    if !args.no_bare && !other_queues.is_empty() {
        println!(
            "the bare and memcpy loops read {queues} queue{} as `{}` does; {} read{} another number, so `of bare` and `of memcpy` are left out for {}",
            if queues == 1 { "" } else { "s" },
            variants[0].label,
            other_queues.join(", "),
            if other_queues.len() == 1 { "s" } else { "" },
            if other_queues.len() == 1 { "it" } else { "them" },
        );
    }
    if let Some(cores) = rounds.iter().find_map(|r| r.cores.as_deref()) {
        println!("consumer variants: {cores}; frames counted as the consumer read them; idle/frame: the consumer's busy-poll turns that found nothing, per frame it read (near 0: the consumer never waited, it was the slower side)");
    }
    println!("{}", report::table(&summaries));
    for s in &summaries {
        for line in s.machine_lines() {
            println!("{line}");
        }
    }
    if args.profile {
        println!(
            "per-stage breakdown (--profile): ns per frame, one burst in {} timed, clock reads taken off; `measured` is 1 / the median pps",
            memplex::stats::PROFILE_EVERY
        );
        println!("{}", report::profile_table(&summaries));
    }
    if let Some(p) = &args.markdown {
        std::fs::write(p, format!("{header}\n\n{}", report::markdown(&summaries)))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let doc = serde_json::json!({
            "source": args.source,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "baseline": baseline,
            "summary": summaries,
            "rounds": rounds,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        report::plot(p, &summaries, &workloads, &labels)
            .with_context(|| format!("plotting to {}", p.display()))?;
    }
    Ok(if interrupted.load(Relaxed) { 130 } else { 0 })
}
