//! `slab.wasm`: fixed buffers cut from one region of guest memory, LIFO free list (the
//! most recently released buffer is handed out first, while it is cache-warm). The free
//! list holds whole descriptors, so a bulk call is one copy each way.
//! Settings: `buffers` (default twice the pool size).
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use memplex_guest::*;

/// The provider.
pub struct Slab {
    bufs: Carved,
    free: Vec<WasmNetmem>,
}

impl GuestProvider for Slab {
    fn init(p: &Params<'_>) -> Result<Self, GuestError> {
        let bufs = Carved::from_params(p)?;
        let free = (0..bufs.capacity())
            .rev()
            .map(|id| bufs.describe(id))
            .collect();
        Ok(Slab { bufs, free })
    }

    fn info(&self) -> WasmInfo {
        self.bufs.info()
    }

    fn alloc_bulk(&mut self, out: &mut [WasmNetmem]) -> usize {
        let n = out.len().min(self.free.len());
        let from = self.free.len() - n;
        out[..n].copy_from_slice(&self.free[from..]);
        self.free.truncate(from);
        n
    }

    fn release_bulk(&mut self, bufs: &[WasmNetmem]) -> Result<(), GuestError> {
        self.bufs.check(bufs)?;
        self.free.extend_from_slice(bufs);
        Ok(())
    }
}

memplex_guest::export_provider!(Slab);
