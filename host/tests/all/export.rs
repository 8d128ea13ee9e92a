//! Exportable memory (ABI 0.1.1): providers whose typed regions carry a file descriptor
//! another process can map, checked by the host at load.

use super::*;
use memplex::pool::Pool;
use memplex_abi::RegionKind;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

/// The region's descriptor, opened again through /proc as a consumer would get it.
fn reopen(fd: i32, write: bool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/self/fd/{fd}"))
}

#[test]
fn shm_slab_and_hugepage_share_the_bytes_the_host_placed_and_nobody_can_write_them() {
    for (spec, settings) in [
        ("shm", &[][..]),
        ("builtin:shm", &[][..]),
        ("slab", &[][..]),
        ("hugepage", &[("shared", "true")][..]),
    ] {
        let plugin = ProviderPlugin::load(spec, &plugin_path()).unwrap();
        let p = plugin.instantiate(&params(settings)).unwrap();
        assert_eq!(p.not_exportable(), None, "{spec}");
        assert!(p.info().caps.contains(memplex_abi::Capabilities::EXPORTS));
        let region = p.memory()[0];
        assert_eq!(region.kind, RegionKind::EXPORTABLE, "{spec}");
        let mut pool = Pool::new(p, 64);
        let mut b = pool.alloc().unwrap();
        pool.place(&mut b, 100, b"placed by the host").unwrap();
        let at = b.netmem().addr - region.base + region.offset + 100;
        // The descriptor shows the same bytes: what a consumer maps is what was placed.
        let mut f = reopen(region.fd, false).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut seen = [0u8; 18];
        f.read_exact(&mut seen).unwrap();
        assert_eq!(&seen, b"placed by the host", "{spec}");
        // Sealed: no writes through the descriptor, and no resizing.
        let mut w = reopen(region.fd, true).unwrap();
        w.seek(SeekFrom::Start(at)).unwrap();
        let err = w.write(b"X").unwrap_err();
        // EPERM: F_SEAL_FUTURE_WRITE.
        assert_eq!(err.raw_os_error(), Some(1), "{spec}: {err}");
        assert!(w.set_len(0).is_err(), "{spec}: shrinking is sealed");
        pool.recycle(b).unwrap();
        assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
    }
}

#[test]
fn private_and_sandboxed_memory_is_not_exportable_and_says_why() {
    let slab = ProviderPlugin::load("slab", &plugin_path()).unwrap();
    let p = slab.instantiate(&params(&[("shared", "false")])).unwrap();
    let why = p.not_exportable().unwrap();
    assert!(
        why.contains("region 0") && why.contains("host memory"),
        "{why}"
    );
    let wasm = ProviderPlugin::load("slab.wasm", &plugin_path()).unwrap();
    let p = wasm.instantiate(&params(&[])).unwrap();
    let why = p.not_exportable().unwrap();
    assert!(why.contains("WASM guest's linear memory"), "{why}");
}

/// A provider that shares a memfd it has not sealed: everything else about its region is
/// right (the descriptor is the memory, at the offset it names).
struct Memfd {
    map: memmap2::MmapMut,
    file: std::fs::File,
    free: Vec<u32>,
}

const MEMFD_BUF: u32 = 1024;

impl Memfd {
    fn new(seals: rustix::fs::SealFlags) -> Memfd {
        use rustix::fs::MemfdFlags;
        let fd = rustix::fs::memfd_create("memplex-unsealed", MemfdFlags::ALLOW_SEALING).unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(4 * u64::from(MEMFD_BUF)).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&file, seals).unwrap();
        }
        // SAFETY: the file is this test's, and nothing resizes it while it is mapped.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        Memfd {
            map,
            file,
            free: (0..4).collect(),
        }
    }
}

impl memplex_abi::MemoryProvider for Memfd {
    fn info(&self) -> memplex_abi::ProviderInfo {
        memplex_abi::ProviderInfo::new("memfd", MEMFD_BUF, 4)
    }

    fn memory(&self) -> Vec<memplex_abi::MemoryRegion> {
        use std::os::fd::AsRawFd;
        let base = self.map.as_ptr() as u64;
        vec![memplex_abi::MemoryRegion::exportable(
            base,
            self.map.len() as u64,
            self.file.as_raw_fd(),
            0,
        )]
    }

    fn alloc_bulk(
        &mut self,
        out: &mut [memplex_abi::Netmem],
    ) -> Result<usize, memplex_abi::ProviderError> {
        let base = self.map.as_ptr() as u64;
        let n = out.len().min(self.free.len());
        for slot in &mut out[..n] {
            let id = self.free.pop().unwrap();
            *slot = memplex_abi::Netmem {
                addr: base + u64::from(id * MEMFD_BUF),
                len: MEMFD_BUF,
                id,
            };
        }
        Ok(n)
    }

    fn release_bulk(
        &mut self,
        bufs: &[memplex_abi::Netmem],
    ) -> Result<(), memplex_abi::ProviderError> {
        self.free.extend(bufs.iter().map(|b| b.id));
        Ok(())
    }
}

#[test]
fn memory_that_could_shrink_under_a_consumer_is_not_shared() {
    use memplex::provider::{CheckedProvider, Trust};
    use memplex_abi::Capabilities;
    use rustix::fs::SealFlags;
    let checked = |seals| {
        CheckedProvider::new(
            Box::new(Memfd::new(seals)),
            "memfd (test) q0".into(),
            MEMFD_BUF,
            Trust::Checked,
        )
        .expect("its region is checked and accepted")
    };
    // Placed into as any provider is, but not shared: the reason names the region and
    // the seal it lacks.
    for seals in [SealFlags::empty(), SealFlags::GROW] {
        let p = checked(seals);
        let why = p.not_exportable().expect("an unsealed memfd is not shared");
        assert!(
            why.contains("region 0") && why.contains("not sealed against shrinking"),
            "{why}"
        );
        assert!(!p.info().caps.contains(Capabilities::EXPORTS));
        let mut pool = Pool::new(p, 4);
        let mut b = pool.alloc().unwrap();
        pool.place(&mut b, 0, b"still placed into").unwrap();
        pool.recycle(b).unwrap();
        assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
    }
    let p = checked(SealFlags::SHRINK);
    assert_eq!(p.not_exportable(), None);
    assert!(p.info().caps.contains(Capabilities::EXPORTS));
}
