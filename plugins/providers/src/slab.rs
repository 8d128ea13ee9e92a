//! `slab`: one anonymous mmap region cut into fixed buffers, with a LIFO free list.

use crate::{Geometry, COMMON_KEYS};
use memmap2::MmapMut;
use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, Netmem, Plugin, PluginDescription, ProviderError,
    ProviderInfo, Stat,
};

/// A region of memory cut into equal buffers; the core of `slab` and `hugepage`.
pub(crate) struct Carved {
    /// Keeps the mapping alive; buffers are addresses inside it.
    _map: MmapMut,
    base: u64,
    geometry: Geometry,
    /// Free buffer ids; the most recently released is handed out first (cache-warm).
    free: Vec<u32>,
    /// For the `stats` op.
    allocs: u64,
    releases: u64,
}

impl Carved {
    /// Cuts `map`, starting `offset` bytes in, into `geometry.buffers` buffers.
    pub(crate) fn new(mut map: MmapMut, offset: usize, geometry: Geometry) -> Self {
        let base = map.as_mut_ptr() as u64 + offset as u64;
        Carved {
            _map: map,
            base,
            geometry,
            free: (0..geometry.buffers).rev().collect(),
            allocs: 0,
            releases: 0,
        }
    }

    pub(crate) fn info(&self, name: &str, caps: Capabilities, backing: &str) -> ProviderInfo {
        let g = self.geometry;
        ProviderInfo::new(name, g.stride, g.buffers)
            .align(g.align)
            .caps(caps)
            .region(self.base, g.bytes() as u64)
            .backing(backing)
    }

    pub(crate) fn alloc_bulk(&mut self, out: &mut [Netmem]) -> usize {
        let n = out.len().min(self.free.len());
        let from = self.free.len() - n;
        let stride = self.geometry.stride;
        for (slot, &id) in out.iter_mut().zip(&self.free[from..]) {
            *slot = Netmem::new(id, self.base + u64::from(id) * u64::from(stride), stride);
        }
        self.free.truncate(from);
        self.allocs += n as u64;
        n
    }

    pub(crate) fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
        for b in bufs {
            let expected = self.base + u64::from(b.id) * u64::from(self.geometry.stride);
            if b.id >= self.geometry.buffers || b.addr != expected {
                return Err(ProviderError::bad_buffer(format!(
                    "buffer id {} at {:#x} is not one of this slab's",
                    b.id, b.addr
                )));
            }
        }
        self.free.extend(bufs.iter().map(|b| b.id));
        self.releases += bufs.len() as u64;
        Ok(())
    }

    pub(crate) fn stats(&self) -> Vec<Stat> {
        vec![
            Stat::new("allocated", self.allocs),
            Stat::new("released", self.releases),
            Stat::new("free", self.free.len() as u64),
        ]
    }
}

/// One anonymous mmap region cut into fixed buffers.
///
/// Settings: `buffers` (default twice the pool size), `align` (default 64).
pub struct Slab(Carved);

impl MemoryProvider for Slab {
    fn info(&self) -> ProviderInfo {
        self.0.info(
            "slab",
            Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE,
            "anonymous mmap, 4 KiB pages",
        )
    }
    fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
        Ok(self.0.alloc_bulk(out))
    }
    fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
        self.0.release_bulk(bufs)
    }
    fn stats(&self) -> Vec<Stat> {
        self.0.stats()
    }
}

impl Plugin for Slab {
    fn describe() -> PluginDescription {
        PluginDescription::new(
            "slab",
            env!("CARGO_PKG_VERSION"),
            "one mmap region cut into fixed buffers, LIFO free list",
        )
    }

    fn init(params: &InitParams) -> Result<Self, ProviderError> {
        params.deny_unknown(&COMMON_KEYS)?;
        let geometry = Geometry::from_params(params)?;
        let map = MmapMut::map_anon(geometry.bytes()).map_err(|e| {
            ProviderError::resource(format!("mmap of {} bytes failed: {e}", geometry.bytes()))
        })?;
        Ok(Slab(Carved::new(map, 0, geometry)))
    }
}
