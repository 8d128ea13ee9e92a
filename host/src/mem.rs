//! Access to provider buffer memory: the one place the host turns a descriptor into bytes.
//!
//! This is one of the few modules allowed `unsafe`. Soundness rests on three facts the rest
//! of the crate upholds:
//! 1. a [`PoolBuf`](crate::pool::PoolBuf) exists only for a descriptor the checker accepted
//!    (non-null, long enough, overlapping no other buffer of its instance) and that the
//!    host holds right now; it is not `Clone`, so at most one handle names the memory;
//! 2. the provider instance is never dropped while the host holds any of its buffers
//!    (`Pool::shutdown` leaks an instance with buffers still out, and says so), and
//!    native libraries are never unloaded;
//! 3. these functions are called only when the provider declared the memory
//!    host-writable (for writes) or CPU-readable (for reads).
//!
//! A native provider is trusted code in the host's process, as a kernel memory provider
//! is trusted kernel code: the checks catch its mistakes, not malice.
#![allow(
    unsafe_code,
    reason = "turns checked provider descriptors into byte slices"
)]

use crate::pool::PoolBuf;
use memplex_abi::{Capabilities, Netmem};

/// The bytes of `buf`.
///
/// # Safety
/// `buf` must satisfy facts 1 to 3 of the module docs for reading, for as long as the
/// returned slice lives.
unsafe fn bytes(buf: &Netmem) -> &[u8] {
    // SAFETY: the caller guarantees `buf.addr..buf.addr+buf.len` is live, readable memory
    // that nothing writes while the shared borrow of the handle lasts (fact 1: one handle).
    unsafe { core::slice::from_raw_parts(buf.addr as *const u8, buf.len as usize) }
}

/// The bytes of `buf`, writable.
///
/// # Safety
/// `buf` must satisfy facts 1 to 3 of the module docs for writing, for as long as the
/// returned slice lives.
unsafe fn bytes_mut(buf: &mut Netmem) -> &mut [u8] {
    // SAFETY: as for `bytes`, and the unique borrow of the one handle rules out any other
    // access to these bytes while the slice lives.
    unsafe { core::slice::from_raw_parts_mut(buf.addr as *mut u8, buf.len as usize) }
}

impl PoolBuf {
    /// The bytes, when the provider's memory is CPU-readable.
    pub fn as_slice(&self) -> Option<&[u8]> {
        // SAFETY: a PoolBuf is only made by `Pool::alloc*` from a descriptor the checker
        // accepted and the host holds; the provider is kept alive while any is out
        // (mem.rs facts 1 and 2); the capability is checked here (fact 3).
        self.owner
            .caps
            .contains(Capabilities::CPU_READABLE)
            .then(|| unsafe { bytes(&self.netmem) })
    }

    /// The bytes, writable, when the provider's memory is host-writable.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as for `as_slice`; `&mut self` on the one handle makes the borrow unique.
        self.owner
            .caps
            .contains(Capabilities::HOST_WRITABLE)
            .then(|| unsafe { bytes_mut(&mut self.netmem) })
    }

    /// Asks the CPU for the lines of the buffer's first `bytes`, for writing
    /// (PREFETCHW), when the host writes its memory directly: a hint, for a buffer about
    /// to be written that another core may hold (a consumer that read it).
    #[inline]
    pub fn prefetch_for_write(&self, bytes: usize) {
        if !self.owner.caps.contains(Capabilities::HOST_WRITABLE) {
            return;
        }
        prefetch_lines_for_write(self.netmem, 0, bytes);
    }
}

/// Asks the CPU for the lines of `buf`'s bytes `from..to`, as far as the buffer goes,
/// for writing (PREFETCHW): a hint, which reads nothing the program sees and never
/// faults, whatever the memory.
#[inline(always)]
pub(crate) fn prefetch_lines_for_write(buf: Netmem, from: usize, to: usize) {
    let (base, end) = (buf.addr as usize, to.min(buf.len as usize));
    let mut at = from;
    while at < end {
        memplex_proto::ring::prefetch_for_write(base.wrapping_add(at) as *const u8);
        at += 64;
    }
}

/// Copies `src` into `dst`, of the same length. A run of 8 to 128 bytes (a frame's
/// head, a small frame whole, a small payload) is copied as two fixed-size moves that
/// overlap in the middle, inline; anything else by `copy_from_slice`, a call to libc's
/// `memcpy`. For a run that small the call was most of the copy: its size dispatch, and
/// the caller's values spilled around it (`cargo xtask instructions`: deliver-64 and
/// count-64 for runs up to 64 bytes; tcp-split-128, a 128-byte frame placed whole, 377
/// to 359 for the 65 to 128).
#[inline(always)]
pub(crate) fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if dst.len() != n {
        // Not reached: callers pass runs of one length. `copy_from_slice` panics on
        // two, as the copy this replaced did.
        dst.copy_from_slice(src);
        return;
    }
    // The size class found by halving (two tests for a head of 17 to 64 bytes, three
    // for the rest): written as a `match` of ranges, each run paid a test per class
    // below its own, and a 1500-byte payload all four before its `memcpy`.
    if n > 32 {
        if n > 128 {
            dst.copy_from_slice(src);
        } else if n > 64 {
            dst[..64].copy_from_slice(&src[..64]);
            dst[n - 64..].copy_from_slice(&src[n - 64..]);
        } else {
            dst[..32].copy_from_slice(&src[..32]);
            dst[n - 32..].copy_from_slice(&src[n - 32..]);
        }
    } else if n > 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::copy_bytes;

    /// Every length up to past the largest inline case, at every offset within a word:
    /// the bytes land as `copy_from_slice` puts them, and nothing past the run changes.
    #[test]
    fn copy_bytes_copies_every_length_exactly() {
        let src: Vec<u8> = (0..=255u8).collect();
        for len in 0..=200 {
            for at in 0..8 {
                let mut dst = [0xeeu8; 220];
                copy_bytes(&mut dst[at..at + len], &src[7..7 + len]);
                assert_eq!(&dst[at..at + len], &src[7..7 + len], "len {len} at {at}");
                assert!(
                    dst[..at].iter().chain(&dst[at + len..]).all(|&b| b == 0xee),
                    "len {len} at {at}: a byte outside the run changed"
                );
            }
        }
    }
}
