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
    free: VecDeque<WasmNetmem>,
}

impl GuestProvider for Ring {
    fn init(p: &Params<'_>) -> Result<Self, GuestError> {
        let bufs = Carved::from_params(p)?;
        let free = (0..bufs.capacity()).map(|id| bufs.describe(id)).collect();
        Ok(Ring { bufs, free })
    }

    fn info(&self) -> WasmInfo {
        self.bufs.info()
    }

    fn alloc_bulk(&mut self, out: &mut [WasmNetmem]) -> usize {
        let n = out.len().min(self.free.len());
        // The ring's front, as at most two contiguous runs: two copies, not a loop.
        let (a, b) = self.free.as_slices();
        let from_a = n.min(a.len());
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.free.drain(..n);
        n
    }

    fn release_bulk(&mut self, bufs: &[WasmNetmem]) -> Result<(), GuestError> {
        self.bufs.check(bufs)?;
        self.free.extend(bufs);
        Ok(())
    }
}

memplex_guest::export_provider!(Ring);
