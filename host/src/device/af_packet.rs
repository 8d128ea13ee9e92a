//! AF_PACKET with a TPACKET_V3 receive ring: the kernel writes frames into blocks of a
//! ring shared with memplex, and the worker reads them in place. One system call per
//! block at most (a `poll(2)` when the ring is empty), none per frame.
//!
//! Each queue is one packet socket with its own ring; the queues of a device join one
//! PACKET_FANOUT group (hash mode, so a flow stays on one queue, defragmenting first).
//! Ring geometry comes from `device.block_size` and `device.block_count`; a block is
//! handed back to the kernel as soon as its frames have been placed, and a block that is
//! not full is retired after `device.block_timeout_ms` (1 ms by default), which bounds
//! latency at low rates: TCP's ACKs ride in such blocks, so the timeout caps a TCP
//! flow's window turns (10 ms held a flow through memplex to a fifth of what 1 ms gave).
//!
//! Frames the host itself sends on the interface are ignored (PACKET_IGNORE_OUTGOING):
//! like a NIC's receive queues, the device sees what arrives.
//!
//! With `gso = true` the socket takes and gives a `virtio_net_hdr` with each frame
//! (PACKET_VNET_HDR): the kernel hands GSO super-frames up whole, with their partial
//! checksums, and the transmitter (a duplicate of the socket, so it shares the option)
//! sends them out whole the same way. A super-frame must fit in one ring block, so such a
//! device needs blocks of at least [`GSO_MIN_BLOCK`] bytes (config check says so).
//!
//! TPACKET_V3 moves a frame's VLAN tag out of the frame into its header; the queue puts
//! it back (a copy, for tagged frames only) so that the frame is split as it was on the
//! wire.
//!
//! One of the few modules allowed `unsafe`: socket options, and reading the ring that
//! the kernel writes concurrently.
#![allow(
    unsafe_code,
    reason = "packet socket options and the shared TPACKET_V3 ring"
)]

use super::{
    monotonic_ns, DeviceError, DeviceStats, Poll, RxFrame, RxQueue, Stamp, Vlan, VnetHdr, BURST,
};
use arrayvec::ArrayVec;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::Duration;

const PACKET_VERSION: libc::c_int = 10;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_VNET_HDR: libc::c_int = 15;
const TPACKET_V3: libc::c_int = 2;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_FLAG_DEFRAG: u32 = 0x8000;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// `struct tpacket_req3`.
#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}
const _: () = assert!(std::mem::size_of::<TpacketReq3>() == 28);

/// `struct tpacket_block_desc` with its `tpacket_hdr_v1`.
#[repr(C)]
struct BlockDesc {
    version: u32,
    offset_to_priv: u32,
    block_status: u32,
    num_pkts: u32,
    offset_to_first_pkt: u32,
    blk_len: u32,
    seq_num: u64,
    ts_first: [u32; 2],
    ts_last: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<BlockDesc>() == 48);

/// `struct tpacket3_hdr` with its `tpacket_hdr_variant1`.
#[repr(C)]
struct Tpacket3Hdr {
    next_offset: u32,
    sec: u32,
    nsec: u32,
    snaplen: u32,
    len: u32,
    status: u32,
    mac: u16,
    net: u16,
    rxhash: u32,
    vlan_tci: u32,
    vlan_tpid: u16,
    padding: u16,
    padding2: [u8; 8],
}
const _: () = assert!(std::mem::size_of::<Tpacket3Hdr>() == 48);

/// The smallest ring block a device with `gso = true` takes: a 64 KiB super-frame, its
/// headers and the ring's own, in one block.
pub const GSO_MIN_BLOCK: u32 = 1 << 17;

static FANOUT_SEQ: AtomicU16 = AtomicU16::new(0);

/// One AF_PACKET queue: a socket and its mapped ring.
pub struct AfPacketQueue {
    name: String,
    fd: OwnedFd,
    ring: memmap2::MmapRaw,
    block_size: usize,
    blocks: usize,
    next: usize,
    /// Frames whose VLAN tag is put back, rebuilt here (grown to the largest burst's
    /// need, then reused).
    scratch: Vec<u8>,
    /// Each frame comes (and goes) with a `virtio_net_hdr` (PACKET_VNET_HDR).
    vnet: bool,
    stamp: Stamp,
    stats: DeviceStats,
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` points to a live T whose exact size is passed; the kernel only
    // reads it during the call; `fd` is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `queues` fanout queues on `interface`, each with a ring of `block_count` blocks
/// of `block_size` bytes; with `gso`, frames come and go with a `virtio_net_hdr`.
pub fn open(
    interface: &str,
    queues: u16,
    block_size: u32,
    block_count: u32,
    block_timeout_ms: u32,
    gso: bool,
) -> Result<Vec<AfPacketQueue>, DeviceError> {
    let what = |step: &str| format!("af_packet {interface} ({step})");
    let page = 4096;
    if block_size < page || !block_size.is_power_of_two() || block_count == 0 {
        return Err(DeviceError::open(
            what("ring geometry"),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "block_size must be a power of two of at least 4096, block_count at least 1",
            ),
        ));
    }
    if gso && block_size < GSO_MIN_BLOCK {
        return Err(DeviceError::open(
            what("ring geometry"),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("with gso, block_size must be at least {GSO_MIN_BLOCK} (a 64 KiB super-frame fits in one block)"),
            ),
        ));
    }
    let name = std::ffi::CString::new(interface).map_err(|_| {
        DeviceError::open(
            what("name"),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that lives for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DeviceError::open(
            what("if_nametoindex"),
            std::io::Error::last_os_error(),
        ));
    }
    let group = u32::from(std::process::id() as u16 ^ FANOUT_SEQ.fetch_add(1, Ordering::Relaxed));
    let mut out = Vec::new();
    for q in 0..queues {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            return Err(DeviceError::open(
                what("socket"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, PACKET_VERSION, &TPACKET_V3)
            .map_err(|e| DeviceError::open(what("PACKET_VERSION"), e))?;
        // A receive path: frames this host sends on the interface are not ours.
        let one: libc::c_int = 1;
        setsockopt(&fd, PACKET_IGNORE_OUTGOING, &one)
            .map_err(|e| DeviceError::open(what("PACKET_IGNORE_OUTGOING"), e))?;
        if gso {
            // Before the ring: the kernel sizes ring frames with the header in mind.
            setsockopt(&fd, PACKET_VNET_HDR, &one)
                .map_err(|e| DeviceError::open(what("PACKET_VNET_HDR"), e))?;
        }
        let req = TpacketReq3 {
            block_size,
            block_nr: block_count,
            frame_size: 2048,
            frame_nr: block_size / 2048 * block_count,
            retire_blk_tov: block_timeout_ms.max(1),
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        setsockopt(&fd, PACKET_RX_RING, &req)
            .map_err(|e| DeviceError::open(what("PACKET_RX_RING"), e))?;
        let len = block_size as usize * block_count as usize;
        let ring = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(fd.as_raw_fd())
            .map_err(|e| DeviceError::open(what("mmap of the ring"), e))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed; the fd is open.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(DeviceError::open(
                what("bind"),
                std::io::Error::last_os_error(),
            ));
        }
        if queues > 1 {
            let arg = group | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16);
            setsockopt(&fd, PACKET_FANOUT, &arg)
                .map_err(|e| DeviceError::open(what("PACKET_FANOUT"), e))?;
        }
        out.push(AfPacketQueue {
            name: format!("{interface} q{q}"),
            fd,
            ring,
            block_size: block_size as usize,
            blocks: block_count as usize,
            next: 0,
            scratch: Vec::with_capacity(1 << 16),
            vnet: gso,
            stamp: Stamp {
                queue: q,
                next_seq: 0,
            },
            stats: DeviceStats::default(),
        });
    }
    Ok(out)
}

/// The `virtio_net_hdr` the kernel wrote just before the frame at `mac` in a block.
fn vnet_before(block: &[u8], mac: usize) -> Option<VnetHdr> {
    let b = block.get(mac.checked_sub(VnetHdr::LEN)?..mac)?;
    Some(VnetHdr::parse(b.try_into().ok()?))
}

/// The packet header at `at` in a block, when one fits there.
fn header(block: &[u8], at: usize) -> Option<&Tpacket3Hdr> {
    let bytes = block.get(at..at.checked_add(std::mem::size_of::<Tpacket3Hdr>())?)?;
    let ptr = bytes.as_ptr().cast::<Tpacket3Hdr>();
    if !ptr.is_aligned() {
        return None;
    }
    // SAFETY: `bytes` holds a whole, aligned Tpacket3Hdr (checked above), a plain struct
    // of integers for which any bytes are valid; it borrows from `block`, which the kernel
    // leaves alone until the block is handed back.
    Some(unsafe { &*ptr })
}

impl AfPacketQueue {
    fn block(&self, i: usize) -> *mut u8 {
        // SAFETY: i < blocks, so the offset stays inside the mapping of
        // blocks * block_size bytes.
        unsafe { self.ring.as_mut_ptr().add(i * self.block_size) }
    }

    fn status(&self, i: usize) -> u32 {
        let desc = self.block(i).cast::<BlockDesc>();
        // SAFETY: every block starts with a BlockDesc, 8-byte aligned (blocks are page
        // aligned); the kernel writes block_status concurrently, so it is read volatile.
        let s = unsafe { std::ptr::addr_of!((*desc).block_status).read_volatile() };
        // Frames written by the kernel before it set TP_STATUS_USER are visible after this.
        fence(Ordering::Acquire);
        s
    }

    fn wait(&self, timeout: Duration) -> Result<(), DeviceError> {
        super::tap::wait_readable(self.fd.as_raw_fd(), timeout, &self.name).map(|_| ())
    }
}

impl AfPacketQueue {
    /// Frames the kernel dropped because the ring was full, since the last call
    /// (PACKET_STATISTICS resets on read).
    pub fn kernel_drops(&self) -> u64 {
        let mut st = [0u32; 3]; // tpacket_stats_v3: packets, drops, freeze_q_cnt
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS (6) writes at most `len` bytes into `st`, which is
        // live and exclusively borrowed; `len` is updated in place.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                6,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r < 0 {
            return 0;
        }
        u64::from(st[1])
    }
}

/// Where a frame of a block is, for one burst.
#[derive(Clone, Copy)]
enum Slot {
    /// In the ring: offset and length within the block.
    Ring(usize, usize),
    /// Rebuilt with its VLAN tag in the scratch buffer: offset and length there.
    Scratch(usize, usize),
}

impl RxQueue for AfPacketQueue {
    fn poll(
        &mut self,
        timeout: Duration,
        on_burst: &mut dyn FnMut(&[RxFrame<'_>]),
    ) -> Result<Poll, DeviceError> {
        if self.status(self.next) & TP_STATUS_USER == 0 {
            self.wait(timeout)?;
            if self.status(self.next) & TP_STATUS_USER == 0 {
                return Ok(Poll::Idle);
            }
        }
        // A whole block per poll, in bursts of up to BURST frames; the block is handed
        // back only when all of its frames are placed.
        let base = self.block(self.next);
        let desc = base.cast::<BlockDesc>();
        // SAFETY: the block is ours (TP_STATUS_USER) until we hand it back below, so the
        // kernel does not write it meanwhile; its header fields are aligned u32s.
        let (count, first) = unsafe {
            (
                (*desc).num_pkts as usize,
                (*desc).offset_to_first_pkt as usize,
            )
        };
        // SAFETY: the whole block, ours until handed back (see above), lies inside the
        // mapping (`block` keeps i < blocks).
        let block = unsafe { std::slice::from_raw_parts(base.cast_const(), self.block_size) };
        let mut at = first;
        let mut done = 0;
        let mut more = true;
        while more && done < count {
            let now = monotonic_ns();
            let mut slots = ArrayVec::<(Slot, super::RxMeta), BURST>::new();
            self.scratch.clear();
            while !slots.is_full() && done < count {
                let Some(hdr) = header(block, at) else {
                    more = false;
                    break;
                };
                let (mac, snap) = (usize::from(hdr.mac), hdr.snaplen as usize);
                let Some(frame) = block.get(at + mac..at + mac + snap) else {
                    more = false;
                    break;
                };
                let ts = u64::from(hdr.sec) * 1_000_000_000 + u64::from(hdr.nsec);
                let mut meta = self.stamp.next(frame, hdr.len, ts, now);
                meta.vnet = match self.vnet.then(|| vnet_before(block, at + mac)) {
                    // The kernel's own header, just before the frame.
                    Some(Some(v)) => v,
                    Some(None) => {
                        more = false;
                        break;
                    }
                    None => VnetHdr {
                        flags: u8::from(hdr.status & TP_STATUS_CSUMNOTREADY != 0)
                            | (u8::from(hdr.status & TP_STATUS_CSUM_VALID != 0) << 1),
                        ..VnetHdr::default()
                    },
                };
                if meta.vnet.gso() != super::Gso::None {
                    self.stats.gso_frames += 1;
                }
                self.stats.largest = self.stats.largest.max(u64::from(hdr.len));
                let slot = if hdr.status & TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                    // The tag goes back in front of the network header: the offsets the
                    // kernel gave (without it) move by its 4 bytes.
                    if self.vnet {
                        let v = &mut meta.vnet;
                        if v.flags & VnetHdr::NEEDS_CSUM != 0 {
                            v.csum_start = v.csum_start.saturating_add(4);
                        }
                        if v.hdr_len != 0 {
                            v.hdr_len = v.hdr_len.saturating_add(4);
                        }
                    }
                    let tpid = if hdr.status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        hdr.vlan_tpid
                    } else {
                        0x8100
                    };
                    let tci = hdr.vlan_tci as u16;
                    meta.vlan = Vlan::Restored { tpid, tci };
                    meta.cap_len += 4;
                    meta.orig_len += 4;
                    let start = self.scratch.len();
                    self.scratch.extend_from_slice(&frame[..12]);
                    self.scratch.extend_from_slice(&tpid.to_be_bytes());
                    self.scratch.extend_from_slice(&tci.to_be_bytes());
                    self.scratch.extend_from_slice(&frame[12..]);
                    Slot::Scratch(start, self.scratch.len() - start)
                } else {
                    Slot::Ring(at + mac, snap)
                };
                slots.push((slot, meta));
                done += 1;
                if hdr.next_offset == 0 {
                    more = false;
                    break;
                }
                at += hdr.next_offset as usize;
            }
            let burst: ArrayVec<RxFrame<'_>, BURST> = slots
                .iter()
                .map(|&(slot, meta)| RxFrame {
                    data: match slot {
                        Slot::Ring(o, n) => &block[o..o + n],
                        Slot::Scratch(o, n) => &self.scratch[o..o + n],
                    },
                    meta,
                })
                .collect();
            if !burst.is_empty() {
                on_burst(&burst);
            }
        }
        fence(Ordering::Release);
        // SAFETY: hands the block back: a volatile aligned store to its status word, after
        // the release fence so our reads of it are done first.
        unsafe { std::ptr::addr_of_mut!((*desc).block_status).write_volatile(TP_STATUS_KERNEL) };
        self.next = (self.next + 1) % self.blocks;
        Ok(Poll::Frames(done))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn kernel_drops(&mut self) -> u64 {
        AfPacketQueue::kernel_drops(self)
    }

    fn transmitter(&self) -> Option<std::sync::Arc<dyn super::TxQueue>> {
        // The socket is bound to its interface: what is written to it goes out there.
        let fd = self.fd.try_clone().ok()?;
        Some(std::sync::Arc::new(super::tx::FdTx::new(
            self.name.clone(),
            fd,
            self.vnet,
        )))
    }
}
