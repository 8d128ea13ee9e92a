//! The memory-provider strategies memplex ships.
//!
//! Each is a plain [`Plugin`](memplex_abi::Plugin): the host links them in as built-ins
//! (`builtin:slab`), and the tiny `cdylib` crates beside this one export the very same
//! code as `.so` plugins, so the two loaders can be compared on identical providers.
//!
//! | name       | memory                                                    |
//! |------------|-----------------------------------------------------------|
//! | `heap`     | the system allocator, one allocation per buffer, lazily    |
//! | `slab`     | one anonymous mmap region cut into fixed buffers          |
//! | `hugepage` | like `slab`, on hugetlbfs pages, else transparent huge pages |
//! | `shm`      | a sealed memfd for consumer processes, 4 KiB or huge pages  |
//!
//! `slab`, `hugepage` and `shm` are backed by a sealed memfd by default, so their typed
//! region carries a file descriptor that a consumer process maps read-only. Only
//! [`memfd`] needs `unsafe` (mapping a file); otherwise buffer memory is owned through
//! `memmap2` mappings or `UnsafeCell` lines, and only its address crosses to the host.
#![deny(missing_docs)]

mod heap;
mod hugepage;
mod memfd;
mod shm;
mod slab;

pub use heap::Heap;
pub use hugepage::HugePage;
pub use shm::Shm;
pub use slab::Slab;

use memplex_abi::{InitParams, ProviderError};

/// Settings every strategy here understands.
const COMMON_KEYS: [&str; 2] = ["buffers", "align"];

/// Buffer geometry shared by the strategies: how many, how long, how aligned.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Buffers the instance can have out at once.
    buffers: u32,
    /// Bytes per buffer, a multiple of `align`.
    stride: u32,
    /// Alignment of every buffer, a power of two.
    align: u32,
}

impl Geometry {
    /// Reads `buffers` (default: twice the pool size, at least 64) and `align`
    /// (default 64, a cache line) from the params.
    fn from_params(p: &InitParams) -> Result<Self, ProviderError> {
        let buffers = p
            .parse::<u32>("buffers")?
            .unwrap_or_else(|| p.pool_size.saturating_mul(2).max(64));
        let align = p.parse::<u32>("align")?.unwrap_or(64);
        if buffers == 0 || buffers > 1 << 24 {
            return Err(ProviderError::invalid_config(format!(
                "setting `buffers` = {buffers} is out of range; allowed: 1 to {}",
                1 << 24
            )));
        }
        if !align.is_power_of_two() || align > 1 << 21 {
            return Err(ProviderError::invalid_config(format!(
                "setting `align` = {align} must be a power of two no larger than 2 MiB"
            )));
        }
        if p.buf_size == 0 || p.buf_size > 1 << 24 {
            return Err(ProviderError::invalid_config(format!(
                "buf_size = {} is out of range; allowed: 1 to 16 MiB",
                p.buf_size
            )));
        }
        let stride = p.buf_size.next_multiple_of(align);
        Ok(Geometry {
            buffers,
            stride,
            align,
        })
    }

    /// Bytes needed for all buffers laid end to end.
    fn bytes(&self) -> usize {
        self.buffers as usize * self.stride as usize
    }
}
