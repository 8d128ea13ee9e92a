//! Placed frames: a burst as a sink sees it in place ([`PlacedBurst`], [`PlacedFrame`]),
//! and a frame that owns its buffers ([`OwnedFrame`]) for consumers on other threads.

use crate::device::{RxFrame, RxMeta};
use crate::pool::{Pool, PoolBuf, Recycler};
use crate::wire::Split;
use std::ops::Range;
use std::sync::Arc;

/// A buffer holding part of a placed frame.
///
/// Five words. Tried and dropped (session 44): the provider's index and the length as two
/// `u32`s, four words, so that a frame split in two stores eight words for its parts, not
/// ten. The packing cost more instructions than the stores saved (`cargo xtask
/// instructions`: tcp-split at 1500 B 511 to 517, count-64 329 to 335), and the
/// criterion `place` bench at 128 B placed no faster (58.7, 64.8 and 65.6 ns a frame
/// against 62.3, 60.0 and 62.0, alternating builds, AMD EPYC family 23 model 1).
#[derive(Debug)]
pub struct Part {
    /// Index of the provider it came from, in config order.
    pub provider: usize,
    /// The buffer.
    pub buf: PoolBuf,
    /// Bytes of the frame in it, from offset 0.
    pub len: usize,
}

/// A part of a vector that waits for its provider's one `fill_gather` of the vector: its
/// pool and buffer, and where its bytes are in the vector's frame `rx`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gather {
    pub pool: usize,
    pub buf: memplex_abi::Netmem,
    pub rx: usize,
    pub from: u32,
    pub len: u32,
}

/// One frame of a burst that made it into provider memory (the worker's bookkeeping).
///
/// Four `u32`s, 16 bytes: one is written per frame placed, and as four words (`usize`
/// and a `Range<usize>`) it was four stores a frame, on a path that stores little else
/// besides its copies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Staged {
    rx: u32,
    rule: u32,
    first: u32,
    end: u32,
}

const _: () = assert!(core::mem::size_of::<Staged>() == 16);

impl Staged {
    /// Frame `rx` of the burst, placed by route rule `rule` into the worker's `parts`.
    /// (A burst has at most [`BURST`](crate::device::BURST) frames, a config far fewer
    /// than 2^32 rules, and a burst's part list far fewer than 2^32 parts.)
    #[inline(always)]
    pub fn new(rx: usize, rule: usize, parts: Range<usize>) -> Self {
        Staged {
            rx: rx as u32,
            rule: rule as u32,
            first: parts.start as u32,
            end: parts.end as u32,
        }
    }

    /// Its index in the received burst.
    #[inline(always)]
    pub fn rx(&self) -> usize {
        self.rx as usize
    }

    /// The route rule that placed it.
    #[inline(always)]
    pub fn rule(&self) -> usize {
        self.rule as usize
    }

    /// Its parts in the worker's part list.
    #[inline(always)]
    pub fn parts(&self) -> Range<usize> {
        self.first as usize..self.end as usize
    }

    /// The same frame with its parts moved to `parts`.
    #[inline(always)]
    pub fn with_parts(self, parts: Range<usize>) -> Self {
        Staged::new(self.rx(), self.rule(), parts)
    }
}

/// A burst of placed frames, as an inline [`Sink`](super::Sink) sees it: the frames as
/// received, their metadata and split decisions, and the buffers they were placed in.
/// The buffers go back to their pools when the sink returns.
#[derive(Debug, Clone, Copy)]
pub struct PlacedBurst<'a> {
    pub(super) rx: &'a [RxFrame<'a>],
    pub(super) splits: &'a [Split],
    pub(super) staged: &'a [Staged],
    pub(super) parts: &'a [Part],
    pub(super) pools: &'a [Pool],
}

impl<'a> PlacedBurst<'a> {
    /// Frames placed (a burst's frames that were dropped are not in it).
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True when no frame of the burst was placed.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// The placed frames, in receive order.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = PlacedFrame<'a>> + 'a {
        let b = *self;
        b.staged.iter().map(move |s| PlacedFrame {
            original: b.rx[s.rx()].data,
            rx: &b.rx[s.rx()].meta,
            split: &b.splits[s.rx()],
            rule: s.rule(),
            parts: &b.parts[s.parts()],
            pools: b.pools,
        })
    }
}

/// A frame placed in provider memory: `parts[0]` is the head, the rest are frags.
#[derive(Debug, Clone, Copy)]
pub struct PlacedFrame<'a> {
    /// The frame as received, for consumers that check reassembly.
    pub original: &'a [u8],
    /// How and when it arrived: queue, sequence number, timestamps, lengths, VLAN and
    /// `virtio_net_hdr` state.
    pub rx: &'a RxMeta,
    /// The split decision: head length, layer or reason, L3/L4 offsets, routing fields.
    pub split: &'a Split,
    /// The route rule that placed it.
    pub rule: usize,
    /// Head, then frags.
    pub parts: &'a [Part],
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

/// A placed frame that owns its buffers: `parts()[0]` is the head, the rest frags.
/// Dropping it returns every buffer to its pool, from any thread.
#[derive(Debug)]
pub struct OwnedFrame {
    /// How and when it arrived.
    pub rx: RxMeta,
    /// The split decision.
    pub split: Split,
    /// The route rule that placed it.
    pub rule: usize,
    /// Its length as received.
    pub len: usize,
    /// Inline for up to four parts (every frame that is not a GSO super-frame), so
    /// handing a frame over allocates nothing.
    pub(super) parts: smallvec::SmallVec<[Part; 4]>,
    pub(super) recyclers: Arc<[Recycler]>,
}

impl OwnedFrame {
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

impl Drop for OwnedFrame {
    fn drop(&mut self) {
        for p in self.parts.drain(..) {
            // Parts only ever come from these pools, so the pool id always matches.
            let _ = self.recyclers[p.provider].recycle(p.buf);
        }
    }
}
