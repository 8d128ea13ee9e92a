//! Memory another process can map: an anonymous file (`memfd_create`), mapped shared
//! here, sized once and sealed so it can never shrink or grow under a mapping, and sealed
//! against future writable mappings so whoever maps the descriptor later can only read.
//!
//! The one module of this crate with `unsafe`: mapping a file is unsafe in `memmap2`
//! because another holder of the file could truncate it under the mapping; the seals
//! applied here make that impossible.
#![allow(unsafe_code, reason = "mapping a sealed memfd; see `Shared::new`")]

use memmap2::{MmapMut, MmapOptions};
use memplex_abi::{MemoryRegion, ProviderError};
use rustix::fs::{MemfdFlags, SealFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

/// What pages back a [`Shared`] mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pages {
    /// Ordinary 4 KiB shared memory.
    Small,
    /// hugetlbfs pages (`MFD_HUGETLB`); needs `vm.nr_hugepages`.
    HugeTlb,
}

/// A sealed memfd and this process's shared, writable mapping of all of it.
pub(crate) struct Shared {
    map: MmapMut,
    /// Kept open for the life of the instance: the fd in the provider's typed region.
    file: File,
}

impl Shared {
    /// Makes a memfd of `len` bytes (rounded up to the page size of `pages`), maps it and
    /// seals it.
    pub(crate) fn new(name: &str, len: usize, pages: Pages) -> Result<Shared, ProviderError> {
        let mut flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        if pages == Pages::HugeTlb {
            flags |= MemfdFlags::HUGETLB;
        }
        let fd: OwnedFd = rustix::fs::memfd_create(name, flags)
            .map_err(|e| ProviderError::resource(format!("memfd_create({name}): {e}")))?;
        let file = File::from(fd);
        file.set_len(len as u64).map_err(|e| {
            ProviderError::resource(match pages {
                Pages::HugeTlb => format!(
                    "sizing a hugetlb memfd to {len} bytes failed ({e}); reserve pages with sysctl vm.nr_hugepages"
                ),
                Pages::Small => format!("sizing a memfd to {len} bytes failed: {e}"),
            })
        })?;
        // SAFETY: the file is ours alone until the seals below are set: nobody else can
        // truncate it while it is mapped, and after sealing nobody can at all (SHRINK and
        // GROW are sealed, and SEAL so the seals stay). The mapping lives in `Shared` with
        // the file and is dropped with it.
        let map = unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(|e| {
            ProviderError::resource(match pages {
                Pages::HugeTlb => format!(
                    "mapping {len} bytes of hugetlb memfd failed ({e}); reserve pages with sysctl vm.nr_hugepages"
                ),
                Pages::Small => format!("mapping {len} bytes of memfd failed: {e}"),
            })
        })?;
        // FUTURE_WRITE after the host's own writable mapping exists: it keeps that one and
        // refuses writable shared mappings (and write(2)) to anyone who maps it later.
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL,
        )
        .map_err(|e| ProviderError::resource(format!("sealing memfd {name}: {e}")))?;
        Ok(Shared { map, file })
    }

    /// The mapping's first byte.
    pub(crate) fn base(&mut self) -> u64 {
        self.map.as_mut_ptr() as u64
    }

    /// The mapping, for advice.
    pub(crate) fn map(&self) -> &MmapMut {
        &self.map
    }

    /// The typed region for `len` bytes at `base`, which is `offset` bytes into the file.
    pub(crate) fn region(&self, base: u64, len: u64, offset: u64) -> MemoryRegion {
        MemoryRegion::exportable(base, len, self.file.as_raw_fd(), offset)
    }
}
