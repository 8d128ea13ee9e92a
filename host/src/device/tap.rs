//! TAP devices (`/dev/net/tun`): one file descriptor per queue with IFF_MULTI_QUEUE, and
//! with `gso = true` IFF_VNET_HDR plus TUNSETOFFLOAD, so the kernel hands over GSO
//! super-frames of up to 64 KiB whole (each behind a 10-byte `virtio_net_hdr`), whose
//! payload then spans several frags.
//!
//! Each queue is read on its worker's own thread: `poll(2)` with the worker's timeout,
//! then non-blocking `read(2)`s, one frame each, one after another into a read arena,
//! until the burst holds 64 frames, the arena has no room for a largest read (256 KiB),
//! or the queue is empty; the burst is handed over with each frame's `virtio_net_hdr`
//! parsed into its metadata (GSO type and size, checksum state). A thread
//! per queue keeps the pools on one thread with no hand-off, and a busy loop gains
//! nothing from a reactor; tokio drives everything around the workers. (An AsyncFd
//! variant has not been built to measure against: the bare-reader comparison of
//! `memplex demo --compare` shows this loop within a few percent of the device.)
//!
//! This is one of the few modules allowed `unsafe`: the TUN ioctls and `poll(2)`.
#![allow(
    unsafe_code,
    reason = "TUNSETIFF/TUNSETOFFLOAD ioctls and poll(2) on the TAP fds"
)]

use super::{
    monotonic_ns, wall_ns, DeviceError, DeviceStats, Gso, Poll, RxFrame, RxQueue, Stamp, VnetHdr,
    BURST,
};
use arrayvec::ArrayVec;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// The most one read returns: a 64 KiB GSO frame, its vnet header, and room for BIG TCP.
const MAX_READ: usize = 256 * 1024;
/// The read arena: room for a burst of ordinary frames (64 of up to 2 KiB) with a
/// largest read still to come. A burst ends when less than [`MAX_READ`] is left.
const ARENA: usize = MAX_READ + BURST * 2048;

/// One TAP queue.
pub struct TapQueue {
    name: String,
    file: File,
    vnet: bool,
    arena: Box<[u8]>,
    stamp: Stamp,
    stats: DeviceStats,
}

fn ifreq(name: &str, flags: libc::c_int) -> Result<libc::ifreq, DeviceError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        return Err(DeviceError::open(
            format!("tap {name:?}"),
            std::io::Error::new(
                ErrorKind::InvalidInput,
                "not a valid interface name (1 to 15 bytes, no '/' or NUL)",
            ),
        ));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and
    // addresses); all-zero bytes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

fn attach(name: &str, flags: libc::c_int) -> Result<File, std::io::Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name, flags)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, and `req` is one, valid and
    // exclusively borrowed for the call; the fd is open for the call's duration.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Other processes with a queue of TAP device `name` open, by pid: the kernel names a
/// TUN file descriptor's device in its `/proc/PID/fdinfo` entry (`iff:\tNAME`).
///
/// Only processes in this process's network namespace count: a device of the same name
/// in another namespace is another device (the fdinfo names it without its namespace,
/// so a process's own namespace stands for its device's, as it does when it opened it).
pub fn readers(name: &str) -> Vec<u32> {
    readers_in(name, Path::new("/proc/self/ns/net"))
}

/// [`readers`] in the network namespace of the namespace file `netns`
/// (`/proc/PID/ns/net`, or `/run/netns/NAME` as `ip netns add` makes).
pub fn readers_in(name: &str, netns: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id();
    let want = format!("iff:\t{name}\n");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // A namespace is its file's inode (the `[N]` of `net:[N]`).
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let wanted = inode(netns);
    let in_ns =
        |pid: u32| wanted.is_none() || inode(Path::new(&format!("/proc/{pid}/ns/net"))) == wanted;
    let mut pids: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| in_ns(pid))
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| std::fs::read_to_string(fd.path()).is_ok_and(|t| t.contains(&want)))
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Opens (or creates) TAP device `name` with `queues` queues; with `gso`, asks for
/// offloads so the kernel sends GSO super-frames. A device another process already reads
/// is refused (its frames would be split between the two, unseen), unless `attach`.
pub fn open(name: &str, queues: u16, gso: bool, share: bool) -> Result<Vec<TapQueue>, DeviceError> {
    ifreq(name, 0)?;
    let others = readers(name);
    if !share && !others.is_empty() {
        let pids: Vec<String> = others.iter().map(u32::to_string).collect();
        return Err(DeviceError::Open {
            what: format!("tap {name}"),
            cause: std::io::Error::new(
                ErrorKind::AddrInUse,
                format!("already read by process {}", pids.join(", ")),
            ),
            hint: Some(
                "each frame would reach only one of the readers; stop the other run, or set \
                 device.attach = true to share the device's queues on purpose"
                    .into(),
            ),
        });
    }
    let base = libc::IFF_TAP | libc::IFF_NO_PI | if gso { libc::IFF_VNET_HDR } else { 0 };
    let mut out = Vec::new();
    for q in 0..queues {
        let file = match attach(name, base | libc::IFF_MULTI_QUEUE) {
            Ok(f) => f,
            // A device made without multi_queue accepts one single-queue reader.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && queues == 1 => {
                attach(name, base)
                    .map_err(|e| DeviceError::open(format!("tap {name} (TUNSETIFF)"), e))?
            }
            Err(e) => {
                return Err(DeviceError::open(
                    format!("tap {name} queue {q} (TUNSETIFF)"),
                    e,
                ))
            }
        };
        if gso {
            let all = libc::TUN_F_CSUM
                | libc::TUN_F_TSO4
                | libc::TUN_F_TSO6
                | libc::TUN_F_USO4
                | libc::TUN_F_USO6;
            let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of
            // TUN_F_* flags); the fd is a TUN fd attached above.
            let set = |flags: libc::c_uint| unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    libc::c_ulong::from(flags),
                )
            };
            // USO needs Linux 6.2; fall back to TSO only on older kernels.
            if set(all) < 0 && set(tso) < 0 {
                return Err(DeviceError::open(
                    format!("tap {name} (TUNSETOFFLOAD)"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        out.push(TapQueue {
            name: format!("{name} q{q}"),
            file,
            vnet: gso,
            arena: vec![0; ARENA].into_boxed_slice(),
            stamp: Stamp {
                queue: q,
                next_seq: 0,
            },
            stats: DeviceStats::default(),
        });
    }
    Ok(out)
}

impl TapQueue {
    fn wait(&self, timeout: Duration) -> Result<bool, DeviceError> {
        wait_readable(self.file.as_raw_fd(), timeout, &self.name)
    }
}

/// Waits up to `timeout` for `fd` to become readable; `Ok(false)` on timeout or a signal.
/// Shared by the TAP and AF_PACKET queues.
pub(super) fn wait_readable(
    fd: std::os::fd::RawFd,
    timeout: Duration,
    what: &str,
) -> Result<bool, DeviceError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLERR,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, exclusively borrowed, count 1; `fd` is open for the call
    // (the caller owns it).
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(DeviceError::Read {
            what: what.to_string(),
            cause: e,
        });
    }
    Ok(n > 0)
}

impl RxQueue for TapQueue {
    fn poll(
        &mut self,
        timeout: Duration,
        on_burst: &mut dyn FnMut(&[RxFrame<'_>]),
    ) -> Result<Poll, DeviceError> {
        if !self.wait(timeout)? {
            return Ok(Poll::Idle);
        }
        // Read frames one after another into the arena (each 64-byte aligned), then hand
        // them over as one burst: (start, len, vnet) of each.
        let mut reads = ArrayVec::<(usize, usize, VnetHdr), BURST>::new();
        let mut at = 0;
        while !reads.is_full() && self.arena.len() - at >= MAX_READ {
            let len = match self.file.read(&mut self.arena[at..at + MAX_READ]) {
                Ok(len) => len,
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    break
                }
                Err(e) => {
                    return Err(DeviceError::Read {
                        what: self.name.clone(),
                        cause: e,
                    })
                }
            };
            let (start, vnet) = if self.vnet {
                let Some(hdr) = self.arena[at..at + len].first_chunk::<{ VnetHdr::LEN }>() else {
                    continue;
                };
                (at + VnetHdr::LEN, VnetHdr::parse(hdr))
            } else {
                (at, VnetHdr::default())
            };
            reads.push((start, at + len - start, vnet));
            at = (at + len).next_multiple_of(64);
        }
        if reads.is_empty() {
            return Ok(Poll::Idle);
        }
        let (now, wall) = (monotonic_ns(), wall_ns());
        let mut burst = ArrayVec::<RxFrame<'_>, BURST>::new();
        for &(start, len, vnet) in &reads {
            let data = &self.arena[start..start + len];
            let mut meta = self.stamp.next(data, len as u32, wall, now);
            meta.vnet = vnet;
            if vnet.gso() != Gso::None {
                self.stats.gso_frames += 1;
            }
            self.stats.largest = self.stats.largest.max(len as u64);
            burst.push(RxFrame { data, meta });
        }
        on_burst(&burst);
        Ok(Poll::Frames(burst.len()))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn transmitter(&self) -> Option<std::sync::Arc<dyn super::TxQueue>> {
        let fd = self.file.try_clone().ok()?;
        Some(std::sync::Arc::new(super::tx::FdTx::new(
            self.name.clone(),
            fd.into(),
            self.vnet,
        )))
    }
}
