//! Socket messages. Every message is one SOCK_SEQPACKET datagram: a [`Header`] and a
//! body of the kind's fixed layout, little-endian, with file descriptors (SCM_RIGHTS)
//! where the kind says so. A message shorter than its kind's layout, or of a kind a side
//! does not know, ends the session.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MXPR` in memory order: the first four bytes of every message.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MXPR");

/// Longest consumer name, in bytes.
pub const NAME_LEN: usize = 64;

/// Longest text in a [`Bye`] or a provider name in a [`Region`].
pub const TEXT_LEN: usize = 128;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Consumer to host, first: [`Hello`].
    Hello = 1,
    /// Host to consumer, the answer: [`Welcome`].
    Welcome = 2,
    /// Host to consumer, one per queue: [`Channel`], with the channel memfd and the
    /// host-to-consumer eventfd (two descriptors).
    Channel = 3,
    /// Host to consumer, any time: [`Region`], with a read-only descriptor of the memory.
    Region = 4,
    /// Host to consumer: every channel has been sent; frames may follow.
    Ready = 5,
    /// Either way, last: [`Bye`], why the session ends.
    Bye = 6,
}

impl Kind {
    /// The kind numbered `n`.
    pub fn from_u32(n: u32) -> Option<Kind> {
        Some(match n {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Channel,
            4 => Kind::Region,
            5 => Kind::Ready,
            6 => Kind::Bye,
            _ => return None,
        })
    }
}

/// The start of every message.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: u32,
    /// A [`Kind`].
    pub kind: u32,
}

/// How a consumer waits for frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Wake {
    /// It sleeps on the channel's eventfd after setting the ring's need-wakeup flag.
    EventFd = 0,
    /// It polls the rings and never asks to be woken.
    BusyPoll = 1,
}

/// Consumer to host: who it is and what it speaks.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Hello {
    /// [`crate::VERSION`].
    pub version: u32,
    /// A [`Wake`].
    pub wake: u32,
    /// The consumer's name in the host's config (`[consumers.NAME]`), NUL-padded.
    pub name: [u8; NAME_LEN],
    /// `FEATURE_*` bits the consumer asks for.
    pub features: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// [`Hello::features`] / [`Welcome::features`]: a metadata ring per channel, one
/// [`crate::layout::FrameMeta`] per frame (sequence number, timestamps, lengths, route,
/// flow hash, checksum, GSO state). Without it the host writes descriptors only.
pub const FEATURE_META: u32 = 1;

/// Host to consumer: the session's terms.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Welcome {
    /// The version the host speaks for this session.
    pub version: u32,
    /// Receive queues: one [`Channel`] follows for each.
    pub queues: u32,
    /// This session's number (unique within the host process).
    pub session: u64,
    /// The most buffers the session may hold at once on each queue.
    pub quota: u32,
    /// 1 when frames carry a CRC-32 of their bytes in their metadata's `checksum`
    /// (only with [`FEATURE_META`]).
    pub checksums: u32,
    /// The `FEATURE_*` bits granted (those asked for that the host speaks).
    pub features: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// Host to consumer: one queue's rings, in the memfd sent with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Channel {
    /// The host queue the rings belong to.
    pub queue: u32,
    /// 1 when an eventfd is sent too (the host offers eventfd wake-ups).
    pub eventfd: u32,
    /// Bytes of the memfd to map (read-write, shared).
    pub len: u64,
}

/// Host to consumer: a region of provider memory that frame entries point into.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Region {
    /// The number entries use for it.
    pub index: u32,
    /// `memplex_abi::RegionKind`: 1 exportable host memory, 2 device memory.
    pub kind: u32,
    /// Bytes of it, from `offset` in the descriptor.
    pub len: u64,
    /// Where it starts in the descriptor (map from here, page-aligned down).
    pub offset: u64,
    /// The provider it belongs to, NUL-padded.
    pub provider: [u8; TEXT_LEN],
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ByeReason {
    /// The consumer said goodbye.
    Done = 0,
    /// The host is stopping.
    Shutdown = 1,
    /// The Hello was refused (version, name, peer credentials, too many sessions).
    Refused = 2,
    /// A refill token was stale, foreign or forged.
    BadToken = 3,
    /// A ring index moved outside what the ring allows.
    BadIndex = 4,
    /// A message the other side could not parse.
    BadMessage = 5,
    /// A transmit entry that cannot be used: no parts, too many, or bytes outside
    /// their buffer.
    BadEntry = 6,
}

/// Either way: the end of the session and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Bye {
    /// A [`ByeReason`].
    pub reason: u32,
    /// Words for a person, NUL-padded.
    pub text: [u8; TEXT_LEN],
}

/// A NUL-padded fixed field from `s` (cut at the field's length).
pub fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// The text of a NUL-padded fixed field.
pub fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A message as bytes: its header and body.
pub fn encode<T: IntoBytes + Immutable>(kind: Kind, body: &T) -> Vec<u8> {
    let h = Header {
        magic: MAGIC,
        kind: kind as u32,
    };
    let mut out = Vec::with_capacity(8 + size_of::<T>());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

/// A message's kind and body bytes, or why it is not a message.
pub fn decode(bytes: &[u8]) -> Result<(Kind, &[u8]), String> {
    let (h, body) = Header::read_from_prefix(bytes)
        .map_err(|_| format!("a message of {} bytes, shorter than a header", bytes.len()))?;
    if h.magic != MAGIC {
        return Err(format!("bad magic {:#x}", h.magic));
    }
    let kind = Kind::from_u32(h.kind).ok_or_else(|| format!("unknown kind {}", h.kind))?;
    Ok((kind, &bytes[8..8 + body.len()]))
}

/// The body of a message of kind `T`, or why not.
pub fn body<T: FromBytes>(bytes: &[u8]) -> Result<T, String> {
    T::read_from_prefix(bytes).map(|(t, _)| t).map_err(|_| {
        format!(
            "a body of {} bytes, shorter than the {} its kind needs",
            bytes.len(),
            size_of::<T>()
        )
    })
}

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// The longest message, in bytes.
pub const MAX_MSG: usize = 512;

/// Sends one message of `kind` with `fds` (at most [`MAX_FDS`]) on a SOCK_SEQPACKET
/// socket.
pub fn send<T: IntoBytes + Immutable>(
    sock: impl std::os::fd::AsFd,
    kind: Kind,
    body: &T,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    assert!(fds.len() <= MAX_FDS);
    let bytes = encode(kind, body);
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "descriptors do not fit the control buffer",
        ));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n != bytes.len() {
        return Err(std::io::Error::other(format!(
            "sent {n} of {} bytes of a message",
            bytes.len()
        )));
    }
    Ok(())
}

/// Receives one message into `buf`: its length and the descriptors that came with it
/// (closed when dropped). `Ok(None)` when the peer closed the socket.
pub fn recv(
    sock: impl std::os::fd::AsFd,
    buf: &mut [u8; MAX_MSG],
    flags: rustix::net::RecvFlags,
) -> std::io::Result<Option<(usize, Vec<std::os::fd::OwnedFd>)>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(buf)],
        &mut control,
        flags | rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(std::io::Error::other(
            "a message longer than any the protocol has",
        ));
    }
    Ok(Some((msg.bytes, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let hello = Hello {
            version: crate::VERSION,
            wake: Wake::BusyPoll as u32,
            name: fixed("tcp"),
            features: FEATURE_META,
            reserved: 0,
        };
        let bytes = encode(Kind::Hello, &hello);
        assert_eq!(bytes.len(), 8 + 80);
        let (kind, b) = decode(&bytes).unwrap();
        assert_eq!(kind, Kind::Hello);
        let back: Hello = body(b).unwrap();
        assert_eq!(text(&back.name), "tcp");
        assert!(decode(&bytes[..4])
            .unwrap_err()
            .contains("shorter than a header"));
        let mut bad = bytes.clone();
        bad[4] = 99;
        assert!(decode(&bad).unwrap_err().contains("unknown kind 99"));
        bad[0] = 0;
        assert!(decode(&bad).unwrap_err().contains("bad magic"));
        assert!(body::<Hello>(&b[..10])
            .unwrap_err()
            .contains("shorter than the 80"));
    }
}
