//! A page_pool for provider buffers.
//!
//! Every provider instance sits behind one `Pool`, owned by one receive queue's worker.
//! Like the kernel's page_pool:
//!
//! ```text
//!   alloc():   cache (128, owner only, no atomics) --empty--> ring --empty--> provider.alloc_bulk(64)
//!   recycle(): cache --full--> ring --full--> provider.release_bulk
//!   Recycler::recycle() from another thread: ring --full--> overflow queue (drained by the owner)
//! ```
//!
//! The fast path is a bounds-checked array pop or push; a push also counts
//! `recycle_cached`, and `alloc_fast` is derived from the counters the slow paths keep
//! (see [`Pool::stats`]), so a pop stores nothing but the cache's count: no atomics,
//! locks, allocation or provider calls. The provider is called in bulk on the
//! slow path only. Counters keep page_pool's names (`alloc_fast`, `alloc_slow`,
//! `alloc_empty`, `alloc_refill`, `recycle_cached`, `recycle_cache_full`, `recycle_ring`,
//! `recycle_ring_full`, `recycle_released`).
//!
//! In-flight accounting costs nothing per buffer: the checker counts what the provider
//! handed out and got back, so buffers out with consumers are that difference less what
//! sits in the cache, ring and overflow queue. [`Pool::shutdown`] waits, bounded, for them
//! to come back and reports any that did not, by provider and count.

use crate::provider::{Capabilities, CheckedProvider, Fault, Netmem, ProviderCounters};
use crossbeam_queue::{ArrayQueue, SegQueue};
use memplex_abi::{FillOp, GatherOp};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buffers the per-queue cache holds, as page_pool's `PP_ALLOC_CACHE_SIZE`.
pub const CACHE_SIZE: usize = 128;
/// Buffers taken per provider call or ring refill, as page_pool's `PP_ALLOC_CACHE_REFILL`.
pub const REFILL: usize = 64;

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// A buffer the host holds, from one pool. Not `Clone`: one handle per buffer.
///
/// Give it back with [`Pool::recycle`] on the pool's thread or a [`Recycler`] anywhere
/// else. A `PoolBuf` that is dropped instead is a leak, which the pool reports at shutdown.
#[must_use = "a buffer must go back to its pool; a dropped one is reported as a leak"]
#[derive(Debug, PartialEq, Eq)]
pub struct PoolBuf {
    pub(crate) netmem: Netmem,
    pub(crate) owner: Owner,
}

/// Whose a buffer is and what its memory allows: one aligned word, so that a buffer's
/// handle is three words, each moved by one load and one store (as two fields, the pool
/// id and the capabilities were two 4-byte stores per part placed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(8))]
pub(crate) struct Owner {
    /// Never 0 (pool ids start at 1), which gives `PoolBuf` a niche: a `Result` or
    /// `Option` of one needs no tag of its own and moves as aligned words (with a tag it
    /// was copied through the stack at odd offsets, a store-forwarding stall per buffer).
    pub(crate) pool: NonZeroU32,
    pub(crate) caps: Capabilities,
}

const _: () = assert!(core::mem::size_of::<PoolBuf>() == 24);

impl PoolBuf {
    /// The descriptor.
    pub fn netmem(&self) -> Netmem {
        self.netmem
    }

    /// The id of the pool it belongs to.
    pub fn pool_id(&self) -> u32 {
        self.owner.pool.get()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.netmem.len as usize
    }

    /// True for a zero-length buffer (never handed out by a checked provider).
    pub fn is_empty(&self) -> bool {
        self.netmem.len == 0
    }
}

/// Buffers of one pool held together, as a device's fill ring or a vector takes them:
/// made by [`Pool::burst`], filled by [`Pool::alloc_burst`] and given back whole by
/// [`Pool::recycle_burst`].
///
/// It keeps the cache's layout (a structure of arrays: the addresses, then each length
/// and id packed in one word) and one pool id for all its buffers, so a burst moves in
/// and out of the cache as two runs of word copies with one pool check. A burst of
/// [`PoolBuf`] values cannot: each carries its pool, written and checked per buffer,
/// and its address and length sit side by side, where the compiler reads them as one
/// 16-byte load that the two word stores of a recycle cannot forward to (measured on an
/// AMD EPYC of family 25: 1.9 ns a buffer, against an atomic add's 2.4).
///
/// Single buffers come out with [`pop`](Self::pop) and go in with [`push`](Self::push);
/// a burst dropped with buffers in it leaks them, which the pool reports at shutdown.
///
/// ```
/// use memplex::pool::Pool;
/// use memplex::provider::{InitParams, ProviderPlugin};
///
/// let plugin = ProviderPlugin::builtin("slab").unwrap();
/// let mut pool = Pool::new(plugin.instantiate(&InitParams::new(0, 2048, 256)).unwrap(), 256);
/// let mut burst = pool.burst(32); // once: it is reused
/// pool.alloc_burst(32, &mut burst).unwrap();
/// // What a device's fill ring would take: each buffer's address, length and id.
/// assert!(burst.iter().all(|netmem| netmem.len == 2048));
/// let one = burst.pop().unwrap(); // a single buffer, to place a frame in
/// burst.push(one).unwrap();
/// pool.recycle_burst(&mut burst).unwrap();
/// assert!(burst.is_empty());
/// assert_eq!(pool.shutdown(std::time::Duration::ZERO).leaked, 0);
/// ```
#[must_use = "a burst's buffers must go back to their pool; dropped ones are reported as leaks"]
pub struct Burst {
    owner: Owner,
    /// Buffers held: the first `n` slots of each array.
    n: usize,
    /// Slots, as long as the burst's capacity: they grow (the slow path) only when a
    /// burst takes more than it has room for, so the fast path writes into slots it
    /// has, a copy of known length, with no capacity check per buffer.
    addr: Vec<u64>,
    len_id: Vec<u64>,
}

impl Burst {
    /// How many buffers it holds.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The id of the pool whose buffers it holds.
    pub fn pool_id(&self) -> u32 {
        self.owner.pool.get()
    }

    /// The descriptor of buffer `i`, if it holds that many.
    pub fn get(&self, i: usize) -> Option<Netmem> {
        (i < self.n).then(|| unpack(self.addr[i], self.len_id[i]))
    }

    /// The descriptors, in order: what a device's fill ring takes.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Netmem> + '_ {
        self.addr[..self.n]
            .iter()
            .zip(&self.len_id[..self.n])
            .map(|(&addr, &len_id)| unpack(addr, len_id))
    }

    /// Takes the last buffer out, as a buffer of its own.
    pub fn pop(&mut self) -> Option<PoolBuf> {
        let i = self.n.checked_sub(1)?;
        self.n = i;
        Some(PoolBuf {
            netmem: unpack(self.addr[i], self.len_id[i]),
            owner: self.owner,
        })
    }

    /// Puts a buffer in at the end. A buffer of another pool is refused and handed back.
    pub fn push(&mut self, buf: PoolBuf) -> Result<(), PoolBuf> {
        if buf.owner.pool != self.owner.pool {
            return Err(buf);
        }
        self.room(1);
        (self.addr[self.n], self.len_id[self.n]) = pack(buf.netmem);
        self.n += 1;
        Ok(())
    }

    /// Makes room for `k` more buffers.
    #[inline]
    fn room(&mut self, k: usize) {
        if self.n + k > self.addr.len() {
            self.grow(self.n + k);
        }
    }

    #[cold]
    fn grow(&mut self, want: usize) {
        let cap = want.max(2 * self.addr.len());
        self.addr.resize(cap, 0);
        self.len_id.resize(cap, 0);
    }
}

impl std::fmt::Debug for Burst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Burst")
            .field("pool", &self.owner.pool.get())
            .field("len", &self.len())
            .finish()
    }
}

/// Why a pool could not hand out a buffer: a [`PoolErrorKind`] in a box, as
/// `std::io::Error` keeps its detail out of line.
///
/// Boxed so that `Result<PoolBuf, PoolError>` is no larger than a [`PoolBuf`]. With the
/// kind inline the result was 80 bytes: the compiler built it on the stack in word-sized
/// stores and `unwrap` copied the buffer out with a 16-byte load, which no store can
/// forward to. That stall made a one-buffer [`Pool::alloc`] and recycle four times
/// slower than through [`Pool::alloc_cached`] (12.3 against 3.0 ns on an AMD EPYC of
/// family 25). The box is allocated only when an allocation fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct PoolError(Box<PoolErrorKind>);

const _: () = assert!(core::mem::size_of::<Result<PoolBuf, PoolError>>() == 24);

impl PoolError {
    /// What went wrong.
    pub fn kind(&self) -> &PoolErrorKind {
        &self.0
    }

    /// What went wrong, unboxed.
    pub fn into_kind(self) -> PoolErrorKind {
        *self.0
    }
}

impl From<PoolErrorKind> for PoolError {
    #[cold]
    fn from(kind: PoolErrorKind) -> Self {
        PoolError(Box::new(kind))
    }
}

/// What a [`PoolError`] says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolErrorKind {
    /// The provider has no free buffer now (it may later, when buffers come back).
    #[error("provider `{provider}` has no free buffer ({held} held by the host)")]
    Exhausted {
        /// The provider instance.
        provider: Arc<str>,
        /// Buffers the host holds from it.
        held: u64,
    },
    /// The provider is quarantined and is not asked again.
    #[error("provider `{provider}` is quarantined: {fault}")]
    Quarantined {
        /// The provider instance.
        provider: Arc<str>,
        /// What it did.
        fault: Fault,
    },
    /// A [`Burst`] of one pool was given to another.
    #[error("a burst of pool {burst_pool} was given to pool {pool}")]
    ForeignBurst {
        /// The burst's pool.
        burst_pool: u32,
        /// The pool it was given to.
        pool: u32,
    },
    /// A non-fatal error from the provider on this call.
    #[error("provider `{provider}` failed: {fault}")]
    Failed {
        /// The provider instance.
        provider: Arc<str>,
        /// What it returned.
        fault: Fault,
    },
}

/// Why bytes could not be placed in a buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    /// `offset + len` past the end of the buffer.
    #[error("{len} bytes at offset {offset} do not fit a buffer of {cap} bytes")]
    OutOfBounds {
        /// Where the bytes were to start.
        offset: usize,
        /// How many.
        len: usize,
        /// The buffer's length.
        cap: usize,
    },
    /// The buffer belongs to another pool.
    #[error("buffer belongs to pool {buf_pool}, not pool {pool}")]
    WrongPool {
        /// The buffer's pool.
        buf_pool: u32,
        /// This pool.
        pool: u32,
    },
    /// The provider's `fill` failed.
    #[error("fill failed: {0}")]
    Fill(Fault),
}

crate::counters! {
    /// page_pool-style counters of one pool.
    pub struct PoolStats {
        /// Allocations served from the cache.
        alloc_fast,
        /// Allocations served after a bulk provider call.
        alloc_slow,
        /// Refill attempts that found the ring empty.
        alloc_empty,
        /// Allocations served after refilling the cache from the ring.
        alloc_refill,
        /// Allocations that failed: provider dry, failing or quarantined.
        alloc_fail,
        /// Recycles into the cache.
        recycle_cached,
        /// Recycles that found the cache full.
        recycle_cache_full,
        /// Recycles into the ring.
        recycle_ring,
        /// queue from other threads).
        recycle_ring_full,
        /// Buffers given back to the provider.
        recycle_released,
        /// Buffers out with consumers now.
        inflight: gauge,
    }
}

impl PoolStats {
    /// Share of allocations served without a provider call, 0..=1.
    pub fn hit_rate(&self) -> f64 {
        let hits = self.alloc_fast + self.alloc_refill;
        let all = hits + self.alloc_slow;
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        }
    }
}

/// The part of a pool other threads reach.
#[derive(Debug)]
struct Shared {
    id: NonZeroU32,
    ring: ArrayQueue<Netmem>,
    overflow: SegQueue<Netmem>,
    recycle_ring: AtomicU64,
    recycle_ring_full: AtomicU64,
}

/// Returns buffers to a pool from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recycler(Arc<Shared>);

impl Recycler {
    /// Gives `buf` back to its pool. Returns it unchanged if it belongs to another pool.
    pub fn recycle(&self, buf: PoolBuf) -> Result<(), PoolBuf> {
        if buf.owner.pool != self.0.id {
            return Err(buf);
        }
        match self.0.ring.push(buf.netmem) {
            Ok(()) => {
                self.0.recycle_ring.fetch_add(1, Relaxed);
            }
            Err(netmem) => {
                self.0.overflow.push(netmem);
                self.0.recycle_ring_full.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// The pool's id.
    pub fn pool_id(&self) -> u32 {
        self.0.id.get()
    }
}

/// What a pool's shutdown found.
#[derive(Debug, Clone)]
pub struct PoolReport {
    /// The provider instance.
    pub provider: Arc<str>,
    /// Final counters.
    pub stats: PoolStats,
    /// The checker's counters.
    pub provider_counters: ProviderCounters,
    /// Buffers that never came back.
    pub leaked: u64,
    /// The fault that quarantined the provider, if any.
    pub fault: Option<Fault>,
    /// How long shutdown waited for buffers.
    pub waited: Duration,
}

/// Buffers taken from the top of a cache at once ([`Pool::take_cached_run`]). Its
/// buffers come from the slots' two slices, zipped with the frames, so that a loop over
/// a vector needs no state of its own for them (the zipped slice iterators share one
/// index, and no `None` is tested through the pool id's niche); the pool's id and
/// capabilities are a copy, not read through the pool after each store to a part list
/// the compiler cannot tell from it.
///
/// Drawn by index from the run's top instead (the next pop's buffer first), each slot's
/// place was computed and masked per buffer, and the split run's loop kept two more
/// values on the stack: tcp-split at 1500 B 527 against 517 instructions a frame, at
/// 128 B 269 against 264 (`cargo xtask instructions`, session 42).
pub(crate) struct CachedRun<'p> {
    cache: &'p Cache,
    owner: Owner,
    /// One past the slot of the last buffer.
    top: usize,
    n: usize,
}

impl<'p> CachedRun<'p> {
    /// The run's buffers from the bottom of its slots up (the buffer a pop would have
    /// given last comes first; any order serves, as each buffer goes to one frame).
    #[inline(always)]
    pub(crate) fn slots(&self) -> impl ExactSizeIterator<Item = PoolBuf> + '_ {
        let from = self.top - self.n;
        let owner = self.owner;
        self.cache.addr[from..self.top]
            .iter()
            .zip(&self.cache.len_id[from..self.top])
            .map(move |(&addr, &len_id)| PoolBuf {
                netmem: unpack(addr, len_id),
                owner,
            })
    }
}

/// The per-queue cache as two arrays of words: each buffer's address, and its length and
/// id packed in one `u64` (a struct of arrays).
///
/// With an array of `Netmem`, a buffer recycled from pieces (its fields held in registers
/// or on the stack, as a `PoolBuf` is) was stored as three narrow writes and taken by the
/// next `alloc` as one 16-byte read. No store can forward to a read wider than itself, so
/// that read waited for the stores to reach the cache: about half of a one-buffer round
/// trip. Here every read is one word, as wide as the write it meets.
struct Cache {
    addr: [u64; CACHE_SIZE],
    len_id: [u64; CACHE_SIZE],
}

#[inline]
fn pack(netmem: Netmem) -> (u64, u64) {
    (
        netmem.addr,
        u64::from(netmem.len) | u64::from(netmem.id) << 32,
    )
}

/// Copies `src` into `dst`, of the same length, four words (two 16-byte moves) a turn.
///
/// Written out because `copy_from_slice` of a run whose length is known only at run
/// time is a call to libc's `memcpy`: for a burst of 32 (four runs of 256 bytes) the
/// calls and their size dispatch took 62% of the round trip, 32 ns against 19 ns this
/// way (criterion `pool_fast_path/alloc_recycle_burst32_bulk`, AMD EPYC family 25).
/// Blocks of eight words read 25 ns. This is bound by one 16-byte store a cycle; an
/// AVX2 copy chosen at run time read 40 ns, as a call the compiler cannot inline into
/// code built for baseline x86-64.
#[inline(always)]
fn copy_words(dst: &mut [u64], src: &[u64]) {
    let mut d = dst.chunks_exact_mut(4);
    let mut s = src.chunks_exact(4);
    for (d, s) in (&mut d).zip(&mut s) {
        let [a, b, c, e] = [s[0], s[1], s[2], s[3]];
        d[0] = a;
        d[1] = b;
        d[2] = c;
        d[3] = e;
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

#[inline]
fn unpack(addr: u64, len_id: u64) -> Netmem {
    Netmem {
        addr,
        len: len_id as u32,
        id: (len_id >> 32) as u32,
    }
}

impl Cache {
    fn new() -> Self {
        Cache {
            addr: [0; CACHE_SIZE],
            len_id: [0; CACHE_SIZE],
        }
    }

    /// Slot `i` (below [`CACHE_SIZE`]: a pool's `count` never passes it).
    ///
    /// The index is masked, which for such an `i` changes nothing, so the compiler
    /// knows it is in bounds: one `and` in place of a compare and branch per buffer on
    /// the fast path.
    #[inline]
    fn get(&self, i: usize) -> Netmem {
        debug_assert!(i < CACHE_SIZE);
        let i = i % CACHE_SIZE;
        unpack(self.addr[i], self.len_id[i])
    }

    /// Writes `bufs` from slot `at` on; the caller has checked they fit.
    #[inline]
    fn set_run(&mut self, at: usize, bufs: impl ExactSizeIterator<Item = Netmem>) {
        let end = at + bufs.len();
        let addr = &mut self.addr[at..end];
        let len_id = &mut self.len_id[at..end];
        for ((a, l), netmem) in addr.iter_mut().zip(len_id).zip(bufs) {
            (*a, *l) = pack(netmem);
        }
    }

    /// Writes slot `i` (below [`CACHE_SIZE`]; masked as in [`get`](Self::get)).
    #[inline]
    fn set(&mut self, i: usize, netmem: Netmem) {
        self.set_packed(i, pack(netmem));
    }

    #[inline]
    fn set_packed(&mut self, i: usize, (addr, len_id): (u64, u64)) {
        debug_assert!(i < CACHE_SIZE);
        let i = i % CACHE_SIZE;
        (self.addr[i], self.len_id[i]) = (addr, len_id);
    }
}

// The slot masks above are the identity only for a power of two.
const _: () = assert!(CACHE_SIZE.is_power_of_two());

/// A pool of one provider instance's buffers, owned by one queue. See the module docs.
pub struct Pool {
    /// The pool's id (copied out of `shared` so the fast path needs no pointer chase)
    /// and its provider's capabilities.
    owner: Owner,
    cache: Cache,
    count: usize,
    /// How many buffers the cache may hold: [`CACHE_SIZE`], or 0 once the provider is
    /// quarantined, so nothing of it is cached (and so handed out) again.
    cache_limit: usize,
    /// Buffers put into the cache by the slow paths (refills from the ring and the
    /// provider), and taken out of it by them (the refill's first buffer, release).
    /// With `recycle_cached` and `count` they give `alloc_fast` (see
    /// [`stats`](Self::stats)), so the fast path's pop stores nothing but `count`.
    slow_in: u64,
    slow_out: u64,
    recycle_cached: u64,
    slow: PoolStats,
    provider: CheckedProvider,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("id", &self.owner.pool.get())
            .field("provider", self.provider.label())
            .finish()
    }
}

impl Pool {
    /// A pool in front of `provider`, whose ring holds `ring_size` buffers returned from
    /// other threads (at least [`REFILL`]).
    pub fn new(provider: CheckedProvider, ring_size: usize) -> Self {
        let id = NonZeroU32::new(NEXT_POOL_ID.fetch_add(1, Relaxed)).unwrap_or(NonZeroU32::MIN);
        Pool {
            owner: Owner {
                pool: id,
                caps: provider.info().caps,
            },
            cache: Cache::new(),
            count: 0,
            cache_limit: CACHE_SIZE,
            slow_in: 0,
            slow_out: 0,
            recycle_cached: 0,
            slow: PoolStats::default(),
            provider,
            shared: Arc::new(Shared {
                id,
                ring: ArrayQueue::new(ring_size.max(REFILL)),
                overflow: SegQueue::new(),
                recycle_ring: AtomicU64::new(0),
                recycle_ring_full: AtomicU64::new(0),
            }),
        }
    }

    /// This pool's id.
    pub fn id(&self) -> u32 {
        self.owner.pool.get()
    }

    /// The provider instance behind the pool.
    pub fn provider(&self) -> &CheckedProvider {
        &self.provider
    }

    /// A handle for returning buffers from other threads.
    pub fn recycler(&self) -> Recycler {
        Recycler(Arc::clone(&self.shared))
    }

    #[inline]
    fn wrap(&self, netmem: Netmem) -> PoolBuf {
        PoolBuf {
            netmem,
            owner: self.owner,
        }
    }

    /// What its provider's memory allows (every buffer of the pool carries the same).
    pub fn caps(&self) -> Capabilities {
        self.owner.caps
    }

    /// A buffer from the cache, if it holds one: the fast path alone (an array pop and a
    /// counter), for callers that take the slow path ([`alloc`](Self::alloc)) themselves
    /// when this gives `None`. No error type travels on this path.
    #[inline]
    pub fn alloc_cached(&mut self) -> Option<PoolBuf> {
        let i = self.count.checked_sub(1)?;
        self.count = i;
        Some(self.wrap(self.cache.get(i)))
    }

    /// The buffer on top of the cache, which the caller has seen holds one
    /// ([`has_cached`](Self::has_cached)). As [`alloc_cached`](Self::alloc_cached) but
    /// with no `Option`: its test of the pool id, the niche, is one compare and branch
    /// per buffer taken that the caller's own test makes redundant.
    #[inline]
    pub(crate) fn pop_cached(&mut self) -> PoolBuf {
        debug_assert!(self.count > 0);
        self.count = self.count.wrapping_sub(1);
        self.wrap(self.cache.get(self.count))
    }

    /// Takes a buffer: from the cache when it has one, else through the slow path.
    #[inline]
    pub fn alloc(&mut self) -> Result<PoolBuf, PoolError> {
        match self.alloc_cached() {
            Some(buf) => Ok(buf),
            None => self.alloc_slow().map_err(PoolError::from),
        }
    }

    /// The buffer [`alloc_cached`](Self::alloc_cached) would give next, left in place:
    /// for a caller that checks where a buffer is before it takes it.
    #[inline]
    pub(crate) fn peek_cached(&self) -> Option<Netmem> {
        self.peek_cached_at(0)
    }

    /// The buffer the `k`-th [`alloc_cached`](Self::alloc_cached) from now would give
    /// (0: the next), left in place.
    #[inline]
    pub(crate) fn peek_cached_at(&self, k: usize) -> Option<Netmem> {
        let i = self.count.checked_sub(k + 1)?;
        Some(self.cache.get(i))
    }

    /// The top `n` buffers of the cache, taken at once: the count is moved once, not
    /// once a buffer. They come in the reverse of the order `n`
    /// [`pop_cached`](Self::pop_cached)s would give them. `None`, with nothing taken,
    /// when the cache holds fewer. The caller keeps every buffer of the run (and gives
    /// back, as it would any it took); buffers it does not draw stay taken and are lost
    /// to the pool, so it draws all `n`, each once ([`CachedRun::slots`]).
    #[inline]
    pub(crate) fn take_cached_run(&mut self, n: usize) -> Option<CachedRun<'_>> {
        let end = self.count.checked_sub(n)?;
        let top = self.count;
        self.count = end;
        Some(CachedRun {
            cache: &self.cache,
            owner: self.owner,
            top,
            n,
        })
    }

    /// Whether the `n` buffers a [`take_cached_run`](Self::take_cached_run) took, which
    /// left `count` buffers in the cache, may go back by
    /// [`untake_run`](Self::untake_run): the cache's count is still `count` and it has
    /// room for them.
    ///
    /// The count is what a cheap test can see, not all the caller must know: a buffer
    /// given back since the take is written over the run's first slot, and taken again
    /// it leaves the count where it was. So the caller also knows that no buffer was
    /// given back to the pool since (the worker: between its split run and giving the
    /// run back only the sink looks at the parts, through shared references).
    #[inline]
    pub(crate) fn may_untake(&self, count: usize, n: usize) -> bool {
        self.count == count && count + n <= self.cache_limit
    }

    /// Whether the cache's slots from `count` on hold `bufs`, in order: what a run
    /// that [`untake_run`](Self::untake_run) gives back must find, checked in debug
    /// builds.
    pub(crate) fn holds_run<'a>(
        &self,
        count: usize,
        bufs: impl ExactSizeIterator<Item = &'a PoolBuf>,
    ) -> bool {
        count + bufs.len() <= self.cache.addr.len()
            && bufs
                .enumerate()
                .all(|(i, buf)| self.owns(buf) && self.cache.get(count + i) == buf.netmem)
    }

    /// Gives back the `n` buffers of the run [`may_untake`](Self::may_untake) said may
    /// go back, by moving the count over them. The caller holds every buffer of that
    /// run and forgets them. The cache is then as a [`recycle_run`](Self::recycle_run) of
    /// them in the run's order would leave it, and counted the same.
    #[inline]
    pub(crate) fn untake_run(&mut self, n: usize) {
        self.count += n;
        self.recycle_cached += n as u64;
    }

    /// How many buffers the cache holds.
    #[inline]
    pub(crate) fn cached(&self) -> usize {
        self.count
    }

    /// Whether the cache holds `n` buffers, for [`take_cached_run`](Self::take_cached_run).
    #[inline]
    pub(crate) fn has_cached_run(&self, n: usize) -> bool {
        self.count >= n
    }

    /// The fewest bytes any of its buffers holds: the provider's checks refuse shorter.
    #[inline]
    pub(crate) fn min_len(&self) -> usize {
        self.provider.min_len() as usize
    }

    /// Whether [`alloc_cached`](Self::alloc_cached) has a buffer to give.
    #[inline]
    pub(crate) fn has_cached(&self) -> bool {
        self.count > 0
    }

    /// The slow path of [`alloc`](Self::alloc) for a caller that pops the buffer itself
    /// next, with [`alloc_cached`](Self::alloc_cached): the cache is refilled and the
    /// buffer the slow path hands out is left on top of it, so that after the pop the
    /// counters read as if `alloc` had handed it out.
    ///
    /// This is how the worker takes buffers: its fast path and this one then meet at one
    /// pop, with nothing to merge. When its slow path returned the buffer (through
    /// memory, as a 24-byte value is), that buffer met the fast path's in a stack slot,
    /// and every buffer of the fast path went through the slot too: nine instructions
    /// and a store-forwarding wait a part. The reason for a miss comes back unboxed, for
    /// a caller that counts it and drops the frame: nothing is allocated per frame while
    /// a provider is dry.
    #[cold]
    pub(crate) fn refill_for_pop(&mut self) -> Result<(), PoolErrorKind> {
        let buf = self.alloc_slow()?;
        // The slow path leaves at most `REFILL - 1` buffers in the cache.
        debug_assert!(self.count < CACHE_SIZE);
        // Back on top, with no counter moved: once `alloc_cached` pops it (uncounted),
        // the counters are where `alloc_slow` left them.
        self.cache.set(self.count, buf.netmem);
        self.count += 1;
        Ok(())
    }

    /// An empty [`Burst`] of this pool with room for `capacity` buffers before it grows.
    /// Make it once and reuse it: a burst allocates only when it grows.
    pub fn burst(&self, capacity: usize) -> Burst {
        Burst {
            owner: self.owner,
            n: 0,
            addr: vec![0; capacity],
            len_id: vec![0; capacity],
        }
    }

    /// Takes `n` buffers at once and appends them to `out`, as a device's fill ring or a
    /// receive vector wants them (DPDK's `rte_pktmbuf_alloc_bulk`, VPP's
    /// `vlib_buffer_alloc`): straight off the top of the cache in one copy of each of
    /// its two arrays, with one count update; the cache is refilled through the slow
    /// path (ring, then the provider in bulk) only when it runs out. What comes off the
    /// cache keeps its order, so popping `out` hands out the most recently used first,
    /// as single allocations would.
    ///
    /// On an error, `out` keeps the buffers taken before it: fewer than `n`. A burst of
    /// another pool is refused ([`PoolErrorKind::ForeignBurst`]) and left as it was.
    pub fn alloc_burst(&mut self, n: usize, out: &mut Burst) -> Result<(), PoolError> {
        if out.owner.pool != self.owner.pool {
            return Err(self.foreign(out).into());
        }
        out.room(n);
        let mut want = n;
        while want > 0 {
            let k = want.min(self.count);
            let from = self.count - k;
            let at = out.n;
            copy_words(
                &mut out.addr[at..at + k],
                &self.cache.addr[from..self.count],
            );
            copy_words(
                &mut out.len_id[at..at + k],
                &self.cache.len_id[from..self.count],
            );
            out.n = at + k;
            self.count = from;
            want -= k;
            if want > 0 {
                // The cache is empty: one buffer by the slow path, which refills it.
                let buf = self.alloc_slow().map_err(PoolError::from)?;
                (out.addr[out.n], out.len_id[out.n]) = pack(buf.netmem);
                out.n += 1;
                want -= 1;
            }
        }
        Ok(())
    }

    #[cold]
    fn foreign(&self, burst: &Burst) -> PoolErrorKind {
        PoolErrorKind::ForeignBurst {
            burst_pool: burst.owner.pool.get(),
            pool: self.owner.pool.get(),
        }
    }

    #[cold]
    fn alloc_slow(&mut self) -> Result<PoolBuf, PoolErrorKind> {
        if let Some(fault) = self.provider.fault() {
            let fault = fault.clone();
            self.slow.alloc_fail += 1;
            self.retire();
            return Err(PoolErrorKind::Quarantined {
                provider: self.label(),
                fault,
            });
        }
        self.drain_overflow();
        // Refill from the ring first, as page_pool_refill_alloc_cache does.
        while self.count < REFILL {
            match self.shared.ring.pop() {
                Some(n) => {
                    self.cache.set(self.count, n);
                    self.count += 1;
                    self.slow_in += 1;
                }
                None => break,
            }
        }
        if self.count > 0 {
            self.slow.alloc_refill += 1;
            self.count -= 1;
            self.slow_out += 1;
            return Ok(self.wrap(self.cache.get(self.count)));
        }
        self.slow.alloc_empty += 1;
        let mut batch = [Netmem::EMPTY; REFILL];
        match self.provider.alloc_bulk(&mut batch) {
            Ok(0) => {
                self.slow.alloc_fail += 1;
                Err(match self.provider.fault() {
                    Some(fault) => PoolErrorKind::Quarantined {
                        provider: self.label(),
                        fault: fault.clone(),
                    },
                    None => PoolErrorKind::Exhausted {
                        provider: self.label(),
                        held: self.provider.held(),
                    },
                })
            }
            Ok(n) if self.provider.fault().is_some() => {
                // Good buffers from the call that quarantined it: nothing of a quarantined
                // provider is handed out, so they go straight back.
                self.provider.release_bulk(&batch[..n]);
                self.slow.recycle_released += n as u64;
                self.alloc_slow()
            }
            Ok(n) => {
                self.slow.alloc_slow += 1;
                self.cache.set_run(0, batch[1..n].iter().copied());
                self.count = n - 1;
                self.slow_in += n as u64 - 1;
                Ok(self.wrap(batch[0]))
            }
            Err(fault) => {
                self.slow.alloc_fail += 1;
                Err(if self.provider.fault().is_some() {
                    PoolErrorKind::Quarantined {
                        provider: self.label(),
                        fault,
                    }
                } else {
                    PoolErrorKind::Failed {
                        provider: self.label(),
                        fault,
                    }
                })
            }
        }
    }

    fn label(&self) -> Arc<str> {
        Arc::clone(self.provider.label())
    }

    /// Gives a buffer back on the owner's thread. Returns it unchanged if it belongs to
    /// another pool.
    #[inline]
    pub fn recycle(&mut self, buf: PoolBuf) -> Result<(), PoolBuf> {
        if !self.owns(&buf) {
            return Err(buf);
        }
        self.recycle_one(buf.netmem);
        Ok(())
    }

    /// Gives back every buffer of `burst`, which is left empty: one copy of each array
    /// into the cache as far as it has room, the rest as [`recycle`](Self::recycle)
    /// would. The pool is checked once for the whole burst, which holds one pool's
    /// buffers only. A burst of another pool is refused
    /// ([`PoolErrorKind::ForeignBurst`]) and left as it was.
    pub fn recycle_burst(&mut self, burst: &mut Burst) -> Result<(), PoolError> {
        if burst.owner.pool != self.owner.pool {
            return Err(self.foreign(burst).into());
        }
        let at = self.count;
        let n = burst.n;
        let k = n.min(self.cache_limit.saturating_sub(at));
        copy_words(&mut self.cache.addr[at..at + k], &burst.addr[..k]);
        copy_words(&mut self.cache.len_id[at..at + k], &burst.len_id[..k]);
        self.count = at + k;
        self.recycle_cached += k as u64;
        for (&addr, &len_id) in burst.addr[k..n].iter().zip(&burst.len_id[k..n]) {
            self.recycle_slow(unpack(addr, len_id));
        }
        burst.n = 0;
        Ok(())
    }

    /// Gives back the buffers of `bufs` that are this pool's, as [`recycle`] would each
    /// (one of another pool is left out, as `recycle` hands it back). The handles are
    /// read, not taken: the caller forgets them after, as the worker truncates its part
    /// list. When the cache has room for all of them, the room is tested and the count
    /// stored once for the run, not once a buffer.
    ///
    /// [`recycle`]: Self::recycle
    #[inline]
    pub(crate) fn recycle_run<'a>(&mut self, bufs: impl ExactSizeIterator<Item = &'a PoolBuf>) {
        let (at, n) = (self.count, bufs.len());
        if at + n > self.cache_limit {
            for buf in bufs {
                if self.owns(buf) {
                    self.recycle_one(buf.netmem);
                }
            }
            return;
        }
        let mut i = at;
        for buf in bufs {
            if self.owns(buf) {
                self.cache.set(i, buf.netmem);
                i += 1;
            }
        }
        self.count = i;
        self.recycle_cached += (i - at) as u64;
    }

    /// [`recycle_run`](Self::recycle_run) into two pools at once: of each pair, the
    /// first buffer goes back to `a` and the second to `b` (a frame's head and its
    /// payload), in one loop over the pairs, where a run a pool over every other part
    /// paid twice for stepping through them.
    #[inline]
    pub(crate) fn recycle_pair_run<'a>(
        a: &mut Pool,
        b: &mut Pool,
        pairs: impl ExactSizeIterator<Item = (&'a PoolBuf, &'a PoolBuf)> + Clone,
    ) {
        let (at_a, at_b, n) = (a.count, b.count, pairs.len());
        if at_a + n > a.cache_limit || at_b + n > b.cache_limit {
            a.recycle_run(pairs.clone().map(|(x, _)| x));
            b.recycle_run(pairs.map(|(_, y)| y));
            return;
        }
        let (mut i, mut j) = (at_a, at_b);
        for (x, y) in pairs {
            if a.owns(x) {
                a.cache.set(i, x.netmem);
                i += 1;
            }
            if b.owns(y) {
                b.cache.set(j, y.netmem);
                j += 1;
            }
        }
        (a.count, b.count) = (i, j);
        a.recycle_cached += (i - at_a) as u64;
        b.recycle_cached += (j - at_b) as u64;
    }

    /// Whether `buf` is this pool's (one [`recycle`](Self::recycle) takes).
    #[inline(always)]
    pub(crate) fn owns(&self, buf: &PoolBuf) -> bool {
        buf.owner.pool == self.owner.pool
    }

    /// [`recycle`](Self::recycle) of a buffer known to be this pool's.
    ///
    /// The buffer travels to the slow path as two words, in registers: passed as a
    /// `Netmem`, it went by reference, so the compiler stored it to the stack before the
    /// branch and the fast path read it back (one more store-forwarding wait in every
    /// round trip).
    #[inline]
    fn recycle_one(&mut self, netmem: Netmem) {
        let (addr, len_id) = pack(netmem);
        let i = self.count;
        if i < self.cache_limit {
            self.cache.set_packed(i, (addr, len_id));
            self.count = i + 1;
            self.recycle_cached += 1;
        } else {
            self.recycle_slow_packed(addr, len_id);
        }
    }

    #[cold]
    fn recycle_slow_packed(&mut self, addr: u64, len_id: u64) {
        self.recycle_slow(unpack(addr, len_id));
    }

    fn recycle_slow(&mut self, netmem: Netmem) {
        if self.provider.fault().is_some() {
            self.retire();
            self.provider.release_bulk(&[netmem]);
            self.slow.recycle_released += 1;
            return;
        }
        self.slow.recycle_cache_full += 1;
        match self.shared.ring.push(netmem) {
            Ok(()) => self.slow.recycle_ring += 1,
            Err(netmem) => {
                self.slow.recycle_ring_full += 1;
                self.provider.release_bulk(&[netmem]);
                self.slow.recycle_released += 1;
            }
        }
    }

    /// Gives everything in the overflow queue back to the provider, in bulk.
    fn drain_overflow(&mut self) {
        let mut batch = [Netmem::EMPTY; REFILL];
        loop {
            let mut n = 0;
            while n < REFILL {
                match self.shared.overflow.pop() {
                    Some(b) => {
                        batch[n] = b;
                        n += 1;
                    }
                    None => break,
                }
            }
            if n == 0 {
                return;
            }
            self.provider.release_bulk(&batch[..n]);
            self.slow.recycle_released += n as u64;
        }
    }

    /// Writes `bytes` at `offset` in `buf`: straight into the memory when the provider
    /// lets the host write it, else through the provider's `fill` op.
    pub fn place(
        &mut self,
        buf: &mut PoolBuf,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), PlaceError> {
        if buf.owner.pool != self.owner.pool {
            return Err(PlaceError::WrongPool {
                buf_pool: buf.owner.pool.get(),
                pool: self.owner.pool.get(),
            });
        }
        let cap = buf.len();
        let Some(end) = offset.checked_add(bytes.len()).filter(|&e| e <= cap) else {
            return Err(PlaceError::OutOfBounds {
                offset,
                len: bytes.len(),
                cap,
            });
        };
        match buf.as_mut_slice() {
            Some(mem) => {
                mem[offset..end].copy_from_slice(bytes);
                Ok(())
            }
            None => self
                .provider
                .fill(buf.netmem, offset as u32, bytes)
                .map_err(|fault| {
                    if self.provider.fault().is_some() {
                        self.retire();
                    }
                    PlaceError::Fill(fault)
                }),
        }
    }

    /// Places a frame's parts in this pool's buffers through one `fill_bulk` call, for a
    /// provider the host may not write ([`Capabilities::NEEDS_FILL`]): for each op in
    /// order, the next `op.len` bytes of `bytes` go to `op.offset` in `op.buf`. The ops
    /// must name buffers this pool handed out, within their lengths (the worker builds
    /// them from the buffers it took, so they do); the provider checks them again.
    ///
    /// [`Capabilities::NEEDS_FILL`]: memplex_abi::Capabilities::NEEDS_FILL
    #[inline]
    pub fn fill_bulk(&mut self, ops: &[FillOp], bytes: &[u8]) -> Result<(), PlaceError> {
        debug_assert_eq!(
            ops.iter().map(|o| o.len as usize).sum::<usize>(),
            bytes.len()
        );
        self.provider.fill_bulk(ops, bytes).map_err(|fault| {
            if self.provider.fault().is_some() {
                self.retire();
            }
            PlaceError::Fill(fault)
        })
    }

    /// Places a vector's parts in this pool's buffers through one `fill_gather` call, for
    /// a provider the host may not write that [`gathers`](Self::gathers): each op's bytes
    /// go to `op.offset` in `op.buf`, buffers this pool handed out (as for
    /// [`fill_bulk`](Self::fill_bulk)).
    #[inline]
    pub fn fill_gather(&mut self, ops: &[GatherOp<'_>]) -> Result<(), PlaceError> {
        self.provider.fill_gather(ops).map_err(|fault| {
            if self.provider.fault().is_some() {
                self.retire();
            }
            PlaceError::Fill(fault)
        })
    }

    /// Whether a vector's parts reach this pool's provider in one
    /// [`fill_gather`](Self::fill_gather), rather than a frame's in one
    /// [`fill_bulk`](Self::fill_bulk) (a `.so` built before ABI 0.1.2).
    #[inline]
    pub fn gathers(&self) -> bool {
        self.provider.gathers()
    }

    /// True once the provider is quarantined: the pool hands out nothing more.
    pub fn is_quarantined(&self) -> bool {
        self.provider.fault().is_some()
    }

    /// Stops caching a quarantined provider's buffers and gives back everything parked:
    /// the provider takes them, or (when it is poisoned) they are counted stranded.
    #[cold]
    fn retire(&mut self) {
        self.cache_limit = 0;
        self.release_parked();
    }

    /// Appends the first `len` bytes of `buf` to `out`: by address when the memory is
    /// CPU-readable, else through the provider's `read` op. `false` (and `out` as it was)
    /// when the memory cannot be read at all, or `buf` is not this pool's.
    pub fn read(&self, buf: &PoolBuf, len: usize, out: &mut Vec<u8>) -> bool {
        if buf.owner.pool != self.owner.pool || len > buf.len() {
            return false;
        }
        if let Some(mem) = buf.as_slice() {
            out.extend_from_slice(&mem[..len]);
            return true;
        }
        let start = out.len();
        out.resize(start + len, 0);
        match self.provider.read(buf.netmem, 0, &mut out[start..]) {
            Ok(()) => true,
            Err(_) => {
                out.truncate(start);
                false
            }
        }
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        let mut s = self.slow;
        // Every buffer in the cache came in by a recycle or a slow-path refill, and left
        // by a fast-path pop, a slow path, or is still there.
        s.alloc_fast =
            (self.recycle_cached + self.slow_in).saturating_sub(self.slow_out + self.count as u64);
        s.recycle_cached = self.recycle_cached;
        s.recycle_ring += self.shared.recycle_ring.load(Relaxed);
        s.recycle_ring_full += self.shared.recycle_ring_full.load(Relaxed);
        let parked = (self.count + self.shared.ring.len() + self.shared.overflow.len()) as u64;
        s.inflight = self.provider.held().saturating_sub(parked);
        s
    }

    /// Returns every parked buffer to the provider, waits up to `wait` for buffers still
    /// out with consumers to come back (returning those too), then destroys the provider.
    ///
    /// Buffers that did not come back are reported in [`PoolReport::leaked`] and logged;
    /// the provider instance is then kept alive (leaked on purpose), since its memory may
    /// still be in use, exactly as page_pool defers its release while pages are in flight.
    pub fn shutdown(mut self, wait: Duration) -> PoolReport {
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            self.release_parked();
            if self.stats().inflight == 0 || start.elapsed() >= wait {
                break;
            }
            std::thread::sleep(pause.min(wait.saturating_sub(start.elapsed())));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        let stats = self.stats();
        let report = PoolReport {
            provider: self.label(),
            stats,
            provider_counters: self.provider.counters(),
            leaked: stats.inflight,
            fault: self.provider.fault().cloned(),
            waited: start.elapsed(),
        };
        if report.leaked > 0 {
            tracing::warn!(provider = %report.provider, leaked = report.leaked, "buffers not returned at shutdown; keeping the provider's memory alive");
            std::mem::forget(self);
        } else {
            self.provider.destroy();
        }
        report
    }

    fn release_parked(&mut self) {
        self.drain_overflow();
        let mut batch = [Netmem::EMPTY; REFILL];
        loop {
            let mut n = 0;
            while n < REFILL {
                if self.count > 0 {
                    self.count -= 1;
                    self.slow_out += 1;
                    batch[n] = self.cache.get(self.count);
                } else if let Some(b) = self.shared.ring.pop() {
                    batch[n] = b;
                } else {
                    break;
                }
                n += 1;
            }
            if n == 0 {
                return;
            }
            self.provider.release_bulk(&batch[..n]);
            self.slow.recycle_released += n as u64;
        }
    }
}

impl Drop for Pool {
    /// A pool dropped without `shutdown` gives back what it holds and, if buffers are
    /// still out, keeps the provider alive (and logs the leak) rather than free memory in use.
    fn drop(&mut self) {
        self.release_parked();
        let inflight = self.stats().inflight;
        if inflight > 0 {
            tracing::warn!(provider = %self.provider.label(), leaked = inflight, "pool dropped with buffers out; keeping the provider's memory alive");
            let provider = std::mem::replace(&mut self.provider, placeholder());
            std::mem::forget(provider);
        }
    }
}

/// A provider that owns nothing, swapped in when a real one has to be leaked on drop.
fn placeholder() -> CheckedProvider {
    struct Nothing;
    impl crate::provider::MemoryProvider for Nothing {
        fn info(&self) -> crate::provider::ProviderInfo {
            // Memory the host never touches: no region needed.
            crate::provider::ProviderInfo::new("none", 0, 1).caps(Capabilities::empty())
        }
        fn alloc_bulk(
            &mut self,
            _: &mut [Netmem],
        ) -> Result<usize, crate::provider::ProviderError> {
            Ok(0)
        }
        fn release_bulk(&mut self, _: &[Netmem]) -> Result<(), crate::provider::ProviderError> {
            Ok(())
        }
    }
    CheckedProvider::new(Box::new(Nothing), "none".into(), 0, Default::default())
        .expect("placeholder info is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderPlugin;
    use memplex_abi::InitParams;

    fn slab(buffers: u32) -> Pool {
        let params = InitParams::new(0, 2048, 256).set("buffers", &buffers.to_string());
        let provider = ProviderPlugin::builtin("slab")
            .expect("the built-in slab")
            .instantiate(&params)
            .expect("a slab of that size");
        Pool::new(provider, 256)
    }

    /// The worker's way of taking a buffer (`refill_for_pop` on a miss, then the pop)
    /// hands out the buffers `alloc` would, in the same order, with the same counters,
    /// through refills from the provider and from the ring.
    #[test]
    fn refill_then_pop_counts_as_alloc_does() {
        let (mut a, mut b) = (slab(512), slab(512));
        let mut held = (Vec::new(), Vec::new());
        for round in 0..3 {
            for _ in 0..(CACHE_SIZE + REFILL + 1) {
                let x = a.alloc().expect("a buffer by alloc");
                if !b.has_cached() {
                    b.refill_for_pop().expect("a refill");
                }
                let y = b.alloc_cached().expect("the buffer the refill left on top");
                assert_eq!(
                    (x.netmem().id, x.netmem().len),
                    (y.netmem().id, y.netmem().len),
                    "round {round}"
                );
                held.0.push(x);
                held.1.push(y);
            }
            assert_eq!(a.stats(), b.stats(), "round {round}");
            // Given back (past the cache, so the next round refills from the ring too).
            for x in held.0.drain(..) {
                a.recycle(x).expect("its own pool");
            }
            for y in held.1.drain(..) {
                b.recycle(y).expect("its own pool");
            }
            assert_eq!(a.stats(), b.stats(), "round {round}, given back");
        }
        assert_eq!(a.stats().inflight, 0);
        assert!(
            a.stats().alloc_refill > 0,
            "a refill from the ring was taken"
        );
        assert_eq!(a.shutdown(Duration::from_millis(10)).leaked, 0);
        assert_eq!(b.shutdown(Duration::from_millis(10)).leaked, 0);
    }

    /// Takes `k` buffers from each of `a` and `b` and checks they come in the same
    /// order, buffer for buffer (id and length); gives them back.
    fn hand_out_alike(a: &mut Pool, b: &mut Pool, k: usize, what: &str) {
        let next = |p: &mut Pool| {
            (0..k)
                .map(|_| p.alloc().expect("one").netmem())
                .collect::<Vec<_>>()
        };
        let (xs, ys) = (next(a), next(b));
        assert_eq!(
            xs.iter().map(|m| (m.id, m.len)).collect::<Vec<_>>(),
            ys.iter().map(|m| (m.id, m.len)).collect::<Vec<_>>(),
            "{what}"
        );
        for (pool, got) in [(a, xs), (b, ys)] {
            for netmem in got {
                let buf = pool.wrap(netmem);
                pool.recycle(buf).expect("its own pool");
            }
        }
    }

    /// Runs given back by `recycle_run` leave the pool as `recycle` one at a time does:
    /// the same counters, and the same buffers handed out after, in the same order. The
    /// runs include one longer than the cache has room for (the rest goes to the ring),
    /// and a buffer of another pool, which is left out as `recycle` refuses it.
    #[test]
    fn recycle_run_matches_recycling_one_at_a_time() {
        let (mut a, mut b, mut other) = (slab(512), slab(512), slab(8));
        for (round, n) in [1, 8, CACHE_SIZE / 2, CACHE_SIZE + 3]
            .into_iter()
            .enumerate()
        {
            let x: Vec<PoolBuf> = (0..n).map(|_| a.alloc().expect("a buffer")).collect();
            let mut y: Vec<PoolBuf> = (0..n).map(|_| b.alloc().expect("a buffer")).collect();
            let stranger = other.alloc().expect("a buffer of another pool");
            for buf in x {
                a.recycle(buf).expect("its own pool");
            }
            y.insert(n / 2, stranger);
            // In runs: the second a little past the room the first leaves.
            let room = CACHE_SIZE - b.count;
            let first = room.saturating_sub(2).clamp(1, y.len());
            let second = (first + 6).min(y.len());
            for run in [&y[..first], &y[first..second], &y[second..]] {
                b.recycle_run(run.iter());
            }
            assert_eq!(a.stats(), b.stats(), "round {round}: {n} buffers");
            assert_eq!(a.count, b.count, "round {round}: cached");
            // The run's handles were read, not taken: forget them as the worker does,
            // but the stranger, which goes back to its own pool.
            let stranger = y.remove(n / 2);
            other.recycle(stranger).expect("its own pool");
            y.clear();
            hand_out_alike(
                &mut a,
                &mut b,
                4,
                &format!("round {round}: handed out after"),
            );
        }
        assert!(
            a.stats().recycle_cache_full > 0,
            "a run overflowed the cache"
        );
        assert_eq!(a.shutdown(Duration::from_millis(10)).leaked, 0);
        assert_eq!(b.shutdown(Duration::from_millis(10)).leaked, 0);
        assert_eq!(other.shutdown(Duration::from_millis(10)).leaked, 0);
    }

    /// A run taken from the cache and given back untouched by `untake_run` leaves the
    /// pool as `recycle_run` of the same buffers does: the same counters, and the same
    /// buffers handed out after, in the same order. `may_untake` refuses once the cache
    /// has moved since the take (a buffer taken or given back in between), and when
    /// the cache has no room (a pool retired meanwhile).
    #[test]
    fn untake_run_matches_recycling_the_run() {
        let (mut a, mut b) = (slab(512), slab(512));
        // Both caches filled alike: a refill, then every buffer but 8 given back.
        for p in [&mut a, &mut b] {
            let held: Vec<PoolBuf> = (0..40).map(|_| p.alloc().expect("a buffer")).collect();
            for buf in held {
                p.recycle(buf).expect("its own pool");
            }
        }
        assert_eq!(a.count, b.count);
        let n = 8;
        let handles = |run: CachedRun<'_>| run.slots().map(|buf| buf.netmem()).collect();
        let left = a.count - n;
        let took_a: Vec<Netmem> = handles(a.take_cached_run(n).expect("a run"));
        let took_b: Vec<Netmem> = handles(b.take_cached_run(n).expect("a run"));
        assert!(a.may_untake(left, n));
        let held: Vec<PoolBuf> = took_a.iter().map(|&m| a.wrap(m)).collect();
        assert!(a.holds_run(left, held.iter()));
        a.untake_run(n);
        drop(held);
        let bufs: Vec<PoolBuf> = took_b.iter().map(|&m| b.wrap(m)).collect();
        b.recycle_run(bufs.iter());
        drop(took_a);
        assert_eq!(a.stats(), b.stats(), "counted as a recycled run");
        assert_eq!(a.count, b.count, "cached");
        // Every cached buffer, in the order they are handed out.
        let k = a.count;
        hand_out_alike(&mut a, &mut b, k, "handed out after");
        // The cache moved after the take: a buffer taken, or one given back, in between.
        let left = a.count - n;
        let run: Vec<Netmem> = handles(a.take_cached_run(n).expect("a run"));
        let one = a.alloc().expect("a buffer");
        assert!(!a.may_untake(left, n), "a buffer taken since");
        a.recycle(one).expect("its own pool");
        // Taken below the run and given back: the run's slots are as they were.
        assert!(a.may_untake(left, n), "the count is where the take left it");
        let held: Vec<PoolBuf> = run.iter().map(|&m| a.wrap(m)).collect();
        assert!(a.holds_run(left, held.iter()));
        drop(held);
        // One of the run's buffers given back over the run's first slot (here another
        // of the run, as a consumer's could be any buffer).
        let moved = a.wrap(run[1]);
        a.recycle(moved).expect("its own pool");
        assert!(!a.may_untake(left, n), "a buffer given back since");
        // Taken again, it leaves the count where the take left it, and the run's first
        // slot written over: what the count cannot see, and `holds_run` does.
        let again = a.alloc().expect("a buffer");
        assert_eq!(again.netmem(), run[1]);
        assert!(a.may_untake(left, n));
        let held: Vec<PoolBuf> = run.iter().map(|&m| a.wrap(m)).collect();
        assert!(!a.holds_run(left, held.iter()));
        drop(held);
        // What the test took apart goes back the ordinary way.
        a.recycle(again).expect("its own pool");
        for &m in run.iter().filter(|&&m| m != run[1]) {
            let buf = a.wrap(m);
            a.recycle(buf).expect("its own pool");
        }
        // No room: a cache with a lower limit than the run needs.
        let left = a.count - n;
        let run: Vec<Netmem> = handles(a.take_cached_run(n).expect("a run"));
        let limit = a.cache_limit;
        a.cache_limit = left + n - 1;
        assert!(!a.may_untake(left, n), "no room");
        a.cache_limit = limit;
        assert!(a.may_untake(left, n));
        a.untake_run(run.len());
        assert_eq!(a.stats().inflight, 0);
        assert_eq!(a.shutdown(Duration::from_millis(10)).leaked, 0);
        assert_eq!(b.shutdown(Duration::from_millis(10)).leaked, 0);
    }

    /// A run of pairs into two pools gives back what two runs would: with room in both
    /// caches, with too little in one (each buffer then on its own), and with a buffer
    /// of a third pool among the pairs (left out, for its own pool).
    #[test]
    fn recycle_pair_run_matches_two_runs() {
        let pools = || (slab(512), slab(512));
        let (mut a, mut b) = pools();
        let (mut c, mut d) = pools();
        let mut other = slab(8);
        for (round, n) in [1, 8, CACHE_SIZE - 2].into_iter().enumerate() {
            let take = |p: &mut Pool| (0..n).map(|_| p.alloc().expect("a buffer")).collect();
            let (xa, mut xb): (Vec<PoolBuf>, Vec<PoolBuf>) = (take(&mut a), take(&mut b));
            let (ya, mut yb): (Vec<PoolBuf>, Vec<PoolBuf>) = (take(&mut c), take(&mut d));
            // The cache of `b` and `d` two short of room for the run in the last round.
            if round == 2 {
                for p in [&mut b, &mut d] {
                    let fill: Vec<PoolBuf> = (0..CACHE_SIZE - n + 2)
                        .map(|_| p.alloc().expect("a buffer"))
                        .collect();
                    for buf in fill {
                        p.recycle(buf).expect("its own pool");
                    }
                    assert!(p.count + n > CACHE_SIZE, "round {round}: no room");
                }
            }
            let strangers = [
                other.alloc().expect("a buffer"),
                other.alloc().expect("a buffer"),
            ];
            let [s1, s2] = strangers;
            let at = n / 2;
            let (kept_b, kept_d) = (
                std::mem::replace(&mut xb[at], s1),
                std::mem::replace(&mut yb[at], s2),
            );
            Pool::recycle_pair_run(&mut a, &mut b, xa.iter().zip(xb.iter()));
            c.recycle_run(ya.iter());
            d.recycle_run(yb.iter());
            assert_eq!(
                (a.stats(), b.stats()),
                (c.stats(), d.stats()),
                "round {round}"
            );
            assert_eq!((a.count, b.count), (c.count, d.count), "round {round}");
            // The handles were read, not taken: forget them as the worker does, but the
            // strangers, which go back to their own pool, and the buffers they stood for.
            let (s1, s2) = (xb.swap_remove(at), yb.swap_remove(at));
            other.recycle(s1).expect("its own pool");
            other.recycle(s2).expect("its own pool");
            b.recycle(kept_b).expect("its own pool");
            d.recycle(kept_d).expect("its own pool");
            drop((xa, xb, ya, yb));
            assert_eq!(
                (a.stats(), b.stats()),
                (c.stats(), d.stats()),
                "round {round}"
            );
        }
        for p in [a, b, c, d, other] {
            assert_eq!(p.stats().inflight, 0);
            assert_eq!(p.shutdown(Duration::from_millis(10)).leaked, 0);
        }
    }

    /// A quarantined pool caches nothing again: a run given back to it goes past the
    /// cache, as buffers given back one at a time do, and every buffer is accounted for.
    #[test]
    fn recycle_run_into_a_retired_pool_caches_nothing() {
        let (mut a, mut b) = (slab(64), slab(64));
        let x: Vec<PoolBuf> = (0..8).map(|_| a.alloc().expect("a buffer")).collect();
        let mut y: Vec<PoolBuf> = (0..8).map(|_| b.alloc().expect("a buffer")).collect();
        a.retire();
        b.retire();
        for buf in x {
            a.recycle(buf).expect("its own pool");
        }
        b.recycle_run(y.iter());
        y.clear();
        assert_eq!((a.count, b.count), (0, 0), "nothing cached");
        assert_eq!(a.stats(), b.stats());
        assert_eq!(b.stats().inflight, 0);
        assert_eq!(a.shutdown(Duration::from_millis(10)).leaked, 0);
        assert_eq!(b.shutdown(Duration::from_millis(10)).leaked, 0);
    }

    /// A dry provider: the reason comes back, and nothing is left on top of the cache.
    #[test]
    fn refill_from_a_dry_provider_says_why() {
        let mut pool = slab(REFILL as u32);
        let held: Vec<PoolBuf> = (0..REFILL).map(|_| pool.alloc().expect("one")).collect();
        assert!(!pool.has_cached());
        assert!(matches!(
            pool.refill_for_pop(),
            Err(PoolErrorKind::Exhausted { .. })
        ));
        assert!(!pool.has_cached());
        for b in held {
            pool.recycle(b).expect("its own pool");
        }
        assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
    }
}
