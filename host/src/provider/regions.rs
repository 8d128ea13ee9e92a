//! Checking a provider's typed regions against this process, once, when an instance is
//! made: host memory must be mapped here with the access the host needs, and memory a
//! provider says it can share must really be the file descriptor it names.
//!
//! Everything is read from `/proc/self/maps` and `/proc/self/fd`, so no `unsafe` is
//! needed: a region's file descriptor is looked at through the `/proc` link, never used.
//!
//! A region that goes to consumers must also stay the size it is: a consumer maps the
//! file, and a file that shrinks under a mapping faults (SIGBUS) whoever reads the pages
//! past its new end. [`share_refusal`] asks a file that can be resized to be sealed
//! against shrinking (`F_SEAL_SHRINK`, which a memfd can carry), and refuses to share it
//! otherwise.

use memplex_abi::{MemoryRegion, RegionKind};

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    start: u64,
    end: u64,
    read: bool,
    write: bool,
    /// Offset of `start` in the mapped file.
    offset: u64,
    /// The mapped file's inode, 0 for anonymous memory.
    inode: u64,
}

/// This process's mappings, in address order.
struct Maps(Vec<Mapping>);

impl Maps {
    fn read() -> Result<Maps, String> {
        let text = std::fs::read_to_string("/proc/self/maps")
            .map_err(|e| format!("cannot read /proc/self/maps to check its regions: {e}"))?;
        let parse = |l: &str| -> Option<Mapping> {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?.as_bytes();
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let _dev = f.next()?;
            let inode = f.next()?.parse().ok()?;
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                read: perms.first() == Some(&b'r'),
                write: perms.get(1) == Some(&b'w'),
                offset,
                inode,
            })
        };
        Ok(Maps(text.lines().filter_map(parse).collect()))
    }

    fn at(&self, addr: u128) -> Option<&Mapping> {
        self.0
            .iter()
            .find(|m| u128::from(m.start) <= addr && addr < u128::from(m.end))
    }
}

fn describe(i: usize, r: &MemoryRegion) -> String {
    format!(
        "region {i} ({} {:#x}+{})",
        r.kind.name().unwrap_or("?"),
        r.base,
        r.len
    )
}

/// Checks every region; `by_address` when the host reads (and with `write`, writes)
/// host regions by address. The first problem, as a message naming the region.
pub(super) fn check(regions: &[MemoryRegion], by_address: bool, write: bool) -> Result<(), String> {
    let needs_maps = regions.iter().any(|r| r.kind != RegionKind::DEVICE);
    let maps = if needs_maps && (by_address || regions.iter().any(|r| r.fd >= 0)) {
        Some(Maps::read()?)
    } else {
        None
    };
    for (i, r) in regions.iter().enumerate() {
        let what = || describe(i, r);
        if r.kind.name().is_none() {
            return Err(format!(
                "region {i} has kind {}, which this host (ABI {}) does not know",
                r.kind.0,
                memplex_abi::ABI_VERSION
            ));
        }
        if r.len == 0 {
            return Err(format!("{} is empty", what()));
        }
        if u128::from(r.base) + u128::from(r.len) > u128::from(u64::MAX) {
            return Err(format!("{} runs past the end of the address space", what()));
        }
        if r.kind == RegionKind::DEVICE && by_address {
            return Err(format!(
                "{} is device memory, which the host cannot map, but the provider says the host may read or write its buffers by address",
                what()
            ));
        }
        if r.kind == RegionKind::EXPORTABLE && r.fd < 0 {
            return Err(format!(
                "{} is declared exportable but has no file descriptor",
                what()
            ));
        }
        let file = if r.fd >= 0 {
            Some(fd_file(r.fd).map_err(|e| format!("{}: file descriptor {}: {e}", what(), r.fd))?)
        } else {
            None
        };
        if let Some(f) = &file {
            if f.size < u128::from(r.offset) + u128::from(r.len) && f.sized {
                return Err(format!(
                    "{}: its file descriptor {} holds {} bytes, short of offset {} + length {}",
                    what(),
                    r.fd,
                    f.size,
                    r.offset,
                    r.len
                ));
            }
        }
        let Some(maps) = &maps else { continue };
        if r.kind == RegionKind::DEVICE {
            continue;
        }
        let end = u128::from(r.base) + u128::from(r.len);
        let mut at = u128::from(r.base);
        while at < end {
            let Some(m) = maps.at(at) else {
                return Err(format!(
                    "declares {}, but {at:#x} is not mapped in this process",
                    what()
                ));
            };
            if by_address && (!m.read || (write && !m.write)) {
                return Err(format!(
                    "declares {}, but {at:#x} is mapped without {} access",
                    what(),
                    if m.read { "write" } else { "read" }
                ));
            }
            if let Some(f) = &file {
                // The mapping at this address must be that file, at the offset claimed:
                // otherwise a consumer mapping the descriptor would see other bytes.
                let want = u128::from(r.offset) + (at - u128::from(r.base));
                let here = u128::from(m.offset) + (at - u128::from(m.start));
                if m.inode != f.inode || here != want {
                    return Err(format!(
                        "{}: the memory at {at:#x} is not its file descriptor {} at offset {want} (mapped: inode {} offset {here}; the descriptor is inode {})",
                        what(),
                        r.fd,
                        m.inode,
                        f.inode
                    ));
                }
            }
            at = u128::from(m.end);
        }
    }
    Ok(())
}

/// Why the shareable regions of `regions` may not go to another process, or `None`: a
/// region whose descriptor is a file that can be resized (a memfd, a file on a disk)
/// must be sealed against shrinking. Files of a fixed size (a dma-buf, a device node)
/// need no seal. Called once per instance, on memory [`check`] accepted.
pub(super) fn share_refusal(regions: &[MemoryRegion]) -> Option<String> {
    regions.iter().enumerate().find_map(|(i, r)| {
        if !r.is_shareable() {
            return None;
        }
        let what = || describe(i, r);
        match fd_file(r.fd) {
            Ok(f) if !f.sized => return None,
            Ok(_) => {}
            Err(e) => return Some(format!("{}: file descriptor {}: {e}", what(), r.fd)),
        }
        let sealed = std::fs::File::open(format!("/proc/self/fd/{}", r.fd))
            .map_err(|e| e.to_string())
            .and_then(|f| rustix::fs::fcntl_get_seals(&f).map_err(|e| e.to_string()));
        match sealed {
            Ok(seals) if seals.contains(rustix::fs::SealFlags::SHRINK) => None,
            Ok(_) => Some(format!(
                "{}: its file descriptor {} is not sealed against shrinking, so a consumer's mapping of it would fault if the file were cut short (seal it: `fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)`, as the shipped `shm` provider does)",
                what(),
                r.fd
            )),
            Err(e) => Some(format!(
                "{}: its file descriptor {} is a file that cannot be sealed against shrinking ({e}), so a consumer's mapping of it would fault if the file were cut short (share a memfd sealed with `F_SEAL_SHRINK`)",
                what(),
                r.fd
            )),
        }
    })
}

/// What `/proc/self/fd/N` leads to.
struct FdFile {
    inode: u64,
    size: u128,
    /// False for files whose size says nothing (a dma-buf reports its size; a device
    /// node does not).
    sized: bool,
}

fn fd_file(fd: i32) -> Result<FdFile, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("not open in this process ({e})"))?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    Ok(FdFile {
        inode: meta.ino(),
        size: u128::from(meta.size()),
        sized: meta.is_file(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_regions_must_be_this_process_memory() {
        let buf = vec![0u8; 1 << 16];
        let mine = MemoryRegion::host(buf.as_ptr() as u64, buf.len() as u64);
        assert_eq!(check(&[mine], true, true), Ok(()));
        let wild = MemoryRegion::host(0x10_0000, 4096);
        let why = check(&[mine, wild], true, false).unwrap_err();
        assert!(
            why.contains("region 1") && why.contains("0x100000") && why.contains("not mapped"),
            "{why}"
        );
        // Code is mapped, but not writable.
        let code = MemoryRegion::host(check as fn(_, _, _) -> _ as usize as u64, 16);
        assert_eq!(check(&[code], true, false), Ok(()));
        assert!(check(&[code], true, true)
            .unwrap_err()
            .contains("without write access"));
    }

    #[test]
    fn an_exportable_region_must_be_its_descriptor() {
        use std::os::fd::AsRawFd;
        let file = tempfile_of(1 << 16);
        let mut opts = memmap2::MmapOptions::new();
        opts.len(1 << 16);
        // SAFETY: the file is private to this test and never truncated while mapped.
        #[allow(unsafe_code)]
        let map = unsafe { opts.map_mut(&file) }.unwrap();
        let fd = file.as_raw_fd();
        let base = map.as_ptr() as u64;
        let good = MemoryRegion::exportable(base + 4096, 8192, fd, 4096);
        assert_eq!(check(&[good], true, true), Ok(()));
        // The right memory, the wrong offset in the file.
        let shifted = MemoryRegion::exportable(base + 4096, 8192, fd, 0);
        assert!(check(&[shifted], true, true)
            .unwrap_err()
            .contains("is not its file descriptor"));
        // Anonymous memory claimed to be the file.
        let other = vec![0u8; 8192];
        let liar = MemoryRegion::exportable(other.as_ptr() as u64, 4096, fd, 0);
        assert!(check(&[liar], true, true)
            .unwrap_err()
            .contains("is not its file descriptor"));
        // Past the file's end.
        let long = MemoryRegion::exportable(base, 1 << 17, fd, 0);
        assert!(check(&[long], true, true).unwrap_err().contains("short of"));
        // A descriptor that is not open.
        let closed = MemoryRegion::exportable(base, 4096, 1 << 20, 0);
        assert!(check(&[closed], true, true)
            .unwrap_err()
            .contains("not open in this process"));
        // Device memory read by address, and a kind from the future.
        let dev = MemoryRegion::device(0x1000, 4096, -1, 0);
        assert!(check(&[dev], true, false)
            .unwrap_err()
            .contains("device memory"));
        assert_eq!(check(&[dev], false, false), Ok(()));
        let mut future = good;
        future.kind = RegionKind(9);
        assert!(check(&[future], true, true).unwrap_err().contains("kind 9"));
        drop(map);
    }

    #[test]
    fn a_shared_file_must_be_sealed_against_shrinking() {
        use rustix::fs::{MemfdFlags, SealFlags};
        use std::os::fd::AsRawFd;
        let memfd = |seals: SealFlags| {
            let fd = rustix::fs::memfd_create(
                "memplex-test",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )
            .unwrap();
            let file = std::fs::File::from(fd);
            file.set_len(8192).unwrap();
            if !seals.is_empty() {
                rustix::fs::fcntl_add_seals(&file, seals).unwrap();
            }
            file
        };
        // The address is not looked at here, only the descriptor.
        let region = |f: &std::fs::File| MemoryRegion::exportable(0x1000, 8192, f.as_raw_fd(), 0);
        let sealed = memfd(SealFlags::SHRINK);
        assert_eq!(share_refusal(&[region(&sealed)]), None);
        let grow_only = memfd(SealFlags::GROW);
        let why = share_refusal(&[region(&sealed), region(&grow_only)]).unwrap();
        assert!(
            why.contains("region 1") && why.contains("not sealed against shrinking"),
            "{why}"
        );
        // A file on a disk cannot carry seals at all.
        let disk = tempfile_of(8192);
        let why = share_refusal(&[region(&disk)]).unwrap();
        assert!(why.contains("cannot be sealed"), "{why}");
        // Host memory is not shared, so it needs no seal; nor does a closed descriptor
        // go unnoticed.
        assert_eq!(share_refusal(&[MemoryRegion::host(0x1000, 8192)]), None);
        let closed = MemoryRegion::exportable(0x1000, 4096, 1 << 20, 0);
        assert!(share_refusal(&[closed])
            .unwrap()
            .contains("not open in this process"));
    }

    fn tempfile_of(len: u64) -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "memplex-regions-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(len).unwrap();
        file
    }
}
