//! # memplex-guest: WASM memory providers in safe Rust
//!
//! Implement [`GuestProvider`] and add one line, `memplex_guest::export_provider!(T);`,
//! to a `cdylib` crate built for `wasm32-unknown-unknown`. The SDK needs `core` and
//! `alloc` only; on wasm32 the macro also supplies the global allocator (dlmalloc) and a
//! panic handler that traps, which the host turns into a quarantine.
//!
//! The trait is bulk-shaped, like the host's pool: one call hands out or takes back up to
//! 64 buffers, read and written in place in the host's descriptor area. Per-buffer work
//! stays a tight loop the compiler can vectorise (the project builds guests with
//! `+simd128`), which is what keeps a sandboxed provider within 2x of a native one.
//!
//! ```ignore
//! use memplex_guest::*;
//! struct Fixed { ... }
//! impl GuestProvider for Fixed {
//!     fn init(p: &Params) -> Result<Self, GuestError> { ... }
//!     fn info(&self) -> WasmInfo { ... }
//!     fn alloc_bulk(&mut self, out: &mut [WasmNetmem]) -> usize { ... }
//!     fn release_bulk(&mut self, bufs: &[WasmNetmem]) -> Result<(), GuestError> { ... }
//! }
//! export_provider!(Fixed);
//! ```
//!
//! The host checks every descriptor a guest hands out (bounds, duplicates, overlap, ids)
//! and tracks which buffers are in flight, so a guest need not: [`Carved`] only checks
//! that a released descriptor is one of its own before reusing the id.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
pub use memplex_wasm_abi::{config_lines, WasmInfo, WasmNetmem, ABI_VERSION};

/// Why a guest call failed; mapped to the ABI's negative return codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestError {
    /// The config was wrong.
    InvalidConfig,
    /// The config was wrong, and this says how (the host shows it: name the setting).
    Config(String),
    /// Out of memory.
    Resource,
    /// A released buffer is not ours.
    BadBuffer,
}

impl GuestError {
    /// The ABI code.
    pub fn code(&self) -> i32 {
        match self {
            GuestError::InvalidConfig | GuestError::Config(_) => {
                memplex_wasm_abi::ERR_INVALID_CONFIG
            }
            GuestError::Resource => memplex_wasm_abi::ERR_RESOURCE,
            GuestError::BadBuffer => memplex_wasm_abi::ERR_BAD_BUFFER,
        }
    }

    /// What the host is told, beside the code.
    pub fn message(&self) -> &str {
        match self {
            GuestError::Config(m) => m,
            GuestError::InvalidConfig => "invalid config",
            GuestError::Resource => "out of memory",
            GuestError::BadBuffer => "a released buffer is not one this provider handed out",
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

    /// Setting `key` as a number; `Err`, naming the key and the value, when present but
    /// not a whole number.
    pub fn number(&self, key: &str) -> Result<Option<u32>, GuestError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    GuestError::Config(format!(
                        "setting `{key}` is `{v}`, not a whole number from 0 to {}",
                        u32::MAX
                    ))
                })
            })
            .transpose()
    }

    /// `Err`, naming the setting and the known ones, when a setting is not in `known`.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), GuestError> {
        match config_lines(self.config).find(|(k, _)| !known.contains(k)) {
            None => Ok(()),
            Some((k, _)) => Err(GuestError::Config(format!(
                "unknown setting `{k}`; known: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }
}

/// A memory provider living in the guest's own linear memory.
pub trait GuestProvider: Sized + 'static {
    /// Makes the provider for one queue.
    fn init(params: &Params<'_>) -> Result<Self, GuestError>;
    /// What it offers.
    fn info(&self) -> WasmInfo;
    /// Writes free buffers to the front of `out` (at most 64 of them); returns how many,
    /// 0 when dry.
    fn alloc_bulk(&mut self, out: &mut [WasmNetmem]) -> usize;
    /// Takes back all of `bufs`, or none of them (and says why).
    fn release_bulk(&mut self, bufs: &[WasmNetmem]) -> Result<(), GuestError>;
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

/// Fixed buffers cut from one region of guest memory: buffer `id` is at
/// `base + id * stride`. The provider keeps its own free-list policy on top.
#[derive(Debug, Clone, Copy)]
pub struct Carved {
    base: u32,
    stride: u32,
    capacity: u32,
}

impl Carved {
    /// `capacity` buffers (setting `buffers`, default twice the pool size) of at least
    /// `buf_size` bytes, 64-byte aligned. Refuses settings other than `buffers`.
    pub fn from_params(p: &Params<'_>) -> Result<Self, GuestError> {
        p.deny_unknown(&["buffers"])?;
        let capacity = p
            .number("buffers")?
            .unwrap_or(p.pool_size.saturating_mul(2).max(64));
        if capacity == 0 || capacity > 1 << 20 {
            return Err(GuestError::Config(format!(
                "setting `buffers` is {capacity}; 1 to 1048576"
            )));
        }
        if p.buf_size == 0 {
            return Err(GuestError::Config("buf_size is 0; 1 or more".into()));
        }
        let stride = p.buf_size.next_multiple_of(64);
        let base = region(capacity as usize * stride as usize, 64)?;
        Ok(Carved {
            base,
            stride,
            capacity,
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

    /// Describes buffer `id` (below [`capacity`](Self::capacity)).
    #[inline]
    pub fn describe(&self, id: u32) -> WasmNetmem {
        WasmNetmem {
            offset: u64::from(self.base.wrapping_add(id.wrapping_mul(self.stride))),
            len: self.stride,
            id,
        }
    }

    /// `Ok` when every descriptor in `bufs` could be one of these buffers: id in range and
    /// length as handed out. Branch-free, so it vectorises.
    ///
    /// The offset is not compared: the host checks every descriptor a guest hands out
    /// (an id at another offset than before quarantines the guest), and the comparison
    /// (a multiply per buffer) measured a third of a bulk round trip under wasmtime.
    /// A provider that trusts nothing can call [`check_exact`](Self::check_exact).
    #[inline]
    pub fn check(&self, bufs: &[WasmNetmem]) -> Result<(), GuestError> {
        match self.any_foreign(bufs) {
            false => Ok(()),
            true => Err(GuestError::BadBuffer),
        }
    }

    /// As [`check`](Self::check), and the offset too: exactly the descriptors handed out.
    pub fn check_exact(&self, bufs: &[WasmNetmem]) -> Result<(), GuestError> {
        self.check(bufs)?;
        match bufs.iter().any(|b| b.offset != self.describe(b.id).offset) {
            false => Ok(()),
            true => Err(GuestError::BadBuffer),
        }
    }

    /// Under `simd128` every descriptor is one 128-bit load, as four 32-bit lanes
    /// (offset low and high, length, id), folded lane by lane into a minimum and a
    /// maximum: every length is the stride when the least and the most are, and every id
    /// is in range when the most is. Eight descriptors are folded as a tree before they
    /// meet the running pair, which wasmtime keeps on the stack across the loop's epoch
    /// check: one round trip through memory per eight descriptors, not per one. Left to
    /// the compiler, the field-by-field loop became four single-lane loads per vector of
    /// four descriptors, a serial chain.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn any_foreign(&self, bufs: &[WasmNetmem]) -> bool {
        use core::arch::wasm32::{
            u32x4, u32x4_extract_lane, u32x4_max, u32x4_min, v128, v128_load,
        };
        let load = |b: &WasmNetmem| {
            // SAFETY: `b` refers to a whole `WasmNetmem`, 16 bytes of `repr(C)` integers
            // (offset, len, id, no padding); `v128_load` needs no alignment.
            unsafe { v128_load((b as *const WasmNetmem).cast::<v128>()) }
        };
        let (mut least, mut most) = (
            u32x4(u32::MAX, u32::MAX, u32::MAX, u32::MAX),
            u32x4(0, 0, 0, 0),
        );
        let mut eights = bufs.chunks_exact(8);
        for e in &mut eights {
            let v: [v128; 8] = core::array::from_fn(|i| load(&e[i]));
            let fold = |f: fn(v128, v128) -> v128| {
                f(
                    f(f(v[0], v[1]), f(v[2], v[3])),
                    f(f(v[4], v[5]), f(v[6], v[7])),
                )
            };
            least = u32x4_min(least, fold(u32x4_min));
            most = u32x4_max(most, fold(u32x4_max));
        }
        for b in eights.remainder() {
            least = u32x4_min(least, load(b));
            most = u32x4_max(most, load(b));
        }
        !bufs.is_empty()
            && (u32x4_extract_lane::<2>(least) != self.stride
                || u32x4_extract_lane::<2>(most) != self.stride
                || u32x4_extract_lane::<3>(most) >= self.capacity)
    }

    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    fn any_foreign(&self, bufs: &[WasmNetmem]) -> bool {
        bufs.iter().fold(false, |bad, b| {
            bad | (b.id >= self.capacity) | (b.len != self.stride)
        })
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use core::cell::RefCell;

    pub use dlmalloc::GlobalDlmalloc;

    /// The guest's state and the host's descriptor area (kept as `WasmNetmem`s, so it is
    /// 16-byte aligned). wasm32 has one thread, so a RefCell in a static is enough; `Sync`
    /// is asserted below for that reason only.
    pub struct Slot<P>(
        pub RefCell<Option<P>>,
        pub RefCell<Vec<WasmNetmem>>,
        /// The message of the last failed call, for `mpx_error`.
        pub RefCell<String>,
    );

    // SAFETY: wasm32-unknown-unknown without the threads proposal runs one thread,
    // so the cells are never shared across threads. This impl only lets them live in a
    // `static`.
    unsafe impl<P> Sync for Slot<P> {}

    impl<P> Default for Slot<P> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<P> Slot<P> {
        /// An empty slot, for the `static` the export macro makes.
        pub const fn new() -> Self {
            Slot(
                RefCell::new(None),
                RefCell::new(Vec::new()),
                RefCell::new(String::new()),
            )
        }
    }

    /// The descriptor area, grown to at least `len` bytes; its offset, or an error code.
    pub fn scratch<P>(slot: &Slot<P>, len: i32) -> i32 {
        let mut s = slot.1.borrow_mut();
        let want = (len.max(0) as usize).div_ceil(WasmNetmem::SIZE);
        let have = s.len();
        if have < want {
            if s.try_reserve_exact(want - have).is_err() {
                return memplex_wasm_abi::ERR_RESOURCE;
            }
            s.resize(want, WasmNetmem::default());
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

    /// `n` descriptors of the descriptor area, which must start at `off`; `None` when the
    /// host named another place or more than the area holds.
    pub fn descs<P, R>(
        slot: &Slot<P>,
        off: i32,
        n: i32,
        f: impl FnOnce(&mut [WasmNetmem]) -> R,
    ) -> Option<R> {
        let mut area = slot.1.try_borrow_mut().ok()?;
        if area.as_ptr() as i32 != off {
            return None;
        }
        let n = usize::try_from(n).ok()?;
        area.get_mut(..n).map(f)
    }

    pub fn init<P: GuestProvider>(
        slot: &Slot<P>,
        queue: i32,
        buf_size: i32,
        pool_size: i32,
        cfg: &[u8],
    ) -> i32 {
        let Ok(config) = core::str::from_utf8(cfg) else {
            *slot.2.borrow_mut() = "the settings are not UTF-8".into();
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
            Err(e) => {
                *slot.2.borrow_mut() = e.message().into();
                e.code()
            }
        }
    }

    /// Copies the last failure's message to `out` (at most `max` bytes), which must be
    /// the descriptor area the host got from `mpx_scratch`; its length, 0 when `out` is
    /// anywhere else.
    pub fn error<P>(slot: &Slot<P>, out: i32, max: i32) -> i32 {
        let room = {
            let area = slot.1.borrow();
            if area.as_ptr() as i32 != out {
                return 0;
            }
            (area.len() * WasmNetmem::SIZE).min(max.max(0) as usize)
        };
        let message = slot.2.borrow();
        let n = message.len().min(room);
        // SAFETY: `out..out + n` lies in the descriptor area (it starts at `out` and holds
        // at least `room >= n` bytes, checked above); wasm32 runs one thread and nothing
        // else uses the area during this call.
        let dst = unsafe { bytes_mut(out, n as i32) };
        dst.copy_from_slice(&message.as_bytes()[..n]);
        n as i32
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

    pub fn alloc_bulk<P: GuestProvider>(slot: &Slot<P>, out: i32, max: i32) -> i32 {
        let mut guard = slot.0.borrow_mut();
        let Some(p) = guard.as_mut() else {
            return memplex_wasm_abi::ERR_NOT_INITIALISED;
        };
        descs(slot, out, max, |out| {
            let n = p.alloc_bulk(out);
            n.min(out.len()) as i32
        })
        .unwrap_or(memplex_wasm_abi::ERR_INTERNAL)
    }

    pub fn release_bulk<P: GuestProvider>(slot: &Slot<P>, at: i32, n: i32) -> i32 {
        let mut guard = slot.0.borrow_mut();
        let Some(p) = guard.as_mut() else {
            return memplex_wasm_abi::ERR_NOT_INITIALISED;
        };
        descs(slot, at, n, |bufs| match p.release_bulk(bufs) {
            Ok(()) => 0,
            Err(e) => e.code(),
        })
        .unwrap_or(memplex_wasm_abi::ERR_INTERNAL)
    }
}

/// Exports `$ty` as this module's memory provider (see the crate docs).
#[macro_export]
macro_rules! export_provider {
    ($ty:ty) => {
        static __MPX_SLOT: $crate::__private::Slot<$ty> = $crate::__private::Slot::new();

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
            $crate::__private::alloc_bulk(&__MPX_SLOT, out, max)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_release_bulk(at: i32, n: i32) -> i32 {
            $crate::__private::release_bulk(&__MPX_SLOT, at, n)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn mpx_error(out: i32, max: i32) -> i32 {
            $crate::__private::error(&__MPX_SLOT, out, max)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

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
        fn alloc_bulk(&mut self, out: &mut [WasmNetmem]) -> usize {
            let mut n = 0;
            for slot in out {
                let Some(id) = self.0.pop() else { break };
                *slot = WasmNetmem {
                    offset: 64 * (u64::from(id) + 1),
                    len: 64,
                    id,
                };
                n += 1;
            }
            n
        }
        fn release_bulk(&mut self, bufs: &[WasmNetmem]) -> Result<(), GuestError> {
            if bufs.iter().any(|b| b.id > 1) {
                return Err(GuestError::BadBuffer);
            }
            self.0.extend(bufs.iter().map(|b| b.id));
            Ok(())
        }
    }

    #[test]
    fn params_and_bulk_calls() {
        let slot = __private::Slot::<Two>::new();
        let area = __private::scratch(&slot, 3 * WasmNetmem::SIZE as i32);
        assert_eq!(
            __private::alloc_bulk(&slot, area, 3),
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
        assert_eq!(
            __private::alloc_bulk(&slot, area, 3),
            2,
            "two buffers, room for three"
        );
        let first = slot.1.borrow()[0];
        assert_eq!((first.id, first.offset), (1, 128));
        assert_eq!(
            __private::alloc_bulk(&slot, area, 4),
            memplex_wasm_abi::ERR_INTERNAL,
            "more than the area holds"
        );
        assert_eq!(
            __private::alloc_bulk(&slot, area + 16, 1),
            memplex_wasm_abi::ERR_INTERNAL,
            "not the area"
        );
        assert_eq!(__private::release_bulk(&slot, area, 2), 0);
        slot.1.borrow_mut()[0] = WasmNetmem {
            offset: 0,
            len: 64,
            id: 9,
        };
        assert_eq!(
            __private::release_bulk(&slot, area, 1),
            memplex_wasm_abi::ERR_BAD_BUFFER
        );
        let mut info = [0u8; 16];
        assert_eq!(__private::info(&slot, &mut info), 0);
        assert_eq!(WasmInfo::from_bytes(&info).capacity, 2);
    }

    #[test]
    fn carved_describes_and_checks() {
        let params = Params {
            queue: 0,
            buf_size: 1500,
            pool_size: 16,
            config: "buffers = 8",
        };
        let c = Carved::from_params(&params).unwrap();
        assert_eq!((c.capacity(), c.info().buf_size), (8, 1536));
        let all: Vec<WasmNetmem> = (0..8).map(|id| c.describe(id)).collect();
        assert_eq!(all[3].offset - all[2].offset, 1536);
        assert_eq!(c.check(&all), Ok(()));
        for bad in [
            WasmNetmem { id: 8, ..all[7] },
            WasmNetmem {
                offset: all[1].offset + 1,
                ..all[1]
            },
            WasmNetmem {
                offset: all[1].offset | 1 << 32,
                ..all[1]
            },
            WasmNetmem { len: 64, ..all[1] },
            WasmNetmem { id: 2, ..all[1] },
        ] {
            let mut batch = all.clone();
            batch[5] = bad;
            assert_eq!(c.check_exact(&batch), Err(GuestError::BadBuffer), "{bad:?}");
            let offset_only = bad.id < 8 && bad.len == 1536;
            assert_eq!(c.check(&batch).is_ok(), offset_only, "{bad:?}");
        }
        let unknown = Params {
            config: "buffers = 8\nsize = 2",
            ..params
        };
        let e = Carved::from_params(&unknown).unwrap_err();
        assert_eq!(e.code(), memplex_wasm_abi::ERR_INVALID_CONFIG);
        assert_eq!(e.message(), "unknown setting `size`; known: buffers");
        let bad = Params {
            config: "buffers = lots",
            ..params
        };
        let e = Carved::from_params(&bad).unwrap_err();
        assert!(e.message().contains("`buffers` is `lots`"), "{e:?}");
    }
}
