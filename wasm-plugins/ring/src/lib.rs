//! `ring.wasm`: buffers handed out in ring order (FIFO), like a NIC's descriptor ring:
//! a released buffer waits its turn, so a stale reader shows up quickly.
//! Settings: `buffers` (default twice the pool size).
#![no_std]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use memplex_guest::*;

/// The provider.
pub struct Ring {
    base: u32,
    stride: u32,
    capacity: u32,
    free: VecDeque<u32>,
    out: Vec<bool>,
}

impl GuestProvider for Ring {
    fn init(p: &Params<'_>) -> Result<Self, GuestError> {
        p.deny_unknown(&["buffers"])?;
        let capacity = p
            .number("buffers")?
            .unwrap_or(p.pool_size.saturating_mul(2).max(64));
        if capacity == 0 || capacity > 1 << 20 || p.buf_size == 0 {
            return Err(GuestError::InvalidConfig);
        }
        let stride = p.buf_size.next_multiple_of(64);
        let base = region(capacity as usize * stride as usize, 64)?;
        Ok(Ring {
            base,
            stride,
            capacity,
            free: (0..capacity).collect(),
            out: alloc::vec![false; capacity as usize],
        })
    }

    fn info(&self) -> WasmInfo {
        WasmInfo {
            buf_size: self.stride,
            align: 64,
            capacity: self.capacity,
            flags: 0,
        }
    }

    fn alloc(&mut self) -> Option<WasmNetmem> {
        let id = self.free.pop_front()?;
        self.out[id as usize] = true;
        Some(WasmNetmem {
            offset: self.base + id * self.stride,
            len: self.stride,
            id,
        })
    }

    fn release(&mut self, buf: WasmNetmem) -> Result<(), GuestError> {
        match self.out.get_mut(buf.id as usize) {
            Some(out) if *out && buf.offset == self.base + buf.id * self.stride => {
                *out = false;
                self.free.push_back(buf.id);
                Ok(())
            }
            _ => Err(GuestError::BadBuffer),
        }
    }
}

memplex_guest::export_provider!(Ring);
