//! Provider memory mapped read-only: the one place this crate needs `unsafe`, because a
//! mapping of a file is only as stable as the file. memplex shares only memfds sealed
//! against shrinking (or files of a fixed size, such as a dma-buf) and sends a read-only
//! descriptor, so the pages stay and cannot be written. A region whose file could still
//! shrink is refused here too, before it is mapped: whatever sent it, this process does
//! not take a mapping that a `truncate` elsewhere could turn into a SIGBUS.
#![allow(unsafe_code, reason = "mapping provider memory memplex shares")]

use memmap2::{Mmap, MmapOptions};
use std::cell::RefCell;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// One region of provider memory.
pub(crate) struct RegionMap {
    map: Mmap,
    /// Where the region starts in the mapping (the mapping starts on a page boundary).
    skew: usize,
    len: usize,
}

impl RegionMap {
    /// Maps `len` bytes at `offset` of `fd`, read-only.
    pub(crate) fn new(fd: OwnedFd, offset: u64, len: u64) -> Result<RegionMap, String> {
        let file = File::from(fd);
        let page = rustix::param::page_size() as u64;
        let start = offset - offset % page;
        let skew = (offset - start) as usize;
        let len = usize::try_from(len).map_err(|_| "region length".to_string())?;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let (size, file_sized) = (meta.len(), meta.is_file());
        if file_sized && u128::from(offset) + len as u128 > u128::from(size) {
            return Err(format!(
                "a region of {len} bytes at {offset} in a descriptor of {size} bytes"
            ));
        }
        if file_sized {
            let seals = rustix::fs::fcntl_get_seals(&file).map_err(|e| {
                format!("a region in a file that cannot be sealed against shrinking ({e}); memplex shares only sealed memfds")
            })?;
            if !seals.contains(rustix::fs::SealFlags::SHRINK) {
                return Err(
                    "a region in a file not sealed against shrinking; memplex shares only sealed memfds"
                        .into(),
                );
            }
        }
        // SAFETY: the mapping is read-only and covers bytes the descriptor holds (checked
        // above for files). A file that can be resized is sealed against shrinking
        // (checked above), so no page of it can disappear while it is mapped; one of a
        // fixed size (a dma-buf, a device) cannot shrink at all.
        let map = unsafe { MmapOptions::new().offset(start).len(skew + len).map(&file) }
            .map_err(|e| format!("mapping region: {e}"))?;
        Ok(RegionMap { map, skew, len })
    }

    /// Bytes of the region.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when `offset..offset + len` lies in the region.
    pub(crate) fn contains(&self, offset: u64, len: u32) -> bool {
        u128::from(offset) + u128::from(len) <= self.len as u128
    }

    /// The bytes at `offset..offset + len` (checked by `contains` when the frame was read).
    pub(crate) fn slice(&self, offset: u64, len: u32) -> &[u8] {
        let at = self.skew + offset as usize;
        &self.map[at..at + len as usize]
    }

    /// The mapping's address range, for tests that check slices point into it.
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        let base = self.map.as_ptr() as usize;
        base..base + self.map.len()
    }
}

/// A session's regions by index: added to, never replaced or removed while the table
/// lives, so a frame can borrow its regions for as long as it borrows the consumer,
/// without a reference count touched per part.
#[derive(Default)]
pub(crate) struct RegionTable {
    /// `Arc`, not `Box`, only so that moving an entry (the vector growing) asserts
    /// nothing about the references lent out; the counts are never touched per frame.
    slots: RefCell<Vec<Option<Arc<RegionMap>>>>,
}

impl RegionTable {
    /// Adds region `index`; false (and `map` unmapped) when the index is taken already:
    /// the first announcement stands.
    pub(crate) fn add(&self, index: usize, map: RegionMap) -> bool {
        let mut slots = self.slots.borrow_mut();
        if slots.len() <= index {
            slots.resize_with(index + 1, || None);
        }
        if slots[index].is_some() {
            return false;
        }
        slots[index] = Some(Arc::new(map));
        true
    }

    /// How many regions were added.
    pub(crate) fn count(&self) -> usize {
        self.slots.borrow().iter().flatten().count()
    }

    /// Region `index`, if it was added.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&RegionMap> {
        let slots = self.slots.borrow();
        let region: *const RegionMap = Arc::as_ptr(slots.get(index)?.as_ref()?);
        // SAFETY: a region, once added, is neither replaced nor removed while the table
        // lives (`add` refuses a taken index, and nothing else writes `slots`), so its
        // `Arc` keeps it allocated; growing the vector moves the `Arc`'s pointer, never
        // the region. The reference lives no longer than `&self`, and the region is
        // never mutated.
        Some(unsafe { &*region })
    }
}

/// What the system says to a writable shared mapping of `fd` (one page).
pub(crate) fn try_writable(fd: &OwnedFd) -> String {
    let Ok(file) = fd.try_clone().map(File::from) else {
        return "cannot duplicate the descriptor".into();
    };
    // SAFETY: a one-page mapping that is dropped at once; if the system allowed it, no
    // byte is written through it.
    match unsafe { MmapOptions::new().len(4096).map_mut(&file) } {
        Ok(_) => "allowed".into(),
        Err(e) => format!("refused: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{MemfdFlags, SealFlags};

    fn memfd(seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("memplex-consumer-test", MemfdFlags::ALLOW_SEALING)
            .expect("a memfd");
        rustix::fs::ftruncate(&fd, 8192).expect("sized");
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).expect("sealed");
        }
        fd
    }

    #[test]
    fn only_files_sealed_against_shrinking_are_mapped() {
        let map = RegionMap::new(memfd(SealFlags::SHRINK | SealFlags::GROW), 4096, 4096)
            .expect("a sealed memfd maps");
        assert_eq!(map.len(), 4096);
        assert_eq!(map.slice(0, 16), &[0u8; 16]);
        let err = RegionMap::new(memfd(SealFlags::GROW), 0, 4096)
            .err()
            .unwrap();
        assert!(err.contains("not sealed against shrinking"), "{err}");
        let err = RegionMap::new(memfd(SealFlags::empty()), 0, 4096)
            .err()
            .unwrap();
        assert!(err.contains("not sealed against shrinking"), "{err}");
        // Past the file's end, sealed or not.
        let err = RegionMap::new(memfd(SealFlags::SHRINK), 4096, 8192)
            .err()
            .unwrap();
        assert!(err.contains("in a descriptor of 8192 bytes"), "{err}");
    }
}
