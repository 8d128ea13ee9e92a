//! One receive queue's worker: a burst at a time, split every frame, route it, place it
//! in its providers' buffers, hand the burst to the sink, take the buffers back.
//!
//! ```text
//!  &[RxFrame] --split_into--> splits[i] --route--> (rule, Route)
//!      |                                               |
//!      '------ place: head pool, frag pools (one copy each byte) -> parts
//!                                                      |
//!                         Sink::consume(&PlacedBurst) <' --> recycle (cache)
//! ```
//!
//! The worker owns its pools, so nothing here locks; the per-frame path allocates nothing
//! (the split, part and staging arrays are reused burst to burst) and calls a provider
//! only on a pool's slow path. A provider that runs dry makes the worker drop the frame
//! or wait, bounded, as configured, then try the provider's fallback.

use super::frame::{Gather, OwnedFrame, Part, PlacedBurst, Staged};
use super::read_ahead::ReadAhead;
use super::{RunControl, RunError, Sink};
use crate::config::OnDry;
use crate::deliver::{LaneHead, Lanes, PlaceAndLend, QueueDelivery, RunFrame};
use crate::device::{Poll, RxFrame, RxQueue, TxQueue, BURST};
use crate::pool::{Pool, PoolBuf, PoolErrorKind, Recycler};
use crate::provider::Gathering;
use crate::route::RouteTable;
use crate::stats::{DropReason, ProviderStats, QueueStats, Stage, Volume, PROFILE_EVERY};
use crate::wire::{Split, SplitMode, Splitter};
use memplex_abi::{Capabilities, FillOp, GatherOp};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A buffer that could not be had (after the fallback too), or bytes that could not be
/// placed: why, and the provider the route named.
#[derive(Clone, Copy)]
struct NoBuffer {
    reason: DropReason,
    provider: usize,
}

/// Frames processed together: a device's burst (up to [`BURST`]) is split, routed,
/// placed, handed to the sink and recycled in vectors of this many.
///
/// Measured (in-memory replay, l4 split, 1500 B TCP, against the frame-at-a-time loop
/// this replaced): whole 64-frame vectors were 6% slower, because 64 frames' destination
/// buffers (150 KB with their sources) do not stay in L1 while the copy runs; vectors of
/// 4 to 8 matched it at 1500 B and at 128 B. Devices still hand over 64 at a time, so
/// their per-poll costs (a clock read, a system call) stay spread over the whole burst.
/// Vectors of 16 (AMD EPYC family 25, session 23) ran 13 fewer instructions a frame at
/// 128 B (363 to 350) but placed no faster: x1.026 at 128 B and x1.002 at 1500 B, 3 of
/// 6 pairs each, the memcpy loop x1.015 and x1.062 in the same pairs. Again with the
/// vector runs (AMD EPYC family 23 model 1, session 44): 16 and 32 frames cut the
/// instructions a frame to 241 and 230 at 128 B (from 264; `cargo xtask instructions`)
/// and to 476 and 459 at 1500 B (from 511), yet the criterion `place` bench placed no
/// faster, 3 runs of each build alternating: at 128 B 62.1-64.1 ns a frame with 8,
/// 65.6-67.6 with 16, 62.5-65.0 with 32. What a vector saves is work the CPU overlapped.
///
/// A worker whose routes place into memory the host may not write, filled by a native
/// provider's `fill_gather` ([`Gathering::Bursts`]), takes the whole burst as one vector
/// instead ([`Worker::vector`]): one call per burst and provider, where a provider of
/// device memory submits its transfers.
pub(super) const VECTOR: usize = 8;

// `QueueDelivery::place_and_lend` says which frames of a vector it took in a `u64`, and
// `fill_gathered` which failed.
const _: () = assert!(VECTOR <= 64 && BURST <= 64);

/// One queue's worker.
pub(super) struct Worker {
    pub name: String,
    pub splitter: Splitter,
    pub routes: RouteTable,
    pub pools: Vec<Pool>,
    pub fallback: Arc<[Option<usize>]>,
    pub on_dry: OnDry,
    pub wait: Duration,
    pub sink: Box<dyn Sink>,
    pub recyclers: Arc<[Recycler]>,
    /// This burst's split decisions, reused burst to burst (see `Splitter::split_into`).
    pub splits: Box<[Split]>,
    /// This burst's placed frames.
    pub staged: Vec<Staged>,
    /// This burst's buffers, frame after frame.
    pub parts: Vec<Part>,
    /// The runs this vector's [`place_whole_run`](Self::place_whole_run) or
    /// [`place_split_run`](Self::place_split_run) took from the caches, while they may
    /// still go back as they came ([`TakenRuns`]).
    pub taken_runs: Option<TakenRuns>,
    /// Why this vector's unplaced frames were dropped, and which provider failed them.
    pub drops: arrayvec::ArrayVec<(DropReason, Option<usize>), BURST>,
    /// Frames per vector: [`VECTOR`], or the whole burst when a route places into memory
    /// the host may not write whose provider gathers a burst at a time
    /// ([`Gathering::Bursts`]: one `fill_gather` per burst).
    pub vector: usize,
    /// Providers whose fallback supplied a buffer in this vector, once per buffer.
    pub fell_back: Vec<usize>,
    /// Why the last `take` found no buffer.
    pub short: DropReason,
    /// Counters; the pools' and checkers' own are filled in by `snapshot`.
    pub stats: QueueStats,
    /// Delivery to consumer processes, when the config has consumers.
    pub delivery: Option<QueueDelivery>,
    /// One delivered frame's parts, and the spare lists frames kept for the sink are
    /// moved into (swapped, so nothing is allocated per vector).
    pub frame_parts: Vec<Part>,
    pub kept_parts: Vec<Part>,
    /// The parts of the frame being placed that wait for one `fill_bulk`.
    pub fill_ops: Vec<FillOp>,
    /// The parts of this vector that wait for one `fill_gather` per provider.
    pub gathers: Vec<Gather>,
    pub kept_staged: Vec<Staged>,
    /// The device this queue belongs to (its index in the config), and the queue's
    /// index among that device's queues.
    pub device: u16,
    pub queue: usize,
    /// Transmitters by device, then queue, for routes that forward (empty when none do).
    pub tx: Arc<[Vec<Arc<dyn TxQueue>>]>,
    /// A transmit error has been logged (once per worker; the rest are counted).
    pub tx_error_logged: bool,
    /// This vector's route decisions, made for all its frames before any is placed.
    pub routed: Vec<Option<usize>>,
    /// For [`place_direct_run`](Self::place_direct_run): each frame's head provider and
    /// first frag provider, read from its rule before the run starts.
    pub run_providers: Vec<[usize; 2]>,
    /// Per rule: the most head bytes that go inline into a consumer's ring rather than
    /// into a buffer, for a route that delivers a head whose provider cannot share its
    /// memory. Such a head is copied from the frame straight into the ring: placed in a
    /// buffer first, it was a buffer taken, filled and given back per frame for bytes
    /// nobody reads there.
    pub inline_heads: Vec<Option<usize>>,
    /// Per rule: every part it places goes to memory the host writes (its providers and
    /// the fallbacks they draw on when dry) and no head goes inline, so its frames take
    /// [`Worker::place_direct`].
    pub direct: Vec<bool>,
    /// Every rule is [`direct`](Self::direct): a vector nothing took before placement
    /// starts in [`Worker::place_direct_run`].
    pub all_direct: bool,
    /// Per rule: the consumer its frames go to in runs ([`QueueDelivery::deliver_run`]),
    /// for a route that delivers without copying or forwarding.
    pub runs_to: Vec<Option<u16>>,
    /// Per rule: how [`QueueDelivery::place_and_lend`] places and delivers its frames
    /// in one pass, for a route that delivers without copying or forwarding into memory
    /// the host writes and a consumer maps (its head inline, or lent from such memory
    /// too).
    pub lanes: Lanes,
    /// Timing of stages, with `runtime.profile`.
    pub profiler: Option<Profiler>,
    /// Whether to ask for the next vector's frames ahead, measured per queue (for a
    /// device whose frames are likely out of cache: [`RxQueue::frames_cold`]).
    pub(crate) read_ahead: ReadAhead,
}

/// Times the stages of one burst in [`PROFILE_EVERY`] (`runtime.profile`): a clock read
/// at each stage's end, its cost (measured at start) taken off each interval.
pub(super) struct Profiler {
    /// Polls until the next burst measured.
    countdown: u32,
    /// Measuring this burst.
    on: bool,
    /// The last clock reading.
    mark: Instant,
    /// What one clock read costs, in ns.
    clock_ns: u64,
}

/// The buffers a run took from the top of a pool's cache for a vector's heads
/// ([`Pool::take_cached_run`]), and for a split run those it took from another's for
/// their payloads, listed in `parts` from `first` on in the runs' order: a part a frame
/// for frames placed whole, pairs for frames split in two.
///
/// Taking a run only moves a cache's count: its buffers stay in their slots. So while
/// nothing has been given back to either pool since, and the parts are still those of
/// the runs, giving them all back is moving each count back ([`Pool::untake_run`]), not
/// a store per buffer: the state a [`Pool::recycle_run`] of the same buffers would
/// leave. Only a vector's sink looks at its parts in between, through shared
/// references; whatever moves parts or buffers otherwise (a delivery, a forward, a sink
/// that takes the frames) clears the record first, and the counts and the list's
/// length are tested again when it is used.
#[derive(Debug, Clone, Copy)]
pub(super) struct TakenRuns {
    /// The heads' pool, and the count its cache was left with.
    head: (usize, usize),
    /// The payloads' pool and count, for frames split in two.
    frag: Option<(usize, usize)>,
    first: usize,
    n: usize,
}

impl Profiler {
    pub(super) fn new() -> Profiler {
        // The median of a few batches of reads: what each interval carries in excess.
        let mut per = [0u64; 9];
        for p in &mut per {
            let t = Instant::now();
            for _ in 0..64 {
                std::hint::black_box(Instant::now());
            }
            *p = t.elapsed().as_nanos() as u64 / 64;
        }
        per.sort_unstable();
        Profiler {
            countdown: 0,
            on: false,
            mark: Instant::now(),
            clock_ns: per[per.len() / 2],
        }
    }
}

impl Worker {
    /// A worker over `pools`, counting into stats named `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        splitter: Splitter,
        routes: RouteTable,
        pools: Vec<Pool>,
        provider_names: &[String],
        fallback: Arc<[Option<usize>]>,
        on_dry: OnDry,
        wait: Duration,
        sink: Box<dyn Sink>,
        delivery: Option<QueueDelivery>,
    ) -> Worker {
        let recyclers = pools.iter().map(Pool::recycler).collect();
        let runs_to: Vec<Option<u16>> = (0..routes.len())
            .map(|i| {
                let r = routes.get(i);
                r.deliver.filter(|_| r.forward.is_none() && !r.copy)
            })
            .collect();
        let inline_heads: Vec<Option<usize>> = (0..routes.len())
            .map(|i| {
                let r = routes.get(i);
                let head = pools.get(r.head)?.provider();
                (delivery.is_some()
                    && r.deliver.is_some()
                    && r.forward.is_none()
                    && head.not_exportable().is_some())
                .then(|| head.info().buf_size as usize)
            })
            .collect();
        // A buffer comes from a provider's pool or, when that is dry, from its fallback's
        // (one step: `take_slow`).
        let writable = |p: usize| {
            let host_writes = |p: usize| {
                pools
                    .get(p)
                    .is_some_and(|pool| pool.caps().contains(Capabilities::HOST_WRITABLE))
            };
            host_writes(p) && fallback.get(p).copied().flatten().is_none_or(host_writes)
        };
        let direct: Vec<bool> = (0..routes.len())
            .zip(&inline_heads)
            .map(|(i, inline)| {
                let r = routes.get(i);
                inline.is_none() && [r.head, r.frags, r.frags_rest].into_iter().all(writable)
            })
            .collect();
        // Memory the host writes and a consumer may map.
        let lendable = |p: usize| {
            pools.get(p).is_some_and(|pool| {
                pool.caps().contains(Capabilities::HOST_WRITABLE)
                    && pool.provider().not_exportable().is_none()
            })
        };
        let lanes = Lanes::new((0..routes.len()).map(|i| {
            let r = routes.get(i);
            let delivers = r.deliver.filter(|_| r.forward.is_none());
            let consumer = runs_to[i].filter(|_| lendable(r.frags));
            let head = match inline_heads[i] {
                Some(inline) => Some(LaneHead::Inline(inline)),
                None => lendable(r.head).then_some(LaneHead::Lent(r.head)),
            };
            let lane = consumer.zip(head).map(|(consumer, head)| PlaceAndLend {
                consumer,
                pool: r.frags,
                head,
            });
            (delivers, lane)
        }));
        // Memory filled by `fill_gather` a burst at a time, placed into by some route (or
        // by a fallback).
        let gathered = |p: usize| {
            pools.get(p).is_some_and(|pool| {
                !pool.caps().contains(Capabilities::HOST_WRITABLE)
                    && pool.provider().gathering() == Gathering::Bursts
            })
        };
        let vector = if (0..routes.len()).any(|i| {
            let r = routes.get(i);
            [r.head, r.frags, r.frags_rest]
                .into_iter()
                .any(|p| gathered(p) || fallback.get(p).copied().flatten().is_some_and(gathered))
        }) {
            BURST
        } else {
            VECTOR
        };
        let stats = QueueStats {
            queue: name.clone(),
            routes: vec![Default::default(); routes.len()],
            providers: provider_names
                .iter()
                .zip(&pools)
                .map(|(n, pool)| ProviderStats {
                    name: n.clone(),
                    placed: Default::default(),
                    pool: pool.stats(),
                    checks: pool.provider().counters(),
                    fallbacks: 0,
                    dropped: Default::default(),
                    quarantined: 0,
                    fault: None,
                    leaked: 0,
                    unverified: pool.provider().is_unverified(),
                })
                .collect(),
            ..QueueStats::default()
        };
        Worker {
            name,
            splitter,
            routes,
            pools,
            fallback,
            on_dry,
            wait,
            sink,
            recyclers,
            splits: vec![Split::default(); BURST].into_boxed_slice(),
            staged: Vec::with_capacity(BURST),
            parts: Vec::with_capacity(BURST * 4),
            taken_runs: None,
            drops: arrayvec::ArrayVec::new(),
            vector,
            fell_back: Vec::with_capacity(BURST * 4),
            short: DropReason::Dry,
            stats,
            delivery,
            frame_parts: Vec::with_capacity(BURST * 4),
            kept_parts: Vec::with_capacity(BURST * 4),
            fill_ops: Vec::with_capacity(64),
            gathers: Vec::with_capacity(4 * BURST),
            kept_staged: Vec::with_capacity(BURST),
            device: 0,
            queue: 0,
            tx: Arc::from(Vec::new()),
            tx_error_logged: false,
            routed: Vec::with_capacity(BURST),
            run_providers: Vec::with_capacity(BURST),
            inline_heads,
            all_direct: direct.iter().all(|&d| d),
            direct,
            runs_to,
            lanes,
            profiler: None,
            read_ahead: ReadAhead::new(false),
        }
    }

    /// Decides, before a poll, whether the burst it brings is timed; starts the clock.
    #[inline]
    fn profile_poll(&mut self) {
        if let Some(p) = self.profiler.as_mut() {
            p.on = p.countdown == 0;
            p.countdown = if p.on {
                PROFILE_EVERY - 1
            } else {
                p.countdown - 1
            };
            if p.on {
                p.mark = Instant::now();
            }
        }
    }

    /// Ends a timed stage: the time since the last mark goes to `stage`.
    #[inline]
    fn lap(&mut self, stage: Stage) {
        if let Some(p) = self.profiler.as_mut().filter(|p| p.on) {
            let now = Instant::now();
            let ns = now.duration_since(p.mark).as_nanos() as u64;
            self.stats.profile.add(stage, ns.saturating_sub(p.clock_ns));
            p.mark = now;
        }
    }

    /// Handles a device's burst in vectors of [`VECTOR`] frames.
    pub fn handle(&mut self, burst: &[RxFrame<'_>]) {
        if self.profiler.as_ref().is_some_and(|p| p.on) {
            self.lap(Stage::Device);
            self.stats.profile.frames += burst.len() as u64;
            self.stats.profile.bursts += 1;
        }
        // For a device whose frames are likely out of cache (`RxQueue::frames_cold`: a
        // replay larger than L2), the CPU is asked for lines of the next vector's frames
        // before a vector is handled, so the next split and copies find them near:
        //
        // - Every line of them (up to 4 KiB a frame, into L2) when the queue has measured
        //   that this pays on the CPU at hand (`read_ahead.rs`). With frames in L2 it
        //   only lost (`cargo xtask ab` on the AMD EPYC of family 25 model 17, 8 pairs:
        //   x1.28 without it at 1500 B over 64 flows, 8 won; x1.16 at 128 B, 7 won),
        //   most of its cost the prefetch instructions themselves; prefetching only the
        //   headers' line lost 3.5% there against none.
        // - Otherwise their first two lines, where the split reads and the copies start
        //   ([`prefetch_head`]), which the split would wait for one frame at a time.
        let timed = self.read_ahead.timing().then(Instant::now);
        let (all, heads) = (self.read_ahead.on(), self.read_ahead.cold());
        if all || heads {
            let ask = |vector: Option<&&[RxFrame<'_>]>| {
                for frame in vector.copied().unwrap_or_default() {
                    match all {
                        true => memplex_proto::ring::prefetch_bytes_to_l2(frame.data),
                        false => prefetch_head(frame.data),
                    }
                }
            };
            let mut vectors = burst.chunks(self.vector).peekable();
            ask(vectors.peek());
            while let Some(vector) = vectors.next() {
                ask(vectors.peek());
                self.handle_vector(vector);
            }
        } else {
            for vector in burst.chunks(self.vector) {
                self.handle_vector(vector);
            }
        }
        // Deliveries are published once per burst: the index line crosses to the
        // consumer's core once, not once per vector.
        if let Some(d) = self.delivery.as_mut() {
            d.flush();
            self.lap(Stage::Deliver);
        }
        if let Some(start) = timed {
            let bytes = burst.iter().map(|f| f.data.len() as u64).sum();
            self.read_ahead.handled(start.elapsed(), bytes);
        }
    }

    /// Handles one vector: split and route every frame, place them, hand the placed ones
    /// to the sink, recycle their buffers.
    fn handle_vector(&mut self, burst: &[RxFrame<'_>]) {
        debug_assert!(burst.len() <= BURST);
        self.taken_runs = None;
        // The split mode decided once for the vector, for the modes configs use most.
        let bytes = match self.splitter.mode {
            SplitMode::L4 => self.split_vector(SplitMode::L4, burst),
            SplitMode::App => self.split_vector(SplitMode::App, burst),
            mode => self.split_vector(mode, burst),
        };
        self.stats.received.frames += burst.len() as u64;
        self.stats.received.bytes += bytes;
        self.lap(Stage::Split);
        // Every frame is routed before any is placed.
        self.routed.clear();
        let (routes, device) = (&self.routes, self.device);
        // An exact-size run: one capacity check for the vector, not one per frame.
        self.routed.extend(
            self.splits[..burst.len()]
                .iter()
                .map(|split| routes.rule(&split.meta, device)),
        );
        self.lap(Stage::Route);
        // The frames the pass can take for the vector's first consumer, placed and
        // delivered at once (their metadata entries right after); the rest go the general
        // way below.
        let taken = match self.delivery.as_mut() {
            Some(d) if self.lanes.any() => {
                let splits = &self.splits[..burst.len()];
                let took = d.place_and_lend(
                    burst,
                    splits,
                    &self.routed,
                    &self.lanes,
                    &mut self.pools,
                    &mut self.stats,
                );
                if took.metadata && took.frames != 0 {
                    d.stage_meta_of_taken(took.frames, burst, splits, &self.routed, &self.lanes);
                }
                took.frames
            }
            _ => 0,
        };
        // A provider quarantined while the vector was placed may hold parts of frames
        // placed before it faulted: place the whole vector again, so they complete on the
        // fallback. Each round needs a new provider to fault, so this ends. (The frames
        // placed and delivered above took buffers from caches only, calling no provider.)
        let mut quarantined = self.quarantined();
        for _ in 0..=self.pools.len() {
            let ran = match taken == 0 && self.all_direct {
                true => self.place_direct_run(burst),
                false => 0,
            };
            if ran < burst.len() {
                // Frames `..ran` are placed: the general loop skips them as taken.
                self.place_vector(burst, taken | ((1u64 << ran) - 1));
            }
            let now = self.quarantined();
            if now == quarantined {
                break;
            }
            quarantined = now;
            // What this round placed was counted as it was placed: not any more.
            for s in &self.staged {
                self.stats.routes[s.rule()].undo(burst[s.rx()].data.len());
            }
            for part in &self.parts {
                self.stats.providers[part.provider].placed.undo(part.len);
            }
            self.recycle_from(0);
            self.staged.clear();
            self.drops.clear();
            self.fell_back.clear();
        }
        self.lap(Stage::Place);
        for &(reason, provider) in &self.drops {
            self.stats.dropped.add(reason);
            if let Some(p) = provider {
                self.stats.providers[p].dropped.add(reason);
            }
        }
        self.drops.clear();
        for &p in &self.fell_back {
            self.stats.fallback += 1;
            self.stats.providers[p].fallbacks += 1;
        }
        self.fell_back.clear();
        self.lap(Stage::Count);
        if (self.delivery.is_some() || !self.tx.is_empty())
            && self.staged.iter().any(|s| {
                let r = self.routes.get(s.rule());
                r.deliver.is_some() || r.forward.is_some()
            })
        {
            self.dispatch_staged(burst);
            self.lap(Stage::Deliver);
        }
        if self.staged.is_empty() {
            return;
        }
        if self.sink.takes_frames() {
            self.hand_over(burst);
            self.lap(Stage::Sink);
        } else {
            self.sink.consume(&PlacedBurst {
                rx: burst,
                splits: &self.splits,
                staged: &self.staged,
                parts: &self.parts,
                pools: &self.pools,
            });
            self.lap(Stage::Sink);
            self.recycle_from(0);
            self.lap(Stage::Recycle);
        }
        self.staged.clear();
    }

    /// Splits every frame of a vector as `mode` says (a constant where the caller
    /// knows it, so the decision's dispatch on the mode folds away), and counts the
    /// outcomes; the vector's bytes.
    ///
    /// Received frames are counted once per vector by the caller: a frame's count and
    /// bytes added in registers, not read from and written back to the counters a frame.
    #[inline(always)]
    fn split_vector(&mut self, mode: SplitMode, burst: &[RxFrame<'_>]) -> u64 {
        let Worker {
            splitter,
            splits,
            stats,
            ..
        } = self;
        let mut bytes = 0;
        // Zipped, not indexed: no bound tested a frame, no base reloaded.
        for (frame, split) in burst.iter().zip(splits.iter_mut()) {
            bytes += frame.data.len() as u64;
            splitter.split_into_as(mode, frame.data, split);
            match split.outcome {
                Ok(layer) => stats.split.add(layer),
                Err(reason) => stats.unsplit.add(reason),
            }
        }
        bytes
    }

    /// Sends the staged frames whose route forwards out of their device, hands those
    /// whose route delivers to their consumer, and keeps the others (staged and parts,
    /// renumbered) for the sink. Deliveries are published by `handle`, once per burst.
    fn dispatch_staged(&mut self, burst: &[RxFrame<'_>]) {
        self.taken_runs = None;
        self.kept_parts.clear();
        self.kept_staged.clear();
        let mut parts = self.parts.drain(..);
        let staged = std::mem::take(&mut self.staged);
        let mut i = 0;
        while let Some(s) = staged.get(i).cloned() {
            i += 1;
            let n = s.parts().len();
            let route = self.routes.get(s.rule());
            let result = match (route.forward, route.deliver, self.delivery.as_mut()) {
                // This frame and those right after it that go to the same consumer, in
                // one run.
                (None, Some(consumer), Some(d)) if !route.copy => {
                    let runs_to = &self.runs_to;
                    let end = i + staged[i..]
                        .iter()
                        .take_while(|t| runs_to[t.rule()] == Some(consumer))
                        .count();
                    let (splits, heads) = (&self.splits, &self.inline_heads);
                    let run = staged[i - 1..end].iter().map(|t| RunFrame {
                        frame: &burst[t.rx()],
                        split: &splits[t.rx()],
                        rule: t.rule(),
                        skipped: left_for_ring(
                            heads[t.rule()],
                            splits[t.rx()].head_len,
                            burst[t.rx()].data.len(),
                        ),
                        n: t.parts().len(),
                    });
                    d.deliver_run(
                        consumer,
                        run,
                        &mut parts,
                        &mut self.pools,
                        &mut self.stats.dropped,
                    );
                    i = end;
                    Ok(())
                }
                (Some(to), _, _) => {
                    self.frame_parts.clear();
                    self.frame_parts.extend(parts.by_ref().take(n));
                    let tx = self.tx[usize::from(to.to(self.device))].as_slice();
                    let out = &tx[self.queue % tx.len()];
                    let sent = transmit(&**out, &burst[s.rx()], &self.frame_parts);
                    for p in self.frame_parts.drain(..) {
                        let _ = self.pools[p.provider].recycle(p.buf);
                    }
                    match sent {
                        Ok(()) => {
                            self.stats.forwarded.add(burst[s.rx()].data.len());
                            Ok(())
                        }
                        Err(e) => {
                            if !self.tx_error_logged {
                                self.tx_error_logged = true;
                                tracing::warn!(device = out.name(), "a forwarded frame was refused: {e} (further refusals are counted as dropped tx_error)");
                            }
                            Err(DropReason::TxError)
                        }
                    }
                }
                (None, Some(consumer), Some(d)) => d.deliver(
                    consumer,
                    route.copy,
                    &burst[s.rx()],
                    &self.splits[s.rx()],
                    s.rule(),
                    left_for_ring(
                        self.inline_heads[s.rule()],
                        self.splits[s.rx()].head_len,
                        burst[s.rx()].data.len(),
                    ),
                    &mut parts,
                    n,
                    &mut self.pools,
                ),
                _ => {
                    let first = self.kept_parts.len();
                    self.kept_parts.extend(parts.by_ref().take(n));
                    self.kept_staged
                        .push(s.with_parts(first..self.kept_parts.len()));
                    Ok(())
                }
            };
            if let Err(reason) = result {
                self.stats.dropped.add(reason);
            }
        }
        drop(parts);
        let mut staged = staged;
        staged.clear();
        std::mem::swap(&mut self.parts, &mut self.kept_parts);
        self.staged = std::mem::replace(&mut self.kept_staged, staged);
    }

    /// Places the vector's frames in order while each one's rule is direct and every
    /// buffer it needs is in its pool's cache; the number placed (`burst.len()` when
    /// all were). A frame it stops at is left as it found it, for
    /// [`place_vector`](Self::place_vector) to place or drop.
    ///
    /// The worker's fields are borrowed apart, so the loop walks the vector's frames,
    /// splits and route decisions together, with no index to check, and needs no
    /// `taken` bit or per-rule `direct` flag per frame. A frame no rule matches is
    /// dropped here and the run goes on.
    ///
    /// Measured on the AMD EPYC of family 23 model 49 (session 36): tcp-split at 128 B
    /// from 333 to 315 instructions a frame (`cargo xtask instructions`; 9 of the 18 are
    /// the counters, see [`put`]), and x1.021 frames placed at 128 B (4 of 4 pairs; the
    /// memcpy loop x1.012 in the same pairs) and x1.013 at 1500 B (2 of 4; memcpy x1.046)
    /// (`cargo xtask ab`, 4096 flows).
    ///
    /// A vector that is all one kind, every frame of one rule placed whole or split in
    /// two, goes in one run ([`place_whole_run`](Self::place_whole_run),
    /// [`place_split_run`](Self::place_split_run)) before any of this is tried.
    ///
    /// Each frame's head and first frag provider are read from its rule in a loop of
    /// their own before the run ([`Worker::run_providers`]): in the run, a frame's pop
    /// then waits on one load for its pool's index, not on the route decision, then the
    /// rule, then its provider. x1.016 at 128 B and x1.01 at 1500 B (5 alternating runs
    /// of each build, session 37), with 21 more instructions a frame: on this CPU the
    /// time is in the chains of loads and stores, not in the count of instructions.
    ///
    /// Tried and dropped: taking every frame's head buffer first, in one tight loop, so
    /// the copies wait on no chain of loads (route, pool, cache). It ran 10% slower at
    /// 128 B: the buffers moved through the stack, and the pops had not been waiting.
    /// Taking only the next frame's head buffer before this frame's copies (session 37)
    /// ran 13% slower: 228 instructions a frame against 157, the buffer held across the
    /// loop spilled with much else. So did taking each head buffer from a run of the
    /// cache reserved for the vector, the count moved once at its end (27.2 against
    /// 31.4 Mpps): the run's index and the rule's providers went through the stack.
    #[inline(never)]
    fn place_direct_run(&mut self, burst: &[RxFrame<'_>]) -> usize {
        // The first frame says which run the vector may be: whole or split in two.
        let whole = match (burst.first(), self.splits.first()) {
            (Some(frame), Some(split)) => split.head_len >= frame.data.len(),
            _ => false,
        };
        let ran = match whole {
            true => self.place_whole_run(burst),
            false => self.place_split_run(burst),
        };
        if ran {
            return burst.len();
        }
        let Worker {
            routes,
            pools,
            stats,
            parts,
            staged,
            splits,
            routed,
            run_providers,
            drops,
            ..
        } = self;
        let pools = &mut pools[..];
        let QueueStats {
            providers: placed,
            routes: counts,
            ..
        } = stats;
        let placed = &mut placed[..];
        run_providers.clear();
        run_providers.extend(routed.iter().map(|rule| match *rule {
            Some(rule) => {
                let route = routes.get(rule);
                [route.head, route.frags]
            }
            None => [usize::MAX; 2],
        }));
        for (i, (((frame, split), rule), &[head_provider, frags_provider])) in burst
            .iter()
            .zip(splits.iter())
            .zip(routed.iter())
            .zip(run_providers.iter())
            .enumerate()
        {
            let Some(rule) = *rule else {
                drops.push((DropReason::NoRoute, None));
                continue;
            };
            let route = routes.get(rule);
            let data = frame.data;
            let first = parts.len();
            let head = &data[..split.head_len.min(data.len())];
            let mut at = match put(pools, parts, placed, head_provider, head, 0) {
                Some(at) => at,
                None => return i,
            };
            let mut provider = frags_provider;
            while at < data.len() {
                match put(pools, parts, placed, provider, data, at) {
                    Some(next) => at = next,
                    None => {
                        // Back as they were: the general loop places the frame again.
                        for part in parts.drain(first..) {
                            placed[part.provider].placed.undo(part.len);
                            let _ = pools[part.provider].recycle(part.buf);
                        }
                        return i;
                    }
                }
                provider = route.frags_rest;
            }
            let count = &mut counts[rule];
            count.frames += 1;
            staged.push(Staged::new(i, rule, first..parts.len()));
            count.bytes += data.len() as u64;
        }
        burst.len()
    }

    /// Places a vector whose frames all take one buffer of one pool: every frame
    /// routed by the same rule, whole (not split) and no longer than the shortest buffer
    /// of the rule's head provider, whose cache holds a buffer for each and whose memory
    /// the host writes. True when it placed them; false, with nothing done, when the
    /// vector is not such a one (or, not reached, a buffer is shorter than its pool
    /// says), for [`place_direct_run`](Self::place_direct_run) to place frame by frame.
    ///
    /// The buffers come off the cache in one run ([`Pool::take_cached_run`]): its count
    /// is read and stored once for the vector, where each frame's pop read the count
    /// the last one stored. The rule's and the provider's counters are added once, not
    /// four read-modify-writes a frame; the rule and provider are looked up once.
    ///
    /// With [`place_split_run`](Self::place_split_run), measured on the AMD EPYC of
    /// family 23 model 49 (session 38): tcp-split at 128 B from 330 to 284
    /// instructions a frame (`cargo xtask instructions`; 1500 B, 589 to 567), and
    /// `cargo xtask ab de77bab --pairs 5` x1.140 frames placed at 128 B (5 of 5 pairs;
    /// the memcpy loop x1.006 in the same pairs: 0.349 to 0.398 of it) and x1.002 at
    /// 1500 B (3 of 5), where the source frames' reads bound the copies.
    ///
    /// Tried and dropped: the parts and staged lists extended from iterators (one
    /// reserve, the length in a register) rather than pushed: 295 and 293 instructions
    /// a frame against 284, as `Vec::extend_trusted` stayed a call with its closure's
    /// state on the stack. For split frames, the payloads copied in a pass of their own
    /// after the heads, as the memcpy loop copies: no faster at 1500 B (12.27 against
    /// 12.45 Mpps, 6 alternating runs).
    #[inline(never)]
    fn place_whole_run(&mut self, burst: &[RxFrame<'_>]) -> bool {
        let Worker {
            routes,
            pools,
            stats,
            parts,
            staged,
            splits,
            routed,
            taken_runs,
            ..
        } = self;
        let Some(&Some(rule)) = routed.first() else {
            return false;
        };
        let p = routes.get(rule).head;
        let (Some(pool), Some(count)) = (pools.get_mut(p), stats.providers.get_mut(p)) else {
            return false;
        };
        let room = pool.min_len();
        let whole = routed
            .iter()
            .zip(splits.iter())
            .zip(burst)
            .all(|((r, split), frame)| {
                *r == Some(rule) && split.head_len >= frame.data.len() && frame.data.len() <= room
            });
        if routed.len() != burst.len()
            || !whole
            || !pool.caps().contains(Capabilities::HOST_WRITABLE)
        {
            return false;
        }
        let left = pool.cached().wrapping_sub(burst.len());
        let Some(run) = pool.take_cached_run(burst.len()) else {
            return false;
        };
        let (first, staged_from) = (parts.len(), staged.len());
        let (mut bytes, mut short) = (0u64, false);
        for (i, (frame, mut buf)) in burst.iter().zip(run.slots()).enumerate() {
            let data = frame.data;
            let n = match buf.as_mut_slice() {
                Some(mem) if mem.len() >= data.len() => {
                    crate::mem::copy_bytes(&mut mem[..data.len()], data);
                    data.len()
                }
                _ => {
                    short = true;
                    0
                }
            };
            parts.push(Part {
                provider: p,
                buf,
                len: n,
            });
            staged.push(Staged::new(i, rule, first + i..first + i + 1));
            bytes += n as u64;
        }
        if short {
            // Not reached while the checks hold (they refuse a buffer shorter than
            // `min_len`); kept so a broken invariant costs a slower vector, not a
            // panic. Back as they were: the frame-by-frame run places the vector.
            staged.truncate(staged_from);
            for part in parts.drain(first..) {
                let _ = pool.recycle(part.buf);
            }
            return false;
        }
        *taken_runs = Some(TakenRuns {
            head: (p, left),
            frag: None,
            first,
            n: burst.len(),
        });
        let frames = burst.len() as u64;
        count.placed.frames += frames;
        count.placed.bytes += bytes;
        let route = &mut stats.routes[rule];
        route.frames += frames;
        route.bytes += bytes;
        true
    }

    /// Places a vector whose frames all split in two: every frame routed by the same
    /// rule, split, its head no longer than the shortest buffer of the rule's head
    /// provider and its payload no longer than the shortest of its frag provider's (a
    /// provider of its own), whose caches hold a buffer for each frame and whose memory
    /// the host writes. As [`place_whole_run`](Self::place_whole_run) otherwise: true
    /// when it placed them; false, with nothing done, when the vector is not such a one.
    #[inline(never)]
    fn place_split_run(&mut self, burst: &[RxFrame<'_>]) -> bool {
        let Worker {
            routes,
            pools,
            stats,
            parts,
            staged,
            splits,
            routed,
            taken_runs,
            ..
        } = self;
        // A vector of mixed rules is turned away before any lookup: its last frame
        // most often has another rule than its first. (At the `fits` test below, the
        // demo's capture paid 12 instructions a frame for this run's failed tries:
        // `cargo xtask instructions`, demo-mix, 516 against 511; tcp-split at 1500 B
        // 517 against 518.)
        if routed.last() != routed.first() {
            return false;
        }
        let Some(&Some(rule)) = routed.first() else {
            return false;
        };
        let route = routes.get(rule);
        let (h, f) = (route.head, route.frags);
        let Ok([head_pool, frag_pool]) = pools.get_disjoint_mut([h, f]) else {
            return false;
        };
        let (head_room, frag_room) = (head_pool.min_len(), frag_pool.min_len());
        let fits = routed
            .iter()
            .zip(splits.iter())
            .zip(burst)
            .all(|((r, split), frame)| {
                let len = frame.data.len();
                *r == Some(rule)
                    && split.head_len < len
                    && split.head_len <= head_room
                    && len - split.head_len <= frag_room
            });
        let writable = |pool: &Pool| pool.caps().contains(Capabilities::HOST_WRITABLE);
        if routed.len() != burst.len()
            || !fits
            || !writable(head_pool)
            || !writable(frag_pool)
            || stats.providers.len() <= h.max(f)
        {
            return false;
        }
        // Both caches checked first: neither take below can fail after the other took
        // its run (whose buffers would then be lost).
        let n = burst.len();
        if !head_pool.has_cached_run(n) || !frag_pool.has_cached_run(n) {
            return false;
        }
        let (head_count, frag_count) = (head_pool.cached() - n, frag_pool.cached() - n);
        let (Some(heads), Some(frags)) =
            (head_pool.take_cached_run(n), frag_pool.take_cached_run(n))
        else {
            return false;
        };
        let first = parts.len();
        *taken_runs = Some(TakenRuns {
            head: (h, head_count),
            frag: Some((f, frag_count)),
            first,
            n,
        });
        // In passes that each hold little across their loop: the parts listed (no
        // call in that loop; the buffers drawn by index), the staged entries, then the
        // copies (the payload's a call to `memcpy` at 1500 B, after which only the
        // pass's few values are reloaded). In one loop, the copies' call made the
        // compiler keep two pool runs, both lists and the frame's state on the stack.
        // Measured on the AMD EPYC of family 23 model 49 (session 39), the criterion
        // `place` bench (frames split in two at 128 B too), 4 alternating runs: 128 B
        // 41.5 against 43.1 ns a frame, 1500 B 81.4 against 89.0 ns.
        parts.reserve(2 * n);
        for (((frame, split), head), frag) in burst
            .iter()
            .zip(splits.iter())
            .zip(heads.slots())
            .zip(frags.slots())
        {
            let (len, at) = (frame.data.len(), split.head_len);
            // Both parts in one `extend` of an array: one capacity test and one
            // store of the list's length a frame, not two (563 to 559 instructions a
            // frame at 1500 B).
            parts.extend([
                Part {
                    provider: h,
                    buf: head,
                    len: at,
                },
                Part {
                    provider: f,
                    buf: frag,
                    len: len - at,
                },
            ]);
        }
        // No part is longer than its buffer: every frame's head fits `head_room` and
        // its payload `frag_room` (tested above), and a provider's checks refuse a
        // buffer shorter than its pool's `min_len` before the pool ever holds it. So
        // no pass tests each buffer's length again before the copies (one did, and took
        // the vector back when one was short: 23 instructions a frame of 563 at 1500
        // B, session 40; kept to the copies' own pass, as a flag, it was 14 of them).
        // Were that broken, a copy below stops at its slice's bound: a panic, never a
        // write past the buffer.
        staged.extend((0..n).map(|i| Staged::new(i, rule, first + 2 * i..first + 2 * i + 2)));
        let (mut head_bytes, mut frag_bytes) = (0u64, 0u64);
        for (frame, pair) in burst.iter().zip(parts[first..].chunks_exact_mut(2)) {
            let [head, frag] = pair else { continue };
            head_bytes += head.len as u64;
            frag_bytes += frag.len as u64;
            let data = frame.data;
            let (head_data, frag_data) = data.split_at(head.len);
            if let (Some(hm), Some(fm)) = (head.buf.as_mut_slice(), frag.buf.as_mut_slice()) {
                crate::mem::copy_bytes(&mut hm[..head_data.len()], head_data);
                crate::mem::copy_bytes(&mut fm[..frag_data.len()], frag_data);
            }
        }
        let frames = n as u64;
        stats.providers[h].placed.frames += frames;
        stats.providers[h].placed.bytes += head_bytes;
        stats.providers[f].placed.frames += frames;
        stats.providers[f].placed.bytes += frag_bytes;
        let route = &mut stats.routes[rule];
        route.frames += frames;
        route.bytes += head_bytes + frag_bytes;
        true
    }

    /// Places every frame of a vector as routed but those already `taken` (bit `i` for
    /// frame `i`, by [`QueueDelivery::place_and_lend`]): placed ones are staged, the others'
    /// reasons noted in `drops`. Stops early when a provider gets quarantined.
    ///
    /// Out of line: inlined into `handle`, its locals competed for registers with the
    /// whole vector's, and spilled. On its own it does 2% fewer instructions and 8-10%
    /// fewer loads and stores a frame (`cargo xtask instructions`: tcp-split at 128 B,
    /// 449 to 437 and 235 to 217), and placement runs 5-6% faster (`cargo xtask ab`).
    #[inline(never)]
    fn place_vector(&mut self, burst: &[RxFrame<'_>], taken: u64) {
        let quarantined = self.quarantined();
        for (i, frame) in burst.iter().enumerate() {
            if taken >> i & 1 != 0 {
                continue;
            }
            let Some(rule) = self.routed[i] else {
                self.drops.push((DropReason::NoRoute, None));
                continue;
            };
            let route = self.routes.get(rule);
            let first = self.parts.len();
            let gathered = self.gathers.len();
            let head_len = self.splits[i].head_len;
            let placed = if self.direct[rule] {
                self.place_direct(frame.data, head_len, route)
            } else {
                self.place(i, frame.data, head_len, route, self.inline_heads[rule])
            };
            match placed {
                Ok(()) => {
                    // Counted here, while the frame is at hand (its parts were counted
                    // as they were placed; a round undone after a quarantine takes its
                    // counts back).
                    self.stats.routes[rule].add(frame.data.len());
                    self.staged
                        .push(Staged::new(i, rule, first..self.parts.len()))
                }
                Err(short) => {
                    self.drops.push((short.reason, Some(short.provider)));
                    for part in &self.parts[first..] {
                        self.stats.providers[part.provider].placed.undo(part.len);
                    }
                    // Its buffers go back: none of its parts may be filled later.
                    self.gathers.truncate(gathered);
                    self.recycle_from(first);
                    if self.quarantined() != quarantined {
                        // The caller places the whole vector again.
                        self.gathers.clear();
                        return;
                    }
                }
            }
        }
        if !self.gathers.is_empty() {
            self.fill_gathered(burst);
        }
    }

    /// Sends this vector's parts for providers that gather (`Pool::gathers`) to each
    /// provider in one `fill_gather` (ops on the stack, 256 a call: a whole burst of
    /// frames of up to four parts), then drops the frames with a part whose call failed.
    /// Each op's bytes are its frame's, where they lie in the device's memory: no copy
    /// before the provider's own.
    #[inline(never)]
    fn fill_gathered(&mut self, burst: &[RxFrame<'_>]) {
        // Usually one provider; with more, each provider's parts together.
        let pool = self.gathers[0].pool;
        if self.gathers.iter().any(|g| g.pool != pool) {
            self.gathers.sort_unstable_by_key(|g| g.pool);
        }
        // The frames (by index in the vector) to drop, and for each the provider whose
        // call failed.
        let (mut failed, mut faulted) = (0u64, [0usize; 64]);
        let mut at = 0;
        while at < self.gathers.len() {
            let pool = self.gathers[at].pool;
            let mut ops = arrayvec::ArrayVec::<GatherOp<'_>, { 4 * BURST }>::new();
            let start = at;
            while let Some(g) = self
                .gathers
                .get(at)
                .filter(|g| g.pool == pool && !ops.is_full())
            {
                // Recorded from this vector's frames as they were placed, so always there.
                let bytes = burst
                    .get(g.rx)
                    .and_then(|f| f.data.get(g.from as usize..(g.from + g.len) as usize));
                debug_assert!(bytes.is_some(), "a gathered part outside its frame");
                let bytes = bytes.unwrap_or_default();
                ops.push(GatherOp::new(g.buf, 0, bytes));
                at += 1;
            }
            if self.pools[pool].fill_gather(&ops).is_err() {
                for g in &self.gathers[start..at] {
                    failed |= 1 << g.rx;
                    faulted[g.rx] = pool;
                }
            }
        }
        self.gathers.clear();
        if failed != 0 {
            self.drop_staged(burst, failed, &faulted);
        }
    }

    /// Drops the staged frames whose index in the vector is set in `failed` (their fill
    /// by `provider[index]` failed): counted as fault drops, their counts taken back,
    /// their buffers recycled; the frames kept keep their parts in order.
    #[cold]
    fn drop_staged(&mut self, burst: &[RxFrame<'_>], failed: u64, provider: &[usize; 64]) {
        std::mem::swap(&mut self.staged, &mut self.kept_staged);
        std::mem::swap(&mut self.parts, &mut self.kept_parts);
        self.staged.clear();
        self.parts.clear();
        let mut old = self.kept_parts.drain(..);
        for s in self.kept_staged.drain(..) {
            let keep = failed >> s.rx() & 1 == 0;
            let first = self.parts.len();
            for part in old.by_ref().take(s.parts().len()) {
                if keep {
                    self.parts.push(part);
                } else {
                    self.stats.providers[part.provider].placed.undo(part.len);
                    let _ = self.pools[part.provider].recycle(part.buf);
                }
            }
            if keep {
                self.staged.push(s.with_parts(first..self.parts.len()));
            } else {
                self.stats.routes[s.rule()].undo(burst[s.rx()].data.len());
                self.drops.push((DropReason::Fault, Some(provider[s.rx()])));
            }
        }
    }

    /// Provider instances quarantined in the process so far: a change while a vector is
    /// placed means one of this vector's providers may be among them (another worker's
    /// instance only costs a needless second placement).
    #[inline]
    fn quarantined(&self) -> u64 {
        crate::provider::quarantines()
    }

    /// [`place`](Self::place) for a rule whose memory the host writes throughout
    /// ([`Worker::direct`]): the same parts and counts, without the bookkeeping of fill
    /// runs and inline heads, whose state the general loop carries (and spills) for
    /// every part.
    ///
    /// Measured on the AMD EPYC of family 25 model 17: tcp-split at 128 B from 410 to 373
    /// instructions a frame (`cargo xtask instructions`), and x1.074 frames placed at
    /// 128 B (6 of 6 pairs; the memcpy loop x0.992 in the same pairs) and x1.072 at
    /// 1500 B (`cargo xtask ab`, 4096 flows).
    #[inline(always)]
    fn place_direct(
        &mut self,
        frame: &[u8],
        head_len: usize,
        route: crate::route::Route,
    ) -> Result<(), NoBuffer> {
        let mut at = self.place_part(route.head, &frame[..head_len.min(frame.len())], 0)?;
        if at < frame.len() {
            at = self.place_part(route.frags, frame, at)?;
            while at < frame.len() {
                at = self.place_part(route.frags_rest, frame, at)?;
            }
        }
        Ok(())
    }

    /// One part of [`place_direct`](Self::place_direct): a buffer of `provider` (or its
    /// fallback) takes as much of `bytes[at..]` as fits; where the next part starts.
    #[inline(always)]
    fn place_part(&mut self, provider: usize, bytes: &[u8], at: usize) -> Result<usize, NoBuffer> {
        let Some((p, buf)) = self.take(provider) else {
            return Err(NoBuffer {
                reason: self.short,
                provider,
            });
        };
        let (pool, count) = (&mut self.pools[p], &mut self.stats.providers[p].placed);
        // `None` is not reached: `direct` rules only take memory the host writes.
        fill_part(pool, &mut self.parts, count, p, buf, bytes, at).ok_or(NoBuffer {
            reason: DropReason::Fault,
            provider: p,
        })
    }

    /// Places one frame: the head buffer takes the headers (as much of them as fits);
    /// the frags take the rest, from `frags` then `frags_rest`. One copy per byte.
    ///
    /// With `inline_head`, the route delivers its heads inline: up to that many bytes of
    /// the headers are left out (the delivery copies them from the frame into the ring)
    /// and the frags start after them.
    #[inline]
    fn place(
        &mut self,
        rx: usize,
        frame: &[u8],
        head_len: usize,
        route: crate::route::Route,
        inline_head: Option<usize>,
    ) -> Result<(), NoBuffer> {
        let (mut at, mut provider, mut head) = match inline_head {
            Some(_) => (
                left_for_ring(inline_head, head_len, frame.len()),
                route.frags,
                false,
            ),
            None => (0, route.head, true),
        };
        // Parts for providers the host may not write wait here, and go to their
        // provider in one `fill_bulk` per run: a run is one provider's parts whose bytes
        // follow each other in the frame (`fill_from..fill_to`), so usually one call per
        // frame and provider. A part of another provider, or one placed directly, ends
        // the run.
        self.fill_ops.clear();
        let (mut fill_pool, mut fill_from, mut fill_to) = (usize::MAX, 0, 0);
        while head || at < frame.len() {
            let Some((p, mut buf)) = self.take(provider) else {
                return Err(NoBuffer {
                    reason: self.short,
                    provider,
                });
            };
            let want = if head { head_len } else { frame.len() };
            let n = (want - at).min(buf.len());
            if buf.owner.caps.contains(Capabilities::HOST_WRITABLE) {
                if self.pools[p]
                    .place(&mut buf, 0, &frame[at..at + n])
                    .is_err()
                {
                    let _ = self.pools[p].recycle(buf);
                    return Err(NoBuffer {
                        reason: DropReason::Fault,
                        provider: p,
                    });
                }
            } else if self.pools[p].gathers() {
                // Filled with the rest of the vector's, in one call (`fill_gathered`).
                self.gathers.push(Gather {
                    pool: p,
                    buf: buf.netmem,
                    rx,
                    from: at as u32,
                    len: n as u32,
                });
            } else {
                if fill_pool != p || fill_to != at {
                    if let Err(short) = self.fill_pending(frame, fill_pool, fill_from, fill_to) {
                        let _ = self.pools[p].recycle(buf);
                        return Err(short);
                    }
                    (fill_pool, fill_from) = (p, at);
                }
                self.fill_ops.push(FillOp {
                    buf: buf.netmem,
                    offset: 0,
                    len: n as u32,
                });
                fill_to = at + n;
            }
            self.parts.push(Part {
                provider: p,
                buf,
                len: n,
            });
            // Counted from the values at hand: read back from `parts`, the length came
            // from a narrow load of the wide store that had just written it (a
            // store-forwarding stall per part).
            self.stats.providers[p].placed.add(n);
            at += n;
            provider = if head { route.frags } else { route.frags_rest };
            head = false;
        }
        if self.fill_ops.is_empty() {
            return Ok(());
        }
        self.fill_pending(frame, fill_pool, fill_from, fill_to)
    }

    /// Sends the parts waiting in `fill_ops` (the frame's bytes `from..to`) to pool
    /// `pool` in one `fill_bulk`. The buffers are in `parts` already: on a failure the
    /// caller recycles them with the rest of the frame.
    #[inline(never)]
    fn fill_pending(
        &mut self,
        frame: &[u8],
        pool: usize,
        from: usize,
        to: usize,
    ) -> Result<(), NoBuffer> {
        if self.fill_ops.is_empty() {
            return Ok(());
        }
        let result = self.pools[pool].fill_bulk(&self.fill_ops, &frame[from..to]);
        self.fill_ops.clear();
        result.map_err(|_| NoBuffer {
            reason: DropReason::Fault,
            provider: pool,
        })
    }

    /// Gives the staged frames to a sink that takes them, as owned frames.
    fn hand_over(&mut self, burst: &[RxFrame<'_>]) {
        self.taken_runs = None;
        let mut parts = self.parts.drain(..);
        let (splits, recyclers) = (&self.splits, &self.recyclers);
        let mut frames = self.staged.iter().map(|s| OwnedFrame {
            rx: burst[s.rx()].meta,
            split: splits[s.rx()],
            rule: s.rule(),
            len: burst[s.rx()].data.len(),
            parts: parts.by_ref().take(s.parts().len()).collect(),
            recyclers: Arc::clone(recyclers),
        });
        self.sink.consume_owned(&mut frames);
        // Frames the sink did not pull are dropped here, returning their buffers.
        drop(frames);
        for part in parts {
            let _ = self.recyclers[part.provider].recycle(part.buf);
        }
    }

    /// Returns the buffers of `parts[from..]` to their pools.
    ///
    /// When they are all one pool's (frames placed whole in their heads, as 128 B TCP
    /// under `tcp-split.toml`), in one run ([`Pool::recycle_run`]): the cache's count
    /// is held in a register and stored once, where each buffer given back on its own
    /// stored it and the next read it back. On the AMD EPYC of family 23 model 49 that
    /// placed x1.038 as many 128 B frames (5 alternating runs of each build; 330
    /// instructions a frame against 334). When they alternate two pools, a head and a
    /// payload each (split frames), in two runs, every other part each: 589 to 578
    /// instructions a frame at 1500 B (session 38); since session 42 both in one loop
    /// over the pairs ([`Pool::recycle_pair_run`]): 518 to 511, the two runs' stepping
    /// through every other part paid twice. Runs of one pool's consecutive
    /// parts measured 3% slower at 1500 B there (each is one buffer long), and a pass
    /// per pool skipping the other's parts 4% slower; anything else goes back one at a
    /// time.
    ///
    /// Tried and dropped (session 40): the way guessed from the counts of parts and
    /// staged frames alone, with the runs saying how many buffers they took and a pass
    /// giving back the rest when the guess failed. 6 fewer instructions a frame at 1500
    /// B, but the demo's mix (`default.toml` on its capture, vectors of mixed frames)
    /// placed 10% fewer frames: the guess failed often enough there that its pass cost
    /// more than the test it saved.
    ///
    /// Before any of that, the buffers of a vector placed in one run (split in two, or
    /// whole) go back without a store each when nothing has touched their caches since
    /// ([`TakenRuns`]): each cache's count moves back over them, where they still are.
    /// `cargo xtask instructions` (session 45): tcp-split-1500 511 to 476 a frame,
    /// tcp-split-128 265 to 245, count-64 329 to 294; the demo's mix, deliver-64 as
    /// before. On the AMD EPYC of family 23 model 1, `cargo xtask ab`, 6 pairs: placing
    /// 128 B x1.094 (6 of 6 won), 1500 B x1.001 (3 of 6); the criterion `place` bench
    /// (frames split in two at 128 B too), 5 alternating runs of each build: 128 B 63.5
    /// to 57.6 ns a frame (5 of 5), 1500 B 334 to 310 (4 of 5).
    fn recycle_from(&mut self, from: usize) {
        if self.taken_runs.take().is_some_and(|t| self.untake(t, from)) {
            return;
        }
        // The pools as a slice held in registers: read through `self` in the loop, their
        // address and count were loaded again for every buffer, after each store to a
        // cache.
        let pools = &mut self.pools[..];
        let parts = self.parts.get(from..).unwrap_or_default();
        let one = parts.first().map(|part| part.provider);
        if let Some(pool) = one.and_then(|p| pools.get_mut(p)) {
            if parts.iter().all(|part| Some(part.provider) == one) {
                pool.recycle_run(parts.iter().map(|part| &part.buf));
                self.parts.truncate(from);
                return;
            }
        }
        // Split frames, a head and a payload each from two pools (1500 B TCP under
        // `tcp-split.toml`): both pools' buffers in one loop over the pairs.
        if let Some([a, b]) = pair(parts) {
            if let Ok([pa, pb]) = pools.get_disjoint_mut([a, b]) {
                let pairs = parts.chunks_exact(2).map(|p| (&p[0].buf, &p[1].buf));
                Pool::recycle_pair_run(pa, pb, pairs);
                self.parts.truncate(from);
                return;
            }
        }
        for part in self.parts.drain(from..) {
            // Buffers only ever come from these pools, so the pool id always matches.
            if let Some(pool) = pools.get_mut(part.provider) {
                let _ = pool.recycle(part.buf);
            }
        }
    }

    /// Gives back the buffers of `parts[from..]` by moving back the counts of the
    /// caches the runs `t` took them from, if they are still those runs' and may go back
    /// so ([`TakenRuns`]); false, with nothing done, if not.
    #[inline]
    fn untake(&mut self, t: TakenRuns, from: usize) -> bool {
        let per = 1 + usize::from(t.frag.is_some());
        if from != t.first || self.parts.len() != from + per * t.n {
            return false;
        }
        let parts = &self.parts[from..];
        let (h, head_count) = t.head;
        match t.frag {
            None => {
                let Some(head) = self.pools.get_mut(h) else {
                    return false;
                };
                if !head.may_untake(head_count, t.n) {
                    return false;
                }
                debug_assert!(head.holds_run(head_count, parts.iter().map(|p| &p.buf)));
                head.untake_run(t.n);
            }
            Some((f, frag_count)) => {
                let Ok([head, frag]) = self.pools.get_disjoint_mut([h, f]) else {
                    return false;
                };
                if !head.may_untake(head_count, t.n) || !frag.may_untake(frag_count, t.n) {
                    return false;
                }
                let pairs = parts.chunks_exact(2);
                debug_assert!(head.holds_run(head_count, pairs.clone().map(|p| &p[0].buf)));
                debug_assert!(frag.holds_run(frag_count, pairs.map(|p| &p[1].buf)));
                head.untake_run(t.n);
                frag.untake_run(t.n);
            }
        }
        self.parts.truncate(from);
        true
    }

    /// A buffer from provider `p`: from its pool's cache on the fast path, else
    /// [`take_slow`](Self::take_slow), which leaves the reason for a miss in `short`.
    ///
    /// No error type crosses this path: carrying one, the compiler moved every buffer
    /// through the stack in byte-split pieces (a store-forwarding stall per buffer that
    /// measured a quarter of the time of a 1500-byte frame). Nor does a buffer: the slow
    /// path only says which pool's cache now holds one, and both paths end in the same
    /// pop ([`Pool::refill_for_pop`] says why).
    #[inline(always)]
    fn take(&mut self, p: usize) -> Option<(usize, PoolBuf)> {
        if let Some(b) = self.pools[p].alloc_cached() {
            return Some((p, b));
        }
        let p = self.take_slow(p)?;
        Some((p, self.pools[p].alloc_cached()?))
    }

    /// Readies a buffer on top of a cache for [`take`](Self::take): provider `p`'s slow
    /// path, waiting if configured, else its fallback's. The pool whose cache holds it;
    /// on a miss, why is left in `short`.
    #[cold]
    fn take_slow(&mut self, p: usize) -> Option<usize> {
        let first = match self.pools[p].refill_for_pop() {
            Ok(()) => return Some(p),
            Err(PoolErrorKind::Exhausted { .. }) if self.on_dry == OnDry::Wait => {
                let deadline = Instant::now() + self.wait;
                loop {
                    std::thread::yield_now();
                    // Buffers lent to consumers come back through their refill rings.
                    if let Some(d) = self.delivery.as_mut() {
                        d.service(&mut self.pools);
                    }
                    if self.pools[p].has_cached() {
                        return Some(p);
                    }
                    match self.pools[p].refill_for_pop() {
                        Ok(()) => return Some(p),
                        Err(e @ PoolErrorKind::Exhausted { .. }) if Instant::now() >= deadline => {
                            break e
                        }
                        Err(PoolErrorKind::Exhausted { .. }) => {}
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        self.short = if matches!(first, PoolErrorKind::Exhausted { .. }) {
            DropReason::Dry
        } else {
            DropReason::Fault
        };
        let f = self.fallback[p]?;
        if !self.pools[f].has_cached() {
            self.pools[f].refill_for_pop().ok()?;
        }
        self.fell_back.push(p);
        Some(f)
    }

    /// The queue's counters now.
    pub fn snapshot(&self) -> QueueStats {
        let mut s = self.stats.clone();
        for (p, pool) in s.providers.iter_mut().zip(&self.pools) {
            p.pool = pool.stats();
            p.checks = pool.provider().counters();
            p.fault = pool.provider().fault().map(ToString::to_string);
            p.quarantined = u64::from(p.fault.is_some());
        }
        s.sink = self.sink.counters();
        s.read_ahead = self.read_ahead.stats();
        if let Some(d) = &self.delivery {
            s.consumers = d.stats();
        }
        s
    }

    /// [`service_delivery`](Self::service_delivery), for tests that drive a worker by
    /// hand.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn service(&mut self) {
        self.service_delivery();
    }

    /// Serves the consumers between polls: new sessions, returned buffers, sessions that
    /// ended (their unread frames counted as dropped, `consumer_gone`).
    fn service_delivery(&mut self) {
        if let Some(d) = self.delivery.as_mut() {
            d.service(&mut self.pools);
            let gone = d.take_gone();
            if gone > 0 {
                self.stats.dropped.add_n(DropReason::ConsumerGone, gone);
            }
        }
    }
}

/// Asks for the first two lines of a frame ([`prefetch_to_l2`]): its headers, and the
/// start of its payload, which the copies read first. For frames out of cache, asked a
/// vector ahead.
///
/// Measured on the AMD EPYC of family 23 model 49 (session 39), the criterion `place`
/// bench (8 MiB of frames, out of L2), 3 alternating runs: at 128 B 42.1 against 44.7 ns
/// a frame (0.292 against 0.262 of its memcpy loop); at 1500 B no change past the noise
/// (90.1 against 88.3 ns, 5 runs spread from 80 to 107).
///
/// A frame that does not start on a line has its first 128 bytes on three lines, the
/// last unasked. Asking for it too did nothing (AMD EPYC family 23 model 1, session 44:
/// the same bench at 128 B, 61.5, 62.2 and 63.7 ns a frame against 60.7, 66.1 and 61.5,
/// alternating). Asking for the heads of frames that are not cold (a replay of 4096
/// flows, 512 KiB) lost: x0.967 at 128 B, 0 of 4 pairs (`cargo xtask ab`).
///
/// [`prefetch_to_l2`]: memplex_proto::ring::prefetch_to_l2
#[inline(always)]
fn prefetch_head(data: &[u8]) {
    let p = data.as_ptr();
    memplex_proto::ring::prefetch_to_l2(p);
    if data.len() > 64 {
        memplex_proto::ring::prefetch_to_l2(p.wrapping_add(64));
    }
}

/// The two providers `parts` alternate between, the first's at even places and the
/// other's at odd ones, if they do (and are two, in two frames or more).
#[inline]
fn pair(parts: &[Part]) -> Option<[usize; 2]> {
    if parts.len() < 4 || !parts.len().is_multiple_of(2) {
        return None;
    }
    let (a, b) = (parts[0].provider, parts[1].provider);
    let alternate = parts
        .chunks_exact(2)
        .all(|p| p[0].provider == a && p[1].provider == b);
    (a != b && alternate).then_some([a, b])
}

/// One part of [`Worker::place_direct_run`]: a buffer from the cache of pool `p` takes as
/// much of `bytes[at..]` as fits ([`fill_part`]); where the next part starts. `None`,
/// with nothing taken, when the cache is empty (or the buffer not one the host writes).
#[inline(always)]
fn put(
    pools: &mut [Pool],
    parts: &mut Vec<Part>,
    placed: &mut [ProviderStats],
    p: usize,
    bytes: &[u8],
    at: usize,
) -> Option<usize> {
    let (pool, count) = (pools.get_mut(p)?, placed.get_mut(p)?);
    if !pool.has_cached() {
        return None;
    }
    let buf = pool.pop_cached();
    fill_part(pool, parts, &mut count.placed, p, buf, bytes, at)
}

/// Copies as much of `bytes[at..]` as fits into `buf`, of `pool` (provider `p`), adds
/// it to `parts` and to `count`; where the next part starts. `None`, with the buffer
/// given back, when the host may not write it.
///
/// The two counters are added on either side of the copy and the push, not together
/// as `Volume::add` does: adjacent, the compiler paired them into one SSE add with a
/// constant loaded and a lane shuffled in (6 instructions where two read-modify-write
/// adds do), and a store between them that may alias keeps them apart. The route's
/// counters in [`Worker::place_direct_run`] are kept apart the same way.
#[inline(always)]
fn fill_part(
    pool: &mut Pool,
    parts: &mut Vec<Part>,
    count: &mut Volume,
    p: usize,
    mut buf: PoolBuf,
    bytes: &[u8],
    at: usize,
) -> Option<usize> {
    let n = (bytes.len() - at).min(buf.len());
    let Some(mem) = buf.as_mut_slice() else {
        let _ = pool.recycle(buf);
        return None;
    };
    count.frames += 1;
    crate::mem::copy_bytes(&mut mem[..n], &bytes[at..at + n]);
    parts.push(Part {
        provider: p,
        buf,
        len: n,
    });
    count.bytes += n as u64;
    Some(at + n)
}

/// The head bytes [`Worker::place`] leaves out of a frame of `len` bytes whose head is
/// `head_len`, for the delivery to copy into the ring: up to `inline_head` (a route's
/// [`Worker::inline_heads`]), none without.
#[inline]
fn left_for_ring(inline_head: Option<usize>, head_len: usize, len: usize) -> usize {
    inline_head.map_or(0, |max| head_len.min(max).min(len))
}

/// Sends one placed frame out of `tx`: its parts as they lie in provider memory, one
/// scatter-gather write, with the `virtio_net_hdr` it came in with. The memory is
/// CPU-readable (a forwarding route over memory the host cannot read is refused at
/// start).
fn transmit(tx: &dyn TxQueue, frame: &RxFrame<'_>, parts: &[Part]) -> std::io::Result<()> {
    let mut slices = arrayvec::ArrayVec::<&[u8], { crate::device::tx::MAX_PARTS }>::new();
    for p in parts {
        let bytes = p
            .buf
            .as_slice()
            .and_then(|b| b.get(..p.len))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "a part in memory the host cannot read",
                )
            })?;
        slices.try_push(bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a frame of more than {} parts", slices.len()),
            )
        })?;
    }
    tx.send(&frame.meta.vnet, &slices)
}

/// Runs one queue until the device ends, fails, or `control.stop` is set; returns its
/// stats and its pools (shut down by the caller once every consumer has let go), and
/// why it stopped early if it failed: a failed queue's figures are reported too.
pub(super) fn run_queue(
    index: usize,
    mut rx: Box<dyn RxQueue>,
    mut w: Worker,
    control: &RunControl,
) -> (QueueStats, Vec<Pool>, Option<RunError>) {
    w.read_ahead = ReadAhead::new(rx.frames_cold());
    let mut published = Instant::now();
    let publish = |w: &Worker| {
        if let Ok(mut live) = control.live.try_lock() {
            if let Some(slot) = live.get_mut(index) {
                *slot = w.snapshot();
            }
        }
    };
    let mut polls = 0u32;
    let result = loop {
        if control.stop.load(Relaxed) {
            break Ok(());
        }
        polls = polls.wrapping_add(1);
        w.profile_poll();
        w.service_delivery();
        w.lap(Stage::Refill);
        // A consumer deciding on frames (its transmit ring) is served every millisecond
        // while it holds any, not only when the device has traffic.
        let wait = match &w.delivery {
            Some(d) if d.awaits_verdicts() => Duration::from_millis(1),
            _ => Duration::from_millis(100),
        };
        let quiet = match rx.poll(wait, &mut |burst| w.handle(burst)) {
            Ok(Poll::End) => break Ok(()),
            Ok(Poll::Idle) => true,
            Ok(Poll::Frames(n)) => n < BURST,
            Err(e) => break Err(RunError::Device(e)),
        };
        if let Err(e) = w.sink.flush() {
            break Err(RunError::Sink {
                path: w.sink.name(),
                cause: e,
            });
        }
        // A clock read costs as much as placing a small frame here (a VM's clock), so a
        // busy queue checks the publishing interval every 64th poll only; a quiet one
        // (an idle poll or a short burst, which may have waited up to 100 ms) after
        // every poll, or its live stats would lag by 64 such waits.
        if (quiet || polls.is_multiple_of(64)) && published.elapsed() >= Duration::from_millis(100)
        {
            publish(&w);
            published = Instant::now();
        }
    };
    let _ = w.sink.flush();
    if let Some(d) = w.delivery.as_mut() {
        d.close_all(&mut w.pools, Duration::from_millis(500));
    }
    w.service_delivery();
    let mut stats = w.snapshot();
    stats.device = rx.stats();
    stats.device.kernel_drops += rx.kernel_drops();
    publish(&w);
    // The pools are shut down by `run_with` once every worker has let go of its consumer
    // (a stream stays open until all have), so a consumer can return what it holds.
    drop(w.sink);
    (stats, w.pools, result.err())
}

#[cfg(test)]
mod tests {
    use super::super::hostile::{received, udp_frames};
    use super::super::{Engine, VerifySink};
    use super::*;
    use crate::config::Config;
    use crate::provider::{Netmem, PluginPath};

    /// Frames split in two, a head from one slab and the payload from another: every
    /// vector is a split run ([`Worker::place_split_run`]).
    const SPLIT_IN_TWO: &str = r#"
[device]
kind = "pcap"
path = "(in memory)"

[split]
mode = "l4"

[providers.hdr]
plugin = "builtin:slab"
buf_size = 256
pool_size = 256

[providers.payload]
plugin = "builtin:slab"
buf_size = 2048
pool_size = 256

[[route]]
head = "hdr"
frags = "payload"
"#;

    /// A worker over `SPLIT_IN_TWO`, its split as `split` says, with a sink that checks
    /// every frame.
    fn worker(split: &str) -> (Engine, Worker) {
        let toml = SPLIT_IN_TWO.replace("mode = \"l4\"", split);
        let config =
            Config::from_toml(&toml, "test", Default::default(), None).expect("a valid config");
        let engine = Engine::new(config, &PluginPath::from_env()).expect("built-in providers");
        let worker = engine
            .test_worker(Box::new(VerifySink::default()), None)
            .expect("a worker");
        (engine, worker)
    }

    impl Worker {
        /// Splits and routes a vector as [`Worker::handle_vector`] does before placing.
        fn splits_for(&mut self, vector: &[RxFrame<'_>]) {
            self.split_vector(self.splitter.mode, vector);
            let (routes, device) = (&self.routes, self.device);
            self.routed.clear();
            self.routed.extend(
                self.splits[..vector.len()]
                    .iter()
                    .map(|split| routes.rule(&split.meta, device)),
            );
        }
    }

    /// Each pool's cached buffers, in the order they would be handed out.
    fn caches(w: &Worker) -> Vec<Vec<Netmem>> {
        w.pools
            .iter()
            .map(|p| (0..p.cached()).map_while(|k| p.peek_cached_at(k)).collect())
            .collect()
    }

    /// A run's buffers go back by moving each cache's count back over them
    /// ([`TakenRuns`]), for frames split in two (two runs) and frames placed whole (one):
    /// the caches are then as they were before the run, buffer for buffer, and counted
    /// as given back. When a cache moved in between, the parts go back the ordinary way,
    /// and nothing is lost either way. Every frame reassembles.
    #[test]
    fn a_run_goes_back_as_it_came() {
        // 200-byte frames split after UDP; 100-byte ones under the threshold, whole.
        for (split, size, in_two) in [
            ("mode = \"l4\"", 200, true),
            ("mode = \"l4\"\nhds_threshold = 64", 100, false),
        ] {
            runs_go_back(split, size, in_two);
        }
    }

    fn runs_go_back(split: &str, size: usize, in_two: bool) {
        let (_engine, mut w) = worker(split);
        let frames = udp_frames(size, 64);
        let rx = received(&frames);
        let per = 1 + usize::from(in_two);
        // The first burst fills the caches from the providers.
        w.handle(&rx);
        let before = caches(&w);
        assert!(before[0].len() >= VECTOR, "{before:?}");
        let given_back = |w: &Worker| {
            w.pools
                .iter()
                .map(|p| p.stats().recycle_cached)
                .sum::<u64>()
        };
        for vector in rx.chunks(VECTOR) {
            let counted = given_back(&w);
            w.splits_for(vector);
            assert_eq!(
                w.place_direct_run(vector),
                vector.len(),
                "placed in one run"
            );
            let t = w.taken_runs.expect("the runs taken are recorded");
            assert_eq!(t.frag.is_some(), in_two, "{split}");
            assert_eq!((t.first, t.n), (0, vector.len()));
            assert_eq!(w.parts.len(), per * vector.len());
            w.recycle_from(0);
            assert!(w.taken_runs.is_none() && w.parts.is_empty());
            w.staged.clear();
            assert_eq!(caches(&w), before, "the caches as they were");
            assert_eq!(given_back(&w), counted + (per * vector.len()) as u64);
        }
        // A cache moved after the run: a buffer taken from the last pool a frame's parts
        // come from. The parts go back the ordinary way, over the slot taken, and the
        // buffer taken after them.
        let vector = &rx[..VECTOR];
        w.splits_for(vector);
        assert_eq!(w.place_direct_run(vector), VECTOR);
        let t = w.taken_runs.expect("recorded");
        let p = t.frag.unwrap_or(t.head).0;
        let held = w.pools[p].alloc_cached().expect("a cached buffer");
        w.recycle_from(0);
        assert!(w.taken_runs.is_none() && w.parts.is_empty());
        w.staged.clear();
        assert_ne!(caches(&w), before, "given back the ordinary way");
        w.pools[p].recycle(held).expect("its own pool");
        // Whole bursts through `handle`, with the sink reading every part.
        for _ in 0..4 {
            w.handle(&rx);
        }
        let sink = w.sink.counters();
        assert_eq!(sink.mismatched, 0);
        assert_eq!(sink.verified, 5 * rx.len() as u64, "{split}");
        for pool in std::mem::take(&mut w.pools) {
            assert_eq!(pool.stats().inflight, 0);
            assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
        }
    }
}
