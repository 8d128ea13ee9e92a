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

use anyhow::{bail, ensure, Context, Result};
use comfy_table::Cell;
use memplex::config::Config;
use memplex::device::RxQueue;
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex::testnet::{self, TestNet};
use memplex::traffic::{self, Proto, Shape};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    #[arg(long)]
    pub rate: Option<u64>,
    /// Frame sizes in bytes for generated traffic (memory, veth), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub frame_size: Vec<usize>,
    /// Flows in generated traffic (distinct source ports).
    #[arg(long, default_value_t = 64)]
    pub flows: u16,
    /// Protocols in generated traffic: udp, tcp or mix.
    #[arg(long, default_value = "udp")]
    pub proto: Proto,
    /// Tag generated frames with this VLAN id.
    #[arg(long)]
    pub vlan: Option<u16>,
    /// Rounds of every variant, interleaved.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 1.0)]
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
}

const DEFAULT: &str = include_str!("../../../../configs/default.toml");
/// The bare read loop's label.
const BARE: &str = "bare";
/// The read loop that also copies every frame into a ring of plain memory: what one
/// copy per byte costs with no split, pools or providers.
const MEMCPY: &str = "memcpy";

/// One config variant: where it came from and the overrides that make it.
struct Variant {
    label: String,
    text: String,
    origin: String,
    base: Option<PathBuf>,
    overrides: Vec<(String, String)>,
}

/// One traffic workload.
struct Traffic {
    label: String,
    /// Frames to send (veth) or the capture to replay (memory, pcap).
    frames: Vec<Vec<u8>>,
    capture: Option<PathBuf>,
}

/// One timed round.
#[derive(Debug, Clone, Serialize)]
struct Round {
    traffic: String,
    variant: String,
    repeat: usize,
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
}

/// Median and spread of one variant on one traffic.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    traffic: String,
    variant: String,
    rounds: usize,
    pps: f64,
    pps_min: f64,
    pps_max: f64,
    gbps: f64,
    drops: u64,
    cpu_ns_per_frame: Option<f64>,
    peak_rss_mib: Option<f64>,
    hit_rate: Option<f64>,
    providers: BTreeMap<String, u64>,
    /// pps / the baseline's pps, same traffic.
    vs_baseline: Option<f64>,
    /// pps / the bare read loop's pps, same traffic.
    of_bare: Option<f64>,
    /// pps / the read-and-copy loop's pps, same traffic.
    of_memcpy: Option<f64>,
}

/// Runs the benchmark; the exit code.
pub fn bench(path: &PluginPath, args: &BenchArgs) -> Result<i32> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be above 0 and at most 3600, not {}",
        args.seconds
    );
    let variants = variants(args)?;
    let traffics = traffics(args)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    crate::netdemo::stop_on_signal(interrupted.clone())?;
    let net = match args.source {
        Source::Veth | Source::Tap => {
            ensure!(
                testnet::privileged(),
                "--source {:?} needs root: it builds two network namespaces (use --source memory or pcap without root)",
                args.source
            );
            TestNet::sweep_stale();
            let queues = queues(&variants)?;
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
    let total = (traffics.len() * labels.len() * args.repeats) as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} rounds, {elapsed} of ~{duration} {msg}",
        )
        .expect("a valid template"),
    );
    let mut rounds = Vec::new();
    'all: for t in &traffics {
        // Every variant's config, with its device pointed at this traffic.
        let engines = variants
            .iter()
            .map(|v| {
                let config = load(v, args, net.as_ref(), Some(t))?;
                Engine::new(config, path)
                    .with_context(|| format!("loading the providers of `{}`", v.label))
            })
            .collect::<Result<Vec<_>>>()?;
        for repeat in 0..args.repeats {
            for (i, label) in labels.iter().enumerate() {
                if interrupted.load(Relaxed) {
                    break 'all;
                }
                bar.set_message(format!("{} {label}", t.label));
                let engine = engines.get(i).unwrap_or(&engines[0]);
                let bare = match *label {
                    BARE => Some(false),
                    MEMCPY => Some(true),
                    _ => None,
                };
                let r = round(engine, bare, t, args, net.as_ref(), &interrupted)
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
    let summaries = summarise(&rounds, &traffics, &labels, &baseline);
    let header = format!(
        "{} source, {} round{} of {} s per variant, interleaved; medians (spread = (max - min) / median); ratios against `{baseline}`",
        format!("{:?}", args.source).to_lowercase(),
        args.repeats,
        if args.repeats == 1 { "" } else { "s" },
        args.seconds,
    );
    println!("{header}");
    println!("{}", table(&summaries));
    if let Some(p) = &args.markdown {
        std::fs::write(p, format!("{header}\n\n{}", markdown(&summaries)))
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
        plot(p, &summaries, &traffics, &labels)
            .with_context(|| format!("plotting to {}", p.display()))?;
    }
    Ok(if interrupted.load(Relaxed) { 130 } else { 0 })
}

/// The most receive queues any variant asks for (the network is built for that many).
fn queues(variants: &[Variant]) -> Result<u16> {
    let mut most = 1;
    for v in variants {
        let env = v.overrides.iter().cloned().collect();
        let c = Config::from_toml(&v.text, &v.origin, env, v.base.as_deref())
            .with_context(|| format!("config of `{}`", v.label))?;
        most = most.max(c.device.queues);
    }
    Ok(most)
}

/// `KEY=VALUE` as a `MEMPLEX_A__B` override.
fn env_key(key: &str) -> String {
    format!("MEMPLEX_{}", key.to_uppercase().replace('.', "__"))
}

fn variants(args: &BenchArgs) -> Result<Vec<Variant>> {
    let mut bases = Vec::new();
    if args.configs.is_empty() {
        bases.push((
            "default".to_string(),
            DEFAULT.to_string(),
            "configs/default.toml (built in)".to_string(),
            None,
        ));
    }
    for c in &args.configs {
        let text =
            std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
        let stem = c.file_stem().map_or_else(
            || c.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        bases.push((
            stem,
            text,
            c.display().to_string(),
            c.parent().map(Path::to_path_buf),
        ));
    }
    let mut fixed = Vec::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set `{s}` is not KEY=VALUE");
        };
        fixed.push((env_key(k.trim()), v.trim().to_string()));
    }
    let vary: Vec<(String, String)> = match &args.vary {
        None => vec![],
        Some(s) => {
            let Some((k, vs)) = s.split_once('=') else {
                bail!("--vary `{s}` is not KEY=V1,V2,...");
            };
            let values: Vec<&str> = vs
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            ensure!(!values.is_empty(), "--vary `{s}` names no values");
            values
                .into_iter()
                .map(|v| (env_key(k.trim()), v.to_string()))
                .collect()
        }
    };
    let mut out = Vec::new();
    for (stem, text, origin, base) in bases {
        let one = args.configs.len() <= 1;
        if vary.is_empty() {
            out.push(Variant {
                label: stem,
                text,
                origin,
                base,
                overrides: fixed.clone(),
            });
            continue;
        }
        for (k, v) in &vary {
            let mut overrides = fixed.clone();
            overrides.push((k.clone(), v.clone()));
            out.push(Variant {
                label: if one {
                    v.clone()
                } else {
                    format!("{stem} {v}")
                },
                text: text.clone(),
                origin: origin.clone(),
                base: base.clone(),
                overrides,
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in &out {
        ensure!(
            v.label != BARE && v.label != MEMCPY,
            "a variant may not be called `{}`: that name is the baseline loop's",
            v.label
        );
        ensure!(
            seen.insert(v.label.clone()),
            "two variants are both called `{}`; give the configs different file names",
            v.label
        );
    }
    Ok(out)
}

fn traffics(args: &BenchArgs) -> Result<Vec<Traffic>> {
    let dir = std::env::temp_dir().join(format!("memplex-bench-{}", std::process::id()));
    match args.source {
        Source::Pcap => {
            let Some(c) = &args.capture else {
                bail!("--source pcap needs --capture FILE");
            };
            let n = memplex::device::pcap::read_frames(c)
                .with_context(|| format!("reading {}", c.display()))?
                .len();
            ensure!(n > 0, "{} holds no frames", c.display());
            let name = c.file_name().map_or_else(
                || c.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            );
            Ok(vec![Traffic {
                label: match args.rate {
                    Some(r) => format!("{name} at {r} fps"),
                    None => name,
                },
                frames: vec![],
                // Absolute: a config's relative paths are taken from its own directory.
                capture: Some(
                    std::path::absolute(c).with_context(|| format!("resolving {}", c.display()))?,
                ),
            }])
        }
        Source::Tap => Ok(vec![Traffic {
            label: "TAP GSO mix".into(),
            frames: vec![],
            capture: None,
        }]),
        Source::Memory | Source::Veth => {
            ensure!(args.capture.is_none(), "--capture goes with --source pcap");
            let mut out = Vec::new();
            for &size in &args.frame_size {
                let frames = traffic::generate(Shape {
                    frame_size: size,
                    flows: args.flows,
                    proto: args.proto,
                    vlan: args.vlan,
                })
                .map_err(|e| anyhow::anyhow!("--frame-size/--flows/--vlan: {e}"))?;
                let capture = if args.source == Source::Memory {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let p = dir.join(format!("{size}.pcap"));
                    traffic::write_pcap(&p, &frames)
                        .with_context(|| format!("writing {}", p.display()))?;
                    Some(p)
                } else {
                    None
                };
                out.push(Traffic {
                    label: format!(
                        "{size} B {}{}",
                        format!("{:?}", args.proto).to_lowercase(),
                        args.vlan.map_or(String::new(), |v| format!(" vlan {v}"))
                    ),
                    frames,
                    capture,
                });
            }
            Ok(out)
        }
    }
}

/// The variant's config with the source's device in place of its own.
fn load(
    v: &Variant,
    args: &BenchArgs,
    net: Option<&TestNet>,
    t: Option<&Traffic>,
) -> Result<Config> {
    let mut env: Vec<(String, String)> = v.overrides.clone();
    let mut dev = |k: &str, val: String| env.push((format!("MEMPLEX_DEVICE__{k}"), val));
    match args.source {
        Source::Memory | Source::Pcap => {
            dev("KIND", "pcap".into());
            let capture = t
                .and_then(|t| t.capture.clone())
                .or_else(|| args.capture.clone());
            dev("PATH", capture.context("no capture")?.display().to_string());
            dev("REPEAT", u32::MAX.to_string());
            if let Some(r) = args.rate.filter(|_| args.source == Source::Pcap) {
                dev("RATE", r.to_string());
            }
        }
        Source::Veth => {
            dev("KIND", "af_packet".into());
            dev("INTERFACE", "vb".into());
        }
        Source::Tap => {
            dev("KIND", "tap".into());
            dev("GSO", "true".into());
            dev("INTERFACE", net.context("no network")?.tap.clone());
        }
    }
    env.push(("MEMPLEX_RUNTIME__SINK".into(), "count".into()));
    let env = env.into_iter().collect();
    Config::from_toml(&v.text, &v.origin, env, v.base.as_deref())
        .with_context(|| format!("config of `{}`", v.label))
}

/// CPU seconds (user + system) from a `/proc/.../stat` file.
fn stat_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces and parentheses); the state
    // letter comes first, so utime and stime (fields 14 and 15) are at 11 and 12 here.
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // In clock ticks: USER_HZ, which is 100 on Linux.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU seconds this process has used.
fn cpu_secs() -> f64 {
    stat_cpu_secs("/proc/self/stat")
}

/// CPU seconds this thread has used.
fn thread_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/thread-self/stat")
}

/// Resets the peak RSS (`echo 5 > /proc/self/clear_refs`); false where not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak RSS since the last reset, from /proc/self/status (VmHWM).
fn peak_rss() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
}

/// One timed round of `engine`, or with `bare` of the bare loop on its device (copying
/// each frame when `Some(true)`).
fn round(
    engine: &Engine,
    bare: Option<bool>,
    t: &Traffic,
    args: &BenchArgs,
    net: Option<&TestNet>,
    interrupted: &Arc<AtomicBool>,
) -> Result<Round> {
    let control = RunControl::default();
    let seconds = Duration::from_secs_f64(args.seconds);
    let rx_ns = net.map(|n| {
        if args.source == Source::Tap {
            n.ns_a.clone()
        } else {
            n.ns_b.clone()
        }
    });
    let rx = match &rx_ns {
        Some(ns) => TestNet::in_ns(ns, || engine.open_device())??,
        None => engine.open_device()?,
    };
    let tap_dropped = net
        .filter(|_| args.source == Source::Tap)
        .map(TestNet::tap_dropped);
    let peak_reset = reset_peak_rss();
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let stop = control.stop.clone();
    let (outcome, sender_cpu) = std::thread::scope(|s| -> Result<_> {
        let reader = s.spawn(
            || -> Result<(u64, u64, u64, Option<memplex::runtime::QueueStats>)> {
                if let Some(copy) = bare {
                    let c = bare_read(rx, &control.stop, copy);
                    Ok((c.frames, c.bytes, c.kernel_drops, None))
                } else {
                    let report = engine.run(rx, &control)?;
                    let t = report.total();
                    Ok((t.received.frames, t.received.bytes, 0, Some(t)))
                }
            },
        );
        let deadline = start + seconds;
        let sender_cpu = match (args.source, net) {
            (Source::Veth, Some(n)) => {
                let frames = &t.frames;
                let rate = args.rate;
                let stop = &*interrupted;
                TestNet::in_ns(&n.ns_a, move || -> Result<f64> {
                    let c0 = thread_cpu_secs();
                    testnet::blast(&n.veth_a, frames, deadline, rate, stop)?;
                    Ok(thread_cpu_secs() - c0)
                })??
            }
            (Source::Tap, Some(n)) => {
                let mut cpu = 0.0;
                while Instant::now() < deadline && !interrupted.load(Relaxed) {
                    let c0 = thread_cpu_secs();
                    n.send_mix(16 << 20, interrupted)?;
                    cpu += thread_cpu_secs() - c0;
                }
                cpu
            }
            _ => {
                while Instant::now() < deadline && !interrupted.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                0.0
            }
        };
        if net.is_some() {
            // Let the reader drain what is in flight.
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Relaxed);
        let out = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
        Ok((out, sender_cpu))
    })?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_secs() - cpu0 - sender_cpu).max(0.0);
    let (frames, bytes, bare_drops, stats) = outcome;
    let mut drops = bare_drops
        + tap_dropped.map_or(0, |before| {
            net.map_or(0, TestNet::tap_dropped).saturating_sub(before)
        });
    let (mut hit_rate, mut providers) = (None, BTreeMap::new());
    if let Some(q) = stats {
        drops += q.device.kernel_drops + q.dropped.values().sum::<u64>();
        let (fast, slow) = q.providers.iter().fold((0, 0), |(f, s), p| {
            (f + p.pool.alloc_fast, s + p.pool.alloc_slow)
        });
        hit_rate = (fast + slow > 0).then(|| fast as f64 / (fast + slow) as f64);
        providers = q
            .providers
            .iter()
            .map(|p| (p.name.clone(), p.buffers))
            .collect();
    }
    Ok(Round {
        traffic: String::new(),
        variant: String::new(),
        repeat: 0,
        frames,
        bytes,
        secs,
        drops,
        cpu_secs: cpu,
        peak_rss_bytes: peak_rss().filter(|_| peak_reset),
        hit_rate,
        providers,
    })
}

/// What the bare read loop counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct BareCounts {
    pub frames: u64,
    pub bytes: u64,
    pub gso_frames: u64,
    pub kernel_drops: u64,
}

/// Reads every queue on its own thread, counting only, until `stop` (or the source ends).
/// With `copy`, each frame is also copied into a 2 MiB ring of plain memory per queue
/// (about what the pools hold), 64-byte aligned: the memcpy baseline.
pub fn bare_read(rx: Vec<Box<dyn RxQueue>>, stop: &AtomicBool, copy: bool) -> BareCounts {
    std::thread::scope(|s| {
        let hs: Vec<_> = rx
            .into_iter()
            .map(|mut q| {
                s.spawn(move || {
                    let mut c = BareCounts::default();
                    let mut ring = if copy { vec![0u8; 2 << 20] } else { Vec::new() };
                    let mut at = 0;
                    while !stop.load(Relaxed) {
                        let r = q.poll(64, Duration::from_millis(50), &mut |f| {
                            c.frames += 1;
                            c.bytes += f.len() as u64;
                            if copy {
                                if at + f.len() > ring.len() {
                                    at = 0;
                                }
                                if let Some(dst) = ring.get_mut(at..at + f.len()) {
                                    dst.copy_from_slice(f);
                                }
                                at += f.len().next_multiple_of(64);
                            }
                        });
                        std::hint::black_box(&mut ring);
                        if !matches!(
                            r,
                            Ok(memplex::device::Poll::Frames(_) | memplex::device::Poll::Idle)
                        ) {
                            break;
                        }
                    }
                    c.gso_frames = q.stats().gso_frames;
                    c.kernel_drops = q.kernel_drops();
                    c
                })
            })
            .collect();
        hs.into_iter()
            .filter_map(|h| h.join().ok())
            .fold(BareCounts::default(), |a, b| BareCounts {
                frames: a.frames + b.frames,
                bytes: a.bytes + b.bytes,
                gso_frames: a.gso_frames + b.gso_frames,
                kernel_drops: a.kernel_drops + b.kernel_drops,
            })
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summarise(
    rounds: &[Round],
    traffics: &[Traffic],
    labels: &[&str],
    baseline: &str,
) -> Vec<Summary> {
    let mut out = Vec::new();
    for t in traffics {
        let of = |label: &str| {
            rounds
                .iter()
                .filter(|r| r.traffic == t.label && r.variant == label)
                .collect::<Vec<_>>()
        };
        let pps_of = |label: &str| {
            let rs = of(label);
            (!rs.is_empty()).then(|| median(rs.iter().map(|r| r.frames as f64 / r.secs).collect()))
        };
        let (base, bare, memcpy) = (pps_of(baseline), pps_of(BARE), pps_of(MEMCPY));
        for label in labels {
            let rs = of(label);
            if rs.is_empty() {
                continue;
            }
            let pps: Vec<f64> = rs.iter().map(|r| r.frames as f64 / r.secs).collect();
            let m = median(pps.clone());
            let frames: u64 = rs.iter().map(|r| r.frames).sum();
            let cpu: f64 = rs.iter().map(|r| r.cpu_secs).sum();
            let mut names: Vec<&String> = rs.iter().flat_map(|r| r.providers.keys()).collect();
            names.dedup();
            out.push(Summary {
                traffic: t.label.clone(),
                variant: label.to_string(),
                rounds: rs.len(),
                pps: m,
                pps_min: pps.iter().copied().fold(f64::INFINITY, f64::min),
                pps_max: pps.iter().copied().fold(0.0, f64::max),
                gbps: median(
                    rs.iter()
                        .map(|r| r.bytes as f64 * 8.0 / r.secs / 1e9)
                        .collect(),
                ),
                drops: median(rs.iter().map(|r| r.drops as f64).collect()) as u64,
                cpu_ns_per_frame: (frames > 0 && cpu > 0.0).then(|| cpu * 1e9 / frames as f64),
                peak_rss_mib: rs
                    .iter()
                    .map(|r| r.peak_rss_bytes.map(|b| b as f64 / f64::from(1 << 20)))
                    .collect::<Option<Vec<f64>>>()
                    .map(median),
                hit_rate: rs.iter().filter_map(|r| r.hit_rate).reduce(f64::min),
                providers: names
                    .into_iter()
                    .map(|n| {
                        (
                            n.clone(),
                            median(
                                rs.iter()
                                    .map(|r| r.providers.get(n).copied().unwrap_or(0) as f64)
                                    .collect(),
                            ) as u64,
                        )
                    })
                    .collect(),
                vs_baseline: base.map(|b| m / b),
                of_bare: bare.map(|b| m / b),
                of_memcpy: memcpy.map(|b| m / b),
            });
        }
    }
    out
}

fn rows(s: &[Summary]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "traffic",
        "config",
        "Mpps",
        "spread",
        "Gbit/s",
        "x baseline",
        "of bare",
        "of memcpy",
        "drops",
        "CPU ns/frame",
        "peak RSS MiB",
        "pool hit rate",
        "buffers per provider",
    ];
    let rows = s
        .iter()
        .map(|s| {
            vec![
                s.traffic.clone(),
                s.variant.clone(),
                format!("{:.3}", s.pps / 1e6),
                format!("{:.1}%", (s.pps_max - s.pps_min) / s.pps * 100.0),
                format!("{:.2}", s.gbps),
                s.vs_baseline.map_or("-".into(), |r| format!("{r:.3}")),
                s.of_bare.map_or("-".into(), |r| format!("{r:.3}")),
                s.of_memcpy.map_or("-".into(), |r| format!("{r:.3}")),
                s.drops.to_string(),
                s.cpu_ns_per_frame.map_or("-".into(), |c| format!("{c:.0}")),
                s.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
                s.hit_rate
                    .map_or("-".into(), |h| format!("{:.2}%", h * 100.0)),
                s.providers
                    .iter()
                    .map(|(n, b)| format!("{n} {b}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    (header, rows)
}

fn table(s: &[Summary]) -> comfy_table::Table {
    let (header, rows) = rows(s);
    let mut t = crate::table(&header);
    for r in rows {
        t.add_row(r.into_iter().map(Cell::new));
    }
    t
}

fn markdown(s: &[Summary]) -> String {
    let (header, rows) = rows(s);
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// Grouped bars: frames per second per config, one group per traffic.
fn plot(path: &Path, s: &[Summary], traffics: &[Traffic], labels: &[&str]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = s.iter().map(|s| s.pps_max).fold(0.0, f64::max) / 1e6 * 1.15;
    let groups = traffics.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "memplex bench: frames per second (median, bar = min..max)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups as f64, 0.0..top.max(1e-3))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            traffics.get(i).map_or(String::new(), |t| t.label.clone())
        })
        .y_desc("Mpps")
        .draw()?;
    let width = 0.8 / labels.len() as f64;
    for (k, label) in labels.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars: Vec<_> = s
            .iter()
            .filter(|s| s.variant == *label)
            .filter_map(|s| {
                let g = traffics.iter().position(|t| t.label == s.traffic)? as f64;
                let x0 = g + 0.1 + width * k as f64;
                Some((x0, s))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|(x0, s)| {
                Rectangle::new(
                    [(*x0, 0.0), (x0 + width * 0.9, s.pps / 1e6)],
                    color.filled(),
                )
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(bars.iter().map(|(x0, s)| {
            let mid = x0 + width * 0.45;
            PathElement::new(
                vec![(mid, s.pps_min / 1e6), (mid, s.pps_max / 1e6)],
                BLACK.stroke_width(2),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
