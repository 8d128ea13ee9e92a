//! # memplex-wasm-abi: the WASM provider contract, shared by host and guest
//!
//! A WASM memory provider is a core module that exports its linear memory as `memory`
//! and the functions below. Its buffers live in that memory; a descriptor's `offset` is
//! an offset into it, and the host writes frame bytes straight there (bounds-checked,
//! never through a pointer kept across a guest call, since growth can move the memory).
//!
//! | export | signature | does |
//! |---|---|---|
//! | `mpx_abi_version` | `() -> i32` | [`ABI_VERSION`] |
//! | `mpx_scratch` | `(len: i32) -> i32` | offset of a 16-byte-aligned guest buffer of at least `len` bytes the host passes data in (descriptors, config) |
//! | `mpx_init` | `(queue, buf_size, pool_size, cfg_off, cfg_len: i32) -> i32` | make the provider; the config is `key=value` lines |
//! | `mpx_info` | `(out: i32) -> i32` | write a [`WasmInfo`] at `out` |
//! | `mpx_alloc_bulk` | `(out: i32, max: i32) -> i32` | write up to `max` [`WasmNetmem`]s at `out` (the scratch offset); return the count |
//! | `mpx_release_bulk` | `(at: i32, n: i32) -> i32` | take back `n` [`WasmNetmem`]s read from `at` |
//!
//! Functions returning `i32` use negative values for errors: [`ERR_INVALID_CONFIG`] and
//! friends. All integers are little-endian, as wasm is.
#![no_std]
#![deny(missing_docs)]

/// The ABI this crate describes. A host refuses a module reporting another.
pub const ABI_VERSION: i32 = 1;

/// Export names.
pub mod exports {
    /// The linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i32`
    pub const ABI_VERSION: &str = "mpx_abi_version";
    /// `(len: i32) -> i32`
    pub const SCRATCH: &str = "mpx_scratch";
    /// `(queue, buf_size, pool_size, cfg_off, cfg_len: i32) -> i32`
    pub const INIT: &str = "mpx_init";
    /// `(out: i32) -> i32`
    pub const INFO: &str = "mpx_info";
    /// `(out: i32, max: i32) -> i32`
    pub const ALLOC_BULK: &str = "mpx_alloc_bulk";
    /// `(at: i32, n: i32) -> i32`
    pub const RELEASE_BULK: &str = "mpx_release_bulk";
    /// `(out: i32, max: i32) -> i32`, optional: copies the UTF-8 message of the last
    /// failed call (at most `max` bytes) to `out`, the host's scratch area, and returns
    /// its length (0: no message). A host shows it with the error code, so a guest can
    /// say which setting was wrong. Guests without it still load (ABI 1 unchanged).
    pub const ERROR: &str = "mpx_error";
}

/// The config was refused.
pub const ERR_INVALID_CONFIG: i32 = -1;
/// The guest could not get memory.
pub const ERR_RESOURCE: i32 = -2;
/// A released buffer is not one the guest handed out.
pub const ERR_BAD_BUFFER: i32 = -3;
/// Called before `mpx_init` succeeded.
pub const ERR_NOT_INITIALISED: i32 = -4;
/// Any other failure.
pub const ERR_INTERNAL: i32 = -5;

/// One buffer in guest memory (16 bytes: a 64-bit offset, len, id).
///
/// The layout is the host's own descriptor's (`memplex_abi::Netmem`: address, length,
/// id), so the host moves a batch across the boundary as plain bytes and only checks
/// bounds; and a 64-bit offset leaves room for memory64 guests. `repr(C)`, so a guest
/// views the host's descriptor area as a `[WasmNetmem]` in place (wasm is
/// little-endian, as the encoding is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct WasmNetmem {
    /// Offset of the first byte in the guest's linear memory.
    pub offset: u64,
    /// Usable length.
    pub len: u32,
    /// The guest's name for the buffer, below `WasmInfo::capacity`.
    pub id: u32,
}

const _: () = assert!(core::mem::size_of::<WasmNetmem>() == WasmNetmem::SIZE);

impl WasmNetmem {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Little-endian bytes: offset (8), len (4), id (4); the layout in memory, too.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.id.to_le_bytes());
        b
    }

    /// Decodes [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        WasmNetmem {
            offset: u64::from(u(0)) | u64::from(u(4)) << 32,
            len: u(8),
            id: u(12),
        }
    }
}

/// What a guest provider offers (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WasmInfo {
    /// Length of every buffer.
    pub buf_size: u32,
    /// Alignment of every offset, a power of two.
    pub align: u32,
    /// Most buffers out at once; ids are below it.
    pub capacity: u32,
    /// Reserved for capability flags; 0 today.
    pub flags: u32,
}

impl WasmInfo {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Little-endian bytes.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        for (i, v) in [self.buf_size, self.align, self.capacity, self.flags]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        WasmInfo {
            buf_size: u(0),
            align: u(4),
            capacity: u(8),
            flags: u(12),
        }
    }
}

/// Iterates the `key=value` lines of a config blob (blank lines and `#` comments skipped).
pub fn config_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_once('=')
                .map_or((l, ""), |(k, v)| (k.trim(), v.trim()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let n = WasmNetmem {
            offset: 0x1_0040,
            len: 2048,
            id: 7,
        };
        assert_eq!(WasmNetmem::from_bytes(&n.to_bytes()), n);
        let i = WasmInfo {
            buf_size: 2048,
            align: 64,
            capacity: 512,
            flags: 0,
        };
        assert_eq!(WasmInfo::from_bytes(&i.to_bytes()), i);
        let lines: [(&str, &str); 2] = [("buffers", "64"), ("x", "")];
        assert!(config_lines("# c\nbuffers = 64\n\nx\n").eq(lines));
    }
}
