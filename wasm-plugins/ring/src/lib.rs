//! `ring.wasm`: buffers handed out in ring order (FIFO), like a NIC's descriptor ring:
//! a released buffer waits its turn, so a stale reader shows up quickly.
//! Settings: `buffers` (default twice the pool size).
#![no_std]

extern crate alloc;

use alloc::collections::VecDeque;
use memplex_guest::*;

/// The provider.
pub struct Ring {
    bufs: Carved,
    free: VecDeque<u32>,
}

impl GuestProvider for Ring {
    fn init(p: &Params<'_>) -> Result<Self, GuestError> {
        let bufs = Carved::from_params(p)?;
        let free = (0..bufs.capacity()).collect();
        Ok(Ring { bufs, free })
    }

    fn info(&self) -> WasmInfo {
        self.bufs.info()
    }

    fn alloc(&mut self) -> Option<WasmNetmem> {
        let id = self.free.pop_front()?;
        Some(self.bufs.hand_out(id))
    }

    fn release(&mut self, buf: WasmNetmem) -> Result<(), GuestError> {
        let id = self.bufs.take_back(buf)?;
        self.free.push_back(id);
        Ok(())
    }
}

memplex_guest::export_provider!(Ring);
