//! Counters: one definition each, from which the totals, the JSON and the Prometheus
//! families all come.
//!
//! A flat counter struct is declared once with [`counters!`](crate::counters): the macro
//! derives `Serialize`, implements `+=` field by field (or `max` where a field says so),
//! and lists every field with its doc line as `FIELDS`, which the metrics exporter turns
//! into a `# HELP` line. Counts by reason are a [`Tally`] over an enum that knows its own
//! names and indexes ([`wire::Layer`], [`wire::Unsplit`], [`DropReason`]), so nothing
//! here re-encodes another module's types.
//!
//! ```text
//!   worker counters --snapshot--> QueueStats --(+=)--> totals
//!                                     |---- serde --> JSON lines, the final report
//!                                     '---- families() --> Prometheus text (CLI)
//! ```
//!
//! [`wire::Layer`]: crate::wire::Layer
//! [`wire::Unsplit`]: crate::wire::Unsplit

use crate::wire::{Layer, Unsplit};
use serde::{Serialize, Serializer};
use std::ops::AddAssign;

/// Declares a struct of `u64` counters with `Serialize`, `AddAssign` and a `FIELDS`
/// table of `(name, help, kind)` taken from each field's doc comment. A field written
/// `name: gauge` is a level (it adds up, but is exported as a gauge); `name: max` is a
/// high-water mark (it adds up by taking the larger value).
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $help:literal])+
                $field:ident $(: $combine:ident)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $name {
            $(
                $(#[doc = $help])+
                pub $field: u64,
            )*
        }

        impl $name {
            /// Every counter's name, help text and kind, in declaration order.
            pub const FIELDS: &'static [(&'static str, &'static str, $crate::stats::Kind)] =
                &[$((
                    stringify!($field),
                    concat!($($help),+).trim_ascii(),
                    $crate::counters!(@kind $($combine)?),
                )),*];

            /// Every counter's value, in [`FIELDS`](Self::FIELDS) order.
            pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
                [$(self.$field),*].into_iter()
            }
        }

        impl ::std::ops::AddAssign for $name {
            fn add_assign(&mut self, other: Self) {
                $( $crate::counters!(@add self.$field, other.$field $(, $combine)?); )*
            }
        }
    };
    (@add $a:expr, $b:expr) => { $a += $b };
    (@add $a:expr, $b:expr, gauge) => { $a += $b };
    (@add $a:expr, $b:expr, max) => { $a = $a.max($b) };
    (@add $a:expr, $b:expr, sum32) => { $a = ($a + $b) & 0xffff_ffff };
    (@kind) => { $crate::stats::Kind::Counter };
    (@kind $other:ident) => { $crate::stats::Kind::Gauge };
}

/// What a number is, for exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows during a run.
    Counter,
    /// A level or a high-water mark.
    Gauge,
}

counters! {
    /// Frames and the bytes in them.
    pub struct Volume {
        /// Frames.
        frames,
        /// Bytes.
        bytes,
    }
}

impl Volume {
    /// Counts one frame of `bytes` bytes.
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.frames += 1;
        self.bytes += bytes as u64;
    }

    /// Takes back one frame of `bytes` bytes counted by [`add`](Self::add).
    #[inline]
    pub fn undo(&mut self, bytes: usize) {
        self.frames = self.frames.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes as u64);
    }
}

counters! {
    /// What a sink has seen.
    pub struct SinkCounters {
        /// Frames that reassembled byte for byte (verify).
        verified,
        /// Frames that did not (verify).
        mismatched,
        /// Frames in memory the CPU may not read (verify, pcap).
        unreadable,
        /// Frames written (pcap, stream).
        written,
        /// Frames whose every byte was read for a CRC-32 (checksum).
        checksummed,
        /// The sum, modulo 2^32, of those frames' CRC-32s (checksum): it does not
        /// depend on the order frames came in or the queues they took, so two runs over
        /// the same frames (or a run and a consumer process) agree.
        digest: sum32,
    }
}

counters! {
    /// Device-level counters.
    pub struct DeviceStats {
        /// GSO super-frames received (TAP with `gso = true`).
        gso_frames,
        /// The largest frame received, in bytes.
        largest: max,
        /// Frames the kernel dropped because the reader fell behind (AF_PACKET ring
        /// overruns, TAP queue drops).
        kernel_drops,
    }
}

/// An enum whose values are counted apart: it knows its names and a dense index.
pub trait Reason: Copy {
    /// The names, in index order.
    const NAMES: &'static [&'static str];
    /// This value's index into [`NAMES`](Self::NAMES).
    fn index(self) -> usize;
}

impl Reason for Layer {
    const NAMES: &'static [&'static str] = &Layer::NAMES;
    #[inline]
    fn index(self) -> usize {
        Layer::index(self)
    }
}

impl Reason for Unsplit {
    const NAMES: &'static [&'static str] = &Unsplit::NAMES;
    #[inline]
    fn index(self) -> usize {
        Unsplit::index(self)
    }
}

/// Why a worker dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No route matched it.
    NoRoute,
    /// A provider (and its fallback) had no free buffer.
    Dry,
    /// A provider (and its fallback) faulted or is quarantined.
    Fault,
    /// The consumer's completion ring was full (after the wait, with `policy = "wait"`).
    ConsumerFull,
    /// The route delivers to a consumer and none was connected.
    NoConsumer,
    /// The consumer session already held its quota of buffers.
    ConsumerQuota,
    /// Delivered to a consumer that went away before reading it.
    ConsumerGone,
    /// The route forwards, and the device refused the frame (the error is logged once).
    TxError,
}

impl Reason for DropReason {
    const NAMES: &'static [&'static str] = &[
        "no_route",
        "dry",
        "fault",
        "consumer_full",
        "no_consumer",
        "consumer_quota",
        "consumer_gone",
        "tx_error",
    ];
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// The most reasons a [`Tally`] counts.
const TALLY_MAX: usize = 16;

/// Counts by reason: a fixed array indexed by [`Reason::index`], so counting is one
/// add. Serialises as a map of the non-zero counts by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally<K: Reason> {
    counts: [u64; TALLY_MAX],
    _kind: std::marker::PhantomData<K>,
}

impl<K: Reason> Default for Tally<K> {
    fn default() -> Self {
        const { assert!(K::NAMES.len() <= TALLY_MAX) };
        Tally {
            counts: [0; TALLY_MAX],
            _kind: std::marker::PhantomData,
        }
    }
}

impl<K: Reason> Tally<K> {
    /// Counts one.
    #[inline]
    pub fn add(&mut self, reason: K) {
        self.counts[reason.index()] += 1;
    }

    /// Counts `n`.
    pub fn add_n(&mut self, reason: K, n: u64) {
        self.counts[reason.index()] += n;
    }

    /// The count for `reason`.
    pub fn get(&self, reason: K) -> u64 {
        self.counts[reason.index()]
    }

    /// The count for the reason called `name` (0 for an unknown name).
    pub fn by_name(&self, name: &str) -> u64 {
        K::NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.counts[i])
    }

    /// The non-zero counts, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        K::NAMES
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (*name, n))
    }

    /// Every count added up.
    pub fn sum(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl<K: Reason> AddAssign for Tally<K> {
    fn add_assign(&mut self, other: Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

impl<K: Reason> Serialize for Tally<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// One provider instance's figures on one queue.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStats {
    /// The provider's name in the config.
    pub name: String,
    /// Buffers it supplied to frames, and the bytes placed in them.
    pub placed: Volume,
    /// Its pool's counters.
    pub pool: crate::pool::PoolStats,
    /// The host's checks' counters.
    pub checks: crate::provider::ProviderCounters,
    /// Buffers its fallback supplied because it was dry or faulted.
    pub fallbacks: u64,
    /// Frames dropped because it (and its fallback) had no buffer, or failed.
    pub dropped: Tally<DropReason>,
    /// 1 when this instance is quarantined (the total counts quarantined instances).
    pub quarantined: u64,
    /// What quarantined it.
    pub fault: Option<String>,
    /// Buffers that never came back to it (known at the end of a run).
    pub leaked: u64,
    /// True when it declares no memory region and runs only because the config trusts
    /// it (`unverified = true`): its buffer addresses go unchecked.
    pub unverified: bool,
}

impl AddAssign<&ProviderStats> for ProviderStats {
    fn add_assign(&mut self, other: &ProviderStats) {
        self.placed += other.placed;
        self.pool += other.pool;
        self.checks += other.checks;
        self.fallbacks += other.fallbacks;
        self.dropped += other.dropped;
        self.quarantined += other.quarantined;
        self.leaked += other.leaked;
        self.unverified |= other.unverified;
        if self.fault.is_none() {
            self.fault.clone_from(&other.fault);
        }
    }
}

/// Why a consumer session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disconnect {
    /// It said goodbye, or closed its socket (a killed process does this too).
    Left,
    /// It gave back a stale, foreign or forged buffer token.
    BadToken,
    /// It moved a ring index outside what the ring allows.
    BadIndex,
    /// It sent a message the host could not parse, or stopped reading its socket.
    BadMessage,
    /// The host stopped.
    Shutdown,
    /// It wrote a transmit entry that cannot be used (no parts, too many, or bytes
    /// outside their buffer).
    BadEntry,
}

impl Reason for Disconnect {
    const NAMES: &'static [&'static str] = &[
        "left",
        "bad_token",
        "bad_index",
        "bad_message",
        "shutdown",
        "bad_entry",
    ];
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

counters! {
    /// One consumer's delivery counters on one queue.
    pub struct DeliveryCounters {
        /// Frames delivered into the consumer's completion ring.
        frames,
        /// Bytes of those frames.
        bytes,
        /// Frames whose bytes were copied into the ring (`copy = true`).
        copied,
        /// Buffers lent to the consumer and not yet given back.
        lent: gauge,
        /// Buffers the consumer gave back through its refill ring.
        returned,
        /// Buffers taken back from sessions that ended.
        reclaimed,
        /// Frames delivered that the consumer never read before its session ended
        /// (also counted as dropped, `consumer_gone`).
        gone,
        /// Times a frame found the completion ring full.
        ring_full,
        /// Batches of entries published (once per vector that delivered something).
        batches,
        /// Wake-up system calls made (eventfd writes; at most one per batch, none for a
        /// consumer that polls).
        wakeups,
        /// Sessions connected now.
        sessions: gauge,
        /// Sessions started.
        sessions_started,
        /// Region announcements sent.
        regions_sent,
        /// Regions announced to a session that had already been delivered frames:
        /// memory added during the session.
        regions_late,
        /// Frames the consumer sent back out through its transmit ring (its verdict
        /// "forward", or a frame it made of buffers it held).
        transmitted,
        /// Bytes of those frames.
        transmitted_bytes,
        /// Frames from the transmit ring the device refused (their buffers came back
        /// all the same).
        tx_refused,
    }
}

/// One consumer's figures on one queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsumerStats {
    /// The consumer's name in the config.
    pub name: String,
    /// Its counters.
    #[serde(flatten)]
    pub counters: DeliveryCounters,
    /// Sessions ended, by reason.
    pub disconnects: Tally<Disconnect>,
}

impl AddAssign<&ConsumerStats> for ConsumerStats {
    fn add_assign(&mut self, other: &ConsumerStats) {
        self.counters += other.counters;
        self.disconnects += other.disconnects;
    }
}

/// A stage of a queue's worker, as [`StageTimes`] times it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The device's poll, up to the burst it returned.
    Device,
    /// Splitting every frame of a vector.
    Split,
    /// Routing every frame of a vector.
    Route,
    /// Taking buffers from the pools and copying the frames into them (and counting
    /// each placed frame for its route and its parts for their providers).
    Place,
    /// The vector's other counters (drops, fallbacks).
    Count,
    /// Frames handed to consumer processes or sent out of devices, and publishing them.
    Deliver,
    /// The in-process sink.
    Sink,
    /// The sink's buffers back to their pools.
    Recycle,
    /// Buffers consumers gave back, taken back from their refill rings (once per poll).
    Refill,
}

impl Stage {
    /// Every stage, in the order a burst meets them.
    pub const ALL: [Stage; 9] = [
        Stage::Device,
        Stage::Split,
        Stage::Route,
        Stage::Place,
        Stage::Count,
        Stage::Deliver,
        Stage::Sink,
        Stage::Recycle,
        Stage::Refill,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Device => "device",
            Stage::Split => "split",
            Stage::Route => "route",
            Stage::Place => "place",
            Stage::Count => "count",
            Stage::Deliver => "deliver",
            Stage::Sink => "sink",
            Stage::Recycle => "recycle",
            Stage::Refill => "refill",
        }
    }
}

/// Where a queue's time goes, stage by stage (`runtime.profile`): nanoseconds summed
/// over the bursts measured (one in [`PROFILE_EVERY`]), the cost of the clock reads
/// taken off, and the frames those bursts held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Frames in the bursts measured.
    pub frames: u64,
    /// Bursts measured.
    pub bursts: u64,
    /// Nanoseconds per stage, in [`Stage::ALL`] order.
    pub ns: [u64; Stage::ALL.len()],
}

/// `runtime.profile` measures one burst in this many: a handful of clock reads per
/// vector on it, none on the others.
pub const PROFILE_EVERY: u32 = 16;

impl StageTimes {
    /// Adds `ns` to `stage`.
    #[inline]
    pub fn add(&mut self, stage: Stage, ns: u64) {
        self.ns[stage as usize] += ns;
    }

    /// Nanoseconds per frame of each stage, in [`Stage::ALL`] order; `None` before any
    /// burst was measured.
    pub fn per_frame(&self) -> Option<[f64; Stage::ALL.len()]> {
        (self.frames > 0).then(|| self.ns.map(|n| n as f64 / self.frames as f64))
    }
}

impl AddAssign for StageTimes {
    fn add_assign(&mut self, o: StageTimes) {
        self.frames += o.frames;
        self.bursts += o.bursts;
        for (a, b) in self.ns.iter_mut().zip(o.ns) {
            *a += b;
        }
    }
}

/// What a queue decided about asking for its frames ahead of handling them (for a
/// device whose frames are likely out of cache; see `runtime/read_ahead.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReadAheadStats {
    /// Probes finished.
    pub probes: u64,
    /// Probes that chose to read ahead.
    pub chose_ahead: u64,
}

impl AddAssign for ReadAheadStats {
    fn add_assign(&mut self, o: ReadAheadStats) {
        self.probes += o.probes;
        self.chose_ahead += o.chose_ahead;
    }
}

/// One queue's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// The queue's name (`all` for a total).
    pub queue: String,
    /// Everything received.
    pub received: Volume,
    /// Frames split, by the layer they were split after.
    pub split: Tally<Layer>,
    /// Frames placed whole, by reason.
    pub unsplit: Tally<Unsplit>,
    /// Frames dropped, by reason.
    pub dropped: Tally<DropReason>,
    /// Buffers taken from a fallback provider.
    pub fallback: u64,
    /// Frames sent out of a device by routes that forward.
    pub forwarded: Volume,
    /// Per route rule.
    pub routes: Vec<Volume>,
    /// Per provider, in config order.
    pub providers: Vec<ProviderStats>,
    /// The sink's counters.
    pub sink: SinkCounters,
    /// Per consumer, in config order.
    pub consumers: Vec<ConsumerStats>,
    /// The device's counters.
    pub device: DeviceStats,
    /// Time per stage, with `runtime.profile` (all zero without).
    pub profile: StageTimes,
    /// Whether the queue asked for frames ahead of handling them, as it measured.
    pub read_ahead: ReadAheadStats,
}

impl AddAssign<&QueueStats> for QueueStats {
    fn add_assign(&mut self, q: &QueueStats) {
        self.received += q.received;
        self.split += q.split;
        self.unsplit += q.unsplit;
        self.dropped += q.dropped;
        self.fallback += q.fallback;
        self.forwarded += q.forwarded;
        add_each(&mut self.routes, &q.routes, |a, b| *a += *b);
        add_each(&mut self.providers, &q.providers, |a, b| *a += b);
        self.sink += q.sink;
        add_each(&mut self.consumers, &q.consumers, |a, b| *a += b);
        self.device += q.device;
        self.profile += q.profile;
        self.read_ahead += q.read_ahead;
    }
}

/// Adds `from` into `into` element-wise, growing `into` to `from`'s length.
fn add_each<T: Clone>(into: &mut Vec<T>, from: &[T], add: impl Fn(&mut T, &T)) {
    for (i, b) in from.iter().enumerate() {
        match into.get_mut(i) {
            Some(a) => add(a, b),
            None => into.push(b.clone()),
        }
    }
}

/// The queues' stats added up, named `all`.
pub fn total(queues: &[QueueStats]) -> QueueStats {
    let mut t = QueueStats::default();
    for q in queues {
        t += q;
    }
    t.queue = "all".into();
    t
}

/// One metric family for an exporter: a value per label set.
#[derive(Debug, Clone)]
pub struct Family {
    /// The name, without the `memplex_` prefix or a `_total` suffix.
    pub name: String,
    /// The help text.
    pub help: String,
    /// Counter or gauge.
    pub kind: Kind,
    /// Label sets and values.
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Every counter of `queues` as metric families, labelled by queue (and provider,
/// reason or layer): what the Prometheus endpoint serves, derived from the same
/// definitions as the JSON.
pub fn families(queues: &[QueueStats]) -> Vec<Family> {
    let mut out = Families(Vec::new());
    for q in queues {
        let queue = || vec![("queue", q.queue.clone())];
        let with = |key, value: String| {
            let mut l = queue();
            l.push((key, value));
            l
        };
        out.counter("frames", "Frames received.", queue(), q.received.frames);
        out.counter("bytes", "Bytes received.", queue(), q.received.bytes);
        for (layer, n) in q.split.iter() {
            let help = "Frames split, by the layer split after.";
            out.counter("split", help, with("layer", layer.into()), n);
        }
        for (reason, n) in q.unsplit.iter() {
            let help = "Frames placed whole, by reason.";
            out.counter("unsplit", help, with("reason", reason.into()), n);
        }
        for (reason, n) in q.dropped.iter() {
            let help = "Frames dropped, by reason.";
            out.counter("dropped", help, with("reason", reason.into()), n);
        }
        let help = "Buffers taken from a fallback provider.";
        out.counter("fallback", help, queue(), q.fallback);
        let help = "Probes of whether asking for a replay's frames ahead pays, finished.";
        out.counter("read_ahead_probes", help, queue(), q.read_ahead.probes);
        let help = "Probes that chose to ask for a replay's frames ahead.";
        out.counter("read_ahead_chosen", help, queue(), q.read_ahead.chose_ahead);
        let help = "Frames sent out of a device by routes that forward.";
        out.counter("forwarded_frames", help, queue(), q.forwarded.frames);
        let help = "Bytes sent out of a device by routes that forward.";
        out.counter("forwarded_bytes", help, queue(), q.forwarded.bytes);
        for (i, r) in q.routes.iter().enumerate() {
            let l = with("route", i.to_string());
            out.counter(
                "route_frames",
                "Frames a route placed.",
                l.clone(),
                r.frames,
            );
            out.counter("route_bytes", "Bytes a route placed.", l, r.bytes);
        }
        for p in &q.providers {
            let l = with("provider", p.name.clone());
            let help = "Buffers a provider supplied.";
            out.counter("provider_buffers", help, l.clone(), p.placed.frames);
            let help = "Bytes placed in a provider's buffers.";
            out.counter("provider_bytes", help, l.clone(), p.placed.bytes);
            let help = "Buffers a provider's fallback supplied because it was dry or faulted.";
            out.counter("provider_fallbacks", help, l.clone(), p.fallbacks);
            for (reason, n) in p.dropped.iter() {
                let mut l = l.clone();
                l.push(("reason", reason.into()));
                let help = "Frames dropped because a provider (and its fallback) failed them.";
                out.counter("provider_dropped", help, l, n);
            }
            let help = "1 when a provider runs unverified: no declared memory region, trusted by the config.";
            out.add(
                "provider_unverified".into(),
                help,
                Kind::Gauge,
                l.clone(),
                u64::from(p.unverified),
            );
            let help = "1 while a provider instance is quarantined.";
            out.add(
                "provider_quarantined".into(),
                help,
                Kind::Gauge,
                l.clone(),
                p.quarantined,
            );
            let help = "Buffers that never came back to a provider (at the end of a run).";
            out.add(
                "provider_leaked".into(),
                help,
                Kind::Gauge,
                l.clone(),
                p.leaked,
            );
            out.all("pool", crate::pool::PoolStats::FIELDS, p.pool.values(), &l);
            let checks = crate::provider::ProviderCounters::FIELDS;
            out.all("provider", checks, p.checks.values(), &l);
        }
        out.all("sink", SinkCounters::FIELDS, q.sink.values(), &queue());
        for c in &q.consumers {
            let l = with("consumer", c.name.clone());
            out.all(
                "consumer",
                DeliveryCounters::FIELDS,
                c.counters.values(),
                &l,
            );
            for (reason, n) in c.disconnects.iter() {
                let mut l = l.clone();
                l.push(("reason", reason.into()));
                let help = "Consumer sessions ended, by reason.";
                out.counter("consumer_disconnects", help, l, n);
            }
        }
        out.all("device", DeviceStats::FIELDS, q.device.values(), &queue());
    }
    out.0
}

/// Families being gathered, each sample added to the family of its name.
struct Families(Vec<Family>);

type Labels = Vec<(&'static str, String)>;

impl Families {
    fn add(&mut self, name: String, help: &str, kind: Kind, labels: Labels, v: u64) {
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, v)),
            None => self.0.push(Family {
                name,
                help: help.to_string(),
                kind,
                samples: vec![(labels, v)],
            }),
        }
    }

    fn counter(&mut self, name: &str, help: &str, labels: Labels, v: u64) {
        self.add(name.to_string(), help, Kind::Counter, labels, v);
    }

    /// Every field of a [`counters!`](crate::counters) struct, as `PREFIX_FIELD`.
    fn all(
        &mut self,
        prefix: &str,
        fields: &[(&str, &str, Kind)],
        values: impl Iterator<Item = u64>,
        labels: &Labels,
    ) {
        for ((name, help, kind), v) in fields.iter().zip(values) {
            self.add(format!("{prefix}_{name}"), help, *kind, labels.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_serialise_from_one_definition() {
        let mut a = DeviceStats {
            gso_frames: 2,
            largest: 100,
            kernel_drops: 1,
        };
        a += DeviceStats {
            gso_frames: 3,
            largest: 60,
            kernel_drops: 0,
        };
        assert_eq!((a.gso_frames, a.largest, a.kernel_drops), (5, 100, 1));
        assert_eq!(DeviceStats::FIELDS[1].0, "largest");
        assert!(DeviceStats::FIELDS[1].1.starts_with("The largest frame"));
        assert_eq!(DeviceStats::FIELDS[1].2, Kind::Gauge);
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["gso_frames"], 5);
    }

    #[test]
    fn tallies_count_by_the_enums_own_names() {
        let mut t = Tally::<Unsplit>::default();
        t.add(Unsplit::Truncated(Layer::L3));
        t.add(Unsplit::Truncated(Layer::L3));
        t.add(Unsplit::TooDeep(Layer::L3));
        assert_eq!(t.by_name("truncated_l3"), 2);
        assert_eq!(
            t.get(Unsplit::TooDeep(Layer::L2)),
            1,
            "one reason whatever the layer"
        );
        let json = serde_json::to_value(t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"too_many_headers": 1, "truncated_l3": 2})
        );
    }

    #[test]
    fn totals_add_every_queue_and_families_label_each() {
        let q = |name: &str, frames| QueueStats {
            queue: name.into(),
            received: Volume {
                frames,
                bytes: frames * 100,
            },
            routes: vec![Volume { frames, bytes: 1 }],
            ..QueueStats::default()
        };
        let t = total(&[q("q0", 3), q("q1", 4)]);
        assert_eq!(
            (t.queue.as_str(), t.received.frames, t.routes[0].frames),
            ("all", 7, 7)
        );
        let fams = families(&[q("q0", 3), q("q1", 4)]);
        let frames = fams.iter().find(|f| f.name == "frames").unwrap();
        assert_eq!(frames.samples.len(), 2);
        assert_eq!(frames.samples[1], (vec![("queue", "q1".to_string())], 4));
    }
}
