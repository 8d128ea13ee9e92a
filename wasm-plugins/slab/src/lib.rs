//! `slab.wasm`: fixed buffers cut from one region of guest memory, LIFO free list (the
//! most recently released buffer is handed out first, while it is cache-warm).
//! Settings: `buffers` (default twice the pool size).
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use memplex_guest::*;

/// The provider.
pub struct Slab {
    bufs: Carved,
    free: Vec<u32>,
}

impl GuestProvider for Slab {
    fn init(p: &Params<'_>) -> Result<Self, GuestError> {
        let bufs = Carved::from_params(p)?;
        let free = (0..bufs.capacity()).rev().collect();
        Ok(Slab { bufs, free })
    }

    fn info(&self) -> WasmInfo {
        self.bufs.info()
    }

    fn alloc(&mut self) -> Option<WasmNetmem> {
        let id = self.free.pop()?;
        Some(self.bufs.hand_out(id))
    }

    fn release(&mut self, buf: WasmNetmem) -> Result<(), GuestError> {
        let id = self.bufs.take_back(buf)?;
        self.free.push(id);
        Ok(())
    }
}

memplex_guest::export_provider!(Slab);
