//! `slab`: one mmap region cut into fixed buffers, with a LIFO free list. The region is
//! a sealed memfd by default, so it can be shared with consumer processes.

use crate::memfd::{Pages, Shared};
use crate::{Geometry, COMMON_KEYS};
use memmap2::MmapMut;
use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, MemoryRegion, Netmem, Plugin, PluginDescription,
    ProviderError, ProviderInfo, Stat,
};

/// The memory under a [`Carved`] region.
pub(crate) enum Backing {
    /// Anonymous private memory: this process only.
    Private(MmapMut),
    /// A sealed memfd, shareable by file descriptor.
    Shared(Shared),
}

impl Backing {
    /// Shared memory of `len` bytes, or private with `shared = false`.
    pub(crate) fn new(name: &str, len: usize, shared: bool) -> Result<Backing, ProviderError> {
        if shared {
            Ok(Backing::Shared(Shared::new(name, len, Pages::Small)?))
        } else {
            MmapMut::map_anon(len)
                .map(Backing::Private)
                .map_err(|e| ProviderError::resource(format!("mmap of {len} bytes failed: {e}")))
        }
    }

    fn base(&mut self) -> u64 {
        match self {
            Backing::Private(m) => m.as_mut_ptr() as u64,
            Backing::Shared(s) => s.base(),
        }
    }

    /// The mapping, for advice.
    pub(crate) fn map(&self) -> &MmapMut {
        match self {
            Backing::Private(m) => m,
            Backing::Shared(s) => s.map(),
        }
    }
}

/// Reads the `shared` setting: `true` (the default) or `false`.
pub(crate) fn shared_setting(params: &InitParams) -> Result<bool, ProviderError> {
    match params.get("shared").unwrap_or("true") {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ProviderError::invalid_config(format!(
            "setting `shared` = {other:?} is not true or false"
        ))),
    }
}

/// The `MemoryProvider` ops every provider over a [`Carved`] region has, forwarded to
/// the field named (`info` is each provider's own).
macro_rules! carved_ops {
    ($field:tt) => {
        fn memory(&self) -> Vec<memplex_abi::MemoryRegion> {
            self.$field.memory()
        }
        fn alloc_bulk(
            &mut self,
            out: &mut [memplex_abi::Netmem],
        ) -> Result<usize, memplex_abi::ProviderError> {
            Ok(self.$field.alloc_bulk(out))
        }
        fn release_bulk(
            &mut self,
            bufs: &[memplex_abi::Netmem],
        ) -> Result<(), memplex_abi::ProviderError> {
            self.$field.release_bulk(bufs)
        }
        fn stats(&self) -> Vec<memplex_abi::Stat> {
            self.$field.stats()
        }
    };
}
pub(crate) use carved_ops;

/// A region of memory cut into equal buffers; the core of `slab`, `hugepage` and `shm`.
pub(crate) struct Carved {
    /// Keeps the memory alive; buffers are addresses inside it.
    backing: Backing,
    /// Where the buffers start in the backing.
    offset: usize,
    base: u64,
    geometry: Geometry,
    /// Free buffer ids; the most recently released is handed out first (cache-warm).
    free: Vec<u32>,
    /// For the `stats` op.
    allocs: u64,
    releases: u64,
}

impl Carved {
    /// Cuts `backing`, starting `offset` bytes in, into `geometry.buffers` buffers.
    pub(crate) fn new(mut backing: Backing, offset: usize, geometry: Geometry) -> Self {
        let base = backing.base() + offset as u64;
        Carved {
            backing,
            offset,
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

    /// The typed region: shareable when the backing is a memfd.
    pub(crate) fn memory(&self) -> Vec<MemoryRegion> {
        let len = self.geometry.bytes() as u64;
        match &self.backing {
            Backing::Private(_) => vec![MemoryRegion::host(self.base, len)],
            Backing::Shared(s) => vec![s.region(self.base, len, self.offset as u64)],
        }
    }

    /// True when the memory can be shared with another process.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.backing, Backing::Shared(_))
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

/// One mmap region cut into fixed buffers.
///
/// Settings: `buffers` (default twice the pool size), `align` (default 64), `shared`
/// (default true: a sealed memfd that consumer processes can map; false: anonymous
/// private memory).
pub struct Slab(Carved);

impl MemoryProvider for Slab {
    fn info(&self) -> ProviderInfo {
        self.0.info(
            "slab",
            Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE,
            if self.0.is_shared() {
                "sealed memfd, 4 KiB pages, shareable"
            } else {
                "anonymous mmap, 4 KiB pages"
            },
        )
    }
    carved_ops!(0);
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
        params.deny_unknown(&[COMMON_KEYS[0], COMMON_KEYS[1], "shared"])?;
        let geometry = Geometry::from_params(params)?;
        let backing = Backing::new("memplex-slab", geometry.bytes(), shared_setting(params)?)?;
        Ok(Slab(Carved::new(backing, 0, geometry)))
    }
}
