//! The runtime: one worker per receive queue, each owning its pools, so nothing on the
//! frame path locks.
//!
//! ```text
//!  RxQueue --frame (borrowed)--> split --> route --> head pool ─┐ place (one copy)
//!                                                  frag pools ─┘        |
//!                                          Sink::consume(&PlacedFrame) <┘ --> recycle (cache)
//! ```
//!
//! Workers are dedicated threads: a queue is a busy loop over a device, and a thread per
//! queue with the pools on its stack is the shape page_pool has under NAPI. The CLI's
//! tokio runtime handles signals, the stats display and the metrics endpoint around them.
//! A consumer runs inline (`Sink`), so buffers go straight back into the per-queue cache.
//! A provider that runs dry makes the worker drop the frame or wait, bounded, as
//! configured, then try the provider's fallback; memory never grows without bound.

use crate::config::{Config, OnDry, SinkKind};
use crate::device::{self, DeviceError, Poll, RxQueue};
use crate::pool::{Pool, PoolBuf, PoolError, PoolReport, PoolStats};
use crate::provider::{InitParams, LoadError, PluginPath, ProviderCounters, ProviderPlugin};
use crate::route::RouteTable;
use crate::wire::{Layer, Splitter, Unsplit};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A provider could not be loaded or started.
    #[error("provider `{name}`: {source}")]
    Provider {
        /// The provider's name in the config.
        name: String,
        /// Why.
        source: LoadError,
    },
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The sink could not write.
    #[error("sink {path}: {source}")]
    Sink {
        /// The output.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// A worker thread panicked.
    #[error("worker for {0} panicked")]
    Worker(String),
}

/// A buffer holding part of a placed frame.
#[derive(Debug)]
pub struct Part {
    /// Index of the provider it came from.
    pub provider: usize,
    /// The buffer.
    pub buf: PoolBuf,
    /// Bytes of the frame in it, from offset 0.
    pub len: usize,
}

/// A frame placed in provider memory: `parts[0]` is the head, the rest are frags.
#[derive(Debug)]
pub struct PlacedFrame<'a> {
    /// The frame as received, for consumers that check reassembly.
    pub original: &'a [u8],
    /// Head, then frags.
    pub parts: &'a [Part],
    /// The route rule that placed it.
    pub rule: usize,
    /// Which queue received it.
    pub queue: u16,
    /// The worker's pools, indexed by `Part::provider`, for reading parts.
    pools: &'a [Pool],
}

impl PlacedFrame<'_> {
    /// Appends `part`'s bytes to `out`: by address where the CPU may read the memory,
    /// else through the provider's `read` op (how a WASM provider's guest memory is
    /// seen). `false`, and `out` as it was, when the memory cannot be read at all.
    pub fn read_part(&self, part: &Part, out: &mut Vec<u8>) -> bool {
        self.pools
            .get(part.provider)
            .is_some_and(|pool| pool.read(&part.buf, part.len, out))
    }
}

/// A consumer of placed frames, run inline on the worker.
pub trait Sink: Send {
    /// Takes a look at one frame; its buffers go back to their pools afterwards.
    fn consume(&mut self, frame: &PlacedFrame<'_>);
    /// True for a sink that takes frames away ([`consume_owned`](Self::consume_owned))
    /// instead of looking at them in place.
    fn takes_frames(&self) -> bool {
        false
    }
    /// Takes ownership of a frame; its buffers return to their pools when it is dropped,
    /// on whatever thread. Called instead of `consume` when `takes_frames` is true.
    fn consume_owned(&mut self, frame: Frame) {
        drop(frame);
    }
    /// Called after each batch of frames.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Counters for stats.
    fn counters(&self) -> SinkCounters;
}

/// What a sink has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounters {
    /// Frames that reassembled byte for byte (verify).
    pub verified: u64,
    /// Frames that did not (verify).
    pub mismatched: u64,
    /// Frames in memory the CPU may not read (verify, pcap).
    pub unreadable: u64,
    /// Frames written (pcap).
    pub written: u64,
}

/// A placed frame that owns its buffers: `parts()[0]` is the head, the rest frags.
/// Dropping it returns every buffer to its pool, from any thread.
#[derive(Debug)]
pub struct Frame {
    /// Which queue received it.
    pub queue: u16,
    /// The route rule that placed it.
    pub rule: usize,
    /// Its length as received.
    pub len: usize,
    /// Inline for up to four parts (every frame that is not a GSO super-frame), so
    /// handing a frame to the stream allocates nothing.
    parts: smallvec::SmallVec<[Part; 4]>,
    recyclers: Arc<[crate::pool::Recycler]>,
}

impl Frame {
    /// Head, then frags.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The frame reassembled into one vector, when all of its memory is CPU-readable.
    pub fn to_vec(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len);
        for p in &self.parts {
            out.extend_from_slice(&p.buf.as_slice()?[..p.len]);
        }
        Some(out)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        for p in self.parts.drain(..) {
            // Parts only ever come from these pools, so the pool id always matches.
            let _ = self.recyclers[p.provider].recycle(p.buf);
        }
    }
}

/// Hands frames to a tokio channel: the sink behind [`Engine::stream`].
struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<Frame>,
    sent: u64,
    stop: Arc<AtomicBool>,
}

impl Sink for ChannelSink {
    fn consume(&mut self, _: &PlacedFrame<'_>) {}
    fn takes_frames(&self) -> bool {
        true
    }
    fn consume_owned(&mut self, frame: Frame) {
        // Blocks while the channel is full: backpressure, and memory stays bounded by the
        // channel's capacity. A closed channel drops the frame, returning its buffers.
        match self.tx.blocking_send(frame) {
            Ok(()) => self.sent += 1,
            // The stream was dropped: nobody wants frames any more, so end the run.
            Err(_) => self.stop.store(true, Relaxed),
        }
    }
    fn counters(&self) -> SinkCounters {
        SinkCounters {
            written: self.sent,
            ..SinkCounters::default()
        }
    }
}

/// A run in the background behind a [`FrameStream`].
#[derive(Debug)]
pub struct StreamRun {
    /// Set `control.stop` to end the run.
    pub control: RunControl,
    /// The run's thread; its result is the run's report.
    pub thread: std::thread::JoinHandle<Result<RunReport, RunError>>,
}

/// A tokio `Stream` of placed frames (see [`Engine::stream`]).
pub type FrameStream = tokio_stream::wrappers::ReceiverStream<Frame>;

/// Counts only; the worker already counts frames and bytes.
#[derive(Debug, Default)]
pub struct CountSink;

impl Sink for CountSink {
    fn consume(&mut self, _: &PlacedFrame<'_>) {}
    fn counters(&self) -> SinkCounters {
        SinkCounters::default()
    }
}

/// Checks that head + frags reassemble to the frame as received.
#[derive(Debug, Default)]
pub struct VerifySink {
    counters: SinkCounters,
    /// Bytes read through a provider's `read` op (reused: no allocation per frame).
    scratch: Vec<u8>,
}

impl Sink for VerifySink {
    fn consume(&mut self, f: &PlacedFrame<'_>) {
        let mut at = 0;
        for p in f.parts {
            let bytes = match p.buf.as_slice() {
                Some(mem) => &mem[..p.len],
                None => {
                    self.scratch.clear();
                    if !f.read_part(p, &mut self.scratch) {
                        self.counters.unreadable += 1;
                        return;
                    }
                    &self.scratch[..]
                }
            };
            if f.original.get(at..at + p.len) != Some(bytes) {
                self.counters.mismatched += 1;
                return;
            }
            at += p.len;
        }
        if at == f.original.len() {
            self.counters.verified += 1;
        } else {
            self.counters.mismatched += 1;
        }
    }
    fn counters(&self) -> SinkCounters {
        self.counters
    }
}

/// Writes reassembled frames to a pcap file shared by all queues. Each queue gathers a
/// batch locally and takes the file's lock once per batch, not per frame.
pub struct PcapSink {
    out: Arc<Mutex<pcap_file::pcap::PcapWriter<std::io::BufWriter<std::fs::File>>>>,
    batch: Vec<u8>,
    lens: Vec<(Duration, usize)>,
    counters: SinkCounters,
    start: Instant,
}

impl PcapSink {
    /// A pcap writer to share between the queues' sinks.
    pub fn create(
        path: &std::path::Path,
    ) -> Result<Arc<Mutex<pcap_file::pcap::PcapWriter<std::io::BufWriter<std::fs::File>>>>, RunError>
    {
        let err = |e: std::io::Error| RunError::Sink {
            path: path.display().to_string(),
            source: e,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        let w = pcap_file::pcap::PcapWriter::new(std::io::BufWriter::new(file))
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        Ok(Arc::new(Mutex::new(w)))
    }

    /// A sink writing to `out`.
    pub fn new(
        out: Arc<Mutex<pcap_file::pcap::PcapWriter<std::io::BufWriter<std::fs::File>>>>,
    ) -> Self {
        PcapSink {
            out,
            batch: Vec::new(),
            lens: Vec::new(),
            counters: SinkCounters::default(),
            start: Instant::now(),
        }
    }
}

impl Sink for PcapSink {
    fn consume(&mut self, f: &PlacedFrame<'_>) {
        let start = self.batch.len();
        for p in f.parts {
            if !f.read_part(p, &mut self.batch) {
                self.batch.truncate(start);
                self.counters.unreadable += 1;
                return;
            }
        }
        self.lens
            .push((self.start.elapsed(), self.batch.len() - start));
        self.counters.written += 1;
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.lens.is_empty() {
            return Ok(());
        }
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = 0;
        for &(ts, len) in &self.lens {
            let data = &self.batch[at..at + len];
            out.write_packet(&pcap_file::pcap::PcapPacket::new(ts, len as u32, data))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            at += len;
        }
        self.batch.clear();
        self.lens.clear();
        Ok(())
    }

    fn counters(&self) -> SinkCounters {
        self.counters
    }
}

/// Kinds of [`Unsplit`] reasons counted separately.
const UNSPLIT_KINDS: usize = 16;

fn unsplit_index(u: Unsplit) -> usize {
    use Layer::*;
    match u {
        Unsplit::Disabled => 0,
        Unsplit::BelowThreshold => 1,
        Unsplit::NotIp => 2,
        Unsplit::NotTransport => 3,
        Unsplit::Fragment => 4,
        Unsplit::TooDeep(_) => 5,
        Unsplit::Truncated(L2) => 6,
        Unsplit::Truncated(L3) => 7,
        Unsplit::Truncated(L4) => 8,
        Unsplit::Truncated(Tunnel) => 9,
        Unsplit::Truncated(App) => 10,
        Unsplit::Malformed(L2) => 11,
        Unsplit::Malformed(L3) => 12,
        Unsplit::Malformed(L4) => 13,
        Unsplit::Malformed(Tunnel) => 14,
        Unsplit::Malformed(App) => 15,
    }
}

const UNSPLIT_NAMES: [&str; UNSPLIT_KINDS] = [
    "disabled",
    "below_threshold",
    "not_ip",
    "not_transport",
    "fragment",
    "too_many_headers",
    "truncated_l2",
    "truncated_l3",
    "truncated_l4",
    "truncated_tunnel",
    "truncated_app",
    "malformed_l2",
    "malformed_l3",
    "malformed_l4",
    "malformed_tunnel",
    "malformed_app",
];

/// Frames and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Frames.
    pub frames: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Traffic {
    fn add(&mut self, bytes: usize) {
        self.frames += 1;
        self.bytes += bytes as u64;
    }
}

/// One provider instance's figures on one queue.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStats {
    /// The provider's name in the config.
    pub name: String,
    /// Buffers it supplied to frames.
    pub buffers: u64,
    /// Bytes placed in them.
    pub bytes: u64,
    /// Its pool's counters.
    #[serde(serialize_with = "ser_pool")]
    pub pool: PoolStats,
    /// The host's checks' counters.
    #[serde(serialize_with = "ser_counters")]
    pub checks: ProviderCounters,
    /// Set when the provider is quarantined.
    pub fault: Option<String>,
}

fn ser_pool<S: serde::Serializer>(s: &PoolStats, ser: S) -> Result<S::Ok, S::Error> {
    let m: BTreeMap<&str, u64> = [
        ("alloc_fast", s.alloc_fast),
        ("alloc_slow", s.alloc_slow),
        ("alloc_empty", s.alloc_empty),
        ("alloc_refill", s.alloc_refill),
        ("alloc_fail", s.alloc_fail),
        ("recycle_cached", s.recycle_cached),
        ("recycle_cache_full", s.recycle_cache_full),
        ("recycle_ring", s.recycle_ring),
        ("recycle_ring_full", s.recycle_ring_full),
        ("recycle_released", s.recycle_released),
        ("inflight", s.inflight),
    ]
    .into();
    m.serialize(ser)
}

fn ser_counters<S: serde::Serializer>(c: &ProviderCounters, ser: S) -> Result<S::Ok, S::Error> {
    let m: BTreeMap<&str, u64> = [
        ("alloc_calls", c.alloc_calls),
        ("release_calls", c.release_calls),
        ("handed_out", c.handed_out),
        ("released", c.released),
        ("rejected", c.rejected),
        ("stranded", c.stranded),
        ("errors", c.errors),
    ]
    .into();
    m.serialize(ser)
}

/// One queue's figures.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// Everything received.
    pub received: Traffic,
    /// Frames split, by the layer they were split after.
    pub split: BTreeMap<&'static str, u64>,
    /// Frames placed whole, by reason.
    pub unsplit: BTreeMap<&'static str, u64>,
    /// Frames dropped, by reason: `no_route`, `dry`, `fault`.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Buffers taken from a fallback provider.
    pub fallback: u64,
    /// Per route rule.
    pub routes: Vec<Traffic>,
    /// Per provider.
    pub providers: Vec<ProviderStats>,
    /// The sink's counters.
    pub sink: SinkCounters,
    /// The device's counters (filled in at the end of a run).
    pub device: device::DeviceStats,
}

#[derive(Debug, Default)]
struct Counters {
    received: Traffic,
    split: [u64; 5],
    unsplit: [u64; UNSPLIT_KINDS],
    no_route: u64,
    dry: u64,
    fault: u64,
    fallback: u64,
    routes: Vec<Traffic>,
    buffers: Vec<Traffic>,
}

/// Why a buffer could not be had.
enum Short {
    Dry,
    Fault,
}

/// One queue's worker.
struct Worker {
    queue: u16,
    name: String,
    splitter: Splitter,
    /// This frame's split decision, reused frame to frame (see `Splitter::split_into`).
    decision: crate::wire::Split,
    routes: RouteTable,
    pools: Vec<Pool>,
    names: Arc<[String]>,
    fallback: Arc<[Option<usize>]>,
    on_dry: OnDry,
    wait: Duration,
    sink: Box<dyn Sink>,
    recyclers: Arc<[crate::pool::Recycler]>,
    parts: Vec<Part>,
    c: Counters,
}

impl Worker {
    fn handle(&mut self, frame: &[u8]) {
        self.c.received.add(frame.len());
        self.splitter.split_into(frame, &mut self.decision);
        let split = &self.decision;
        let head_len = split.head_len;
        match split.outcome {
            Ok(layer) => self.c.split[layer as usize] += 1,
            Err(reason) => self.c.unsplit[unsplit_index(reason)] += 1,
        }
        let Some((rule, route)) = self.routes.route(&split.meta) else {
            self.c.no_route += 1;
            return;
        };
        self.c.routes[rule].add(frame.len());
        let mut at = 0;
        let mut provider = route.head;
        let mut head = true;
        // The head buffer takes the headers (as much of them as fits); the frags take the
        // rest, from `frags` then `frags_rest`. One copy per byte.
        while head || at < frame.len() {
            let (p, mut buf) = match self.take(provider) {
                Ok(x) => x,
                Err(short) => {
                    match short {
                        Short::Dry => self.c.dry += 1,
                        Short::Fault => self.c.fault += 1,
                    }
                    return self.recycle_parts();
                }
            };
            let want = if head { head_len } else { frame.len() };
            let n = (want - at).min(buf.len());
            if self.pools[p]
                .place(&mut buf, 0, &frame[at..at + n])
                .is_err()
            {
                self.c.fault += 1;
                let _ = self.pools[p].recycle(buf);
                return self.recycle_parts();
            }
            self.c.buffers[p].add(n);
            self.parts.push(Part {
                provider: p,
                buf,
                len: n,
            });
            at += n;
            provider = if head { route.frags } else { route.frags_rest };
            head = false;
        }
        if self.sink.takes_frames() {
            let parts = self.parts.drain(..).collect();
            let owned = Frame {
                queue: self.queue,
                rule,
                len: frame.len(),
                parts,
                recyclers: Arc::clone(&self.recyclers),
            };
            return self.sink.consume_owned(owned);
        }
        self.sink.consume(&PlacedFrame {
            original: frame,
            parts: &self.parts,
            rule,
            queue: self.queue,
            pools: &self.pools,
        });
        self.recycle_parts();
    }

    fn recycle_parts(&mut self) {
        for part in self.parts.drain(..) {
            // Buffers only ever come from these pools, so the pool id always matches.
            let _ = self.pools[part.provider].recycle(part.buf);
        }
    }

    /// A buffer from provider `p`, waiting if configured, else from its fallback.
    fn take(&mut self, p: usize) -> Result<(usize, PoolBuf), Short> {
        let first = match self.pools[p].alloc() {
            Ok(b) => return Ok((p, b)),
            Err(PoolError::Exhausted { .. }) if self.on_dry == OnDry::Wait => {
                let deadline = Instant::now() + self.wait;
                loop {
                    std::thread::yield_now();
                    match self.pools[p].alloc() {
                        Ok(b) => return Ok((p, b)),
                        Err(e @ PoolError::Exhausted { .. }) if Instant::now() >= deadline => {
                            break e
                        }
                        Err(PoolError::Exhausted { .. }) => {}
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        let short = if matches!(first, PoolError::Exhausted { .. }) {
            Short::Dry
        } else {
            Short::Fault
        };
        match self.fallback[p] {
            Some(f) => match self.pools[f].alloc() {
                Ok(b) => {
                    self.c.fallback += 1;
                    Ok((f, b))
                }
                Err(_) => Err(short),
            },
            None => Err(short),
        }
    }

    fn snapshot(&self) -> QueueStats {
        let layers = ["l2", "l3", "l4", "tunnel", "app"];
        QueueStats {
            queue: self.name.clone(),
            received: self.c.received,
            split: layers
                .iter()
                .zip(self.c.split)
                .filter(|(_, n)| *n > 0)
                .map(|(l, n)| (*l, n))
                .collect(),
            unsplit: UNSPLIT_NAMES
                .iter()
                .zip(self.c.unsplit)
                .filter(|(_, n)| *n > 0)
                .map(|(l, n)| (*l, n))
                .collect(),
            dropped: [
                ("no_route", self.c.no_route),
                ("dry", self.c.dry),
                ("fault", self.c.fault),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect(),
            fallback: self.c.fallback,
            routes: self.c.routes.clone(),
            providers: self
                .pools
                .iter()
                .zip(&self.c.buffers)
                .zip(self.names.iter())
                .map(|((pool, t), name)| ProviderStats {
                    name: name.clone(),
                    buffers: t.frames,
                    bytes: t.bytes,
                    pool: pool.stats(),
                    checks: pool.provider().counters(),
                    fault: pool.provider().fault().map(ToString::to_string),
                })
                .collect(),
            sink: self.sink.counters(),
            device: device::DeviceStats::default(),
        }
    }
}

/// Shared between a run and whoever watches it.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Set to stop every worker after its current batch.
    pub stop: Arc<AtomicBool>,
    /// The latest published stats of each queue (updated a few times a second).
    pub live: Arc<Mutex<Vec<QueueStats>>>,
}

/// What a finished run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Final stats per queue.
    pub queues: Vec<QueueStats>,
    /// Each pool's shutdown report, per queue, in provider order.
    pub pools: Vec<Vec<PoolReport>>,
    /// Wall time.
    pub elapsed: Duration,
    /// Provider names, in index order.
    pub providers: Vec<String>,
}

impl RunReport {
    /// Buffers that never came back, over all pools.
    pub fn leaked(&self) -> u64 {
        self.pools.iter().flatten().map(|p| p.leaked).sum()
    }

    /// The queues' stats added up.
    pub fn total(&self) -> QueueStats {
        total(&self.queues)
    }
}

/// Adds up per-queue stats (for display).
pub fn total(queues: &[QueueStats]) -> QueueStats {
    let mut t = queues.first().cloned().unwrap_or_else(|| QueueStats {
        queue: String::new(),
        received: Traffic::default(),
        split: BTreeMap::new(),
        unsplit: BTreeMap::new(),
        dropped: BTreeMap::new(),
        fallback: 0,
        routes: Vec::new(),
        providers: Vec::new(),
        sink: SinkCounters::default(),
        device: device::DeviceStats::default(),
    });
    t.queue = "all".into();
    for q in queues.iter().skip(1) {
        t.received.frames += q.received.frames;
        t.received.bytes += q.received.bytes;
        for (m, src) in [
            (&mut t.split, &q.split),
            (&mut t.unsplit, &q.unsplit),
            (&mut t.dropped, &q.dropped),
        ] {
            for (k, v) in src {
                *m.entry(k).or_default() += v;
            }
        }
        t.fallback += q.fallback;
        for (a, b) in t.routes.iter_mut().zip(&q.routes) {
            a.frames += b.frames;
            a.bytes += b.bytes;
        }
        for (a, b) in t.providers.iter_mut().zip(&q.providers) {
            a.buffers += b.buffers;
            a.bytes += b.bytes;
            let (x, y) = (&mut a.pool, &b.pool);
            x.alloc_fast += y.alloc_fast;
            x.alloc_slow += y.alloc_slow;
            x.alloc_empty += y.alloc_empty;
            x.alloc_refill += y.alloc_refill;
            x.alloc_fail += y.alloc_fail;
            x.recycle_cached += y.recycle_cached;
            x.recycle_cache_full += y.recycle_cache_full;
            x.recycle_ring += y.recycle_ring;
            x.recycle_ring_full += y.recycle_ring_full;
            x.recycle_released += y.recycle_released;
            x.inflight += y.inflight;
            a.fault = a.fault.take().or_else(|| b.fault.clone());
        }
        t.sink.verified += q.sink.verified;
        t.sink.mismatched += q.sink.mismatched;
        t.sink.unreadable += q.sink.unreadable;
        t.sink.written += q.sink.written;
        t.device.gso_frames += q.device.gso_frames;
        t.device.largest = t.device.largest.max(q.device.largest);
        t.device.kernel_drops += q.device.kernel_drops;
    }
    t
}

/// A config made ready to run: plugins loaded, routes compiled.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    plugins: Vec<ProviderPlugin>,
    names: Arc<[String]>,
    fallback: Arc<[Option<usize>]>,
    routes: RouteTable,
}

impl Engine {
    /// Loads every provider the config names.
    pub fn new(config: Config, path: &PluginPath) -> Result<Self, RunError> {
        let names: Vec<String> = config.providers.keys().cloned().collect();
        let index: BTreeMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let plugins = config
            .providers
            .iter()
            .map(|(name, p)| {
                let plugin =
                    ProviderPlugin::load(&p.plugin, path).map_err(|source| RunError::Provider {
                        name: name.clone(),
                        source,
                    })?;
                let defaults = crate::provider::wasm::WasmLimits::default();
                Ok::<_, RunError>(
                    plugin.with_wasm_limits(crate::provider::wasm::WasmLimits {
                        memory: p
                            .max_memory_mib
                            .map_or(defaults.memory, |m| m as usize * (1 << 20)),
                        deadline: p
                            .call_deadline_ms
                            .map_or(defaults.deadline, Duration::from_millis),
                        instances: p.max_instances.map_or(defaults.instances, |n| n as usize),
                    }),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fallback = config
            .providers
            .values()
            .map(|p| p.fallback.as_ref().map(|f| index[f]))
            .collect();
        let routes = RouteTable::new(&config.routes, &index);
        Ok(Engine {
            config,
            plugins,
            names: names.into(),
            fallback,
            routes,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The loaded plugins, in provider order.
    pub fn plugins(&self) -> impl Iterator<Item = (&str, &ProviderPlugin)> {
        self.names.iter().map(String::as_str).zip(&self.plugins)
    }

    /// Opens the configured device's queues.
    pub fn open_device(&self) -> Result<Vec<Box<dyn RxQueue>>, RunError> {
        let d = &self.config.device;
        Ok(match d.kind {
            crate::config::DeviceKind::Pcap => {
                let path = d.path.as_deref().expect("validated: pcap has a path");
                device::pcap::open(path, d.queues, d.repeat, d.rate)?
                    .into_iter()
                    .map(|q| Box::new(q) as Box<dyn RxQueue>)
                    .collect()
            }
            crate::config::DeviceKind::Tap => {
                let name = d
                    .interface
                    .as_deref()
                    .expect("validated: tap has an interface");
                device::tap::open(name, d.queues, d.gso)?
                    .into_iter()
                    .map(|q| Box::new(q) as Box<dyn RxQueue>)
                    .collect()
            }
            crate::config::DeviceKind::AfPacket => {
                let name = d
                    .interface
                    .as_deref()
                    .expect("validated: af_packet has an interface");
                device::af_packet::open(name, d.queues, d.block_size, d.block_count)?
                    .into_iter()
                    .map(|q| Box::new(q) as Box<dyn RxQueue>)
                    .collect()
            }
        })
    }

    fn sink(
        &self,
        shared: &Option<Arc<Mutex<pcap_file::pcap::PcapWriter<std::io::BufWriter<std::fs::File>>>>>,
    ) -> Box<dyn Sink> {
        match (self.config.runtime.sink, shared) {
            (SinkKind::Verify, _) => Box::new(VerifySink::default()),
            (SinkKind::Pcap, Some(w)) => Box::new(PcapSink::new(Arc::clone(w))),
            _ => Box::new(CountSink),
        }
    }

    fn worker(&self, queue: u16, name: String, sink: Box<dyn Sink>) -> Result<Worker, RunError> {
        let mut pools = Vec::new();
        for ((name, plugin), cfg) in self.plugins().zip(self.config.providers.values()) {
            let params = cfg.settings.iter().fold(
                InitParams::new(u32::from(queue), cfg.buf_size, cfg.pool_size),
                |p, (k, v)| p.set(k, &v.to_string()),
            );
            let provider = plugin
                .instantiate(&params)
                .map_err(|source| RunError::Provider {
                    name: name.to_string(),
                    source,
                })?;
            pools.push(Pool::new(provider, cfg.pool_size as usize));
        }
        let recyclers = pools.iter().map(Pool::recycler).collect();
        let s = &self.config.split;
        Ok(Worker {
            queue,
            name,
            decision: crate::wire::Split::default(),
            splitter: Splitter {
                mode: s.mode,
                fixed_offset: s.fixed_offset,
                hds_threshold: s.hds_threshold,
            },
            routes: self.routes.clone(),
            c: Counters {
                routes: vec![Traffic::default(); self.routes.len()],
                buffers: vec![Traffic::default(); pools.len()],
                ..Counters::default()
            },
            pools,
            names: Arc::clone(&self.names),
            fallback: Arc::clone(&self.fallback),
            on_dry: self.config.runtime.on_dry,
            wait: Duration::from_millis(self.config.runtime.wait_ms),
            recyclers,
            sink,
            parts: Vec::with_capacity(64),
        })
    }

    /// Runs every queue on its own worker thread until the device ends or `control.stop`
    /// is set, then shuts the pools down and reports. The consumer is the config's sink.
    pub fn run(
        &self,
        queues: Vec<Box<dyn RxQueue>>,
        control: &RunControl,
    ) -> Result<RunReport, RunError> {
        let shared = match (self.config.runtime.sink, &self.config.runtime.sink_path) {
            (SinkKind::Pcap, Some(path)) => Some(PcapSink::create(path)?),
            _ => None,
        };
        let report = self.run_with(queues, control, |_| self.sink(&shared))?;
        if let Some(w) = shared {
            // Every sink is gone with its worker, so this is the last handle: flush and
            // report a failed write rather than lose it in a drop.
            if let Ok(w) = Arc::try_unwrap(w) {
                let w = w
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let path = self
                    .config
                    .runtime
                    .sink_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("pcap sink"));
                w.into_writer().into_inner().map_err(|e| RunError::Sink {
                    path: path.display().to_string(),
                    source: e.into_error(),
                })?;
            }
        }
        Ok(report)
    }

    /// Runs on a background thread and returns a tokio `Stream` of frames, for embedding
    /// memplex in an async program. At most `capacity` frames wait in the stream; past
    /// that the workers wait for the consumer (backpressure). Dropping a frame returns
    /// its buffers to their pools; the run ends when the device does, when
    /// `StreamRun::control.stop` is set, or when the stream is dropped and the workers
    /// next find it closed.
    ///
    /// ```no_run
    /// # async fn f(engine: std::sync::Arc<memplex::runtime::Engine>) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio_stream::StreamExt;
    /// let queues = engine.open_device()?;
    /// let (mut frames, run) = memplex::runtime::Engine::stream(engine, queues, 1024);
    /// while let Some(frame) = frames.next().await {
    ///     println!("{} bytes in {} buffers", frame.len, frame.parts().len());
    /// }
    /// let report = run.thread.join().expect("run thread")?;
    /// # Ok(()) }
    /// ```
    pub fn stream(
        engine: Arc<Engine>,
        queues: Vec<Box<dyn RxQueue>>,
        capacity: usize,
    ) -> (FrameStream, StreamRun) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let control = RunControl::default();
        let run_control = control.clone();
        let thread = std::thread::spawn(move || {
            let stop = Arc::clone(&run_control.stop);
            engine.run_with(queues, &run_control, move |_| {
                Box::new(ChannelSink {
                    tx: tx.clone(),
                    sent: 0,
                    stop: Arc::clone(&stop),
                })
            })
        });
        (
            tokio_stream::wrappers::ReceiverStream::new(rx),
            StreamRun { control, thread },
        )
    }

    /// Like [`run`](Self::run), with a consumer made per queue by `sink`: for embedding
    /// memplex with a consumer of one's own.
    pub fn run_with(
        &self,
        queues: Vec<Box<dyn RxQueue>>,
        control: &RunControl,
        sink: impl Fn(u16) -> Box<dyn Sink>,
    ) -> Result<RunReport, RunError> {
        let mut workers = Vec::new();
        for (q, rx) in queues.into_iter().enumerate() {
            let w = self.worker(q as u16, rx.name().to_string(), sink(q as u16))?;
            workers.push((rx, w));
        }
        // The factory may hold resources the sinks share (a stream's sender): drop it so
        // they are released when the workers' sinks are.
        drop(sink);
        *control
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            workers.iter().map(|(_, w)| w.snapshot()).collect();
        let start = Instant::now();
        let results: Vec<Result<(QueueStats, Vec<Pool>), RunError>> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .into_iter()
                .enumerate()
                .map(|(i, (rx, w))| {
                    let name = w.name.clone();
                    (name, s.spawn(move || run_queue(i, rx, w, control)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(name, h)| h.join().unwrap_or(Err(RunError::Worker(name))))
                .collect()
        });
        let elapsed = start.elapsed();
        // Every consumer is gone now; wait (bounded) for the buffers they still return.
        let mut queues = Vec::new();
        let mut pools = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok((q, p)) => {
                    queues.push(q);
                    pools.push(
                        p.into_iter()
                            .map(|p| p.shutdown(Duration::from_secs(1)))
                            .collect(),
                    );
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(RunReport {
            queues,
            pools,
            elapsed,
            providers: self.names.to_vec(),
        })
    }
}

fn run_queue(
    index: usize,
    mut rx: Box<dyn RxQueue>,
    mut w: Worker,
    control: &RunControl,
) -> Result<(QueueStats, Vec<Pool>), RunError> {
    let mut published = Instant::now();
    let publish = |w: &Worker| {
        if let Ok(mut live) = control.live.try_lock() {
            if let Some(slot) = live.get_mut(index) {
                *slot = w.snapshot();
            }
        }
    };
    let result = loop {
        if control.stop.load(Relaxed) {
            break Ok(());
        }
        match rx.poll(64, Duration::from_millis(100), &mut |frame| w.handle(frame)) {
            Ok(Poll::End) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(RunError::Device(e)),
        }
        if let Err(e) = w.sink.flush() {
            break Err(RunError::Sink {
                path: "sink".into(),
                source: e,
            });
        }
        if published.elapsed() >= Duration::from_millis(100) {
            publish(&w);
            published = Instant::now();
        }
    };
    let _ = w.sink.flush();
    let mut stats = w.snapshot();
    stats.device = rx.stats();
    stats.device.kernel_drops += rx.kernel_drops();
    publish(&w);
    // The pools are shut down by `run_with` once every worker has let go of its consumer
    // (a stream stays open until all have), so a consumer can return what it holds.
    drop(w.sink);
    result.map(|()| (stats, w.pools))
}

/// The stats in Prometheus' text format, one sample per queue, provider and reason.
pub fn prometheus(queues: &[QueueStats]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: &mut dyn Iterator<Item = (String, u64)>| {
        let _ = writeln!(
            out,
            "# HELP memplex_{name} {help}\n# TYPE memplex_{name} counter"
        );
        for (labels, v) in samples {
            let _ = writeln!(out, "memplex_{name}{{{labels}}} {v}");
        }
    };
    let q = |s: &QueueStats| format!("queue=\"{}\"", s.queue);
    family(
        "frames_total",
        "Frames received.",
        &mut queues.iter().map(|s| (q(s), s.received.frames)),
    );
    family(
        "bytes_total",
        "Bytes received.",
        &mut queues.iter().map(|s| (q(s), s.received.bytes)),
    );
    family(
        "split_total",
        "Frames split, by layer.",
        &mut queues.iter().flat_map(|s| {
            s.split
                .iter()
                .map(move |(l, n)| (format!("{},layer=\"{l}\"", q(s)), *n))
        }),
    );
    family(
        "unsplit_total",
        "Frames placed whole, by reason.",
        &mut queues.iter().flat_map(|s| {
            s.unsplit
                .iter()
                .map(move |(r, n)| (format!("{},reason=\"{r}\"", q(s)), *n))
        }),
    );
    family(
        "dropped_total",
        "Frames dropped, by reason.",
        &mut queues.iter().flat_map(|s| {
            s.dropped
                .iter()
                .map(move |(r, n)| (format!("{},reason=\"{r}\"", q(s)), *n))
        }),
    );
    type Get = fn(&ProviderStats) -> u64;
    let per_provider: [(&str, &str, Get); 6] = [
        (
            "provider_buffers_total",
            "Buffers a provider supplied.",
            |p| p.buffers,
        ),
        (
            "pool_alloc_fast_total",
            "Allocations served from the pool cache.",
            |p| p.pool.alloc_fast,
        ),
        (
            "pool_alloc_slow_total",
            "Allocations that needed a provider call.",
            |p| p.pool.alloc_slow,
        ),
        (
            "pool_alloc_refill_total",
            "Allocations served after a ring refill.",
            |p| p.pool.alloc_refill,
        ),
        (
            "pool_recycle_cached_total",
            "Recycles into the pool cache.",
            |p| p.pool.recycle_cached,
        ),
        (
            "pool_recycle_ring_total",
            "Recycles into the pool ring.",
            |p| p.pool.recycle_ring,
        ),
    ];
    for (name, help, get) in per_provider {
        family(
            name,
            help,
            &mut queues.iter().flat_map(|s| {
                s.providers
                    .iter()
                    .map(move |p| (format!("{},provider=\"{}\"", q(s), p.name), get(p)))
            }),
        );
    }
    out
}
