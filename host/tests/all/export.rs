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
