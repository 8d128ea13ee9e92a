//! Where frames come from: receive queues of a device.
//!
//! Every source offers [`RxQueue`]s, one per worker. A queue hands frames to a callback
//! as borrowed slices of its own memory (the pcap replay buffer, a TAP read buffer, an
//! AF_PACKET ring block), so the worker reads each byte in place and copies it once,
//! into provider memory.

pub mod af_packet;
pub mod pcap;
pub mod tap;

use std::time::Duration;

/// What one poll of a queue found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// This many frames were handed to the callback.
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
    #[error("{what}: {source}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Open {
        /// The device and the step.
        what: String,
        /// What the system said.
        source: std::io::Error,
        /// What to do about it.
        hint: Option<String>,
    },
    /// Reading failed.
    #[error("reading {what}: {source}")]
    Read {
        /// The device.
        what: String,
        /// What the system said.
        source: std::io::Error,
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
            source,
            hint,
        }
    }
}

/// One receive queue.
pub trait RxQueue: Send {
    /// Hands up to `budget` frames to `on_frame`, waiting up to `timeout` for the first.
    fn poll(
        &mut self,
        budget: usize,
        timeout: Duration,
        on_frame: &mut dyn FnMut(&[u8]),
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
}

/// Device-level counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStats {
    /// GSO super-frames received (TAP with `gso = true`).
    pub gso_frames: u64,
    /// The largest frame received, in bytes.
    pub largest: usize,
    /// Frames the kernel dropped because the reader fell behind (AF_PACKET).
    pub kernel_drops: u64,
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
    let (a, b) = (addr(m.src), addr(m.dst));
    let (pa, pb) = (m.src_port.unwrap_or(0), m.dst_port.unwrap_or(0));
    mix(&(a ^ b).to_le_bytes());
    mix(&(pa ^ pb).to_le_bytes());
    mix(&[m.protocol.unwrap_or(0)]);
    mix(&m.ethertype.to_le_bytes());
    h
}
