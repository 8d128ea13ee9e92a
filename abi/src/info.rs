//! What a provider says about itself.

use crate::Netmem;
use abi_stable::std_types::{RSlice, RString, RVec};
use abi_stable::StableAbi;
use core::fmt;

/// Capability flags, a bit set that later ABI versions may extend.
///
/// Unknown bits are carried through unchanged, so a newer provider can be inspected by an
/// older host.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// The host may write frame bytes straight into the buffer memory.
    pub const HOST_WRITABLE: Self = Self(1 << 0);
    /// The CPU may read the buffer memory (false for device memory).
    pub const CPU_READABLE: Self = Self(1 << 1);
    /// The host must place bytes through the provider's `fill` op.
    pub const NEEDS_FILL: Self = Self(1 << 2);
    /// Every region of the provider can be shared with another process: each has a file
    /// descriptor in [`MemoryProvider::memory`](crate::MemoryProvider::memory). The host
    /// sets it from the typed regions (ABI 0.1.1); a provider need not.
    pub const EXPORTS: Self = Self(1 << 3);
    /// Buffers are backed by huge pages (hugetlbfs or transparent huge pages).
    pub const HUGE_PAGES: Self = Self(1 << 4);
    /// All buffers lie inside the regions listed in `ProviderInfo::regions`.
    pub const REGIONS: Self = Self(1 << 5);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::HOST_WRITABLE, "host-writable"),
        (Self::CPU_READABLE, "cpu-readable"),
        (Self::NEEDS_FILL, "needs-fill"),
        (Self::EXPORTS, "exports"),
        (Self::HUGE_PAGES, "huge-pages"),
        (Self::REGIONS, "regions"),
    ];

    /// The empty set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl core::ops::BitOr for Capabilities {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Capabilities {
    /// Lists the flags as `host-writable,cpu-readable`, unknown bits in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !flag.0;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{rest:#x}")?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A span of memory that all of a provider's buffers lie in (with [`Capabilities::REGIONS`]).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte (address, or guest offset for WASM).
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// How a typed region can be reached (ABI 0.1.1). A plain number so later revisions can
/// add kinds; a host refuses a kind it does not know, naming it.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RegionKind(pub u32);

impl RegionKind {
    /// Mapped in the host at `base`, not shareable: what every 0.1.0 region is.
    pub const HOST: Self = Self(0);
    /// Mapped in the host at `base`, and the same bytes are at `offset` in the file
    /// descriptor `fd`, which another process can map (memfd, hugetlb memfd, a file).
    pub const EXPORTABLE: Self = Self(1);
    /// Not mapped in the host at all (device memory): `base` is the provider's own
    /// address space for its descriptors, the host never reads or writes it by address,
    /// and bytes get there through [`MemoryProvider::fill_bulk`](crate::MemoryProvider::fill_bulk).
    /// Exportable when `fd` is set (a dma-buf, or a memfd for tests).
    pub const DEVICE: Self = Self(2);

    /// The kind's name, or `None` for one this version does not know.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("host"),
            1 => Some("exportable"),
            2 => Some("device"),
            _ => None,
        }
    }
}

/// One region of a provider's memory, typed (ABI 0.1.1): where it is for the host, and
/// how another process can reach it.
///
/// A new type rather than new fields on [`Region`], whose layout is fixed. The file
/// descriptor stays the provider's: it keeps it open for the life of the instance, and
/// the host duplicates it when it sends it to a consumer.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte: a host address, or for [`RegionKind::DEVICE`] the provider's own
    /// address space that buffer descriptors use.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where `base` lies in `fd`.
    pub offset: u64,
    /// A file descriptor for the same bytes, or -1 when the region cannot be shared.
    pub fd: i32,
    /// How the region can be reached.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// Host memory at `base`, not shareable.
    pub const fn host(base: u64, len: u64) -> Self {
        MemoryRegion {
            base,
            len,
            offset: 0,
            fd: -1,
            kind: RegionKind::HOST,
        }
    }

    /// Host memory at `base` that is also `len` bytes at `offset` in `fd`.
    pub const fn exportable(base: u64, len: u64, fd: i32, offset: u64) -> Self {
        MemoryRegion {
            base,
            len,
            offset,
            fd,
            kind: RegionKind::EXPORTABLE,
        }
    }

    /// Memory the host cannot map: descriptors use `base..base + len`, and `fd` (or -1)
    /// gives it to another process at `offset`.
    pub const fn device(base: u64, len: u64, fd: i32, offset: u64) -> Self {
        MemoryRegion {
            base,
            len,
            offset,
            fd,
            kind: RegionKind::DEVICE,
        }
    }

    /// True when another process can reach the region through `fd`.
    pub const fn is_shareable(&self) -> bool {
        self.fd >= 0 && self.kind.0 != RegionKind::HOST.0
    }

    /// True when `addr..addr + len` lies inside the region.
    pub const fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && (addr as u128 + len as u128) <= self.base as u128 + self.len as u128
    }
}

/// One write of a bulk fill (ABI 0.1.1): `len` bytes, taken in order from the bytes
/// passed with the batch, go to `offset` in `buf`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillOp {
    /// The buffer written.
    pub buf: Netmem,
    /// Where in it.
    pub offset: u32,
    /// How many bytes.
    pub len: u32,
}

/// One write of a gathered fill (ABI 0.1.2): its own `bytes` go to `offset` in `buf`.
/// Each op brings its bytes with it, so the parts of a whole vector of frames, which lie
/// apart in the device's memory, reach a provider in one call without first being
/// copied together (see [`MemoryProvider::fill_gather`](crate::MemoryProvider::fill_gather)).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatherOp<'a> {
    /// The buffer written.
    pub buf: Netmem,
    /// Where in it.
    pub offset: u32,
    bytes: RSlice<'a, u8>,
}

impl<'a> GatherOp<'a> {
    /// `bytes` to `offset` in `buf`.
    pub fn new(buf: Netmem, offset: u32, bytes: &'a [u8]) -> Self {
        GatherOp {
            buf,
            offset,
            bytes: bytes.into(),
        }
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes.as_slice()
    }
}

/// Static facts about a plugin, available before any instance is made.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginDescription {
    /// Short name, as used in configs (`slab`).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// One line for `memplex providers`.
    pub summary: RString,
}

/// What one initialised provider instance offers, like the kernel's page_pool params.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Short name.
    pub name: RString,
    /// Length of every buffer handed out; at least the `buf_size` asked for in `init`.
    pub buf_size: u32,
    /// Every buffer address is a multiple of this (a power of two).
    pub align: u32,
    /// How many buffers this instance can ever have out at once; ids are below it.
    pub capacity: u32,
    /// What the host may do with the memory.
    pub caps: Capabilities,
    /// Where the memory lives, with [`Capabilities::REGIONS`]; otherwise empty.
    pub regions: RVec<Region>,
    /// Free text for logs and `memplex providers inspect` (e.g. which huge pages it got).
    pub backing: RString,
}

impl ProviderInfo {
    /// Info for `capacity` host-writable, CPU-readable buffers of `buf_size` bytes, aligned
    /// to 8; change the rest with the builder methods.
    pub fn new(name: &str, buf_size: u32, capacity: u32) -> Self {
        ProviderInfo {
            name: name.into(),
            buf_size,
            align: 8,
            capacity,
            caps: Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE,
            regions: RVec::new(),
            backing: RString::new(),
        }
    }

    /// Sets the alignment every buffer honours.
    #[must_use]
    pub fn align(mut self, align: u32) -> Self {
        self.align = align;
        self
    }

    /// Replaces the capability set.
    #[must_use]
    pub fn caps(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// Declares a region that buffers lie in and sets [`Capabilities::REGIONS`].
    #[must_use]
    pub fn region(mut self, base: u64, len: u64) -> Self {
        self.regions.push(Region { base, len });
        self.caps = self.caps | Capabilities::REGIONS;
        self
    }

    /// Describes the backing memory in words.
    #[must_use]
    pub fn backing(mut self, text: &str) -> Self {
        self.backing = text.into();
        self
    }
}

/// One named counter a provider reports through `stats`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Counter name, `snake_case`.
    pub name: RString,
    /// Its value.
    pub value: u64,
}

impl Stat {
    /// Makes a counter.
    pub fn new(name: &str, value: u64) -> Self {
        Stat {
            name: name.into(),
            value,
        }
    }
}
