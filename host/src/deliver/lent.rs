//! Buffers lent to one consumer session on one queue, by token.
//!
//! A token is (region, buffer id, generation): the region (which belongs to one pool)
//! and id name the buffer, the generation counts its loans, so a token the consumer already gave back (stale), one
//! for a buffer lent to someone else or never lent (foreign), and a made-up one (forged)
//! all fail the same check: the slot must hold a buffer lent under exactly that
//! generation. Slots live in pages of [`PAGE`] made the first time an id in them is lent,
//! so the table grows with the buffers actually lent, not with a provider's capacity.

use crate::pool::{Pool, PoolBuf};
use memplex_proto::layout::Token;

/// Slots per page.
const PAGE: usize = 256;

/// The most bytes of a returned buffer fetched for writing: its first two lines.
pub(super) const WARM_BYTES: usize = 128;

#[derive(Default)]
struct Slot {
    buf: Option<PoolBuf>,
    generation: u16,
    /// The pool it goes back to.
    pool: u16,
    /// Bytes of the frame it held: as many as the next frame placed in it will likely
    /// write, so as many lines as are fetched for writing when it comes back.
    len: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

type Page = Box<[Slot; PAGE]>;

/// The lent buffers of one session on one queue.
#[derive(Default)]
pub(super) struct LentTable {
    /// Per region, pages of slots by buffer id.
    regions: Vec<Vec<Option<Page>>>,
    /// Buffers lent now.
    held: u32,
}

impl LentTable {
    /// Buffers lent now.
    pub(super) fn held(&self) -> u32 {
        self.held
    }

    /// Lends `buf`, which is in region `region` of pool `pool`; the token that gives it
    /// back.
    #[inline(always)]
    pub(super) fn lend(&mut self, region: u16, pool: u16, buf: PoolBuf, len: u32) -> Token {
        self.lend_copying(region, pool, buf, len, &[])
    }

    /// [`lend`](Self::lend) of a buffer that then gets `bytes` at its start (its `len`),
    /// copied where the lent table holds it: for a caller that fills a buffer after
    /// lending it (a copy last, when little else is live across it). The buffer must be
    /// memory the host writes; `bytes` goes nowhere otherwise.
    #[inline(always)]
    pub(super) fn lend_filled(
        &mut self,
        region: u16,
        pool: u16,
        buf: PoolBuf,
        bytes: &[u8],
    ) -> Token {
        self.lend_copying(region, pool, buf, bytes.len() as u32, bytes)
    }

    /// Both of the above: lends `buf`, recording `len` bytes of frame in it, and copies
    /// `bytes` (none, or those `len`) to its start.
    #[inline(always)]
    fn lend_copying(
        &mut self,
        region: u16,
        pool: u16,
        buf: PoolBuf,
        len: u32,
        bytes: &[u8],
    ) -> Token {
        let id = buf.netmem().id;
        let (page, at) = (id as usize / PAGE, id as usize % PAGE);
        self.held += 1;
        let slots = match self
            .regions
            .get_mut(region as usize)
            .and_then(|pages| pages.get_mut(page))
            .and_then(|p| p.as_mut())
        {
            Some(slots) => slots,
            None => self.make_page(region, page),
        };
        let slot = &mut slots[at];
        debug_assert!(slot.buf.is_none(), "a buffer lent twice");
        slot.generation = slot.generation.wrapping_add(1).max(1);
        slot.pool = pool;
        slot.len = len;
        let token = Token {
            region,
            generation: slot.generation,
            id,
        };
        if let (Some(mem), false) = (slot.buf.insert(buf).as_mut_slice(), bytes.is_empty()) {
            if let Some(to) = mem.get_mut(..bytes.len()) {
                crate::mem::copy_bytes(to, bytes);
            }
        }
        token
    }

    /// The page of slots `page` of region `region`, made on first use. Out of line: a
    /// page built in the caller's frame made every loan's stack frame 8 KiB, with stack
    /// probes, and the hot path carried the growth checks.
    #[cold]
    #[inline(never)]
    fn make_page(&mut self, region: u16, page: usize) -> &mut [Slot; PAGE] {
        if self.regions.len() <= region as usize {
            self.regions.resize_with(region as usize + 1, Vec::new);
        }
        let pages = &mut self.regions[region as usize];
        if pages.len() <= page {
            pages.resize_with(page + 1, || None);
        }
        pages[page].get_or_insert_with(|| {
            let slots: Box<[Slot]> = (0..PAGE).map(|_| Slot::default()).collect();
            slots
                .try_into()
                .unwrap_or_else(|_| unreachable!("PAGE slots"))
        })
    }

    /// Takes back the buffer `token` names, with the pool it goes back to, or `None`
    /// when the token is stale, foreign or forged.
    #[inline]
    pub(super) fn take(&mut self, token: Token) -> Option<(u16, PoolBuf)> {
        let (page, at) = (token.id as usize / PAGE, token.id as usize % PAGE);
        let slot = self
            .regions
            .get_mut(token.region as usize)?
            .get_mut(page)?
            .as_mut()?
            .get_mut(at)?;
        if slot.generation != token.generation || token.generation == 0 {
            return None;
        }
        let buf = slot.buf.take()?;
        self.held -= 1;
        Some((slot.pool, buf))
    }

    /// Gives the buffers `tokens` name back to their pools in `pools`, in order, up to
    /// the first token that is stale, foreign or forged: how many went back. Those from
    /// `warm_from` on have the lines they held fetched for writing on the way (see
    /// `refill`).
    ///
    /// Each buffer goes from its slot to the pool without travelling through a returned
    /// tuple, which the compiler moved through the stack at odd offsets (a
    /// store-forwarding stall per buffer that measured most of the refill path); the
    /// count of buffers held is kept in a register and stored once.
    #[inline]
    pub(super) fn give_back(
        &mut self,
        tokens: &[u64],
        pools: &mut [Pool],
        warm_from: usize,
    ) -> usize {
        let mut back = 0;
        for (j, &t) in tokens.iter().enumerate() {
            let token = Token::from_u64(t);
            let (page, at) = (token.id as usize / PAGE, token.id as usize % PAGE);
            let Some(slot) = self
                .regions
                .get_mut(token.region as usize)
                .and_then(|p| p.get_mut(page))
                .and_then(|p| p.as_mut())
                .and_then(|p| p.get_mut(at))
            else {
                break;
            };
            // A slot never lent has generation 0 and no buffer: a token of generation 0
            // fails on the buffer.
            if slot.generation != token.generation {
                break;
            }
            let Some(pool) = pools.get_mut(usize::from(slot.pool)) else {
                break;
            };
            let Some(buf) = slot.buf.take() else {
                break;
            };
            if j >= warm_from {
                buf.prefetch_for_write((slot.len as usize).min(WARM_BYTES));
            }
            let _ = pool.recycle(buf);
            back += 1;
        }
        self.held -= back as u32;
        back
    }

    /// Every buffer still lent, for a session that ended.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u16, PoolBuf)> + '_ {
        self.held = 0;
        self.regions.iter_mut().flat_map(|pages| {
            pages
                .iter_mut()
                .flatten()
                .flat_map(|p| p.iter_mut())
                .filter_map(|s| s.buf.take().map(|b| (s.pool, b)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{InitParams, ProviderPlugin};

    fn pool() -> Pool {
        let plugin = ProviderPlugin::builtin("slab").expect("built in");
        let provider = plugin
            .instantiate(&InitParams::new(0, 2048, 256))
            .expect("a slab");
        Pool::new(provider, 64)
    }

    /// Tokens go back in order up to the first bad one: a stale token (given back
    /// already), a forged generation, generation 0, an id never lent and a region that
    /// does not exist all stop the batch there, and what went back before it stays back.
    #[test]
    fn a_batch_of_tokens_goes_back_up_to_the_first_bad_one() {
        let mut pools = vec![pool()];
        let mut table = LentTable::default();
        let mut tokens = Vec::new();
        for _ in 0..4 {
            let buf = pools[0].alloc().expect("a buffer");
            tokens.push(table.lend(0, 0, buf, 100).to_u64());
        }
        assert_eq!(table.held(), 4);
        let t = |i: usize| Token::from_u64(tokens[i]);
        let forged = Token {
            generation: t(1).generation.wrapping_add(1),
            ..t(1)
        };
        let never = Token {
            id: t(0).id ^ 1 << 20,
            ..t(0)
        };
        let bad = [
            Token {
                generation: 0,
                ..t(1)
            },
            forged,
            never,
            Token { region: 7, ..t(1) },
        ];
        for b in bad {
            assert_eq!(
                table.give_back(&[tokens[0], b.to_u64()], &mut pools, 0),
                1,
                "{b:?}"
            );
            // The good one went back: now it is stale.
            assert_eq!(table.give_back(&[tokens[0]], &mut pools, 0), 0);
            let buf = pools[0].alloc().expect("a buffer");
            tokens[0] = table.lend(0, 0, buf, 100).to_u64();
        }
        assert_eq!(table.held(), 4);
        assert_eq!(table.give_back(&tokens, &mut pools, 2), 4);
        assert_eq!(table.held(), 0);
        assert_eq!(table.give_back(&tokens[3..], &mut pools, 0), 0, "stale");
    }
}
