//! `heap`: the system allocator, one allocation per buffer.

use crate::{Geometry, COMMON_KEYS};
use core::cell::UnsafeCell;
use memplex_abi::{
    InitParams, MemoryProvider, Netmem, Plugin, PluginDescription, ProviderError, ProviderInfo,
    Stat,
};

/// One cache line of buffer memory. `UnsafeCell` because the host writes frame bytes
/// through the buffer's address while this provider still owns the allocation.
#[repr(C, align(64))]
struct Line(UnsafeCell<[u8; 64]>);

/// Buffers from the system allocator, each allocated the first time it is handed out and
/// kept (and reused) until the instance is destroyed.
///
/// Settings: `buffers` (default twice the pool size). Alignment is always 64.
pub struct Heap {
    bufs: Vec<Box<[Line]>>,
    free: Vec<u32>,
    geometry: Geometry,
    allocs: u64,
    releases: u64,
}

impl Heap {
    fn addr(&self, id: u32) -> u64 {
        UnsafeCell::raw_get(
            self.bufs[id as usize]
                .as_ptr()
                .cast::<UnsafeCell<[u8; 64]>>(),
        ) as u64
    }
}

impl MemoryProvider for Heap {
    fn info(&self) -> ProviderInfo {
        ProviderInfo::new("heap", self.geometry.stride, self.geometry.buffers)
            .align(64)
            .backing("system allocator, one allocation per buffer")
    }

    fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
        let lines = (self.geometry.stride / 64) as usize;
        let mut n = 0;
        for slot in out.iter_mut() {
            let id = match self.free.pop() {
                Some(id) => id,
                None if (self.bufs.len() as u32) < self.geometry.buffers => {
                    self.bufs
                        .push((0..lines).map(|_| Line(UnsafeCell::new([0; 64]))).collect());
                    self.bufs.len() as u32 - 1
                }
                None => break,
            };
            *slot = Netmem::new(id, self.addr(id), self.geometry.stride);
            n += 1;
        }
        self.allocs += n as u64;
        Ok(n)
    }

    fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
        for b in bufs {
            if b.id as usize >= self.bufs.len() || self.addr(b.id) != b.addr {
                return Err(ProviderError::bad_buffer(format!(
                    "buffer id {} at {:#x} was not allocated by this heap provider",
                    b.id, b.addr
                )));
            }
        }
        self.free.extend(bufs.iter().map(|b| b.id));
        self.releases += bufs.len() as u64;
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        vec![
            Stat::new("allocated", self.allocs),
            Stat::new("released", self.releases),
            Stat::new("backing_allocations", self.bufs.len() as u64),
        ]
    }
}

impl Plugin for Heap {
    fn describe() -> PluginDescription {
        PluginDescription::new(
            "heap",
            env!("CARGO_PKG_VERSION"),
            "system allocator, one allocation per buffer",
        )
    }

    fn init(params: &InitParams) -> Result<Self, ProviderError> {
        params.deny_unknown(&COMMON_KEYS[..1])?;
        let mut geometry = Geometry::from_params(params)?;
        geometry.align = 64;
        geometry.stride = params.buf_size.next_multiple_of(64);
        Ok(Heap {
            bufs: Vec::new(),
            free: Vec::new(),
            geometry,
            allocs: 0,
            releases: 0,
        })
    }
}
