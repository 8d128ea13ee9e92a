//! One timed round of `memplex bench`: the engine (or the bare or memcpy loop) on a
//! workload, with CPU time (less the traffic generator's) and peak RSS.

use super::variant::Variant;
use super::{BenchArgs, Round, Source, Workload};
use anyhow::Result;
use memplex::runtime::Engine;
use memplex::runtime::RunControl;
use memplex_testkit::net::{self as testnet, TestNet};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Placement-to-consumer latency percentiles of a consumer round, in ns.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub samples: u64,
}

/// Pins `pid` (`None`: this thread, and the threads it starts) to `cpu`; false when the
/// system refused or the machine has no such CPU.
fn pin(pid: Option<rustix::process::Pid>, cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(pid, &set).is_ok()
}

/// The CPU a consumer variant's host workers are pinned to, in every variant.
const HOST_CPU: usize = 0;

/// The CPU a consumer variant's consumer process is pinned to.
pub const CONSUMER_CPU: usize = 1;

/// How long the consumer's CPU is probed for stalls before a round that measures
/// latency.
const STALL_PROBE: Duration = Duration::from_millis(250);

/// How often the wake-up probe wakes the consumer's CPU: often enough for a few hundred
/// wake-ups a round, rarely enough that the thread is fully asleep by the next.
const WAKEUP_EVERY: Duration = Duration::from_micros(500);

fn cpus() -> usize {
    // Counted once, before any round pins this thread to the host's CPU (which would
    // leave it one to count).
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The consumer process of a consumer variant, connected to `socket` once it exists.
/// `host_ended` says whether the host side has stopped already (a config it refused,
/// say): then there is no socket to wait for.
fn start_consumer(
    socket: &std::path::Path,
    args: &BenchArgs,
    host_ended: impl Fn() -> bool,
) -> Result<Option<std::process::Child>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if host_ended() {
            return Ok(None);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer socket {} never appeared",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("consume")
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .arg("--mode")
        .arg(match args.consumer {
            Some(super::ConsumerMode::Verify) => "verify",
            Some(super::ConsumerMode::Checksum) => "checksum",
            _ => "count",
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if args.wake == super::WakeArg::BusyPoll {
        cmd.arg("--busy-poll");
    } else if args.spin_us > 0 {
        cmd.arg("--spin-us").arg(args.spin_us.to_string());
    }
    if matches!(
        args.consumer,
        Some(super::ConsumerMode::Count | super::ConsumerMode::Checksum)
    ) {
        cmd.arg("--no-metadata");
    }
    Ok(Some(cmd.spawn()?))
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
pub(super) fn cpu_secs() -> f64 {
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
pub fn round(
    engine: &Engine,
    bare: Option<bool>,
    variant: &Variant,
    t: &Workload,
    args: &BenchArgs,
    net: Option<&TestNet>,
    interrupted: &Arc<AtomicBool>,
) -> Result<Round> {
    // Consumer benchmarks pin the host's workers to CPU 0 in every variant, and the
    // consumer process to CPU 1, so each side has a core of its own.
    let pinning = args.consumer.is_some() && cpus() >= 2;
    // This thread too (it waits out the round in 10 ms sleeps): left to the scheduler,
    // each wake-up could land on the consumer's CPU and preempt it.
    if pinning {
        pin(None, HOST_CPU);
    }
    // Where latency is measured, what the machine takes from the consumer's CPU on its
    // own, just before the round (see `stalls`): before its clock, CPU time and device
    // start, so the probes take none of the round's time.
    let stalls = (pinning
        && variant.consumer.is_some()
        && matches!(
            args.consumer,
            Some(super::ConsumerMode::Meta | super::ConsumerMode::Verify)
        ))
    .then(|| super::stalls::probe(CONSUMER_CPU, STALL_PROBE))
    .flatten();
    // With eventfd wake-ups, how long the machine takes to wake a thread asleep there.
    let wakeups = stalls
        .as_ref()
        .filter(|_| args.wake == super::WakeArg::Eventfd)
        .and_then(|_| super::stalls::wakeups(HOST_CPU, CONSUMER_CPU, WAKEUP_EVERY, STALL_PROBE));
    let control = RunControl::default();
    let seconds = Duration::from_secs_f64(args.seconds);
    let rx = super::variant::open_queues(&variant.config, t, args, net)?;
    let tap_dropped = net
        .filter(|_| args.source == Source::Tap)
        .map(TestNet::tap_dropped);
    let peak_reset = reset_peak_rss();
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let stop = control.stop.clone();
    let mut consumer_child = None;
    let (outcome, sender_cpu) = std::thread::scope(|s| -> Result<_> {
        let reader = s.spawn(
            || -> Result<(u64, u64, u64, Option<memplex::stats::QueueStats>)> {
                if pinning {
                    pin(None, HOST_CPU);
                }
                if let Some(copy) = bare {
                    let c = crate::bare::bare_read(rx, &control.stop, copy);
                    Ok((c.frames, c.bytes, c.kernel_drops, None))
                } else {
                    let report = engine.run(rx, &control)?;
                    let t = report.total();
                    Ok((t.received.frames, t.received.bytes, 0, Some(t)))
                }
            },
        );
        if let Some(socket) = &variant.consumer {
            match start_consumer(socket, args, || reader.is_finished())? {
                Some(child) => {
                    if pinning {
                        pin(Some(rustix::process::Pid::from_child(&child)), CONSUMER_CPU);
                    }
                    consumer_child = Some(child);
                }
                // The host stopped before it listened: its error says why.
                None => {
                    reader
                        .join()
                        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
                    anyhow::bail!("memplex stopped before its consumer socket existed");
                }
            }
        }
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
    let mut secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_secs() - cpu0 - sender_cpu).max(0.0);
    let (mut frames, mut bytes, bare_drops, stats) = outcome;
    // A consumer round counts what the consumer read, and reports its latency.
    let (mut latency, mut cores, mut consumer_idle) = (None, None, None);
    if let Some(child) = consumer_child {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = text
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the consumer process gave no report: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        anyhow::ensure!(
            report["mismatched"].as_u64() == Some(0),
            "the consumer found frames that did not match: {report}"
        );
        frames = report["frames"].as_u64().unwrap_or(0);
        bytes = report["bytes"].as_u64().unwrap_or(0);
        // Over the consumer's own session: its start-up is not the path measured.
        if let Some(s) = report["elapsed_s"].as_f64().filter(|s| *s > 0.0) {
            secs = s;
        }
        latency = serde_json::from_value(report["latency_ns"].clone()).ok();
        consumer_idle = report["idle_spins"]
            .as_u64()
            .filter(|_| frames > 0 && args.wake == super::WakeArg::BusyPoll)
            .map(|idle| idle as f64 / frames as f64);
        cores = Some(if pinning {
            "host workers on CPU 0, consumer on CPU 1".to_string()
        } else {
            "unpinned (one CPU)".to_string()
        });
    }
    let mut drops = bare_drops
        + tap_dropped.map_or(0, |before| {
            net.map_or(0, TestNet::tap_dropped).saturating_sub(before)
        });
    let (mut hit_rate, mut providers) = (None, BTreeMap::new());
    let profile = stats
        .as_ref()
        .filter(|_| variant.config.runtime.profile)
        .map(|q| q.profile);
    if let Some(q) = stats {
        drops += q.device.kernel_drops + q.dropped.sum();
        let (fast, slow) = q.providers.iter().fold((0, 0), |(f, s), p| {
            (f + p.pool.alloc_fast, s + p.pool.alloc_slow)
        });
        hit_rate = (fast + slow > 0).then(|| fast as f64 / (fast + slow) as f64);
        providers = q
            .providers
            .iter()
            .map(|p| (p.name.clone(), p.placed.frames))
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
        latency,
        consumer_idle,
        cores,
        stalls,
        wakeups,
        profile,
    })
}
