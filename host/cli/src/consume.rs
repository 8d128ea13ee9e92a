//! `memplex consume`: the reference consumer process. It connects to a running memplex's
//! consumer socket, reads every frame in place and counts it, verifies it against the
//! checksum memplex put in its entry, checksums all its bytes, or writes it to a pcap.
//! `--hold` and `--delay` make it a slow consumer, for tests and benchmarks. `--forward`
//! makes it an inline middlebox: each frame's verdict is "forward" (sent back out
//! through the transmit ring, from the buffers it is in) or, every `--drop-every`th
//! frame, "drop".

use anyhow::{bail, Context, Result};
use memplex_consumer::{Consumer, Error, Frame, Options};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to do with each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Count frames and bytes (reads the descriptors and metadata, not the bytes).
    Count,
    /// Check every frame's bytes against the CRC-32 in its entry (needs `checksum =
    /// true` in the consumer's config); exits 1 on a mismatch.
    Verify,
    /// Read every byte of every frame, in place, for a CRC-32 per frame, summed into a
    /// digest (as the in-process `checksum` sink does): an application that touches
    /// all of its data. Needs no checksum from memplex, and no metadata.
    Checksum,
    /// Write every frame to a pcap file (`--out`), with its capture timestamp.
    Pcap,
}

/// `memplex consume` options.
#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// The consumer socket memplex listens on (`socket` in `[consumers.NAME]`).
    #[arg(long)]
    socket: PathBuf,
    /// The consumer's name in memplex's config (default: whichever the socket serves).
    #[arg(long, default_value = "")]
    name: String,
    /// What to do with each frame.
    #[arg(long, value_enum, default_value = "count")]
    mode: Mode,
    /// The pcap file for `--mode pcap`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Spin on the rings instead of sleeping on eventfds.
    #[arg(long)]
    busy_poll: bool,
    /// With eventfd wake-ups: keep polling the rings for this many microseconds once
    /// they are empty before sleeping (a frame within it needs no wake-up).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000), conflicts_with = "busy_poll")]
    spin_us: u64,
    /// Ask memplex for no metadata ring: frames are counted from their descriptors
    /// alone, and the report has no latency, routes, flows or sequence gaps (`--mode
    /// count` or `checksum` only). memplex then writes 16 bytes per part and nothing else per frame.
    #[arg(long)]
    no_metadata: bool,
    /// Keep this many frames (and their buffers) before giving the oldest back: a
    /// consumer that sits on its buffers.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    hold: u32,
    /// Sleep this many microseconds per frame: a slow consumer.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    delay_us: u64,
    /// Stop after this many frames (0: until memplex stops or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Read and give back, but leave out of the report, the frames of the first this
    /// many seconds (a warm-up: sessions joining, caches filling).
    #[arg(long, default_value_t = 0.0, value_parser = crate::seconds_or_zero, allow_negative_numbers = true)]
    warmup: f64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0.0, value_parser = crate::seconds_or_zero, allow_negative_numbers = true)]
    seconds: f64,
    /// Wait up to this many seconds for memplex's socket to appear and answer, for a
    /// consumer started before (or with) `memplex run` (0: try once).
    #[arg(long, default_value_t = 0.0, value_parser = crate::seconds_or_zero, allow_negative_numbers = true)]
    wait: f64,
    /// Be an inline middlebox: send every frame back out through the session's
    /// transmit ring (the consumer's config names the device in `transmit`).
    #[arg(long)]
    forward: bool,
    /// With --forward: drop every Nth frame instead (its verdict "drop").
    #[arg(long, requires = "forward", value_parser = clap::value_parser!(u64).range(1..))]
    drop_every: Option<u64>,
    /// Give buffers back this many at a time (memplex lowers it to half the session's
    /// quota; they also go back whenever a poll finds nothing to read).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What the consumer saw.
#[derive(Debug, Default, Serialize)]
struct Report {
    session: u64,
    /// Buffers given back per refill batch, as the session has it (`--batch`, at most
    /// half the quota).
    batch: usize,
    frames: u64,
    bytes: u64,
    verified: u64,
    mismatched: u64,
    /// Frames read whole for their CRC-32 (`--mode checksum`), and the sum of those
    /// CRC-32s modulo 2^32 (the in-process `checksum` sink's `digest` for the same
    /// frames).
    checksummed: u64,
    digest: u32,
    head_inline: u64,
    copied: u64,
    /// Parts read in place, in provider memory.
    parts_in_place: u64,
    /// Frames whose sequence number skipped ahead of the last on its queue.
    seq_gaps: u64,
    /// Placement-to-consumer latency (CLOCK_MONOTONIC at receive to the read here), ns.
    latency_ns: Latency,
    /// Frames by the route rule that placed them.
    routes: std::collections::BTreeMap<u16, u64>,
    /// Frames per flow hash (at most 4096 flows).
    flows: std::collections::BTreeMap<u32, u64>,
    /// Regions memplex announced after the first frame (memory added mid-session).
    regions_mid_session: u64,
    /// Busy-polling turns that found no frame (near 0: this consumer is the slower
    /// side).
    idle_spins: u64,
    /// Frames sent back out (`--forward`).
    forwarded: u64,
    /// Frames whose verdict was "drop" (`--drop-every`).
    verdict_dropped: u64,
    /// Frames the library could not send back out (given back instead).
    forward_refused: u64,
    /// How the session ended.
    ended: String,
    elapsed_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    samples: u64,
}

fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Frames handed over per turn of the loop at most (`Consumer::next_burst`).
const BURST: usize = 64;

pub fn consume(args: &ConsumeArgs) -> Result<i32> {
    if args.mode == Mode::Pcap && args.out.is_none() {
        bail!("--mode pcap needs --out FILE");
    }
    let stop = Arc::new(AtomicBool::new(false));
    crate::signal::stop_on_signal_thread(Arc::clone(&stop))?;
    if args.no_metadata && matches!(args.mode, Mode::Verify | Mode::Pcap) {
        bail!("--no-metadata goes with --mode count or checksum only: verify needs each frame's checksum and pcap its timestamps, which come in the metadata");
    }
    let mut opts = Options::new(&args.name);
    opts.batch = args.batch as usize;
    if args.no_metadata {
        opts = opts.without_metadata();
    }
    if args.busy_poll {
        opts = opts.busy_poll();
    }
    opts = opts.spin(Duration::from_micros(args.spin_us));
    // The modes that read every byte ask for the next frame's lines while using one.
    if matches!(args.mode, Mode::Verify | Mode::Checksum | Mode::Pcap) {
        opts = opts.read_ahead();
    }
    let c = connect(
        &args.socket,
        &opts,
        Duration::from_secs_f64(args.wait),
        &stop,
    )?;
    if args.forward && !c.can_transmit() {
        bail!(
            "memplex gave this session no transmit ring: set transmit = \"DEVICE\" in the consumer's [consumers.NAME] table to forward"
        );
    }
    if args.forward && args.hold > 0 {
        bail!("--forward sends each frame on at once; it does not go with --hold");
    }
    if args.mode == Mode::Verify && !c.checksums() {
        bail!(
            "memplex sends no checksums on this socket: set checksum = true in the consumer's [consumers.NAME] table to verify"
        );
    }
    let mut pcap = match &args.out {
        Some(path) if args.mode == Mode::Pcap => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let header = pcap_file::pcap::PcapHeader {
                snaplen: 262_144,
                ts_resolution: pcap_file::TsResolution::NanoSecond,
                ..Default::default()
            };
            Some(
                pcap_file::pcap::PcapWriter::with_header(std::io::BufWriter::new(file), header)
                    .map_err(memplex::device::pcap::io_error)
                    .with_context(|| format!("writing {}", path.display()))?,
            )
        }
        _ => None,
    };
    let mut r = Report {
        session: c.session(),
        batch: c.batch(),
        ..Default::default()
    };
    let start = Instant::now();
    let limit = (args.seconds > 0.0).then(|| Duration::from_secs_f64(args.seconds));
    let mut held: VecDeque<Frame<'_>> = VecDeque::new();
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut last_seq: Vec<Option<u64>> = vec![None; c.queues()];
    let mut buf = Vec::with_capacity(1 << 16);
    let mut progress = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.json;
    let mut turns = 0u64;
    let mut warming = args.warmup > 0.0;
    let mut routes: Vec<u64> = Vec::new();
    let mut flows: rustc_hash::FxHashMap<u32, u64> = Default::default();
    // A frame's work, where `next_burst` hands it over: moved only to be held or sent
    // (a frame is 256 bytes, and taking it out of a `Result` was a `memmove`). An error
    // (writing the pcap) is kept for the loop to stop on.
    let mut failed: Option<anyhow::Error> = None;
    // A consumer slowed on purpose (`--delay-us`) reads a frame a turn, so that its time
    // limit holds to the frame.
    let slowed = args.delay_us > 0;
    let burst = if slowed { 1 } else { BURST };
    let ended = loop {
        if stop.load(Relaxed) {
            break "stopped (signal)".to_string();
        }
        if let Some(e) = failed.take() {
            return Err(e);
        }
        turns += 1;
        // The clock is read every 256th turn (it costs as much as a small frame), or every
        // turn for a consumer slowed on purpose (whose turns are a frame and a sleep).
        if (slowed || turns.is_multiple_of(256)) && limit.is_some_and(|l| start.elapsed() >= l) {
            break "time limit".to_string();
        }
        if args.frames > 0 && r.frames >= args.frames {
            break "frame limit".to_string();
        }
        // Up to a burst of frames a turn, never past the frame limit.
        let max = match args.frames {
            0 => burst,
            n => (n - r.frames).min(burst as u64) as usize,
        };
        let got = c.next_burst(max, Some(Duration::from_millis(100)), |frame| {
            // The clock is read per frame only until the warm-up is over.
            if warming && start.elapsed().as_secs_f64() < args.warmup {
                return;
            }
            warming = false;
            r.frames += 1;
            if let Some(&m) = frame.meta() {
                // Latency of every 8th frame (a clock read per frame would slow a fast
                // consumer).
                if r.frames.is_multiple_of(8) && lat.len() < lat.capacity() {
                    lat.push(mono_ns().saturating_sub(m.rx_mono_ns));
                }
                let q = usize::from(m.queue).min(last_seq.len().saturating_sub(1));
                if let Some(prev) = last_seq[q] {
                    if m.seq > prev + 1 {
                        r.seq_gaps += 1;
                    }
                }
                last_seq[q] = Some(m.seq);
                r.bytes += u64::from(m.cap_len);
                let route = usize::from(m.route);
                if routes.len() <= route {
                    routes.resize(route + 1, 0);
                }
                routes[route] += 1;
                // A hash map with a fast hasher while frames arrive (a B-tree lookup per
                // frame showed in profiles of a fast consumer); sorted into the report at
                // the end.
                if flows.len() < 4096 || flows.contains_key(&m.flow_hash) {
                    *flows.entry(m.flow_hash).or_default() += 1;
                }
            } else {
                r.bytes += frame.len() as u64;
            }
            r.head_inline += u64::from(frame.head_inline());
            r.copied += u64::from(frame.copied());
            r.parts_in_place += frame.parts().count() as u64;
            match args.mode {
                Mode::Count => {}
                Mode::Verify => match frame.verify() {
                    Some(true) => r.verified += 1,
                    _ => r.mismatched += 1,
                },
                Mode::Checksum => {
                    r.digest = r.digest.wrapping_add(frame.crc32());
                    r.checksummed += 1;
                }
                Mode::Pcap => {
                    frame.copy_to(&mut buf);
                    if let Some(w) = pcap.as_mut() {
                        // Pcap mode asks for metadata (checked at the start).
                        let (ts, orig) = frame
                            .meta()
                            .map_or((0, buf.len() as u32), |m| (m.timestamp_ns, m.orig_len));
                        let ts = Duration::from_nanos(ts);
                        if let Err(e) =
                            w.write_packet(&pcap_file::pcap::PcapPacket::new(ts, orig, &buf))
                        {
                            failed.get_or_insert(
                                anyhow::Error::new(memplex::device::pcap::io_error(e))
                                    .context("writing the pcap"),
                            );
                        }
                    }
                }
            }
            if args.delay_us > 0 {
                std::thread::sleep(Duration::from_micros(args.delay_us));
            }
            if args.forward {
                if args.drop_every.is_some_and(|n| r.frames.is_multiple_of(n)) {
                    r.verdict_dropped += 1;
                    drop(frame);
                } else {
                    match frame.transmit() {
                        Ok(()) => r.forwarded += 1,
                        Err(e) => {
                            if r.forward_refused == 0 {
                                eprintln!("memplex consume: a frame was not forwarded: {e}");
                            }
                            r.forward_refused += 1;
                        }
                    }
                }
            } else if args.hold > 0 {
                held.push_back(frame);
                if held.len() > args.hold as usize {
                    held.pop_front();
                }
            }
        });
        match got {
            Ok(_) => {}
            Err(e) if e.is_shutdown() => break "memplex stopped".to_string(),
            Err(Error::Closed) => break "memplex closed the connection".to_string(),
            Err(e) => return Err(e).context("receiving frames"),
        }
        if tty && turns.is_multiple_of(4096) && progress.elapsed() >= Duration::from_secs(1) {
            eprint!(
                "\r{} frames, {:.1} MB, {:.3} Mpps   ",
                r.frames,
                r.bytes as f64 / 1e6,
                r.frames as f64 / start.elapsed().as_secs_f64() / 1e6
            );
            progress = Instant::now();
        }
    };
    if let Some(e) = failed {
        return Err(e);
    }
    drop(held);
    if tty {
        eprintln!();
    }
    r.elapsed_s = start.elapsed().as_secs_f64();
    r.flows = flows.into_iter().collect();
    r.ended = ended;
    r.regions_mid_session = c.regions_added_mid_session();
    r.idle_spins = c.idle_spins();
    r.routes = routes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (i as u16, *n))
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    r.latency_ns = Latency {
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        max: lat.last().copied().unwrap_or(0),
        samples: lat.len() as u64,
    };
    if let Some(w) = pcap {
        let mut inner = w.into_writer();
        std::io::Write::flush(&mut inner).context("writing the pcap")?;
    }
    c.close();
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "consumer session {}: {} frames, {:.2} MB in {:.2} s ({}); verified {}, mismatched {}, heads inline {}, copied {}, parts read in place {}, sequence gaps {}",
            r.session,
            r.frames,
            r.bytes as f64 / 1e6,
            r.elapsed_s,
            r.ended,
            r.verified,
            r.mismatched,
            r.head_inline,
            r.copied,
            r.parts_in_place,
            r.seq_gaps
        );
        if args.mode == Mode::Checksum {
            println!(
                "checksummed {} frames, digest {:#010x} (the sum of their CRC-32s)",
                r.checksummed, r.digest
            );
        }
        if args.forward {
            println!(
                "verdicts: {} forwarded, {} dropped, {} could not be forwarded",
                r.forwarded, r.verdict_dropped, r.forward_refused
            );
        }
        println!(
            "placement-to-consumer latency: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} samples)",
            r.latency_ns.p50 as f64 / 1e3,
            r.latency_ns.p99 as f64 / 1e3,
            r.latency_ns.p999 as f64 / 1e3,
            r.latency_ns.max as f64 / 1e3,
            r.latency_ns.samples
        );
    }
    Ok(if r.mismatched > 0 { 1 } else { 0 })
}

/// Connects to memplex at `socket`, trying again every 50 ms for up to `wait` while the
/// socket is missing or nobody listens on it yet (a consumer started with, or before,
/// `memplex run`), and not after a signal.
fn connect(
    socket: &std::path::Path,
    opts: &Options,
    wait: Duration,
    stop: &AtomicBool,
) -> Result<Consumer> {
    let deadline = Instant::now() + wait;
    loop {
        match Consumer::connect(socket, opts) {
            Ok(c) => return Ok(c),
            Err(Error::Connect { path, source }) => {
                let absent = matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if absent && Instant::now() < deadline && !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                // The system's words are in the message already.
                let hint = if !absent {
                    ""
                } else if wait.is_zero() {
                    " (is memplex running a config whose consumer has this `socket`? `--wait SECONDS` waits for it)"
                } else {
                    &format!(
                        " (waited {:.1} s for it; is memplex running a config whose consumer has this `socket`?)",
                        wait.as_secs_f64()
                    )
                };
                bail!("cannot connect to memplex at {path}: {source}{hint}");
            }
            Err(e) => return Err(e.into()),
        }
    }
}
