//! `acme-ring`: a memory provider that hands buffers out in ring order.
//!
//! Where memplex's `slab` reuses the most recently released buffer first (LIFO, cache
//! warm), this provider cycles through all of its buffers in turn (FIFO), the way a NIC
//! walks its descriptor ring. That spreads wear and makes use-after-release bugs in a
//! consumer show up quickly, since a released buffer is not handed out again soon.
//!
//! Everything here is safe Rust: the memory is a boxed slice of cache lines in
//! `UnsafeCell`s (the host writes frame bytes through the buffer addresses while this
//! provider owns the memory), and the free ring is a `VecDeque` of ids.

use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, Netmem, Plugin, PluginDescription, ProviderError,
    ProviderInfo, Stat,
};
use std::cell::UnsafeCell;
use std::collections::VecDeque;

/// One cache line of buffer memory.
#[repr(C, align(64))]
struct Line(UnsafeCell<[u8; 64]>);

/// The provider: one region, cut into `count` buffers of `stride` bytes.
pub struct AcmeRing {
    mem: Box<[Line]>,
    stride: u32,
    count: u32,
    free: VecDeque<u32>,
    /// Ids out with the host, to refuse buffers this instance does not own.
    out: Vec<bool>,
    handed_out: u64,
}

impl AcmeRing {
    fn base(&self) -> u64 {
        UnsafeCell::raw_get(self.mem.as_ptr().cast::<UnsafeCell<[u8; 64]>>()) as u64
    }
}

impl MemoryProvider for AcmeRing {
    fn info(&self) -> ProviderInfo {
        ProviderInfo::new("acme-ring", self.stride, self.count)
            .align(64)
            .caps(Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE)
            .region(self.base(), self.mem.len() as u64 * 64)
            .backing("boxed slice, FIFO ring order")
    }

    fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
        let base = self.base();
        let mut n = 0;
        while n < out.len() {
            let Some(id) = self.free.pop_front() else {
                break;
            };
            self.out[id as usize] = true;
            out[n] = Netmem::new(
                id,
                base + u64::from(id) * u64::from(self.stride),
                self.stride,
            );
            n += 1;
        }
        self.handed_out += n as u64;
        Ok(n)
    }

    fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
        // Check the whole batch before taking any of it, so a bad batch changes nothing.
        if let Some(b) = bufs
            .iter()
            .find(|b| !self.out.get(b.id as usize).copied().unwrap_or(false))
        {
            return Err(ProviderError::bad_buffer(format!(
                "buffer id {} is not out from acme-ring",
                b.id
            )));
        }
        for b in bufs {
            self.out[b.id as usize] = false;
            self.free.push_back(b.id);
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        vec![
            Stat::new("handed_out", self.handed_out),
            Stat::new("free", self.free.len() as u64),
        ]
    }
}

impl Plugin for AcmeRing {
    fn describe() -> PluginDescription {
        PluginDescription::new(
            "acme-ring",
            env!("CARGO_PKG_VERSION"),
            "buffers handed out in ring (FIFO) order",
        )
    }

    fn init(params: &InitParams) -> Result<Self, ProviderError> {
        params.deny_unknown(&["buffers"])?;
        let count = params
            .parse::<u32>("buffers")?
            .unwrap_or(params.pool_size.max(64) * 2);
        if count == 0 || count > 1 << 20 {
            return Err(ProviderError::invalid_config(format!(
                "`buffers` = {count} must be 1 to 1048576"
            )));
        }
        let stride = params.buf_size.max(1).next_multiple_of(64);
        let lines = count as usize * (stride as usize / 64);
        Ok(AcmeRing {
            mem: (0..lines).map(|_| Line(UnsafeCell::new([0; 64]))).collect(),
            stride,
            count,
            free: (0..count).collect(),
            out: vec![false; count as usize],
            handed_out: 0,
        })
    }
}

memplex_abi::export_provider!(AcmeRing);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_in_ring_order() {
        let mut p = AcmeRing::init(&InitParams::new(0, 100, 4).set("buffers", "4")).unwrap();
        let mut out = [Netmem::EMPTY; 2];
        assert_eq!(p.alloc_bulk(&mut out).unwrap(), 2);
        assert_eq!([out[0].id, out[1].id], [0, 1]);
        p.release_bulk(&out[..1]).unwrap();
        assert_eq!(p.alloc_bulk(&mut out).unwrap(), 2);
        assert_eq!(
            [out[0].id, out[1].id],
            [2, 3],
            "released id 0 waits its turn"
        );
        assert!(
            p.release_bulk(&[Netmem::new(0, 0, 128)]).is_err(),
            "id 0 is not out"
        );
    }
}
