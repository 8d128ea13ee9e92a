//! Delivery to consumer processes without a copy: the host's half of the protocol in
//! `memplex-proto` (docs/delivery.md).
//!
//! ```text
//!  server thread (server.rs)            worker of queue q (this module)
//!  listens, checks Hello + SO_PEERCRED,  takes new channels from its Inbox,
//!  makes a channel (rings) per queue  -> writes frame entries, lends buffers (lent.rs),
//!  and an eventfd, sends them;           publishes once per burst, one wake-up at most;
//!  watches the socket: EOF = gone        drains refill rings, checks every token,
//!                                        reclaims all of a session that ended
//! ```
//!
//! Everything in shared memory is the consumer's to scribble on, so the worker never
//! reads back its own indexes, checks the consumer's (a wild one ends the session as
//! `bad_index`), and takes a token only when it names a buffer lent to that session under
//! that generation (else `bad_token`). A session that ends, for whatever reason, gives
//! every buffer it held back to its pool, and the frames it never read count as
//! `consumer_gone`. Nothing here allocates per frame once a session's pages of lent slots
//! exist, and the only lock (the inbox) is taken when a session starts.

mod lent;
mod server;

pub use server::{Server, ServerError};

use crate::config::{ConsumerConfig, DeliverPolicy, WakeMode};
use crate::device::{RxFrame, TxQueue};
use crate::pool::Pool;
use crate::runtime::Part;
use crate::stats::{ConsumerStats, DeliveryCounters, Disconnect, DropReason, QueueStats, Tally};
use crate::wire::Split;
use lent::LentTable;
use memplex_proto::layout::{
    self, FrameMeta, RingKind, Token, TxEntry, TxPartsEntry, TX_MAX_PARTS, TX_MORE_PARTS, TX_PARTS,
};
use memplex_proto::ring::{ChannelMap, Consumer, Producer};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// One consumer session, shared by the server thread and every worker.
pub(crate) struct Session {
    /// Unique in this process.
    pub(crate) id: u64,
    /// The socket, for region announcements from workers (SOCK_SEQPACKET sends are
    /// whole messages, so workers may send concurrently).
    sock: OwnedFd,
    /// 0 while live, else the [`Disconnect`] that ended it, plus 1.
    end: AtomicU8,
}

impl Session {
    /// A session on `sock`, for tests that feed a worker's channel themselves.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn for_test(id: u64, sock: OwnedFd) -> Session {
        Session {
            id,
            sock,
            end: AtomicU8::new(0),
        }
    }

    pub(crate) fn ended(&self) -> Option<Disconnect> {
        match self.end.load(Ordering::Acquire) {
            0 => None,
            n => Some(DISCONNECTS[usize::from(n - 1)]),
        }
    }

    /// Ends the session (the first reason wins).
    pub(crate) fn end(&self, why: Disconnect) {
        let _ = self
            .end
            .compare_exchange(0, why as u8 + 1, Ordering::AcqRel, Ordering::Acquire);
    }
}

const DISCONNECTS: [Disconnect; 6] = [
    Disconnect::Left,
    Disconnect::BadToken,
    Disconnect::BadIndex,
    Disconnect::BadMessage,
    Disconnect::Shutdown,
    Disconnect::BadEntry,
];

/// One queue's end of a new session, from the server.
pub(crate) struct NewChannel {
    pub(crate) consumer: usize,
    pub(crate) session: Arc<Session>,
    pub(crate) map: Arc<ChannelMap>,
    pub(crate) eventfd: Option<OwnedFd>,
}

/// Where the server leaves new channels for one worker.
#[derive(Default)]
pub(crate) struct Inbox {
    pending: AtomicBool,
    channels: Mutex<Vec<NewChannel>>,
}

impl Inbox {
    pub(crate) fn push(&self, c: NewChannel) {
        if let Ok(mut v) = self.channels.lock() {
            v.push(c);
            self.pending.store(true, Ordering::Release);
        }
    }
}

/// A region of provider memory a consumer may be told about.
#[derive(Clone)]
pub(crate) struct RegionInfo {
    /// First byte, in the provider's descriptor address space.
    pub(crate) base: u64,
    /// Bytes.
    pub(crate) len: u64,
    /// The number the protocol uses for it (unique in the process).
    pub(crate) index: u32,
    /// `memplex_abi::RegionKind`.
    pub(crate) kind: u32,
    /// Where `base` is in the descriptor.
    pub(crate) offset: u64,
    /// A read-only descriptor of it, sent to consumers.
    pub(crate) fd: Arc<OwnedFd>,
    /// The provider's name in the config.
    pub(crate) provider: String,
}

/// The regions of one pool, or why its memory cannot be shared.
#[derive(Clone)]
pub(crate) enum PoolMemory {
    Shared(Vec<RegionInfo>),
    /// Not shareable (the provider's `not_exportable` says why).
    Private,
}

/// Region numbers, unique in the process.
static REGIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl PoolMemory {
    /// What consumers may be told about `provider`'s memory: each region with a
    /// read-only descriptor opened from its own (so a consumer cannot map it writable,
    /// seals or not), or why it cannot be shared.
    pub(crate) fn of(provider: &crate::provider::CheckedProvider, name: &str) -> PoolMemory {
        if provider.not_exportable().is_some() {
            return PoolMemory::Private;
        }
        let mut regions = Vec::new();
        for r in provider.memory() {
            let fd = match std::fs::File::open(format!("/proc/self/fd/{}", r.fd)) {
                Ok(f) => Arc::new(OwnedFd::from(f)),
                Err(e) => {
                    tracing::warn!(provider = name, fd = r.fd, "a region's descriptor cannot be reopened read-only ({e}); its memory is not delivered");
                    return PoolMemory::Private;
                }
            };
            // Tokens carry the region in 16 bits, and descriptors offsets in 40.
            let index = REGIONS.fetch_add(1, Ordering::Relaxed);
            if index > u32::from(u16::MAX) || r.len > layout::MAX_OFFSET {
                tracing::warn!(provider = name, "a region is past what descriptors can name ({index} regions made in this process, or more than 1 TiB); its memory is not delivered");
                return PoolMemory::Private;
            }
            regions.push(RegionInfo {
                base: r.base,
                len: r.len,
                index,
                kind: r.kind.0,
                offset: r.offset,
                fd,
                provider: name.to_string(),
            });
        }
        PoolMemory::Shared(regions)
    }
}

/// A consumer's channel on this queue.
struct Channel {
    session: Arc<Session>,
    completion: Producer,
    refill: Consumer,
    /// The metadata ring, when the consumer asked for one: frame `n`'s in slot `n`.
    meta: Option<Producer>,
    /// Frames the consumer sends out, when its config names a `transmit` device.
    transmit: Option<Consumer>,
    eventfd: Option<OwnedFd>,
    lent: LentTable,
    /// Descriptors written since the last publish: `stage[..pending]`.
    pending: u32,
    /// The ring index (free-running) up to which the completion ring's lines have been
    /// fetched for writing ([`fetch_ahead`](Self::fetch_ahead)).
    ahead: u32,
    /// This burst's descriptors, written to the ring at once when it is published:
    /// written one at a time among the rest of the work, each line the consumer's core
    /// held stalled every store behind it.
    /// As large as the completion ring, which `pending` never outgrows (a frame is
    /// staged only when the ring has room for it and every staged frame before it): a
    /// frame takes its slots in one bounds check, and each descriptor is one store.
    /// (16 bytes a ring entry: 64 KiB for the default 4096, 1 MiB for the largest ring
    /// config check allows.)
    stage: Box<[layout::Desc]>,
    /// This burst's metadata entries, likewise.
    meta_stage: Vec<FrameMeta>,
    /// Where each of the last frames starts in the completion ring, by frame number
    /// (`delivered`) modulo the ring's size (a frame takes one descriptor at least, so
    /// every frame in the ring has its entry): the frames a session never read are
    /// counted as `consumer_gone` when it ends. One store per frame, not one per
    /// descriptor.
    starts: Box<[u32]>,
    /// Regions this session has been told about, by index.
    announced: Vec<bool>,
    /// Per provider, its first region once this session has been told about it: a part
    /// in it is lent by [`QueueDelivery::deliver_run`] with one compare. Empty (`len`
    /// 0) for a provider whose memory cannot be shared.
    fast: Box<[FastRegion]>,
    /// Frames delivered to it on this queue.
    delivered: u64,
    /// A wait (for room, or for returns under the quota) timed out: drop at once until
    /// a frame gets through again.
    stalled: bool,
}

impl Channel {
    /// Records a frame just staged in its `need` slots from `stage[pending..]`: where it
    /// starts in the ring, and the slots and frame counted.
    #[inline(always)]
    fn staged(&mut self, need: u32) {
        let mask = self.starts.len() - 1;
        self.starts[self.delivered as usize & mask] =
            self.completion.position().wrapping_add(self.pending);
        self.pending += need;
        self.delivered += 1;
    }

    /// Whether `need` more slots fit, with `room` the ring's free slots after those
    /// staged as last read; the consumer's index is read again only when that reading
    /// leaves too little (a consumer that moved it wildly gets `false`: the general way
    /// then ends its session). `room` is counted down when they fit.
    #[inline(always)]
    fn fits(&mut self, need: u32, room: &mut u32) -> bool {
        if need > *room {
            match self.completion.free() {
                Ok(free) => *room = free.saturating_sub(self.pending),
                Err(_) => return false,
            }
            if need > *room {
                return false;
            }
        }
        *room -= need;
        true
    }

    /// Fetches the completion ring's lines for writing (PREFETCHW) up to
    /// [`FETCH_LEAD`] entries past those staged, from where the last call stopped, never
    /// past what the consumer has released (as last read): lines it may still read are
    /// left alone.
    ///
    /// Called once a vector and after each publish, so a burst's lines are asked for a
    /// few at a time while its frames are placed, and are the host's by the time the
    /// burst is published. Asked for all at once after a publish (80 lines for 64
    /// frames of 64 B, each line held by the consumer's core), the requests queued on
    /// the core's few line-fill buffers: the publish took 10.8 ns a frame at 64 B
    /// (`memplex bench --profile`, the `deliver` stage), against 5 to 6 this way.
    #[inline(always)]
    fn fetch_ahead(&mut self) {
        let c = &self.completion;
        let free = c.size().saturating_sub(c.in_flight());
        let end = self.pending.saturating_add(FETCH_LEAD).min(free);
        let mut start = self.ahead.wrapping_sub(c.position());
        // Behind what is staged (or a stale index from before a wrap): from there.
        if start < self.pending || start > c.size() {
            start = self.pending;
        }
        if start >= end {
            return;
        }
        c.prefetch(start, end - start);
        self.ahead = c.position().wrapping_add(end);
    }

    /// The ring's free slots after those staged, as last read (the start of a `fits`
    /// countdown).
    #[inline(always)]
    fn room(&self) -> u32 {
        self.completion
            .size()
            .saturating_sub(self.completion.in_flight())
            .saturating_sub(self.pending)
    }
}

/// Entries past those staged whose lines [`Channel::fetch_ahead`] asks for: a vector's
/// worth of 64 B frames with inline heads (8 frames of 5 entries) and some.
const FETCH_LEAD: u32 = 64;

/// A provider's first region, as [`Channel::fast`] keeps it.
#[derive(Clone, Copy, Default)]
struct FastRegion {
    base: u64,
    len: u64,
    index: u16,
}

struct QueueConsumer {
    cfg: ConsumerConfig,
    channels: Vec<Channel>,
    stats: ConsumerStats,
    /// A wait for a consumer timed out: drop at once until one connects.
    gave_up: bool,
    /// Frames [`QueueDelivery::place_and_lend`] took, for tests that check it did.
    #[cfg(test)]
    taken_in_one_pass: u64,
}

impl QueueConsumer {
    /// Counts the frames [`QueueDelivery::place_and_lend`] `took` (a bit each), of
    /// `bytes` bytes, as delivered to its session, as a delivery counts (a later
    /// absence, full ring or quota is waited for again): how many.
    fn delivered_in_one_pass(&mut self, took: u64, bytes: u64) -> u64 {
        let frames = u64::from(took.count_ones());
        if frames == 0 {
            return 0;
        }
        #[cfg(test)]
        {
            self.taken_in_one_pass += frames;
        }
        self.gave_up = false;
        if let Some(ch) = self.channels.first_mut() {
            ch.stalled = false;
        }
        self.stats.counters.frames += frames;
        self.stats.counters.bytes += bytes;
        frames
    }
}

/// One queue's delivery: owned by its worker.
pub struct QueueDelivery {
    queue: u16,
    inbox: Arc<Inbox>,
    consumers: Vec<QueueConsumer>,
    pools: Vec<PoolMemory>,
    tokens: Vec<u64>,
    /// The region and offset of each part of the frame being delivered.
    described: Vec<(u16, u64)>,
    /// Unread frames of sessions closed since `take_gone`.
    gone: u64,
    /// Where each consumer's transmit ring sends, on this queue (None: it has none).
    tx: Vec<Option<Arc<dyn TxQueue>>>,
    /// A refusal from a transmitter has been logged (once; the rest are counted).
    tx_error_logged: bool,
}

/// Buffers per refill pass whose lines are fetched for writing as they come back: about
/// a burst's worth.
const WARM: usize = 64;

/// Tokens read from a refill ring per pass.
const REFILL_BATCH: usize = 256;

impl QueueDelivery {
    pub(crate) fn new(
        queue: u16,
        inbox: Arc<Inbox>,
        consumers: &[(String, ConsumerConfig)],
        pools: Vec<PoolMemory>,
    ) -> QueueDelivery {
        QueueDelivery {
            queue,
            inbox,
            consumers: consumers
                .iter()
                .map(|(name, cfg)| QueueConsumer {
                    cfg: cfg.clone(),
                    channels: Vec::new(),
                    gave_up: false,
                    #[cfg(test)]
                    taken_in_one_pass: 0,
                    stats: ConsumerStats {
                        name: name.clone(),
                        ..Default::default()
                    },
                })
                .collect(),
            pools,
            tokens: vec![0; REFILL_BATCH],
            described: Vec::with_capacity(256),
            gone: 0,
            tx: vec![None; consumers.len()],
            tx_error_logged: false,
        }
    }

    /// Where consumer `consumer`'s transmit ring sends, on this queue.
    pub(crate) fn set_transmitter(&mut self, consumer: usize, tx: Arc<dyn TxQueue>) {
        if let Some(slot) = self.tx.get_mut(consumer) {
            *slot = Some(tx);
        }
    }

    /// True while a session with a transmit ring holds buffers: frames may be waiting
    /// for their verdict, so the worker should not sleep long on its device.
    pub(crate) fn awaits_verdicts(&self) -> bool {
        self.consumers.iter().any(|c| {
            c.channels
                .iter()
                .any(|ch| ch.transmit.is_some() && ch.lent.held() > 0)
        })
    }

    /// Frames that sessions ended before reading, since the last call.
    pub(crate) fn take_gone(&mut self) -> u64 {
        std::mem::take(&mut self.gone)
    }

    /// Frames [`place_and_lend`](Self::place_and_lend) took, all consumers together.
    #[cfg(test)]
    pub(crate) fn taken_in_one_pass(&self) -> u64 {
        self.consumers.iter().map(|c| c.taken_in_one_pass).sum()
    }

    /// The consumers' counters on this queue.
    pub fn stats(&self) -> Vec<ConsumerStats> {
        self.consumers
            .iter()
            .map(|c| {
                let mut s = c.stats.clone();
                s.counters.lent = c.channels.iter().map(|ch| u64::from(ch.lent.held())).sum();
                s.counters.sessions = c.channels.len() as u64;
                s
            })
            .collect()
    }

    /// Takes new channels, drains every refill ring into `pools`, and closes sessions
    /// that ended. Called once per poll of the device, and while waiting.
    pub fn service(&mut self, pools: &mut [Pool]) {
        if self.inbox.pending.load(Ordering::Acquire) {
            self.take_new();
        }
        for (ci, c) in self.consumers.iter_mut().enumerate() {
            let mut i = 0;
            while i < c.channels.len() {
                let ch = &mut c.channels[i];
                // Also for a session that ended: what it gave back before leaving is
                // returned, not reclaimed (every token is checked all the same), and
                // what it asked to send is sent.
                refill(ch, pools, &mut self.tokens, &mut c.stats.counters);
                if let (Some(_), Some(tx)) = (&ch.transmit, &self.tx[ci]) {
                    send_from(
                        ch,
                        &**tx,
                        pools,
                        &mut c.stats.counters,
                        &mut self.tx_error_logged,
                    );
                }
                match ch.session.ended() {
                    None => i += 1,
                    Some(why) => {
                        let ch = c.channels.swap_remove(i);
                        self.gone += close(ch, why, pools, &mut c.stats);
                    }
                }
            }
        }
    }

    fn take_new(&mut self) {
        let new = match self.inbox.channels.lock() {
            Ok(mut v) => {
                self.inbox.pending.store(false, Ordering::Release);
                std::mem::take(&mut *v)
            }
            Err(_) => return,
        };
        for n in new {
            let Some(c) = self.consumers.get_mut(n.consumer) else {
                continue;
            };
            c.stats.counters.sessions_started += 1;
            c.channels.push(Channel {
                session: n.session,
                completion: Producer::new(n.map.ring(RingKind::Completion)),
                refill: Consumer::new(n.map.ring(RingKind::Refill)),
                meta: (n.map.header().rings[RingKind::Meta as usize - 1].entries > 0)
                    .then(|| Producer::new(n.map.ring(RingKind::Meta))),
                stage: vec![
                    layout::Desc::default();
                    n.map.header().rings[RingKind::Completion as usize - 1].entries as usize
                ]
                .into_boxed_slice(),
                meta_stage: Vec::new(),
                ahead: 0,
                transmit: (n.map.header().rings[RingKind::Transmit as usize - 1].entries > 0)
                    .then(|| Consumer::new(n.map.ring(RingKind::Transmit))),
                eventfd: n.eventfd,
                lent: LentTable::default(),
                pending: 0,
                starts: vec![
                    0;
                    n.map.header().rings[RingKind::Completion as usize - 1].entries
                        as usize
                ]
                .into_boxed_slice(),
                announced: Vec::new(),
                fast: vec![FastRegion::default(); self.pools.len()].into_boxed_slice(),
                delivered: 0,
                stalled: false,
            });
        }
    }

    /// Delivers one placed frame to consumer `consumer`: its `n` parts, the next `n` of
    /// `parts`, are lent. The frame's first `skipped` bytes, before its first part (a
    /// head the worker left out because its provider cannot share), are copied inline
    /// from the frame, as is a first part in memory that cannot be shared (then
    /// recycled); for a `copy` route whose memory cannot be shared, the whole frame is
    /// copied. All `n` are taken from `parts` either way: what is not lent goes back to
    /// `pools`. The entry is published by [`flush`](Self::flush), once per burst.
    ///
    /// One pass over the parts finds their regions (a provider's first region is tried
    /// first: most have one); the entry is written once, from the frame's own bytes,
    /// with the tokens of the buffers as they are lent.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn deliver(
        &mut self,
        consumer: u16,
        copy: bool,
        frame: &RxFrame<'_>,
        split: &Split,
        rule: usize,
        skipped: usize,
        parts: &mut std::vec::Drain<'_, Part>,
        n: usize,
        pools: &mut [Pool],
    ) -> Result<(), DropReason> {
        let result = self.try_deliver(consumer, copy, frame, split, rule, skipped, parts, n, pools);
        if result.is_err() {
            for p in parts.take(n) {
                let _ = pools[p.provider].recycle(p.buf);
            }
        }
        result
    }

    /// Delivers a run of placed frames that all go to consumer `consumer` (none by a
    /// `copy` route), in order: as [`deliver`](Self::deliver) would one at a time, each
    /// frame's `n` parts the next `n` of `parts`, drops counted in `dropped`.
    ///
    /// With one session and no metadata ring (the usual case), the consumer and its
    /// session are found once for the run, and a frame whose parts are all in their
    /// provider's first region, already announced (one compare each, against
    /// [`Channel::fast`]), that fits in the ring and under the quota is staged right
    /// here: no region search, no list of where parts are, counters added once per
    /// run. Any other frame, or any session layout, takes the full path.
    pub(crate) fn deliver_run<'a, 'f: 'a>(
        &mut self,
        consumer: u16,
        frames: impl Iterator<Item = RunFrame<'a, 'f>>,
        parts: &mut std::vec::Drain<'_, Part>,
        pools: &mut [Pool],
        dropped: &mut Tally<DropReason>,
    ) {
        let ci = usize::from(consumer);
        let mut frames = frames;
        loop {
            let left = match self.consumers.get_mut(ci) {
                Some(c) if c.channels.len() == 1 && c.channels[0].meta.is_none() => {
                    let quota = c.cfg.quota();
                    let ch = &mut c.channels[0];
                    ch.fetch_ahead();
                    let (mut count, mut bytes) = (0u64, 0u64);
                    let mut left = None;
                    for f in frames.by_ref() {
                        if !stage_lent(ch, &f, parts, quota) {
                            left = Some(f);
                            break;
                        }
                        count += 1;
                        bytes += f.frame.data.len() as u64;
                    }
                    if count > 0 {
                        c.gave_up = false;
                        ch.stalled = false;
                        c.stats.counters.frames += count;
                        c.stats.counters.bytes += bytes;
                    }
                    left
                }
                _ => frames.next(),
            };
            let Some(f) = left else {
                return;
            };
            let result = self.deliver(
                consumer, false, f.frame, f.split, f.rule, f.skipped, parts, f.n, pools,
            );
            if let Err(reason) = result {
                dropped.add(reason);
            }
        }
    }

    /// Places and delivers, in one pass, the frames of a routed vector that go to the
    /// consumer of its first delivering frame, as long as they have that frame's lane
    /// ([`Lanes`]): which frames it took, bit `i` for frame `i` (a vector has at most
    /// 64), and whether its consumer wants metadata (which
    /// [`stage_meta_of_taken`](Self::stage_meta_of_taken) then writes). The others go
    /// the general way (placed and staged, then [`deliver_run`](Self::deliver_run) or
    /// the sink). The pass stops at the first frame for that consumer it cannot take, so
    /// the consumer sees its frames in order.
    ///
    /// A frame is taken when its consumer has one session (with metadata or not), the bytes
    /// after its inline head fit in the buffer on top of the lane's pool cache, that
    /// buffer is in the pool's first region as the session knows it (announced), and the
    /// frame fits in the ring and under the quota. It is then copied once (the head
    /// into the ring's stage, the rest into the buffer), lent, and counted as the
    /// general way counts it (placed for the provider, carried by its route, delivered
    /// to its consumer). Everything is checked before anything is taken, so a frame
    /// that does not qualify is left whole for the general way; no provider is called
    /// (a cache miss ends the pass), so no provider can be quarantined here. The ring's
    /// room and the quota are read once per pass and counted down.
    ///
    /// Why a second path: the general one places every part (a `Part` and a `Staged`
    /// record each), then builds a run of the vector's delivering frames, checks each
    /// part against its region again, and takes the parts back out of the list: for a
    /// frame of one lent part and an inline head, about 530 instructions of the 780 a
    /// 64 B frame took (`cargo xtask instructions`, deliver-64), against one pass here.
    /// The payload is copied once the buffer is lent, into the buffer as the lent table
    /// holds it: the copy is a library call, and what is live across it is spilled.
    #[inline(never)]
    pub(crate) fn place_and_lend(
        &mut self,
        burst: &[RxFrame<'_>],
        splits: &[Split],
        routed: &[Option<usize>],
        lanes: &Lanes,
        pools: &mut [Pool],
        stats: &mut QueueStats,
    ) -> Took {
        debug_assert!(burst.len() <= 64);
        // The first delivering frame names the consumer and the lane.
        let Some((key, lane)) = lanes.first(routed) else {
            return Took::NONE;
        };
        let c = match self.consumers.get_mut(usize::from(lane.consumer)) {
            Some(c) if c.channels.len() == 1 => c,
            _ => return Took::NONE,
        };
        let ch = &mut c.channels[0];
        // This vector's lines, a few at a time.
        ch.fetch_ahead();
        let inline = match lane.head {
            LaneHead::Inline(inline) => inline,
            LaneHead::Lent(head) => {
                let quota = c.cfg.quota();
                let (taken, bytes) = lend_two(
                    ch,
                    (burst, splits, routed),
                    (&lanes.keys, key, lane, head),
                    quota,
                    pools,
                    stats,
                );
                let metadata = ch.meta.is_some();
                c.delivered_in_one_pass(taken, bytes);
                return Took {
                    frames: taken,
                    metadata,
                };
            }
        };
        let (Some(pool), Some(&region)) = (pools.get_mut(lane.pool), ch.fast.get(lane.pool)) else {
            return Took::NONE;
        };
        if !pool
            .caps()
            .contains(crate::provider::Capabilities::HOST_WRITABLE)
        {
            return Took::NONE;
        }
        let mut lendable = c.cfg.quota().saturating_sub(ch.lent.held());
        let mut room = ch.room();
        // Frames taken, their bytes, and the buffers lent and bytes placed in them.
        let (mut taken, mut bytes, mut buffers, mut placed) = (0u64, 0u64, 0u64, 0u64);
        for (i, ((frame, split), &rule)) in burst.iter().zip(splits).zip(routed).enumerate() {
            let Some(rule) = rule else {
                continue;
            };
            let k = lanes.keys[rule];
            if k >> 16 != key >> 16 {
                // Not this consumer's.
                continue;
            }
            if k != key {
                break;
            }
            let data = frame.data;
            let skipped = split.head_len.min(inline).min(data.len());
            let rest = &data[skipped..];
            if rest.is_empty() {
                // All head (a frame under the split's `hds_threshold`): all inline, no
                // buffer.
                if skipped == 0 || !stage_all_inline(ch, data, &mut room) {
                    break;
                }
                stats.routes[rule].add(data.len());
                taken |= 1 << i;
                bytes += data.len() as u64;
                continue;
            }
            let Some(top) = pool.peek_cached() else {
                break;
            };
            let offset = top.addr.wrapping_sub(region.base);
            if rest.len() > top.len as usize || offset >= region.len || lendable == 0 {
                break;
            }
            let need = layout::slots_for(1, skipped) as u32;
            if !ch.fits(need, &mut room) {
                break;
            }
            let from = ch.pending as usize;
            let Some(slots) = ch.stage.get_mut(from..from + need as usize) else {
                break;
            };
            let Some(buf) = pool.alloc_cached() else {
                break;
            };
            prefetch_next(pool, 0, rest.len());
            let (run, desc) = slots.split_at_mut(need as usize - 1);
            if let [d, head @ ..] = run {
                *d = layout::Desc::inline(skipped as u32, false, true);
                stage_inline(head, data, skipped);
            }
            let len = rest.len() as u32;
            // Checked above: the pool's memory is the host's to write.
            let token = ch
                .lent
                .lend_filled(region.index, lane.pool as u16, buf, rest);
            if let [d] = desc {
                *d = layout::Desc::part(token, offset, len, false);
            }
            ch.staged(need);
            lendable -= 1;
            stats.routes[rule].add(data.len());
            buffers += 1;
            placed += u64::from(len);
            taken |= 1 << i;
            bytes += data.len() as u64;
        }
        let metadata = ch.meta.is_some();
        c.delivered_in_one_pass(taken, bytes);
        if buffers != 0 {
            let p = &mut stats.providers[lane.pool].placed;
            p.frames += buffers;
            p.bytes += placed;
        }
        Took {
            frames: taken,
            metadata,
        }
    }

    /// The metadata entries of the frames [`place_and_lend`](Self::place_and_lend) took
    /// from `burst` (`took`, as it returned it), for a consumer with metadata; in the
    /// frames' order, before any frame the general way delivers after them.
    ///
    /// Its own call, after the pass: its few lines in the pass's loop, or after the loop
    /// in the same function (which kept the vector's slices live across it), made the
    /// compiler spill more in the loop, about 20 instructions a frame for a consumer
    /// without metadata (deliver-64).
    #[inline(never)]
    pub(crate) fn stage_meta_of_taken(
        &mut self,
        took: u64,
        burst: &[RxFrame<'_>],
        splits: &[Split],
        routed: &[Option<usize>],
        lanes: &Lanes,
    ) {
        let Some((_, lane)) = lanes.first(routed) else {
            return;
        };
        let Some(c) = self.consumers.get_mut(usize::from(lane.consumer)) else {
            return;
        };
        let checksum = c.cfg.checksum;
        let Some(ch) = c.channels.first_mut().filter(|ch| ch.meta.is_some()) else {
            return;
        };
        let mut left = took;
        while left != 0 {
            let i = left.trailing_zeros() as usize;
            left &= left - 1;
            if let (Some(frame), Some(split), Some(&Some(rule))) =
                (burst.get(i), splits.get(i), routed.get(i))
            {
                let len = frame.data.len();
                let (skipped, parts) = match lane.head {
                    LaneHead::Inline(inline) => {
                        let skipped = split.head_len.min(inline).min(len);
                        (skipped, usize::from(skipped < len))
                    }
                    LaneHead::Lent(_) => (0, 1 + usize::from(split.head_len < len)),
                };
                let flags = if skipped > 0 {
                    layout::F_HEAD_INLINE
                } else {
                    0
                };
                let flow = flow_hash(split);
                ch.meta_stage.push(meta_entry(
                    frame, split, self.queue, rule, flow, flags, checksum, parts, skipped,
                ));
            }
        }
    }

    /// [`deliver`](Self::deliver): takes all `n` parts when it succeeds, none when it
    /// fails.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn try_deliver(
        &mut self,
        consumer: u16,
        copy: bool,
        frame: &RxFrame<'_>,
        split: &Split,
        rule: usize,
        skipped: usize,
        parts: &mut std::vec::Drain<'_, Part>,
        n: usize,
        pools: &mut [Pool],
    ) -> Result<(), DropReason> {
        let view = &parts.as_slice()[..n];
        debug_assert_eq!(
            skipped + view.iter().map(|p| p.len).sum::<usize>(),
            frame.data.len(),
            "the parts follow the bytes left for the ring"
        );
        let ci = usize::from(consumer);
        if self.consumers[ci].channels.is_empty() && !self.wait_for_consumer(ci) {
            return Err(DropReason::NoConsumer);
        }
        let c = &mut self.consumers[ci];
        c.gave_up = false;
        // The flow hash picks the session when there are several (multiply-shift, not
        // `%`: a division per frame showed as most of the delivery path) and goes in the
        // metadata; a lone session without metadata needs neither.
        let sessions = c.channels.len();
        let flow = if sessions > 1 || c.channels[0].meta.is_some() {
            flow_hash(split)
        } else {
            0
        };
        let pick = ((u64::from(flow) * sessions as u64) >> 32) as usize;
        let ch = &mut c.channels[pick];
        // With no bytes left for the ring (the worker leaves a head there when its
        // provider cannot share), a first part in memory that cannot be shared is a head
        // to copy inline.
        let head_part = skipped == 0
            && view
                .first()
                .is_some_and(|p| matches!(self.pools[p.provider], PoolMemory::Private));
        let mut lend_from = usize::from(head_part);
        // Where each part to lend is, in one pass; regions are announced before any
        // descriptor names them (the consumer must know a region first). A part in memory
        // that cannot be shared makes the frame a copy, whole, into the ring.
        let described = &mut self.described;
        described.clear();
        let mut copied = false;
        for p in &view[lend_from..] {
            let PoolMemory::Shared(regions) = &self.pools[p.provider] else {
                copied = true;
                break;
            };
            let addr = p.buf.netmem().addr;
            let r = match regions.first() {
                Some(r) if addr.wrapping_sub(r.base) < r.len => r,
                _ => regions
                    .iter()
                    .find(|r| addr.wrapping_sub(r.base) < r.len)
                    .ok_or(DropReason::Fault)?,
            };
            if !ch.announced.get(r.index as usize).is_some_and(|&a| a) {
                announce_to(ch, r, &mut c.stats.counters)?;
                if std::ptr::eq(r, &regions[0]) {
                    ch.fast[p.provider] = FastRegion {
                        base: r.base,
                        len: r.len,
                        index: r.index as u16,
                    };
                }
            }
            described.push((r.index as u16, addr - r.base));
        }
        // What goes in the ring as bytes.
        let inline: &[u8] = if copied {
            if !copy {
                // Refused at start (config check); a fault if it happens anyway.
                return Err(DropReason::Fault);
            }
            lend_from = n;
            frame.data
        } else if head_part {
            &frame.data[..view[0].len]
        } else {
            &frame.data[..skipped]
        };
        let head_inline = !copied && !inline.is_empty();
        let lent = n - lend_from;
        if ch.lent.held() + lent as u32 > c.cfg.quota() {
            wait_for_quota(
                ch,
                lent as u32,
                &c.cfg,
                pools,
                &mut self.tokens,
                &mut c.stats.counters,
            )?;
        }
        let need = layout::slots_for(lent, inline.len()) as u32;
        let room = match ch.completion.has_room(ch.pending, need) {
            Ok(r) => r,
            Err(_) => {
                ch.session.end(Disconnect::BadIndex);
                return Err(DropReason::ConsumerGone);
            }
        };
        if !room {
            wait_for_room(ch, need, &c.cfg, &mut c.stats.counters)?;
        }
        // The frame's slots in the burst's stage: the inline run (if any) first, then
        // each part as it is lent.
        let from = ch.pending as usize;
        let Some(slots) = ch.stage.get_mut(from..from + need as usize) else {
            // The ring had room, so the stage has: a fault if not.
            return Err(DropReason::Fault);
        };
        // Nothing can fail from here on.
        let (run, descs) = slots.split_at_mut(need as usize - lent);
        if let [d, bytes @ ..] = run {
            *d = layout::Desc::inline(inline.len() as u32, copied, lent > 0);
            stage_inline(bytes, frame.data, inline.len());
        }
        // What went inline from buffers (a head, or a copied frame's every part) goes
        // back to its pool now.
        for p in parts.take(lend_from) {
            let _ = pools[p.provider].recycle(p.buf);
        }
        for (j, (d, p)) in descs.iter_mut().zip(parts.take(lent)).enumerate() {
            let (region, offset) = described[j];
            let len = p.len as u32;
            let token = ch.lent.lend(region, p.provider as u16, p.buf, len);
            *d = layout::Desc::part(token, offset, len, j + 1 < lent);
        }
        if ch.meta.is_some() {
            let mut flags = 0;
            if copied {
                flags |= layout::F_COPIED;
            } else if head_inline {
                flags |= layout::F_HEAD_INLINE;
            }
            let e = meta_entry(
                frame,
                split,
                self.queue,
                rule,
                flow,
                flags,
                c.cfg.checksum,
                lent,
                inline.len(),
            );
            ch.meta_stage.push(e);
        }
        if copied {
            c.stats.counters.copied += 1;
        }
        ch.staged(need);
        // Delivered: a later full ring or quota is waited for again.
        ch.stalled = false;
        c.stats.counters.frames += 1;
        c.stats.counters.bytes += frame.data.len() as u64;
        Ok(())
    }

    /// Publishes what was written this vector, one wake-up per channel at most.
    pub fn flush(&mut self) {
        for c in &mut self.consumers {
            for ch in &mut c.channels {
                publish(ch, &mut c.stats.counters, c.cfg.wake);
            }
        }
    }

    /// Ends every session (the run is over) and takes back what they held. Consumers
    /// get up to `drain` to read what was published and give their buffers back first;
    /// what they have not read by then counts as `consumer_gone`.
    pub fn close_all(&mut self, pools: &mut [Pool], drain: Duration) {
        self.flush();
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline {
            self.service(pools);
            let settled = self.consumers.iter_mut().all(|c| {
                c.channels.iter_mut().all(|ch| {
                    let _ = ch.completion.free();
                    ch.completion.in_flight() == 0 && ch.lent.held() == 0
                })
            });
            if settled {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Only this queue's channels close here: the session goes on for the other
        // queues, and the server says goodbye once every queue is done.
        for c in &mut self.consumers {
            for ch in c.channels.drain(..) {
                let why = ch.session.ended().unwrap_or(Disconnect::Shutdown);
                self.gone += close(ch, why, pools, &mut c.stats);
            }
        }
    }
}

impl QueueDelivery {
    /// Waits (`policy = "wait"`, once per absence) for a session of consumer `ci`; true
    /// when one came.
    #[cold]
    #[inline(never)]
    fn wait_for_consumer(&mut self, ci: usize) -> bool {
        let cfg = &self.consumers[ci].cfg;
        // After a wait that timed out, frames drop at once until a consumer connects.
        if cfg.policy == DeliverPolicy::Drop || self.consumers[ci].gave_up {
            return false;
        }
        let deadline = Instant::now() + Duration::from_millis(cfg.wait_ms);
        while self.consumers[ci].channels.is_empty() {
            if Instant::now() >= deadline {
                self.consumers[ci].gave_up = true;
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
            if self.inbox.pending.load(Ordering::Acquire) {
                self.take_new();
            }
        }
        true
    }
}

/// The session holds its quota: with `policy = "wait"`, takes back what the consumer
/// returns for a bounded time.
#[cold]
#[inline(never)]
fn wait_for_quota(
    ch: &mut Channel,
    lent: u32,
    cfg: &ConsumerConfig,
    pools: &mut [Pool],
    tokens: &mut [u64],
    counters: &mut DeliveryCounters,
) -> Result<(), DropReason> {
    if cfg.policy == DeliverPolicy::Drop || ch.stalled {
        return Err(DropReason::ConsumerQuota);
    }
    // What this burst wrote is published first: entries are published once per burst,
    // and the consumer cannot give back buffers it has not been shown.
    publish(ch, counters, cfg.wake);
    let deadline = Instant::now() + Duration::from_millis(cfg.wait_ms);
    while ch.lent.held() + lent > cfg.quota() {
        if Instant::now() >= deadline || ch.session.ended().is_some() {
            ch.stalled = true;
            return Err(DropReason::ConsumerQuota);
        }
        std::thread::yield_now();
        refill(ch, pools, tokens, counters);
    }
    Ok(())
}

/// The completion ring is full: with `policy = "wait"`, publishes what is written (so
/// the consumer can make room) and waits for a bounded time. After one wait that timed
/// out, a ring that is still full drops at once.
#[cold]
#[inline(never)]
fn wait_for_room(
    ch: &mut Channel,
    need: u32,
    cfg: &ConsumerConfig,
    counters: &mut DeliveryCounters,
) -> Result<(), DropReason> {
    counters.ring_full += 1;
    if cfg.policy == DeliverPolicy::Drop || ch.stalled || need > ch.completion.size() {
        return Err(DropReason::ConsumerFull);
    }
    publish(ch, counters, cfg.wake);
    let deadline = Instant::now() + Duration::from_millis(cfg.wait_ms);
    loop {
        match ch.completion.free() {
            Ok(f) if f >= need => return Ok(()),
            Ok(_) if Instant::now() < deadline => std::thread::yield_now(),
            Ok(_) => {
                ch.stalled = true;
                return Err(DropReason::ConsumerFull);
            }
            Err(_) => {
                ch.session.end(Disconnect::BadIndex);
                return Err(DropReason::ConsumerGone);
            }
        }
        if ch.session.ended().is_some() {
            return Err(DropReason::ConsumerGone);
        }
    }
}

/// [`QueueDelivery::place_and_lend`] for a frame that is all head, inline: its bytes in
/// the ring and no part (as `stage_lent` stages it), when the ring has room (`room`
/// slots after those staged, read again from the consumer's index when short, and
/// counted down). Out of line: the pass's loop stays as it was for frames with a part.
#[inline(never)]
fn stage_all_inline(ch: &mut Channel, data: &[u8], room: &mut u32) -> bool {
    let need = layout::slots_for(0, data.len()) as u32;
    if !ch.fits(need, room) {
        return false;
    }
    let from = ch.pending as usize;
    let Some((d, run)) = ch
        .stage
        .get_mut(from..from + need as usize)
        .and_then(|s| s.split_first_mut())
    else {
        return false;
    };
    *d = layout::Desc::inline(data.len() as u32, false, false);
    stage_inline(run, data, data.len());
    ch.staged(need);
    true
}

/// [`QueueDelivery::place_and_lend`] for a lane whose head is lent too (from pool
/// `head`): a frame's head goes to a buffer of `head`, the rest (if any) to one of
/// `lane.pool`, both lent, as the general way places and lends them (`place_direct`,
/// then `stage_lent`). A frame with no head bytes, a head longer than its buffer or a
/// rest longer than one buffer ends the pass, as does anything `place_and_lend` stops
/// at. Which frames it took, and their bytes. Its own function, so the loop of the
/// usual lane (an inline head) is compiled as it was.
#[inline(never)]
fn lend_two(
    ch: &mut Channel,
    (burst, splits, routed): (&[RxFrame<'_>], &[Split], &[Option<usize>]),
    (keys, key, lane, head): (&[u32], u32, PlaceAndLend, usize),
    quota: u32,
    pools: &mut [Pool],
    stats: &mut QueueStats,
) -> (u64, u64) {
    let frags = lane.pool;
    let writable = |p: usize| {
        pools.get(p).is_some_and(|pool| {
            pool.caps()
                .contains(crate::provider::Capabilities::HOST_WRITABLE)
        })
    };
    let (Some(&head_region), Some(&frags_region)) = (ch.fast.get(head), ch.fast.get(frags)) else {
        return (0, 0);
    };
    if !writable(head) || !writable(frags) {
        return (0, 0);
    }
    let mut lendable = quota.saturating_sub(ch.lent.held());
    let mut room = ch.room();
    let (mut taken, mut bytes) = (0u64, 0u64);
    for (i, ((frame, split), &rule)) in burst.iter().zip(splits).zip(routed).enumerate() {
        let Some(rule) = rule else {
            continue;
        };
        let k = keys[rule];
        if k >> 16 != key >> 16 {
            continue;
        }
        if k != key {
            break;
        }
        let data = frame.data;
        let at = split.head_len.min(data.len());
        let (head_bytes, rest) = data.split_at(at);
        let parts = 1 + u32::from(!rest.is_empty());
        if head_bytes.is_empty() || lendable < parts {
            break;
        }
        // The buffers the pops below will give: the head's first, so from one pool
        // (head and frags may share it) the rest's is the one under it.
        let Some(h) = pools[head].peek_cached() else {
            break;
        };
        let h_offset = h.addr.wrapping_sub(head_region.base);
        if head_bytes.len() > h.len as usize || h_offset >= head_region.len {
            break;
        }
        let mut f_offset = 0;
        if !rest.is_empty() {
            let Some(f) = pools[frags].peek_cached_at(usize::from(frags == head)) else {
                break;
            };
            f_offset = f.addr.wrapping_sub(frags_region.base);
            if rest.len() > f.len as usize || f_offset >= frags_region.len {
                break;
            }
        }
        if !ch.fits(parts, &mut room) {
            break;
        }
        let from = ch.pending as usize;
        let Some(slots) = ch.stage.get_mut(from..from + parts as usize) else {
            break;
        };
        // Both buffers are taken before either is lent: the frame goes out whole or not
        // at all.
        let Some(hbuf) = pools[head].alloc_cached() else {
            break;
        };
        let fbuf = match rest.is_empty() {
            true => None,
            false => match pools[frags].alloc_cached() {
                Some(b) => Some(b),
                None => {
                    // Not reached: peeked above, under the head's buffer when the two
                    // share a pool.
                    let _ = pools[head].recycle(hbuf);
                    break;
                }
            },
        };
        prefetch_next(&pools[frags], usize::from(frags == head), rest.len());
        let hlen = head_bytes.len() as u32;
        let token = ch
            .lent
            .lend_filled(head_region.index, head as u16, hbuf, head_bytes);
        slots[0] = layout::Desc::part(token, h_offset, hlen, fbuf.is_some());
        stats.providers[head].placed.add(head_bytes.len());
        if let (Some(fbuf), Some(d)) = (fbuf, slots.get_mut(1)) {
            let flen = rest.len() as u32;
            let token = ch
                .lent
                .lend_filled(frags_region.index, frags as u16, fbuf, rest);
            *d = layout::Desc::part(token, f_offset, flen, false);
            stats.providers[frags].placed.add(rest.len());
        }
        ch.staged(parts);
        lendable -= parts;
        stats.routes[rule].add(data.len());
        taken |= 1 << i;
        bytes += data.len() as u64;
    }
    (taken, bytes)
}

/// Asks for the lines of the buffer `pool` hands out `k` buffers from now (0: next),
/// for writing, from its third line up to `bytes` (the first two were asked for as it
/// came back, in [`refill`]): for a caller that has just taken a buffer for a frame of
/// `bytes`, when the next frame is likely as long.
///
/// A lent buffer comes back after a trip around the rings, long enough for its lines
/// to have left the host's L1, and the copy into it fetched each as it reached it: at
/// 1500 B placing took 14 to 19 ns a frame more than in-process, where a buffer is back
/// before the next frame. Asked for one frame ahead, the lines arrive while this frame
/// is copied. Asked for as the buffers came back, 64 at a time, they did not: the time
/// moved from placing to the refill (`--profile`; docs/delivery.md, "Session 27").
#[inline(always)]
fn prefetch_next(pool: &Pool, k: usize, bytes: usize) {
    // A small frame's lines are warm already: one compare.
    if bytes <= lent::WARM_BYTES {
        return;
    }
    if let Some(next) = pool.peek_cached_at(k) {
        crate::mem::prefetch_lines_for_write(next, lent::WARM_BYTES, bytes);
    }
}

/// The metadata entry of a delivered frame (docs/delivery.md, "Metadata"): `flags`
/// says how its head travels (inline, or the frame copied), `checksum` asks for the
/// frame's CRC-32, and `parts` of its bytes are lent after `inline_len` in the ring.
#[allow(clippy::too_many_arguments)]
#[inline]
fn meta_entry(
    frame: &RxFrame<'_>,
    split: &Split,
    queue: u16,
    rule: usize,
    flow: u32,
    mut flags: u16,
    checksum: bool,
    parts: usize,
    inline_len: usize,
) -> FrameMeta {
    let m = &frame.meta;
    let mut crc = 0;
    if checksum {
        flags |= layout::F_CHECKSUM;
        crc = crc32fast::hash(frame.data);
    }
    FrameMeta {
        seq: m.seq,
        timestamp_ns: m.timestamp_ns,
        rx_mono_ns: m.rx_mono_ns,
        orig_len: m.orig_len,
        cap_len: m.cap_len,
        flow_hash: flow,
        checksum: crc,
        queue,
        route: rule as u16,
        flags,
        head_len: split.head_len.min(usize::from(u16::MAX)) as u16,
        parts: parts as u16,
        inline_len: inline_len as u16,
        gso_size: m.vnet.gso_size,
        csum_start: m.vnet.csum_start,
        csum_offset: m.vnet.csum_offset,
        layer: match split.outcome {
            Ok(crate::wire::Layer::L2) => 2,
            Ok(crate::wire::Layer::L3) => 3,
            Ok(crate::wire::Layer::L4) => 4,
            Ok(crate::wire::Layer::Tunnel) => 5,
            Ok(crate::wire::Layer::App) => 7,
            Err(_) => 0,
        },
        gso_type: m.vnet.gso_type,
        csum: if m.vnet.flags & 1 != 0 {
            1
        } else if m.vnet.flags & 2 != 0 {
            2
        } else {
            0
        },
        reserved: [0; 3],
    }
}

/// `KEEP[k]` keeps the first `k` bytes of a little-endian 16-byte word (a table: a
/// 128-bit shift by a variable amount is a sequence of instructions).
const KEEP: [u128; layout::DESC] = {
    let mut m = [0u128; layout::DESC];
    let mut k = 1;
    while k < layout::DESC {
        m[k] = (1u128 << (k * 8)) - 1;
        k += 1;
    }
    m
};

/// How [`QueueDelivery::place_and_lend`] sees a worker's routes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lanes {
    /// Per rule: 0 when it delivers to no consumer, else the consumer (plus 1) in the
    /// high 16 bits and its lane in `lanes` (plus 1; 0 for none) in the low 16: one
    /// compare tells a frame of another consumer (skipped) from one of this consumer
    /// that the pass cannot take (the pass ends there).
    pub(crate) keys: Vec<u32>,
    pub(crate) lanes: Vec<PlaceAndLend>,
}

impl Lanes {
    /// Per rule, the consumer it delivers to (if any) and its lane (if it has one).
    pub(crate) fn new(
        rules: impl IntoIterator<Item = (Option<u16>, Option<PlaceAndLend>)>,
    ) -> Lanes {
        let mut out = Lanes::default();
        for (consumer, lane) in rules {
            let Some(c) = consumer else {
                out.keys.push(0);
                continue;
            };
            let l = lane.filter(|l| l.consumer == c).map_or(0, |l| {
                match out.lanes.iter().position(|&x| x == l) {
                    Some(at) => at + 1,
                    None => {
                        out.lanes.push(l);
                        out.lanes.len()
                    }
                }
            });
            out.keys
                .push((u32::from(c) + 1) << 16 | u32::try_from(l).unwrap_or(0).min(0xffff));
        }
        out
    }

    /// Whether any rule has a lane.
    pub(crate) fn any(&self) -> bool {
        !self.lanes.is_empty()
    }

    /// The key and lane of the first of `routed`'s frames that is delivered, when its
    /// rule has a lane: whose frames a pass of [`QueueDelivery::place_and_lend`] takes.
    #[inline]
    fn first(&self, routed: &[Option<usize>]) -> Option<(u32, PlaceAndLend)> {
        let key = routed
            .iter()
            .flatten()
            .map(|&r| self.keys[r])
            .find(|&k| k != 0)?;
        let lane = (key as u16)
            .checked_sub(1)
            .and_then(|l| self.lanes.get(usize::from(l)))?;
        Some((key, *lane))
    }
}

/// What [`QueueDelivery::place_and_lend`] took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Took {
    /// Bit `i` for frame `i` of the vector.
    pub(crate) frames: u64,
    /// Their consumer wants a metadata entry per frame.
    pub(crate) metadata: bool,
}

impl Took {
    const NONE: Took = Took {
        frames: 0,
        metadata: false,
    };
}

/// A route whose frames [`QueueDelivery::place_and_lend`] can take: it delivers to
/// consumer `consumer` without copying or forwarding, and the rest of the frame after
/// its head goes to pool `pool`, memory the host writes and a consumer may map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlaceAndLend {
    pub(crate) consumer: u16,
    pub(crate) pool: usize,
    pub(crate) head: LaneHead,
}

/// Where a [`PlaceAndLend`] lane's heads go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaneHead {
    /// Into the ring, up to this many bytes (its provider's memory cannot be shared).
    Inline(usize),
    /// To a buffer of this pool, memory of the lane's kind, lent as the first part.
    Lent(usize),
}

/// One frame of a run for [`QueueDelivery::deliver_run`].
pub(crate) struct RunFrame<'a, 'f> {
    pub(crate) frame: &'a RxFrame<'f>,
    pub(crate) split: &'a Split,
    pub(crate) rule: usize,
    /// Its first bytes, before its first part, that go inline.
    pub(crate) skipped: usize,
    /// Its parts: the next `n` of the run's.
    pub(crate) n: usize,
}

/// [`QueueDelivery::deliver_run`]'s short path: stages frame `f` for session `ch`, its
/// first `f.skipped` bytes inline and every part lent, and takes the parts; or, when a
/// part is not in its provider's announced first region, or the frame does not fit in
/// the ring or under `quota`, does nothing and says so (the full path decides then).
#[inline(never)]
fn stage_lent(
    ch: &mut Channel,
    f: &RunFrame<'_, '_>,
    parts: &mut std::vec::Drain<'_, Part>,
    quota: u32,
) -> bool {
    let lent = f.n;
    let fast = &ch.fast;
    let lendable = |p: &Part| {
        fast.get(p.provider)
            .is_some_and(|r| p.buf.netmem().addr.wrapping_sub(r.base) < r.len)
    };
    // One part (the usual frame) is checked without a loop.
    let ok = match parts.as_slice() {
        [p, ..] if lent == 1 => lendable(p),
        all => all.get(..lent).is_some_and(|v| v.iter().all(lendable)),
    };
    if !ok || f.skipped > f.frame.data.len() {
        return false;
    }
    let need = layout::slots_for(lent, f.skipped);
    if need == 0
        || ch.lent.held() + lent as u32 > quota
        || !matches!(ch.completion.has_room(ch.pending, need as u32), Ok(true))
    {
        return false;
    }
    let from = ch.pending as usize;
    let Some(slots) = ch.stage.get_mut(from..from + need) else {
        return false;
    };
    let (run, descs) = slots.split_at_mut(need - lent);
    if let [d, bytes @ ..] = run {
        *d = layout::Desc::inline(f.skipped as u32, false, lent > 0);
        stage_inline(bytes, f.frame.data, f.skipped);
    }
    if let [d] = descs {
        if let Some(p) = parts.next() {
            *d = lend(&mut ch.lent, fast, p, false);
        }
    } else {
        for (j, (d, p)) in descs.iter_mut().zip(parts.take(lent)).enumerate() {
            *d = lend(&mut ch.lent, fast, p, j + 1 < lent);
        }
    }
    ch.staged(need as u32);
    true
}

/// Lends part `p`, in its provider's first region (as `fast` has it): its descriptor.
#[inline(always)]
fn lend(table: &mut LentTable, fast: &[FastRegion], p: Part, more: bool) -> layout::Desc {
    let r = fast.get(p.provider).copied().unwrap_or_default();
    let offset = p.buf.netmem().addr.wrapping_sub(r.base);
    let len = p.len as u32;
    let token = table.lend(r.index, p.provider as u16, p.buf, len);
    layout::Desc::part(token, offset, len, more)
}

/// Writes the first `len` bytes of `bytes` into `slots` (as many as the run takes), the
/// last one padded with zeros.
///
/// The whole slots are 16-byte copies; the last, partial one is one 16-byte load from
/// the frame, masked where the run ends. A head is a few slots, and zeroing them
/// (`memset`) and then copying the run (`memmove`), as this did first, were two library
/// calls per frame; one masked load per slot, as it did next, tested every slot for the
/// end of the run. (Before that, a slot at a time through a local that was read back
/// whole after a byte-sized copy into it: a store-forwarding stall per slot.) Only a run
/// that ends within 16 bytes of the frame's end takes its last slot through a byte copy.
#[inline(always)]
fn stage_inline(slots: &mut [layout::Desc], bytes: &[u8], len: usize) {
    debug_assert!(len <= bytes.len());
    debug_assert_eq!(slots.len(), layout::inline_slots(len));
    let whole = len / layout::DESC * layout::DESC;
    let (full, last) = slots.split_at_mut(whole / layout::DESC);
    for (slot, c) in full
        .iter_mut()
        .zip(bytes[..whole].chunks_exact(layout::DESC))
    {
        let raw: [u8; layout::DESC] = c.try_into().unwrap_or_default();
        *slot = zerocopy::transmute!(raw);
    }
    let (Some(slot), keep @ 1..) = (last.first_mut(), len - whole) else {
        return;
    };
    let word = match bytes.get(whole..whole + layout::DESC) {
        Some(run) => {
            let raw: [u8; layout::DESC] = run.try_into().unwrap_or_default();
            u128::from_le_bytes(raw) & KEEP[keep]
        }
        None => {
            let mut raw = [0u8; layout::DESC];
            raw[..keep].copy_from_slice(&bytes[whole..len]);
            u128::from_le_bytes(raw)
        }
    };
    *slot = zerocopy::transmute!(word.to_le_bytes());
}

/// Tells the session about region `r` the first time an entry points into it.
#[cold]
#[inline(never)]
fn announce_to(
    ch: &mut Channel,
    r: &RegionInfo,
    counters: &mut DeliveryCounters,
) -> Result<(), DropReason> {
    if announce(&ch.session, r).is_err() {
        ch.session.end(Disconnect::BadMessage);
        return Err(DropReason::ConsumerGone);
    }
    let i = r.index as usize;
    if ch.announced.len() <= i {
        ch.announced.resize(i + 1, false);
    }
    ch.announced[i] = true;
    counters.regions_sent += 1;
    if ch.delivered > 0 {
        counters.regions_late += 1;
    }
    Ok(())
}

fn publish(ch: &mut Channel, counters: &mut DeliveryCounters, wake: WakeMode) {
    if ch.pending == 0 {
        return;
    }
    if let Some(meta) = &mut ch.meta {
        // Before the descriptors: a consumer that sees a frame finds its metadata.
        meta.write_staged(0, ch.meta_stage.as_bytes());
        meta.publish(ch.meta_stage.len() as u32);
        ch.meta_stage.clear();
    }
    ch.completion
        .write_staged(0, ch.stage[..ch.pending as usize].as_bytes());
    ch.completion.publish(ch.pending);
    ch.pending = 0;
    // The first lines of the next burst; the rest are asked for as it is placed.
    ch.fetch_ahead();
    counters.batches += 1;
    if wake == WakeMode::Eventfd && ch.completion.needs_wakeup() {
        if let Some(fd) = &ch.eventfd {
            // Non-blocking: a counter near its limit is a consumer that never reads it.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            counters.wakeups += 1;
        }
    }
}

/// Takes back what the consumer returned. A wild index or a bad token ends the session.
fn refill(
    ch: &mut Channel,
    pools: &mut [Pool],
    tokens: &mut [u64],
    counters: &mut DeliveryCounters,
) {
    loop {
        let n = match ch.refill.available() {
            Ok(0) => return,
            Ok(n) => (n as usize).min(tokens.len()),
            Err(_) => {
                ch.session.end(Disconnect::BadIndex);
                return;
            }
        };
        // Refill entries are whole tokens, back to back (the host made the ring): the
        // batch is read in one copy (two across the ring's end).
        ch.refill.read_bytes(0, tokens[..n].as_mut_bytes());
        ch.refill.release(n as u32);
        // The last buffers given back are the first the pools hand out again (their
        // caches are stacks): the lines they held are fetched for writing now (from the
        // consumer's core, when it read them), not when the next frames are written
        // there, where each line's wait filled the store buffer and stalled placement.
        let returned = ch
            .lent
            .give_back(&tokens[..n], pools, n.saturating_sub(WARM));
        counters.returned += returned as u64;
        if returned < n {
            ch.session.end(Disconnect::BadToken);
            return;
        }
    }
}

/// Sends what the consumer put in its transmit ring: each frame's parts, from the
/// buffers it held, in one scatter-gather write; then the buffers go back to their pools.
/// A token not lent to this session ends it as `bad_token`; an entry with no parts, too
/// many, or bytes outside their buffer as `bad_entry`. A frame the device refuses is
/// counted (`tx_refused`) and its buffers come back all the same.
fn send_from(
    ch: &mut Channel,
    tx: &dyn TxQueue,
    pools: &mut [Pool],
    counters: &mut DeliveryCounters,
    logged: &mut bool,
) {
    let Some(ring) = ch.transmit.as_mut() else {
        return;
    };
    let mut bufs = arrayvec::ArrayVec::<(u16, crate::pool::PoolBuf), { TX_MAX_PARTS }>::new();
    let mut ranges = arrayvec::ArrayVec::<(u32, u32), { TX_MAX_PARTS }>::new();
    loop {
        let available = match ring.available() {
            Ok(0) => return,
            Ok(n) => n,
            Err(_) => {
                ch.session.end(Disconnect::BadIndex);
                return;
            }
        };
        let mut at = 0;
        let mut why = None;
        while at < available {
            let e: TxEntry = ring.read(at);
            let parts = usize::from(e.parts);
            let need = layout::tx_entries_for(parts) as u32;
            if parts == 0 || parts > TX_MAX_PARTS || need > ring.size() {
                why = Some(Disconnect::BadEntry);
                break;
            }
            if need > available - at {
                // The rest of this frame is not published yet.
                break;
            }
            let mut listed = arrayvec::ArrayVec::<layout::TxPart, { TX_MAX_PARTS }>::new();
            listed.extend(e.part[..parts.min(TX_PARTS)].iter().copied());
            for k in 1..need {
                let more: TxPartsEntry = ring.read(at + k);
                let left = parts - listed.len();
                listed.extend(more.part[..left.min(TX_MORE_PARTS)].iter().copied());
            }
            at += need;
            // Take every buffer back first: whatever happens next, they are ours again.
            for p in &listed {
                let token = Token::from_u64(p.token);
                match ch.lent.take(token) {
                    Some((pool, buf)) => {
                        bufs.push((pool, buf));
                        ranges.push((p.offset, p.len));
                    }
                    None => why = why.or(Some(Disconnect::BadToken)),
                }
            }
            if why.is_none() {
                let mut slices = arrayvec::ArrayVec::<&[u8], { TX_MAX_PARTS }>::new();
                for ((_, buf), &(off, len)) in bufs.iter().zip(&ranges) {
                    let bytes = buf.as_slice().and_then(|b| {
                        b.get(off as usize..(off as usize).checked_add(len as usize)?)
                    });
                    match bytes {
                        Some(b) => slices.push(b),
                        None => why = Some(Disconnect::BadEntry),
                    }
                }
                if why.is_none() {
                    let vnet = crate::device::VnetHdr {
                        flags: if e.csum == 1 { 1 } else { 0 },
                        gso_type: e.gso_type,
                        hdr_len: e.hdr_len,
                        gso_size: e.gso_size,
                        csum_start: e.csum_start,
                        csum_offset: e.csum_offset,
                    };
                    match tx.send(&vnet, &slices) {
                        Ok(()) => {
                            counters.transmitted += 1;
                            counters.transmitted_bytes +=
                                slices.iter().map(|s| s.len() as u64).sum::<u64>();
                        }
                        Err(err) => {
                            counters.tx_refused += 1;
                            if !*logged {
                                *logged = true;
                                tracing::warn!(device = tx.name(), "a frame from a consumer's transmit ring was refused: {err} (further refusals are counted as tx_refused)");
                            }
                        }
                    }
                }
            }
            for (pool, buf) in bufs.drain(..) {
                let _ = pools[usize::from(pool)].recycle(buf);
            }
            ranges.clear();
            if why.is_some() {
                break;
            }
        }
        ring.release(at);
        if let Some(why) = why {
            ch.session.end(why);
            return;
        }
        if at < available {
            return;
        }
    }
}

/// A session is over on this queue: every buffer it held goes back, and the frames it
/// never read are counted.
fn close(mut ch: Channel, why: Disconnect, pools: &mut [Pool], stats: &mut ConsumerStats) -> u64 {
    for (pool, buf) in ch.lent.drain() {
        let _ = pools[usize::from(pool)].recycle(buf);
        stats.counters.reclaimed += 1;
    }
    // What the consumer had read, as far as its index can be believed.
    let _ = ch.completion.free();
    let read_to = ch
        .completion
        .position()
        .wrapping_sub(ch.completion.in_flight());
    let mask = ch.starts.len().wrapping_sub(1);
    // Published or not: an entry written this burst was never read either. Frames are
    // in ring order, so counting back from the newest stops at the first one read.
    let unread = ch.completion.in_flight().wrapping_add(ch.pending);
    let gone = (1..=ch.delivered.min(ch.starts.len() as u64))
        .map(|k| ch.starts[ch.delivered.wrapping_sub(k) as usize & mask])
        .take_while(|&start| start.wrapping_sub(read_to) < unread)
        .count();
    stats.counters.gone += gone as u64;
    stats.disconnects.add(why);
    gone as u64
}

/// Tells a session about a region: a message with a read-only descriptor of it.
fn announce(session: &Session, r: &RegionInfo) -> std::io::Result<()> {
    let body = memplex_proto::msg::Region {
        index: r.index,
        kind: r.kind,
        len: r.len,
        offset: r.offset,
        provider: memplex_proto::msg::fixed(&r.provider),
    };
    memplex_proto::msg::send(
        &session.sock,
        memplex_proto::msg::Kind::Region,
        &body,
        &[r.fd.as_fd()],
    )
}

/// A hash of the frame's flow (addresses, protocol, ports), the same for every frame of
/// a TCP or UDP flow; frames without those fields hash to 0.
///
/// It reads the addresses by reference: copying the `Option<IpAddr>`s into an array
/// first made the compiler move them through the stack in byte-split pieces, and the
/// store-forwarding stall on reading them back measured 70% of the delivery path.
#[inline]
fn flow_hash(split: &Split) -> u32 {
    #[inline]
    fn mix(h: u64, v: u64) -> u64 {
        (h ^ v).wrapping_mul(0x0100_0000_01b3)
    }
    #[inline]
    fn addr(h: u64, a: &Option<std::net::IpAddr>) -> u64 {
        match a {
            Some(std::net::IpAddr::V4(v)) => mix(h, u64::from(v.to_bits())),
            Some(std::net::IpAddr::V6(v)) => {
                let b = v.to_bits();
                mix(mix(h, b as u64), (b >> 64) as u64)
            }
            None => h,
        }
    }
    let m = &split.meta;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    h = addr(h, &m.src());
    h = addr(h, &m.dst());
    h = mix(h, u64::from(m.protocol().unwrap_or(0)));
    h = mix(
        h,
        u64::from(m.src_port().unwrap_or(0)) << 16 | u64::from(m.dst_port().unwrap_or(0)),
    );
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every inline run, from every frame length around the slot size: the slots hold
    /// the run's bytes, then zeros, and nothing of the frame past the run.
    #[test]
    fn inline_slots_hold_the_run_and_zeros_after_it() {
        let frame: Vec<u8> = (1..=80).collect();
        for frame_len in 0..=frame.len() {
            let bytes = &frame[..frame_len];
            for len in 0..=frame_len {
                // The run's slots between two that must stay as they are.
                let fence = layout::Desc::part(
                    Token {
                        region: 1,
                        generation: 1,
                        id: 7,
                    },
                    0,
                    1,
                    true,
                );
                let slots = layout::inline_slots(len);
                let mut stage = vec![fence; slots + 2];
                stage_inline(&mut stage[1..=slots], bytes, len);
                let got = stage[1..=slots].as_bytes();
                assert_eq!(&got[..len], &bytes[..len], "{len} of {frame_len}");
                assert!(
                    got[len..].iter().all(|&b| b == 0),
                    "padding after {len} of {frame_len}: {:?}",
                    &got[len..]
                );
                assert_eq!(stage[slots + 1], fence, "the entry after is untouched");
                assert_eq!(stage[0], fence, "the entry before is untouched");
            }
        }
    }
}
