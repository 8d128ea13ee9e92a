//! Single-producer single-consumer rings over a channel's shared memory (AF_XDP style):
//! free-running `u32` indexes, the producer index published with release ordering after
//! the entries are written, the consumer index published with release ordering after
//! they are read, and a need-wakeup flag so the writer makes a wake-up system call only
//! when the reader sleeps.
//!
//! Each side keeps its own index privately and never reads it back from shared memory;
//! the other side's index is read and checked (`0 <= producer - consumer <= entries`),
//! so a peer that moves an index wildly is caught ([`Hostile`]), never followed.
//!
//! The one module of the protocol with `unsafe`: the rings live in memory mapped from a
//! memfd, reached through raw pointers that stay valid as long as the [`ChannelMap`].
#![allow(
    unsafe_code,
    reason = "shared-memory rings: atomics and entries in a mapped memfd"
)]

use crate::layout::{
    check_channel, ChannelHeader, RingKind, CHANNEL_HEADER, CONSUMER_OFFSET, NEED_WAKEUP,
};
use memmap2::MmapMut;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The other side moved an index outside what the ring allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hostile {
    /// Our index.
    pub ours: u32,
    /// What the other side's index said.
    pub theirs: u32,
}

impl std::fmt::Display for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the peer's ring index {} is {} entries from ours ({}), more than the ring holds",
            self.theirs,
            self.theirs.wrapping_sub(self.ours) as i32,
            self.ours
        )
    }
}

/// One channel's memory, mapped shared and writable.
pub struct ChannelMap {
    map: MmapMut,
    header: ChannelHeader,
}

impl std::fmt::Debug for ChannelMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChannelMap(queue {}, {} bytes)",
            self.header.queue,
            self.map.len()
        )
    }
}

impl ChannelMap {
    /// The host's side: makes a memfd for a channel of queue `queue`, sealed against
    /// resizing (a peer that could shrink it would fault the host), maps it and writes
    /// the header ([`crate::layout::channel`] has the layout). Returns the map and the
    /// descriptor to send; [`ChannelMap::len`] is the length to announce.
    pub fn create(
        queue: u32,
        completion: u32,
        refill: u32,
        transmit: u32,
        meta: bool,
    ) -> std::io::Result<(ChannelMap, OwnedFd)> {
        let (header, len) = crate::layout::channel(queue, completion, refill, transmit, meta);
        let fd = rustix::fs::memfd_create(
            "memplex-channel",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(len as u64)?;
        rustix::fs::fcntl_add_seals(
            &file,
            rustix::fs::SealFlags::SHRINK
                | rustix::fs::SealFlags::GROW
                | rustix::fs::SealFlags::SEAL,
        )?;
        // SAFETY: the memfd was just made and sealed against shrinking and growing, so
        // the mapping can never lose its pages under us, whatever the peer does with
        // the descriptor; every access to it goes through this module.
        let mut map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(&file)? };
        map[..size_of::<ChannelHeader>()].copy_from_slice(header.as_bytes());
        Ok((ChannelMap { map, header }, file.into()))
    }

    /// The consumer's side: maps a channel the host sent, `len` bytes, and checks its
    /// header.
    pub fn open(fd: OwnedFd, len: usize) -> Result<ChannelMap, String> {
        let file = File::from(fd);
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        if (size as usize) < len || len < CHANNEL_HEADER {
            return Err(format!("channel memory of {size} bytes, {len} announced"));
        }
        // Checked, not assumed: a descriptor that could shrink under the mapping would
        // fault this process on its next read of the rings.
        let seals = rustix::fs::fcntl_get_seals(&file)
            .map_err(|e| format!("channel memory that is not a sealed memfd: {e}"))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err("channel memory not sealed against shrinking".into());
        }
        // SAFETY: the descriptor is sealed against shrinking (checked above), and `len`
        // is within the file's size (checked above), so the pages stay.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(&file) }
            .map_err(|e| format!("mapping the channel: {e}"))?;
        let header = ChannelHeader::read_from_prefix(&map[..])
            .map_err(|_| "channel header".to_string())?
            .0;
        check_channel(&header, len)?;
        Ok(ChannelMap { map, header })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for a mapping of no bytes (never, for a channel).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The header as written at creation (the host's copy, or the consumer's checked
    /// copy: later writes to shared memory do not change it).
    pub fn header(&self) -> &ChannelHeader {
        &self.header
    }

    /// The ring of `kind`; it keeps the mapping alive.
    pub fn ring(self: &Arc<Self>, kind: RingKind) -> Ring {
        let d = self.header.rings[kind as usize - 1];
        let base = self.map.as_ptr().wrapping_add(d.offset as usize).cast_mut();
        // SAFETY: `check_channel` (consumer) or `layout::channel` (host) put every ring
        // header and its entries inside the mapping, 64-byte aligned; the atomics are
        // 4-byte aligned u32s that both sides only ever access atomically; the ring
        // holds an `Arc` of the mapping, so the pointers stay valid as long as it does.
        unsafe {
            Ring {
                producer: base.cast::<AtomicU32>(),
                flags: base.add(4).cast::<AtomicU32>(),
                consumer: base.add(CONSUMER_OFFSET).cast::<AtomicU32>(),
                entries: base.add(crate::layout::RING_HEADER),
                size: d.entries,
                entry_size: d.entry_size as usize,
                _map: Arc::clone(self),
            }
        }
    }
}

/// A ring in a [`ChannelMap`], holding the mapping alive.
#[derive(Clone)]
pub struct Ring {
    producer: *const AtomicU32,
    flags: *const AtomicU32,
    consumer: *const AtomicU32,
    entries: *mut u8,
    size: u32,
    entry_size: usize,
    _map: Arc<ChannelMap>,
}

// SAFETY: a ring is a view of shared memory (kept mapped by its `Arc`) whose indexes are
// atomics; each side owns one end (a `Producer` or a `Consumer`) and the protocol, not
// Rust aliasing, orders entry accesses. Moving a view to another thread is what a
// worker does.
unsafe impl Send for Ring {}

impl Ring {
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the mapping `_map` keeps alive, aligned (see `ring`).
        unsafe { &*self.producer }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    /// Entries it holds.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Where `len` bytes from the entry of `index` on lie in the ring's `total` bytes of
    /// entries: the first byte's offset, how many fit before the ring's end (the rest
    /// wrap to its start), and `len` cut to `total`. So `first + head <= total` and
    /// `len - head <= total`.
    #[inline]
    fn span(&self, index: u32, len: usize) -> (usize, usize, usize) {
        let total = self.size as usize * self.entry_size;
        let len = len.min(total);
        let first = (index & (self.size - 1)) as usize * self.entry_size;
        (first, len.min(total - first), len)
    }

    fn slot(&self, index: u32) -> *mut u8 {
        let at = (index & (self.size - 1)) as usize * self.entry_size;
        self.entries.wrapping_add(at)
    }
}

/// The writing end of a ring.
pub struct Producer {
    ring: Ring,
    /// Our index: entries up to here are written (published or not).
    prod: u32,
    /// The consumer index last read.
    cons: u32,
}

impl Producer {
    /// The writing end of `ring`, starting from the index shared memory holds now (0 on
    /// a fresh channel). Our index is never read back from shared memory after this.
    pub fn new(ring: Ring) -> Self {
        let prod = ring.producer().load(Ordering::Relaxed);
        let cons = ring.consumer().load(Ordering::Acquire);
        Producer { ring, prod, cons }
    }

    /// Entries free to write, after reading the consumer's index; [`Hostile`] when that
    /// index says more was consumed than produced, or less than nothing is free.
    pub fn free(&mut self) -> Result<u32, Hostile> {
        let cons = self.ring.consumer().load(Ordering::Acquire);
        let used = self.prod.wrapping_sub(cons);
        if used > self.ring.size {
            return Err(Hostile {
                ours: self.prod,
                theirs: cons,
            });
        }
        self.cons = cons;
        Ok(self.ring.size - used)
    }

    /// True when `need` entries (after `pending` written but unpublished ones) fit,
    /// reading the consumer's index only when the last reading says they do not: the
    /// shared line is not pulled across cores for every entry.
    #[inline]
    pub fn has_room(&mut self, pending: u32, need: u32) -> Result<bool, Hostile> {
        let used = self.prod.wrapping_sub(self.cons);
        if used <= self.ring.size && self.ring.size - used >= pending + need {
            return Ok(true);
        }
        Ok(self.free()? >= pending + need)
    }

    /// Our index: where the next unpublished entry goes.
    pub fn position(&self) -> u32 {
        self.prod
    }

    /// The ring's size.
    pub fn size(&self) -> u32 {
        self.ring.size
    }

    /// Entries written and published that the consumer has not taken (from the last
    /// [`free`](Self::free)).
    pub fn in_flight(&self) -> u32 {
        self.prod.wrapping_sub(self.cons)
    }

    /// Copies `bytes` (whole entries, staged elsewhere) into the entries from `i` after
    /// our index on, across the ring's end, in at most two copies. Writing a batch at
    /// once, rather than an entry at a time among other work, lets the CPU fetch the
    /// lines the peer's core holds in parallel. The entries must be below what
    /// [`free`](Self::free) said; `bytes` is cut to the ring's size.
    #[inline]
    pub fn write_staged(&mut self, i: u32, bytes: &[u8]) {
        let (first, head, len) = self.ring.span(self.prod.wrapping_add(i), bytes.len());
        // SAFETY: `span` keeps both copies inside the ring's entries, which the consumer
        // does not read before the release store in `publish`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ring.entries.add(first), head);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(head), self.ring.entries, len - head);
        }
    }

    /// Asks the CPU to take the cache lines of the `n` entries from `i` after our index
    /// for writing (PREFETCHW on x86-64), so that later writes find them owned instead
    /// of waiting for the consumer's core to give them up. A hint only.
    #[inline]
    pub fn prefetch(&self, i: u32, n: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let (first, head, len) = self
                .ring
                .span(self.prod.wrapping_add(i), n as usize * self.ring.entry_size);
            // The lines up to the ring's end, then those wrapped to its start.
            for (from, bytes) in [(first, head), (0, len - head)] {
                for at in (from..from + bytes).step_by(64) {
                    prefetch_for_write(self.ring.entries.wrapping_add(at));
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (i, n);
    }

    /// Writes entry `i` after our index (not yet published). `i` must be below what
    /// [`free`](Self::free) said.
    pub fn write<T: IntoBytes + Immutable>(&mut self, i: u32, entry: &T) {
        let bytes = entry.as_bytes();
        debug_assert!(bytes.len() <= self.ring.entry_size);
        let slot = self.ring.slot(self.prod.wrapping_add(i));
        // SAFETY: the slot is inside the ring (masked index times entry size), and
        // `bytes` is no longer than an entry; the consumer does not read it before the
        // release store in `publish`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot, bytes.len()) };
    }

    /// Makes `n` written entries visible to the consumer.
    pub fn publish(&mut self, n: u32) {
        self.prod = self.prod.wrapping_add(n);
        self.ring.producer().store(self.prod, Ordering::Release);
    }

    /// Writes `index` as the shared producer index, whatever it says. For tests of a
    /// peer's defences only.
    #[doc(hidden)]
    pub fn force_shared_index(&self, index: u32) {
        self.ring.producer().store(index, Ordering::Release);
    }

    /// True when the consumer asked to be woken: check after `publish`, and make one
    /// wake-up system call if so.
    pub fn needs_wakeup(&self) -> bool {
        // Pairs with the consumer's fence between setting the flag and re-reading the
        // producer index: one of the two sides sees the other's write.
        fence(Ordering::SeqCst);
        self.ring.flags().load(Ordering::Relaxed) & NEED_WAKEUP != 0
    }
}

/// The reading end of a ring.
pub struct Consumer {
    ring: Ring,
    /// Our index: entries before it are released.
    cons: u32,
    /// Entries known to be ready (from the last read of the producer's index).
    ready: u32,
    /// Entries released but not yet published to the producer.
    unsynced: u32,
}

impl Consumer {
    /// The reading end of `ring`, from the index shared memory holds now. Our index is
    /// never read back from shared memory after this.
    pub fn new(ring: Ring) -> Self {
        let cons = ring.consumer().load(Ordering::Relaxed);
        Consumer {
            ring,
            cons,
            ready: 0,
            unsynced: 0,
        }
    }

    /// Entries ready to read: from the last reading of the producer's index while that
    /// said some are, else from a fresh one.
    #[inline]
    pub fn ready(&mut self) -> Result<u32, Hostile> {
        if self.ready == 0 {
            self.ready = self.available()?;
        }
        Ok(self.ready)
    }

    /// Takes `n` read entries out of our view, and publishes our index to the producer
    /// once a sixteenth of the ring (at least 16 entries) has been taken; call
    /// [`sync`](Self::sync) before waiting, so the producer sees all of it.
    #[inline]
    pub fn release_lazily(&mut self, n: u32) {
        self.cons = self.cons.wrapping_add(n);
        self.ready = self.ready.saturating_sub(n);
        self.unsynced += n;
        if self.unsynced >= (self.ring.size / 16).max(16) {
            self.sync();
        }
    }

    /// Publishes our index to the producer.
    pub fn sync(&mut self) {
        if self.unsynced > 0 {
            self.ring.consumer().store(self.cons, Ordering::Release);
            self.unsynced = 0;
        }
    }

    /// Entries ready to read, after reading the producer's index; [`Hostile`] when it
    /// claims more than the ring holds.
    pub fn available(&mut self) -> Result<u32, Hostile> {
        let prod = self.ring.producer().load(Ordering::Acquire);
        let n = prod.wrapping_sub(self.cons);
        if n > self.ring.size {
            return Err(Hostile {
                ours: self.cons,
                theirs: prod,
            });
        }
        Ok(n)
    }

    /// A copy of entry `i` after our index; `i` must be below what
    /// [`available`](Self::available) said.
    ///
    /// An entry at least as large as `T` is read in one fixed-size load: a copy of
    /// `min(size_of::<T>(), entry_size)` bytes was a call to `memcpy` per entry, which
    /// `perf` showed on both sides (each token the host took back, each descriptor a
    /// consumer read).
    #[inline]
    pub fn read<T: FromBytes + IntoBytes>(&self, i: u32) -> T {
        let slot = self.ring.slot(self.cons.wrapping_add(i));
        if self.ring.entry_size >= std::mem::size_of::<T>() {
            // SAFETY: the slot is inside the ring and `T` fits in an entry; the producer
            // published it (acquire in `available`) and does not rewrite it before we
            // release it. Any bytes are a valid `T` (`FromBytes`), so a hostile producer
            // can only choose the value, never make it invalid.
            return unsafe { std::ptr::read_unaligned(slot.cast::<T>()) };
        }
        let mut out = T::new_zeroed();
        let dst = out.as_mut_bytes();
        let n = dst.len().min(self.ring.entry_size);
        // SAFETY: the slot is inside the ring and `n` bytes fit in an entry; the
        // producer published it (acquire in `available`) and does not rewrite it before
        // we release it. A hostile producer can only change bytes we copy, never where.
        unsafe { std::ptr::copy_nonoverlapping(slot, dst.as_mut_ptr(), n) };
        out
    }

    /// Copies the `n` entries from `i` after our index into the first `n` chunks of
    /// `dst`, for a ring of [`layout::DESC`](crate::layout::DESC)-byte entries (the
    /// completion ring); `n` must be at most what [`available`](Self::available) said
    /// past `i`, and chunks past `n` are left as they are.
    ///
    /// For short inline runs (a head of up to `N` bytes): the entries' address is worked
    /// out once, and each is two loads and two stores, unrolled over the `N / 16`
    /// chunks. Reading them one by one with [`read`](Self::read) masked and multiplied
    /// the index again per entry, 12 instructions each; a copy of `n` entries' bytes was
    /// a call to `memcpy`.
    #[inline]
    pub fn read_entries<const N: usize>(&self, i: u32, n: usize, dst: &mut [u8; N]) {
        const E: usize = crate::layout::DESC;
        let (chunks, _) = dst.as_chunks_mut::<E>();
        let n = n.min(chunks.len());
        let size = self.ring.size;
        let first = self.cons.wrapping_add(i) & (size - 1);
        if self.ring.entry_size != E || first as usize + n > size as usize {
            // Another entry size, or a run across the ring's end: entry by entry.
            for (k, chunk) in chunks.iter_mut().take(n).enumerate() {
                *chunk = self.read(i.wrapping_add(k as u32));
            }
            return;
        }
        let base = self.ring.entries.wrapping_add(first as usize * E);
        for (k, chunk) in chunks.iter_mut().enumerate() {
            if k >= n {
                break;
            }
            // Two volatile 8-byte loads: plain ones, unrolled as they are, were turned
            // back into a `memcpy` call of `n * 16` bytes.
            let at = base.wrapping_add(k * E).cast::<u64>();
            // SAFETY: entries `first..first + n` lie inside the ring (checked above:
            // they do not pass its end), each `E` bytes, 8-byte aligned (entries start
            // on a cache line and are 16 bytes each); the producer published them
            // (acquire in `available`) and does not rewrite them before we release them.
            // Any bytes are valid `u64`s, so a hostile producer can only choose them.
            let (lo, hi) = unsafe { (at.read_volatile(), at.add(1).read_volatile()) };
            chunk[..8].copy_from_slice(&lo.to_ne_bytes());
            chunk[8..].copy_from_slice(&hi.to_ne_bytes());
        }
    }

    /// Copies `dst.len()` bytes from the entries starting at `i` (entry after entry,
    /// across the ring's end): inline bytes that span several entries, in at most two
    /// copies. `dst` is cut to the ring's size.
    #[inline]
    pub fn read_bytes(&self, i: u32, dst: &mut [u8]) {
        let (first, head, dst_len) = self.ring.span(self.cons.wrapping_add(i), dst.len());
        // SAFETY: `span` keeps both copies inside the ring's entries, which the producer
        // published and does not rewrite before we release them; `dst` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ring.entries.add(first), dst.as_mut_ptr(), head);
            std::ptr::copy_nonoverlapping(
                self.ring.entries,
                dst.as_mut_ptr().add(head),
                dst_len - head,
            );
        }
    }

    /// Moves this side's index past `n` entries without telling the producer: for a ring
    /// whose producer never waits on it (the metadata ring, which moves with the
    /// completion ring), read by position.
    pub fn advance(&mut self, n: u32) {
        self.cons = self.cons.wrapping_add(n);
    }

    /// Gives `n` read entries back to the producer.
    pub fn release(&mut self, n: u32) {
        self.cons = self.cons.wrapping_add(n);
        self.ready = self.ready.saturating_sub(n);
        self.unsynced = 0;
        self.ring.consumer().store(self.cons, Ordering::Release);
    }

    /// Writes `index` as the shared consumer index, whatever it says. For tests of a
    /// peer's defences only.
    #[doc(hidden)]
    pub fn force_shared_index(&self, index: u32) {
        self.ring.consumer().store(index, Ordering::Release);
    }

    /// Our index.
    pub fn position(&self) -> u32 {
        self.cons
    }

    /// Asks the producer for a wake-up before sleeping; then check
    /// [`available`](Self::available) once more before the sleep itself.
    pub fn want_wakeup(&self) {
        self.ring.flags().fetch_or(NEED_WAKEUP, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Clears the wake-up request (when polling again).
    pub fn no_wakeup(&self) {
        self.ring.flags().fetch_and(!NEED_WAKEUP, Ordering::Relaxed);
    }

    /// The ring's size.
    pub fn size(&self) -> u32 {
        self.ring.size
    }
}

/// PREFETCHW: asks the CPU for the line at `p` in a state it may write (owned), so a
/// later store does not wait for other cores to give it up. A hint that never faults.
///
/// In assembly because `_mm_prefetch` with `_MM_HINT_ET0` compiles to PREFETCHT0 (a
/// read, which leaves the line shared) unless the `prfchw` target feature is enabled
/// for the whole build. CPUs without PREFETCHW run the instruction as a no-op.
#[inline(always)]
pub fn prefetch_for_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW reads and writes no memory the program sees and never faults,
    // whatever the address.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// PREFETCHT1: asks the CPU for the line at `p` in its L2 cache (and the levels past it),
/// not L1: for data read soon but not next, so L1 keeps what is in use. (CPUs that do
/// not tell the hints apart bring the line into L1 as well.) A hint that never faults.
#[inline(always)]
pub fn prefetch_to_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT1 reads and writes no memory the program sees and never faults,
    // whatever the address.
    unsafe {
        std::arch::asm!("prefetcht1 [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for the lines of `bytes` into L2 ([`prefetch_to_l2`], one per line), up to
/// [`PREFETCH_MAX`] bytes: a frame's worth to read ahead, not a GSO super-frame's or a
/// region's (a cap set without measuring past 1500-byte frames).
#[inline]
pub fn prefetch_bytes_to_l2(bytes: &[u8]) {
    let span = bytes[..bytes.len().min(PREFETCH_MAX)].as_ptr_range();
    let mut line = span.start.wrapping_sub(span.start as usize % 64);
    while line < span.end {
        prefetch_to_l2(line);
        line = line.wrapping_add(64);
    }
}

/// The most bytes [`prefetch_bytes_to_l2`] asks for.
pub const PREFETCH_MAX: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// The consumer maps only channel memory that cannot shrink under it: an unsealed
    /// memfd (or a plain file) of the right size and header is refused.
    #[test]
    fn a_channel_that_could_shrink_is_refused() {
        let (host, fd) = ChannelMap::create(0, 64, 64, 0, false).expect("a channel");
        let ok = ChannelMap::open(fd, host.len()).expect("the host's own channel");
        assert_eq!(ok.len(), host.len());
        let unsealed =
            rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).expect("a memfd");
        let file = File::from(unsealed);
        file.set_len(host.len() as u64).expect("sized");
        std::io::Write::write_all(&mut &file, &host.map[..]).expect("a copy of the header");
        let err = ChannelMap::open(file.into(), host.len()).expect_err("refused");
        assert!(err.contains("sealed"), "{err}");
    }
    use crate::layout::{Desc, RingKind, Token};

    #[test]
    fn runs_of_entries_read_the_same_wherever_they_lie() {
        // An 8-entry ring: runs of 1 to 6 entries from every position, so some lie
        // before the ring's end and some wrap to its start.
        let (map, fd) = ChannelMap::create(0, 8, 16, 0, true).unwrap();
        let map = Arc::new(map);
        let peer = Arc::new(ChannelMap::open(fd, map.len()).unwrap());
        let mut tx = Producer::new(map.ring(RingKind::Completion));
        let mut rx = Consumer::new(peer.ring(RingKind::Completion));
        let mut next = 0u8;
        for start in 0..16u32 {
            for n in 1..=6usize {
                // Entries the reader will skip past, then the run, each byte numbered.
                let skip = start % 2;
                let bytes: Vec<u8> = (0..(skip as usize + n) * 16)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                tx.write_staged(0, &bytes);
                tx.publish(skip + n as u32);
                assert_eq!(rx.available(), Ok(skip + n as u32));
                // Chunks past the run keep what they held.
                let mut got = [0xAAu8; 96];
                rx.read_entries(skip, n, &mut got);
                assert_eq!(
                    &got[..n * 16],
                    &bytes[skip as usize * 16..],
                    "run of {n} at {start}"
                );
                assert!(
                    got[n * 16..].iter().all(|&b| b == 0xAA),
                    "past a run of {n}"
                );
                // The one-by-one way reads the same.
                for k in 0..n {
                    let e: [u8; 16] = rx.read(skip + k as u32);
                    assert_eq!(e[..], got[k * 16..(k + 1) * 16]);
                }
                rx.release(skip + n as u32);
                assert_eq!(tx.free(), Ok(8));
            }
        }
        // A run longer than the destination is cut to it.
        tx.write_staged(0, &[7u8; 128]);
        tx.publish(8);
        let mut small = [0u8; 32];
        rx.read_entries(0, 8, &mut small);
        assert_eq!(small, [7u8; 32]);
    }

    #[test]
    fn entries_cross_and_wild_indexes_are_caught() {
        let (map, fd) = ChannelMap::create(0, 8, 16, 0, true).unwrap();
        let map = Arc::new(map);
        let len = map.len();
        // The consumer's mapping of the same memfd.
        let peer = Arc::new(ChannelMap::open(fd, len).unwrap());
        let mut tx = Producer::new(map.ring(RingKind::Completion));
        let mut rx = Consumer::new(peer.ring(RingKind::Completion));
        assert_eq!(tx.free(), Ok(8));
        for round in 0..5u64 {
            for i in 0..8u32 {
                let token = Token {
                    region: 1,
                    generation: 1,
                    id: (round * 8) as u32 + i,
                };
                tx.write(i, &Desc::part(token, 64, 100, false));
            }
            assert_eq!(rx.available(), Ok(0), "nothing before publish");
            tx.publish(8);
            assert_eq!(tx.free(), Ok(0));
            assert_eq!(rx.available(), Ok(8));
            for i in 0..8u32 {
                let d = rx.read::<Desc>(i);
                assert_eq!(Token::from_u64(d.token).id, (round * 8) as u32 + i);
                assert_eq!((d.offset(), d.len()), (64, 100));
            }
            rx.release(8);
            assert_eq!(tx.free(), Ok(8));
        }
        // Need-wakeup: off until the reader asks.
        assert!(!tx.needs_wakeup());
        rx.want_wakeup();
        assert!(tx.needs_wakeup());
        rx.no_wakeup();
        assert!(!tx.needs_wakeup());
        // A consumer index moved past the producer's: hostile, caught.
        peer.ring(RingKind::Completion)
            .consumer()
            .store(tx.prod.wrapping_add(3), Ordering::Release);
        assert!(tx.free().is_err());
        // A producer index far ahead: hostile for the reader.
        let mut host_rx = Consumer::new(map.ring(RingKind::Refill));
        peer.ring(RingKind::Refill)
            .producer()
            .store(1000, Ordering::Release);
        let err = host_rx.available().unwrap_err();
        assert!(
            err.to_string().contains("more than the ring holds"),
            "{err}"
        );
    }
}
