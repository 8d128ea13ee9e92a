//! Buffer descriptors: what a provider hands the host and takes back.

use abi_stable::StableAbi;

/// One buffer of provider memory, named by the provider.
///
/// The userspace counterpart of the kernel's `netmem_ref`: plain data, copied freely.
/// The provider chooses `id` (an index below its [`capacity`](crate::ProviderInfo::capacity))
/// and the same id always names the same memory. `addr` is a host virtual address for a
/// native provider and an offset into the guest's linear memory for a WASM provider.
///
/// The host checks every descriptor it is handed (see `memplex::provider::checked`), so a
/// provider bug shows up as a named contract breach rather than as memory corruption.
///
/// Plain bytes with no padding (`zerocopy` checks that at compile time), so a batch can
/// be copied to and from a WASM guest's memory in one move.
#[repr(C)]
#[derive(
    StableAbi,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
pub struct Netmem {
    /// Address of the first byte (native) or offset into guest memory (WASM).
    pub addr: u64,
    /// Usable length in bytes; at least the provider's `buf_size`.
    pub len: u32,
    /// The provider's own name for this buffer, below `ProviderInfo::capacity`.
    pub id: u32,
}

const _: () = assert!(core::mem::size_of::<Netmem>() == 16);

impl Netmem {
    /// An all-zero descriptor, used to size output arrays before a bulk allocation.
    pub const EMPTY: Netmem = Netmem {
        addr: 0,
        len: 0,
        id: 0,
    };

    /// Makes a descriptor.
    pub const fn new(id: u32, addr: u64, len: u32) -> Self {
        Netmem { addr, len, id }
    }

    /// One past the last byte, widened so it cannot overflow.
    pub const fn end(&self) -> u128 {
        self.addr as u128 + self.len as u128
    }
}

/// A byte range inside one buffer. Reserved: the type of 0.1.0's `deliver`, kept for the
/// vtable's layout (see [`ffi`](crate::ffi)).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The buffer holding the bytes.
    pub buf: Netmem,
    /// Where the bytes start inside the buffer.
    pub offset: u32,
    /// How many bytes.
    pub len: u32,
}

const _: () = assert!(core::mem::size_of::<Segment>() == 24);

/// Reserved: the result of 0.1.0's `deliver`, kept for the vtable's layout.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The provider did not take the frame; the host recycles its buffers as usual.
    Declined = 0,
    /// The provider owns the frame's buffers now (it exports them to its own consumer, as
    /// io_uring zcrx does) and hands them out again through `alloc_bulk` when they come back.
    Taken = 1,
}
