//! # memplex-guest: WASM memory providers in safe Rust
//!
//! Implement [`GuestProvider`] and add one line, `memplex_guest::export_provider!(T);`,
//! to a `cdylib` crate built for `wasm32-unknown-unknown`. The SDK needs `core` and
//! `alloc` only; on wasm32 the macro also supplies the global allocator (dlmalloc) and a
//! panic handler that traps, which the host turns into a quarantine.
//!
//! ```ignore
//! use memplex_guest::*;
//! struct Fixed { ... }
//! impl GuestProvider for Fixed {
//!     fn init(p: &Params) -> Result<Self, GuestError> { ... }
//!     fn info(&self) -> WasmInfo { ... }
//!     fn alloc(&mut self) -> Option<WasmNetmem> { ... }
//!     fn release(&mut self, buf: WasmNetmem) -> Result<(), GuestError> { ... }
//! }
//! export_provider!(Fixed);
//! ```
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;
pub use memplex_wasm_abi::{config_lines, WasmInfo, WasmNetmem, ABI_VERSION};

/// Why a guest call failed; mapped to the ABI's negative return codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestError {
    /// The config was wrong.
    InvalidConfig,
    /// Out of memory.
    Resource,
    /// A released buffer is not ours.
    BadBuffer,
}

impl GuestError {
    /// The ABI code.
    pub fn code(self) -> i32 {
        match self {
            GuestError::InvalidConfig => memplex_wasm_abi::ERR_INVALID_CONFIG,
            GuestError::Resource => memplex_wasm_abi::ERR_RESOURCE,
            GuestError::BadBuffer => memplex_wasm_abi::ERR_BAD_BUFFER,
        }
    }
}

/// Init params, as `mpx_init` received them.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// The receive queue.
    pub queue: u32,
    /// The smallest buffer the host accepts.
    pub buf_size: u32,
    /// The host's pool size.
    pub pool_size: u32,
    /// The provider's settings, `key=value` lines.
    pub config: &'a str,
}

impl Params<'_> {
    /// Setting `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        config_lines(self.config)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Setting `key` as a number; `Err` when present but not a number.
    pub fn number(&self, key: &str) -> Result<Option<u32>, GuestError> {
        self.get(key)
            .map(|v| v.parse().map_err(|_| GuestError::InvalidConfig))
            .transpose()
    }

    /// `Err` when a setting is not in `known`.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), GuestError> {
        match config_lines(self.config).all(|(k, _)| known.contains(&k)) {
            true => Ok(()),
            false => Err(GuestError::InvalidConfig),
        }
    }
}

/// A memory provider living in the guest's own linear memory.
pub trait GuestProvider: Sized + 'static {
    /// Makes the provider for one queue.
    fn init(params: &Params<'_>) -> Result<Self, GuestError>;
    /// What it offers.
    fn info(&self) -> WasmInfo;
    /// One free buffer, or `None` when dry.
    fn alloc(&mut self) -> Option<WasmNetmem>;
    /// Takes a buffer back.
    fn release(&mut self, buf: WasmNetmem) -> Result<(), GuestError>;
}

/// A buffer of `len` bytes aligned to `align`, as a guest offset: memory the provider
/// owns for its lifetime (buffers are cut from it).
pub fn region(len: usize, align: usize) -> Result<u32, GuestError> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(len + align)
        .map_err(|_| GuestError::Resource)?;
    v.resize(len + align, 0);
    let base = v.as_ptr() as usize;
    let aligned = base.next_multiple_of(align);
    // The region lives as long as the instance: leak it deliberately.
    core::mem::forget(v);
    Ok(aligned as u32)
}

/// Fixed buffers cut from one region of guest memory, with the ownership checks every
/// such provider needs; the provider keeps its own free-list policy on top.
#[derive(Debug)]
pub struct Carved {
    base: u32,
    stride: u32,
    capacity: u32,
    out: Vec<bool>,
}

impl Carved {
    /// `capacity` buffers (setting `buffers`, default twice the pool size) of at least
    /// `buf_size` bytes, 64-byte aligned. Refuses settings other than `buffers`.
    pub fn from_params(p: &Params<'_>) -> Result<Self, GuestError> {
        p.deny_unknown(&["buffers"])?;
        let capacity = p
            .number("buffers")?
            .unwrap_or(p.pool_size.saturating_mul(2).max(64));
        if capacity == 0 || capacity > 1 << 20 || p.buf_size == 0 {
            return Err(GuestError::InvalidConfig);
        }
        let stride = p.buf_size.next_multiple_of(64);
        let base = region(capacity as usize * stride as usize, 64)?;
        Ok(Carved {
            base,
            stride,
            capacity,
            out: alloc::vec![false; capacity as usize],
        })
    }

    /// How many buffers there are; ids are `0..capacity`.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// What the provider offers.
    pub fn info(&self) -> WasmInfo {
        WasmInfo {
            buf_size: self.stride,
            align: 64,
            capacity: self.capacity,
            flags: 0,
        }
    }

    /// Marks buffer `id` as handed out and describes it.
    pub fn hand_out(&mut self, id: u32) -> WasmNetmem {
        self.out[id as usize] = true;
        WasmNetmem {
            offset: self.base + id * self.stride,
            len: self.stride,
            id,
        }
    }

    /// Takes `buf` back if it is one of ours and out; returns its id.
    pub fn take_back(&mut self, buf: WasmNetmem) -> Result<u32, GuestError> {
        match self.out.get_mut(buf.id as usize) {
            Some(out) if *out && buf.offset == self.base + buf.id * self.stride => {
                *out = false;
                Ok(buf.id)
            }
            _ => Err(GuestError::BadBuffer),
        }
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use core::cell::RefCell;

    pub use dlmalloc::GlobalDlmalloc;

    /// The guest's state. wasm32 has one thread, so a RefCell in a static is enough;
    /// `Sync` is asserted by the wrapper below for that reason only.
    pub struct Slot<P>(pub RefCell<Option<P>>, pub RefCell<Vec<u8>>);

    // SAFETY: wasm32-unknown-unknown without the threads proposal runs one thread,
    // so the cells are never shared across threads. This impl only lets them live in a
    // `static`.
    unsafe impl<P> Sync for Slot<P> {}

    pub fn scratch<P>(slot: &Slot<P>, len: i32) -> i32 {
        let mut s = slot.1.borrow_mut();
        let want = len.max(0) as usize;
        if s.len() < want {
            s.resize(want, 0);
        }
        s.as_ptr() as i32
    }

    /// # Safety
    /// `off..off+len` must lie in this module's memory; the host wrote it there.
    pub unsafe fn bytes<'a>(off: i32, len: i32) -> &'a [u8] {
        unsafe { core::slice::from_raw_parts(off as usize as *const u8, len.max(0) as usize) }
    }

    /// # Safety
    /// As for [`bytes`], writable.
    pub unsafe fn bytes_mut<'a>(off: i32, len: i32) -> &'a mut [u8] {
        unsafe { core::slice::from_raw_parts_mut(off as usize as *mut u8, len.max(0) as usize) }
    }

    pub fn init<P: GuestProvider>(
        slot: &Slot<P>,
        queue: i32,
        buf_size: i32,
        pool_size: i32,
        cfg: &[u8],
    ) -> i32 {
        let Ok(config) = core::str::from_utf8(cfg) else {
            return memplex_wasm_abi::ERR_INVALID_CONFIG;
        };
        let params = Params {
            queue: queue as u32,
            buf_size: buf_size as u32,
            pool_size: pool_size as u32,
            config,
        };
        match P::init(&params) {
            Ok(p) => {
                *slot.0.borrow_mut() = Some(p);
                0
            }
            Err(e) => e.code(),
        }
    }

    pub fn info<P: GuestProvider>(slot: &Slot<P>, out: &mut [u8]) -> i32 {
        match slot.0.borrow().as_ref() {
            Some(p) => {
                out[..WasmInfo::SIZE].copy_from_slice(&p.info().to_bytes());
                0
            }
            None => memplex_wasm_abi::ERR_NOT_INITIALISED,
        }
    }

    pub fn alloc_bulk<P: GuestProvider>(slot: &Slot<P>, out: &mut [u8]) -> i32 {
        let mut guard = slot.0.borrow_mut();
        let Some(p) = guard.as_mut() else {
            return memplex_wasm_abi::ERR_NOT_INITIALISED;
        };
        let mut n = 0;
        for chunk in out.chunks_exact_mut(WasmNetmem::SIZE) {
            match p.alloc() {
                Some(b) => chunk.copy_from_slice(&b.to_bytes()),
                None => break,
            }
            n += 1;
        }
        n
    }

    pub fn release_bulk<P: GuestProvider>(slot: &Slot<P>, bufs: &[u8]) -> i32 {
        let mut guard = slot.0.borrow_mut();
        let Some(p) = guard.as_mut() else {
            return memplex_wasm_abi::ERR_NOT_INITIALISED;
        };
        for chunk in bufs.chunks_exact(WasmNetmem::SIZE) {
            let b = WasmNetmem::from_bytes(chunk.try_into().expect("16 bytes"));
            if let Err(e) = p.release(b) {
                return e.code();
            }
        }
        0
    }
}

/// Exports `$ty` as this module's memory provider (see the crate docs).
#[macro_export]
macro_rules! export_provider {
    ($ty:ty) => {
        static __MPX_SLOT: $crate::__private::Slot<$ty> = $crate::__private::Slot(
            ::core::cell::RefCell::new(None),
            ::core::cell::RefCell::new(::alloc::vec::Vec::new()),
        );

        #[cfg(target_arch = "wasm32")]
        #[global_allocator]
        static __MPX_ALLOC: $crate::__private::GlobalDlmalloc = $crate::__private::GlobalDlmalloc;

        #[cfg(target_arch = "wasm32")]
        #[panic_handler]
        fn __mpx_panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            ::core::arch::wasm32::unreachable()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_scratch(len: i32) -> i32 {
            $crate::__private::scratch(&__MPX_SLOT, len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_init(
            queue: i32,
            buf_size: i32,
            pool_size: i32,
            cfg: i32,
            cfg_len: i32,
        ) -> i32 {
            // SAFETY: the host wrote the config into memory it got from mpx_scratch.
            let cfg = unsafe { $crate::__private::bytes(cfg, cfg_len) };
            $crate::__private::init(&__MPX_SLOT, queue, buf_size, pool_size, cfg)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_info(out: i32) -> i32 {
            // SAFETY: `out` is the host's scratch offset, 16 bytes.
            let out = unsafe { $crate::__private::bytes_mut(out, $crate::WasmInfo::SIZE as i32) };
            $crate::__private::info(&__MPX_SLOT, out)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_alloc_bulk(out: i32, max: i32) -> i32 {
            // SAFETY: `out` is the host's scratch offset with room for `max` descriptors.
            let out = unsafe {
                $crate::__private::bytes_mut(out, max.max(0) * $crate::WasmNetmem::SIZE as i32)
            };
            $crate::__private::alloc_bulk(&__MPX_SLOT, out)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_release_bulk(at: i32, n: i32) -> i32 {
            // SAFETY: `at` is the host's scratch offset holding `n` descriptors.
            let bufs =
                unsafe { $crate::__private::bytes(at, n.max(0) * $crate::WasmNetmem::SIZE as i32) };
            $crate::__private::release_bulk(&__MPX_SLOT, bufs)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    struct Two(Vec<u32>);

    impl GuestProvider for Two {
        fn init(p: &Params<'_>) -> Result<Self, GuestError> {
            p.deny_unknown(&["n"])?;
            Ok(Two((0..p.number("n")?.unwrap_or(2)).collect()))
        }
        fn info(&self) -> WasmInfo {
            WasmInfo {
                buf_size: 64,
                align: 64,
                capacity: 2,
                flags: 0,
            }
        }
        fn alloc(&mut self) -> Option<WasmNetmem> {
            self.0.pop().map(|id| WasmNetmem {
                offset: 64 * (id + 1),
                len: 64,
                id,
            })
        }
        fn release(&mut self, b: WasmNetmem) -> Result<(), GuestError> {
            if b.id > 1 {
                return Err(GuestError::BadBuffer);
            }
            self.0.push(b.id);
            Ok(())
        }
    }

    #[test]
    fn params_and_bulk_calls() {
        let slot = __private::Slot::<Two>(RefCell::new(None), RefCell::new(Vec::new()));
        assert_eq!(
            __private::alloc_bulk(&slot, &mut [0; 32]),
            memplex_wasm_abi::ERR_NOT_INITIALISED
        );
        assert_eq!(
            __private::init(&slot, 0, 64, 64, b"bogus = 1"),
            memplex_wasm_abi::ERR_INVALID_CONFIG
        );
        assert_eq!(
            __private::init(&slot, 0, 64, 64, b"n = x"),
            memplex_wasm_abi::ERR_INVALID_CONFIG
        );
        assert_eq!(__private::init(&slot, 0, 64, 64, b"n = 2\n"), 0);
        let mut out = [0u8; 3 * WasmNetmem::SIZE];
        assert_eq!(
            __private::alloc_bulk(&slot, &mut out),
            2,
            "two buffers, room for three"
        );
        let first = WasmNetmem::from_bytes(out[..16].try_into().unwrap());
        assert_eq!((first.id, first.offset), (1, 128));
        assert_eq!(__private::release_bulk(&slot, &out[..32]), 0);
        let bad = WasmNetmem {
            offset: 0,
            len: 64,
            id: 9,
        }
        .to_bytes();
        assert_eq!(
            __private::release_bulk(&slot, &bad),
            memplex_wasm_abi::ERR_BAD_BUFFER
        );
        let mut info = [0u8; 16];
        assert_eq!(__private::info(&slot, &mut info), 0);
        assert_eq!(WasmInfo::from_bytes(&info).capacity, 2);
    }
}
