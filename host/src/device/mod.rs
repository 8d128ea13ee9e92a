//! Where frames come from: receive queues of a device, handing over bursts with metadata.
//!
//! Every source offers [`RxQueue`]s, one per worker. A queue hands its worker a burst of
//! up to [`BURST`] frames at a time, each an [`RxFrame`]: the bytes, borrowed from the
//! queue's own memory (the replay set, a TAP read arena, an AF_PACKET ring block), and
//! an [`RxMeta`] saying when and how it arrived. The worker reads each byte in place and
//! copies it once, into provider memory.
//!
//! ```text
//!  tap (read arena, virtio_net_hdr) ─┐
//!  af_packet (TPACKET_V3 block)     ─┼─> &[RxFrame] (data + RxMeta) ──> runtime worker
//!  replay / pcap (in memory)        ─┘
//! ```
//!
//! [`open`] opens the queues a [`DeviceConfig`] describes.

pub mod af_packet;
pub mod pcap;
pub mod replay;
pub mod tap;
pub mod tx;

pub use tx::TxQueue;

use crate::config::{DeviceConfig, DeviceKind};
pub use crate::stats::DeviceStats;
use std::time::Duration;

/// The most frames one burst holds.
pub const BURST: usize = 64;

/// What one poll of a queue found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// This many frames were handed over, in one or more bursts.
    Frames(usize),
    /// Nothing arrived within the timeout.
    Idle,
    /// The source is exhausted (end of a replay); no more frames will come.
    End,
}

/// A device error, naming the device and what the system said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Opening or configuring the device failed.
    #[error("{what}: {cause}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Open {
        /// The device and the step.
        what: String,
        /// What the system said.
        cause: std::io::Error,
        /// What to do about it.
        hint: Option<String>,
    },
    /// Reading failed.
    #[error("reading {what}: {cause}")]
    Read {
        /// The device.
        what: String,
        /// What the system said.
        cause: std::io::Error,
    },
    /// A capture file that cannot be replayed.
    #[error("{path}: {message}")]
    Capture {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl DeviceError {
    /// An open error, with a hint when the cause is missing privileges.
    pub fn open(what: impl Into<String>, source: std::io::Error) -> Self {
        let hint = (source.kind() == std::io::ErrorKind::PermissionDenied).then(|| {
            "memplex needs root or CAP_NET_ADMIN and CAP_NET_RAW for TAP and AF_PACKET devices; \
             without them, replay a capture with `kind = \"pcap\"`"
                .to_string()
        });
        DeviceError::Open {
            what: what.into(),
            cause: source,
            hint,
        }
    }
}

/// GSO type of a frame, from its `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gso {
    /// An ordinary frame.
    None,
    /// A TCP/IPv4 super-frame.
    Tcpv4,
    /// A TCP/IPv6 super-frame.
    Tcpv6,
    /// A UDP super-frame (USO or UFO).
    Udp,
    /// Another value.
    Other(u8),
}

/// The checksum state of a frame, from its `virtio_net_hdr` (TAP) or the packet
/// socket's status (AF_PACKET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Nothing said: the frame's checksums are as on the wire.
    AsIs,
    /// The L4 checksum still has to be completed (a locally sent frame whose checksum
    /// the NIC would fill in): from `start`, stored at `start + offset`. Both are 0 where
    /// the device does not say (AF_PACKET).
    Partial {
        /// Where checksumming starts.
        start: u16,
        /// Where the checksum goes, from `start`.
        offset: u16,
    },
    /// The device has already validated the checksums.
    Valid,
}

/// A `virtio_net_hdr` (the 10-byte header of `IFF_VNET_HDR` TAP devices), kept whole so
/// a frame can go back out with it. All zero for a plain frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*` flags: 1 needs checksum, 2 data valid.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` (with the ECN bit, 0x80).
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Bytes of payload per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Its length on the wire.
    pub const LEN: usize = 10;
    pub(crate) const NEEDS_CSUM: u8 = 1;
    const DATA_VALID: u8 = 2;

    /// Parses the little-endian header at the front of a TAP read.
    pub fn parse(b: &[u8; Self::LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// The GSO type.
    pub fn gso(&self) -> Gso {
        match self.gso_type & 0x7f {
            0 => Gso::None,
            1 => Gso::Tcpv4,
            4 => Gso::Tcpv6,
            3 | 5 => Gso::Udp,
            other => Gso::Other(other),
        }
    }

    /// The header as the device takes it in front of a frame (little-endian).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The checksum state.
    pub fn checksum(&self) -> Checksum {
        if self.flags & Self::NEEDS_CSUM != 0 {
            Checksum::Partial {
                start: self.csum_start,
                offset: self.csum_offset,
            }
        } else if self.flags & Self::DATA_VALID != 0 {
            Checksum::Valid
        } else {
            Checksum::AsIs
        }
    }
}

/// Whether a frame's VLAN tag is where it was on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Vlan {
    /// The frame is as received: any tags are in it.
    #[default]
    AsReceived,
    /// The device stripped the outer tag (AF_PACKET's VLAN offload) and memplex put it
    /// back after the MAC addresses, so the frame is split as it was on the wire.
    Restored {
        /// The tag's protocol id (0x8100 or 0x88a8).
        tpid: u16,
        /// The tag control information (priority, DEI, VLAN id).
        tci: u16,
    },
}

/// How and when one frame arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The capture or device timestamp, wall clock, in ns since the Unix epoch: the
    /// record's time for a replayed capture, the kernel's for AF_PACKET, the read's for
    /// TAP.
    pub timestamp_ns: u64,
    /// `CLOCK_MONOTONIC` when memplex received the frame's burst, in ns.
    pub rx_mono_ns: u64,
    /// The queue's sequence number: 0, 1, 2 ... in receive order, so a consumer that
    /// misses frames sees the gap.
    pub seq: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// The bytes captured (the frame's `data`); below `orig_len` when a capture or ring
    /// cut the frame short.
    pub cap_len: u32,
    /// The receive queue.
    pub queue: u16,
    /// VLAN tag status.
    pub vlan: Vlan,
    /// The `virtio_net_hdr` (GSO type and size, checksum state).
    pub vnet: VnetHdr,
}

/// One received frame: its bytes, in the queue's memory, and its metadata.
#[derive(Debug, Clone, Copy)]
pub struct RxFrame<'a> {
    /// The frame, from the Ethernet header on.
    pub data: &'a [u8],
    /// How and when it arrived.
    pub meta: RxMeta,
}

/// One receive queue.
pub trait RxQueue: Send {
    /// Hands what has arrived to `on_burst`, in bursts of at most [`BURST`] frames,
    /// waiting up to `timeout` for the first. The frames are valid only during the call.
    fn poll(
        &mut self,
        timeout: Duration,
        on_burst: &mut dyn FnMut(&[RxFrame<'_>]),
    ) -> Result<Poll, DeviceError>;

    /// A name for messages and stats (`mpx0 q1`, `traffic.pcap q0`).
    fn name(&self) -> &str;

    /// What the device saw that the frames alone don't show.
    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }

    /// Frames the kernel dropped before this queue could read them, since the last call
    /// (AF_PACKET ring overruns; 0 where the device cannot tell).
    fn kernel_drops(&mut self) -> u64 {
        0
    }

    /// The device's index in the config (0 for `[device]`, see
    /// `Config::device_names`).
    fn device(&self) -> u16 {
        0
    }

    /// A transmitter on this queue's descriptor, for routes that forward to the device;
    /// `None` where the source cannot send (a replayed capture).
    fn transmitter(&self) -> Option<std::sync::Arc<dyn TxQueue>> {
        None
    }

    /// True when the frames it hands over are likely out of the CPU's caches: a replay
    /// whose frames take more memory than an L2 holds. The worker then measures whether
    /// asking for each vector's frames one vector ahead pays on this CPU, and asks when it
    /// does (`runtime/read_ahead.rs`). False for frames a kernel or a NIC just wrote, which
    /// are near already, and where the asking costs more than it saves.
    fn frames_cold(&self) -> bool {
        false
    }
}

/// A queue of the config's device of index `device` (a `[devices.NAME]`).
pub struct OnDevice {
    /// The device's index.
    pub device: u16,
    /// The queue.
    pub queue: Box<dyn RxQueue>,
}

impl RxQueue for OnDevice {
    fn poll(
        &mut self,
        timeout: Duration,
        on_burst: &mut dyn FnMut(&[RxFrame<'_>]),
    ) -> Result<Poll, DeviceError> {
        self.queue.poll(timeout, on_burst)
    }

    fn name(&self) -> &str {
        self.queue.name()
    }

    fn stats(&self) -> DeviceStats {
        self.queue.stats()
    }

    fn kernel_drops(&mut self) -> u64 {
        self.queue.kernel_drops()
    }

    fn device(&self) -> u16 {
        self.device
    }

    fn transmitter(&self) -> Option<std::sync::Arc<dyn TxQueue>> {
        self.queue.transmitter()
    }

    fn frames_cold(&self) -> bool {
        self.queue.frames_cold()
    }
}

/// Queues of one kind as the engine takes them.
pub fn boxed<Q: RxQueue + 'static>(queues: impl IntoIterator<Item = Q>) -> Vec<Box<dyn RxQueue>> {
    queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn RxQueue>)
        .collect()
}

/// Opens the queues of the device `d` describes.
pub fn open(d: &DeviceConfig) -> Result<Vec<Box<dyn RxQueue>>, DeviceError> {
    let missing = |key: &str| {
        DeviceError::open(
            format!("{:?} device", d.kind),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("device.{key} is not set"),
            ),
        )
    };
    Ok(match d.kind {
        DeviceKind::Pcap => {
            let path = d.path.as_deref().ok_or_else(|| missing("path"))?;
            boxed(pcap::open(path, d.queues, d.repeat, d.rate)?)
        }
        DeviceKind::Tap => {
            let name = d.interface.as_deref().ok_or_else(|| missing("interface"))?;
            boxed(tap::open(name, d.queues, d.gso, d.attach)?)
        }
        DeviceKind::AfPacket => {
            let name = d.interface.as_deref().ok_or_else(|| missing("interface"))?;
            boxed(af_packet::open(
                name,
                d.queues,
                d.block_size,
                d.block_count,
                d.block_timeout_ms,
                d.gso,
            )?)
        }
    })
}

/// `CLOCK_MONOTONIC` now, in ns: the receive time a burst's frames carry.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The wall clock now, in ns since the Unix epoch.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Numbers a queue's frames in receive order and stamps its bursts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamp {
    /// The queue's index.
    pub queue: u16,
    /// The next frame's sequence number.
    pub next_seq: u64,
}

impl Stamp {
    /// Metadata for the next frame of `data` bytes (`orig_len` on the wire), received
    /// at `rx_mono_ns`.
    #[inline]
    pub fn next(
        &mut self,
        data: &[u8],
        orig_len: u32,
        timestamp_ns: u64,
        rx_mono_ns: u64,
    ) -> RxMeta {
        let seq = self.next_seq;
        self.next_seq += 1;
        RxMeta {
            timestamp_ns,
            rx_mono_ns,
            seq,
            orig_len,
            cap_len: data.len() as u32,
            queue: self.queue,
            vlan: Vlan::AsReceived,
            vnet: VnetHdr::default(),
        }
    }
}

/// A flow hash over the 5-tuple, for spreading flows over queues like PACKET_FANOUT_HASH.
pub fn flow_hash(frame: &[u8]) -> u64 {
    let m = crate::wire::walk(frame).meta;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let addr = |a: Option<std::net::IpAddr>| match a {
        Some(std::net::IpAddr::V4(v)) => u128::from(u32::from(v)),
        Some(std::net::IpAddr::V6(v)) => u128::from(v),
        None => 0,
    };
    // Symmetric: both directions of a flow land on the same queue.
    let (a, b) = (addr(m.src()), addr(m.dst()));
    let (pa, pb) = (m.src_port().unwrap_or(0), m.dst_port().unwrap_or(0));
    mix(&(a ^ b).to_le_bytes());
    mix(&(pa ^ pb).to_le_bytes());
    mix(&[m.protocol().unwrap_or(0)]);
    mix(&m.ethertype().to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_header_fields() {
        // NEEDS_CSUM, TCPv4 GSO, hdr_len 66, gso_size 1448, csum at 34+16.
        let b = [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let h = VnetHdr::parse(&b);
        assert_eq!(h.gso(), Gso::Tcpv4);
        assert_eq!(h.gso_size, 1448);
        assert_eq!(
            h.checksum(),
            Checksum::Partial {
                start: 34,
                offset: 16
            }
        );
        assert_eq!(
            VnetHdr::parse(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0]).checksum(),
            Checksum::Valid
        );
        assert_eq!(VnetHdr::default().gso(), Gso::None);
    }
}
