//! Where frames go out: a device's transmit side, for routes that forward.
//!
//! A frame goes out as it was placed, head and frags in their providers' buffers, in one
//! scatter-gather `writev(2)`: no re-assembly copy. TAP devices opened with `gso = true`
//! take the frame's `virtio_net_hdr` in front, so a GSO super-frame goes out whole (the
//! kernel segments it, or hands it up whole where the stack takes it so) and a partial
//! checksum stays partial. An AF_PACKET socket bound to its interface sends what is
//! written to it (a VLAN tag memplex put back is in the bytes). Both copy the bytes
//! before `writev` returns, so the buffers go back to their pools at once.
//!
//! A transmitter is a duplicate of a receive queue's descriptor (a TAP queue or the
//! packet socket): opening the device again would add a queue that nobody reads. Writes
//! to one descriptor from several workers are whole frames each, so transmitters are
//! shared.

use super::VnetHdr;
use std::io::IoSlice;
use std::os::fd::OwnedFd;

/// The most parts one frame may have on the way out (a 64 KiB super-frame in 512-byte
/// buffers, with its vnet header); a frame with more is refused, not cut.
pub const MAX_PARTS: usize = 160;

/// The transmit side of one queue of a device.
pub trait TxQueue: Send + Sync {
    /// Sends one frame made of `parts`, in order, with `vnet` in front where the device
    /// takes one. When this returns, the kernel has the bytes.
    fn send(&self, vnet: &VnetHdr, parts: &[&[u8]]) -> std::io::Result<()>;

    /// A name for messages (`mpx0 q1`).
    fn name(&self) -> &str;
}

/// A transmitter over a descriptor that takes one frame per `writev`.
#[derive(Debug)]
pub struct FdTx {
    name: String,
    fd: OwnedFd,
    /// The device wants a `virtio_net_hdr` in front of each frame.
    vnet: bool,
}

impl FdTx {
    /// A transmitter writing frames to `fd` (with a vnet header in front when `vnet`).
    pub fn new(name: String, fd: OwnedFd, vnet: bool) -> FdTx {
        FdTx { name, fd, vnet }
    }
}

impl TxQueue for FdTx {
    fn send(&self, vnet: &VnetHdr, parts: &[&[u8]]) -> std::io::Result<()> {
        let header = vnet.to_bytes();
        let mut iov = arrayvec::ArrayVec::<IoSlice<'_>, { MAX_PARTS + 1 }>::new();
        if self.vnet {
            iov.push(IoSlice::new(&header));
        }
        for p in parts {
            iov.try_push(IoSlice::new(p)).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("a frame of more than {MAX_PARTS} parts"),
                )
            })?;
        }
        let want: usize = iov.iter().map(|s| s.len()).sum();
        loop {
            match rustix::io::writev(&self.fd, &iov) {
                Ok(n) if n == want => return Ok(()),
                Ok(n) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("{} took {n} of {want} bytes", self.name),
                    ))
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}
