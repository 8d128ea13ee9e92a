//! # memplex-consumer: frames from memplex, in the providers' memory, without a copy
//!
//! A process that connects to a memplex consumer socket receives every frame that the
//! routes with `deliver = "NAME"` placed. It reads each frame's head and frags in place,
//! in the provider memory memplex placed them in, which this process maps read-only.
//! When a frame is dropped, its buffers go back to memplex.
//!
//! ```no_run
//! use memplex_consumer::{Consumer, Options};
//! let c = Consumer::connect("/run/memplex/tcp.sock", &Options::new("tcp"))?;
//! while let Some(frame) = c.next(None)? {
//!     if let Some(m) = frame.meta() {
//!         println!("seq {} on queue {}: {} B head, {} frags", m.seq, m.queue,
//!             frame.head().len(), frame.frags().count());
//!     }
//!     for frag in frame.frags() {
//!         let _payload: &[u8] = frag; // straight from the provider's memory
//!     }
//! } // each frame's buffers go back when it is dropped (in batches)
//! # Ok::<(), memplex_consumer::Error>(())
//! ```
//!
//! - Frames borrow the [`Consumer`], so several can be held at once (up to the session's
//!   quota). Their buffers go back to memplex in batches (of at most half the quota),
//!   through each queue's refill ring, when they are dropped; what is left goes back
//!   whenever a poll finds nothing to read, or when [`Consumer::flush`] is called.
//! - [`Wake::EventFd`] sleeps on an eventfd that memplex writes at most once per batch,
//!   and only while this side sleeps. [`Wake::BusyPoll`] spins on the rings and makes no
//!   system calls.
//! - Each frame's metadata (sequence number, timestamps, lengths, route, flow hash,
//!   checksum, GSO state) comes in a ring of its own, which [`Options::new`] asks for.
//!   [`Options::without_metadata`] leaves it out: memplex then writes 16 bytes per part
//!   and nothing else, and a frame is its head and frags.
//! - `AsyncConsumer` (the `tokio` feature, on by default) is the same for tokio.
//!
//! The protocol and its byte layout are in `memplex-proto` and `docs/delivery.md`. The
//! same layout is available to C in `consumer/include/memplex.h`.

mod map;
#[cfg(feature = "tokio")]
mod tokio_consumer;

#[cfg(feature = "tokio")]
pub use tokio_consumer::AsyncConsumer;

pub use memplex_proto::layout::Desc;
pub use memplex_proto::layout::FrameMeta as Meta;
pub use memplex_proto::msg::Wake;

use map::RegionMap;
use memplex_proto::layout::{self, FrameMeta, RingKind};
use memplex_proto::msg::{self, Kind};
use memplex_proto::ring::{ChannelMap, Consumer as RingReader, Producer as RingWriter};
use rustix::event::{PollFd, PollFlags};
use rustix::net::RecvFlags;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be reached.
    #[error("cannot connect to memplex at {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// memplex refused the session or ended it, and why.
    #[error("memplex ended the session ({reason:?}): {text}")]
    Ended {
        /// The reason code.
        reason: u32,
        /// Its words.
        text: String,
    },
    /// memplex closed the socket without saying why.
    #[error("memplex closed the connection")]
    Closed,
    /// Something memplex sent does not follow the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A frame could not be sent back out (it was given back instead), and why.
    #[error("cannot transmit: {0}")]
    Transmit(&'static str),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when the session ended because memplex stopped: the normal end of a run.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Error::Ended { reason, .. } if *reason == msg::ByeReason::Shutdown as u32)
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    /// The consumer's name in memplex's config (`[consumers.NAME]`); empty accepts
    /// whichever consumer the socket serves.
    pub name: String,
    /// How to wait for frames.
    pub wake: Wake,
    /// Buffers given back per refill batch (at most half the session's quota; they
    /// also go back whenever a poll finds nothing to read).
    pub batch: usize,
    /// Ask for each frame's metadata (a second ring, 64 bytes a frame).
    pub metadata: bool,
    /// Ask the CPU for the next published frame's parts while handing out one (see
    /// [`Options::read_ahead`]).
    pub read_ahead: bool,
    /// With eventfd wake-ups: how long to keep polling the rings, once they are empty,
    /// before asking to be woken (see [`Options::spin`]).
    pub spin: Duration,
}

impl Options {
    /// Eventfd wake-ups, refills in batches of 128 buffers.
    pub fn new(name: &str) -> Options {
        Options {
            name: name.into(),
            wake: Wake::EventFd,
            batch: 128,
            metadata: true,
            read_ahead: false,
            spin: Duration::ZERO,
        }
    }

    /// The same, without metadata: frames are their head and frags only (no sequence
    /// numbers, timestamps, route, flow hash or checksum), and memplex writes nothing
    /// per frame but its descriptors.
    pub fn without_metadata(mut self) -> Options {
        self.metadata = false;
        self
    }

    /// The same, busy-polling.
    pub fn busy_poll(mut self) -> Options {
        self.wake = Wake::BusyPoll;
        self
    }

    /// The same, polling the rings for up to `time` once they are empty before sleeping
    /// on the eventfds: a frame that comes within `time` is read without a wake-up (no
    /// system call on either side, and none of the machine's delay in waking a sleeping
    /// CPU), and a consumer with nothing to read for longer sleeps. As NAPI's busy-poll
    /// budget or io_uring's SQPOLL idle time, traded here for the latency of the next
    /// frame. No effect when busy-polling, nor on `AsyncConsumer`, which never blocks a
    /// task's thread to poll: it waits on the eventfds through tokio's reactor.
    pub fn spin(mut self, time: Duration) -> Options {
        self.spin = time;
        self
    }

    /// The same, reading ahead: as [`Consumer::next`] hands out a frame, the CPU is asked
    /// (a prefetch into L2, one per cache line, up to 4 KiB a part) for the parts of the frame published
    /// after it, so that their lines travel from memplex's core while this one is used.
    /// For consumers that read every payload byte (a checksum, a copy, a parser); one
    /// that reads only heads or metadata would pull lines it never reads.
    pub fn read_ahead(mut self) -> Options {
        self.read_ahead = true;
        self
    }
}

/// One queue's rings.
struct Channel {
    completion: RefCell<RingReader>,
    /// The metadata ring (read by position: the `n`-th frame's is in slot `n`).
    meta: Option<RefCell<RingReader>>,
    refill: RefCell<RingWriter>,
    eventfd: Option<OwnedFd>,
    /// Tokens of dropped frames not yet written to the refill ring.
    returned: RefCell<Vec<u64>>,
    /// Frames to send out, when the consumer's config names a `transmit` device.
    transmit: Option<RefCell<RingWriter>>,
}

/// A session with memplex. See the crate docs.
pub struct Consumer {
    sock: OwnedFd,
    session: u64,
    checksums: bool,
    metadata: bool,
    quota: u32,
    wake: Wake,
    batch: usize,
    read_ahead: bool,
    spin: Duration,
    channels: Vec<Channel>,
    regions: map::RegionTable,
    /// The regions' descriptors, kept for `testing::try_map_writable`.
    region_fds: RefCell<Vec<Option<OwnedFd>>>,
    next_queue: Cell<usize>,
    ended: RefCell<Option<(u32, String)>>,
    /// Frames read so far, and regions announced after the first of them.
    frames_read: Cell<u64>,
    late_regions: Cell<u64>,
    /// Turns of a busy-polling wait that found no frame.
    idle_spins: Cell<u64>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Consumer(session {}, {} queues)",
            self.session,
            self.channels.len()
        )
    }
}

/// A frame, read in place. Dropping it gives its buffers back.
pub struct Frame<'c> {
    consumer: &'c Consumer,
    queue: u32,
    /// Bytes of the frame, inline and in parts, summed as it was read (saturating: only
    /// a host that lies about its parts comes near 4 GiB).
    len: u32,
    meta: Option<FrameMeta>,
    /// The inline run: a head whose memory could not be shared, or a copied frame.
    inline: smallvec::SmallVec<[u8; INLINE_HELD]>,
    copied: bool,
    parts: smallvec::SmallVec<[(Desc, &'c RegionMap); PARTS_HELD]>,
}

/// Inline bytes a [`Frame`] holds without allocating: an Ethernet, IPv6 and TCP head with
/// options fits.
const INLINE_HELD: usize = 96;
/// Parts a [`Frame`] holds without allocating: a head and a payload buffer.
const PARTS_HELD: usize = 2;

// A frame is returned through `next`'s layers by value, and every move copies all of
// it: at 352 bytes (a 128-byte inline run and four parts) the moves were `memmove` calls,
// the largest item in `perf` of a counting consumer. Smaller frames are cheaper to move;
// `next` and `memplex consume` also avoid the moves they can.
const _: () = assert!(std::mem::size_of::<Frame<'static>>() <= 256);

impl std::fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame(queue {}, {} bytes, {} parts",
            self.queue,
            self.len(),
            self.parts.len()
        )?;
        match &self.meta {
            Some(m) => write!(f, ", seq {})", m.seq),
            None => write!(f, ")"),
        }
    }
}

impl Frame<'_> {
    /// Sends the frame back out, as it came, through the transmit ring (the verdict
    /// "forward" of an inline middlebox; dropping a frame is the verdict "drop"). memplex
    /// writes its parts out of the device the consumer's config names in `transmit`,
    /// from the buffers they are in, with the GSO and checksum state the frame came
    /// with, and takes the buffers back. Waits up to 100 ms for room in the ring.
    ///
    /// Refused, and the frame given back as if dropped, when the session has no
    /// transmit ring, when the frame's head came inline (its provider's memory cannot
    /// be shared, so memplex holds no buffer to send it from), or when the ring stays
    /// full.
    pub fn transmit(mut self) -> Result<(), Error> {
        let ch = &self.consumer.channels[self.queue as usize];
        let Some(tx) = &ch.transmit else {
            return Err(Error::Transmit(
                "this session has no transmit ring (the consumer's config names no `transmit` device)",
            ));
        };
        if self.copied() || self.head_inline() || self.parts.is_empty() {
            return Err(Error::Transmit(
                "the frame's head came inline: memplex holds no buffer to send it from",
            ));
        }
        if self.parts.len() > layout::TX_MAX_PARTS {
            return Err(Error::Transmit(
                "the frame has more parts than a transmit entry may name",
            ));
        }
        let parts: smallvec::SmallVec<[layout::TxPart; 8]> = self
            .parts
            .iter()
            .map(|(p, _)| layout::TxPart {
                token: p.token,
                offset: 0,
                len: p.len(),
            })
            .collect();
        let need = layout::tx_entries_for(parts.len()) as u32;
        let mut w = tx.borrow_mut();
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            match w.free() {
                Ok(f) if f >= need => break,
                Ok(_) if Instant::now() < deadline => std::thread::yield_now(),
                Ok(_) => return Err(Error::Transmit("the transmit ring stayed full for 100 ms")),
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
        }
        // Without metadata the frame goes out as it is: no GSO, no checksum to finish.
        let m = self.meta.unwrap_or_default();
        let mut e = layout::TxEntry {
            parts: parts.len() as u16,
            flags: if need > 1 { layout::F_CONTINUED } else { 0 },
            gso_type: m.gso_type,
            csum: u8::from(m.csum == 1),
            gso_size: m.gso_size,
            csum_start: m.csum_start,
            csum_offset: m.csum_offset,
            hdr_len: 0,
            reserved: 0,
            part: Default::default(),
        };
        let first = parts.len().min(layout::TX_PARTS);
        e.part[..first].copy_from_slice(&parts[..first]);
        w.write(0, &e);
        for (k, more) in parts[first..].chunks(layout::TX_MORE_PARTS).enumerate() {
            let mut pe = layout::TxPartsEntry::default();
            pe.part[..more.len()].copy_from_slice(more);
            w.write(k as u32 + 1, &pe);
        }
        w.publish(need);
        drop(w);
        // The buffers are memplex's again once it has sent them: not given back twice.
        self.parts.clear();
        Ok(())
    }

    /// Its metadata (queue and sequence number, route, flow hash, timestamps, lengths,
    /// split layer and head length, GSO and checksum state), when the session asked for
    /// it ([`Options::metadata`]).
    #[inline]
    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// The queue it came from.
    #[inline]
    pub fn queue(&self) -> usize {
        self.queue as usize
    }

    /// Bytes of the frame: inline bytes and parts.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a frame of no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the head came inline in the ring (a copy of at most `inline_head`
    /// bytes: its provider's memory could not be shared).
    #[inline]
    pub fn head_inline(&self) -> bool {
        !self.copied && !self.inline.is_empty()
    }

    /// True when the whole frame was copied into the ring (`copy = true`).
    #[inline]
    pub fn copied(&self) -> bool {
        self.copied
    }

    /// Where the head ends in a copied frame: its metadata says; without metadata the
    /// whole copy counts as frags.
    fn copied_head(&self) -> usize {
        self.meta
            .map_or(0, |m| usize::from(m.head_len))
            .min(self.inline.len())
    }

    /// The head: inline bytes, or the head part (the first) in the provider's memory.
    #[inline]
    pub fn head(&self) -> &[u8] {
        if self.copied {
            return &self.inline[..self.copied_head()];
        }
        if !self.inline.is_empty() {
            return &self.inline;
        }
        self.parts
            .first()
            .map_or(&[][..], |(p, r)| r.slice(p.offset(), p.len()))
    }

    /// The frags, each a slice of the provider's memory as mapped in this process.
    #[inline]
    pub fn frags(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let copied = if self.copied {
            Some(&self.inline[self.copied_head()..]).filter(|s| !s.is_empty())
        } else {
            None
        };
        let skip = usize::from(self.inline.is_empty());
        copied.into_iter().chain(
            self.parts
                .iter()
                .skip(skip)
                .map(|(p, r)| r.slice(p.offset(), p.len())),
        )
    }

    /// The address range of the mapping each part is read from, in this process: what a
    /// zero-copy check compares the frag slices against.
    pub fn part_mappings(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.parts.iter().map(|(_, r)| r.range())
    }

    /// The parts as the ring described them (token, offset, length).
    #[inline]
    pub fn parts(&self) -> impl Iterator<Item = &Desc> + '_ {
        self.parts.iter().map(|(p, _)| p)
    }

    /// The whole frame, head and frags, copied into `out` (cleared first).
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.head());
        for f in self.frags() {
            out.extend_from_slice(f);
        }
    }

    /// Whether the frame's bytes match the CRC-32 memplex put in its metadata; `None`
    /// when the consumer config has `checksum = false` or the session has no metadata.
    /// Reads every byte, in place.
    pub fn verify(&self) -> Option<bool> {
        let m = self.meta.as_ref()?;
        if m.flags & layout::F_CHECKSUM == 0 {
            return None;
        }
        Some(self.crc32() == m.checksum)
    }

    /// The CRC-32 (IEEE, as zlib's) of the frame's bytes, head then frags, read in
    /// place: the checksum of the frame as memplex received it. Needs no metadata.
    pub fn crc32(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(self.head());
        for f in self.frags() {
            h.update(f);
        }
        h.finalize()
    }
}

impl Drop for Frame<'_> {
    #[inline]
    fn drop(&mut self) {
        let ch = &self.consumer.channels[self.queue as usize];
        let mut r = ch.returned.borrow_mut();
        // A push per part: `extend` over the parts' tokens was 44 instructions for a
        // frame of one part (its capacity check and the iterator's set-up).
        for (p, _) in &self.parts {
            r.push(p.token);
        }
        let full = r.len() >= self.consumer.batch;
        drop(r);
        if full {
            self.consumer.flush_queue(self.queue as usize);
        }
    }
}

impl Consumer {
    /// Connects to memplex's consumer socket at `path` and sets the session up.
    pub fn connect(path: impl AsRef<Path>, opts: &Options) -> Result<Consumer, Error> {
        let path = path.as_ref();
        let sock = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::Connect {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| Error::Connect {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        rustix::net::connect(&sock, &addr).map_err(|e| Error::Connect {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        msg::send(
            &sock,
            Kind::Hello,
            &msg::Hello {
                version: memplex_proto::VERSION,
                wake: opts.wake as u32,
                name: msg::fixed(&opts.name),
                features: if opts.metadata { msg::FEATURE_META } else { 0 },
                reserved: 0,
            },
            &[],
        )?;
        let mut buf = [0u8; msg::MAX_MSG];
        let welcome: msg::Welcome = match recv(&sock, &mut buf, RecvFlags::empty())? {
            (Kind::Welcome, body, _) => msg::body(&body).map_err(Error::Protocol)?,
            (Kind::Bye, body, _) => return Err(ended(&body)),
            (k, _, _) => return Err(Error::Protocol(format!("expected Welcome, got {k:?}"))),
        };
        let mut channels = Vec::new();
        loop {
            match recv(&sock, &mut buf, RecvFlags::empty())? {
                (Kind::Channel, body, fds) => {
                    let c: msg::Channel = msg::body(&body).map_err(Error::Protocol)?;
                    let mut fds = fds.into_iter();
                    let memfd = fds
                        .next()
                        .ok_or_else(|| Error::Protocol("a Channel without its memory".into()))?;
                    let eventfd = if c.eventfd == 1 { fds.next() } else { None };
                    let len = usize::try_from(c.len)
                        .map_err(|_| Error::Protocol("channel length".into()))?;
                    let map = Arc::new(ChannelMap::open(memfd, len).map_err(Error::Protocol)?);
                    channels.push(Channel {
                        completion: RefCell::new(RingReader::new(map.ring(RingKind::Completion))),
                        meta: (map.header().rings[RingKind::Meta as usize - 1].entries > 0)
                            .then(|| RefCell::new(RingReader::new(map.ring(RingKind::Meta)))),
                        refill: RefCell::new(RingWriter::new(map.ring(RingKind::Refill))),
                        eventfd,
                        returned: RefCell::new(Vec::with_capacity(opts.batch * 2)),
                        transmit: (map.header().rings[RingKind::Transmit as usize - 1].entries > 0)
                            .then(|| RefCell::new(RingWriter::new(map.ring(RingKind::Transmit)))),
                    });
                }
                (Kind::Ready, _, _) => break,
                (Kind::Bye, body, _) => return Err(ended(&body)),
                (k, _, _) => return Err(Error::Protocol(format!("unexpected {k:?} in set-up"))),
            }
        }
        if channels.len() != welcome.queues as usize {
            return Err(Error::Protocol(format!(
                "{} channels for {} queues",
                channels.len(),
                welcome.queues
            )));
        }
        let metadata = welcome.features & msg::FEATURE_META != 0;
        if channels.iter().any(|c| c.meta.is_some() != metadata) {
            return Err(Error::Protocol(
                "the channels' metadata rings do not match the Welcome's features".into(),
            ));
        }
        let wake = if opts.wake == Wake::EventFd && channels.iter().all(|c| c.eventfd.is_some()) {
            Wake::EventFd
        } else {
            Wake::BusyPoll
        };
        Ok(Consumer {
            sock,
            session: welcome.session,
            checksums: welcome.checksums == 1,
            metadata,
            quota: welcome.quota,
            wake,
            // A batch no larger than half the quota: a consumer sitting on a batch it
            // never fills (memplex stops lending at the quota) would have its buffers
            // back only when it next went idle.
            batch: opts.batch.max(1).min((welcome.quota as usize / 2).max(1)),
            read_ahead: opts.read_ahead,
            spin: opts.spin,
            channels,
            regions: map::RegionTable::default(),
            region_fds: RefCell::new(Vec::new()),
            next_queue: Cell::new(0),
            ended: RefCell::new(None),
            frames_read: Cell::new(0),
            late_regions: Cell::new(0),
            idle_spins: Cell::new(0),
        })
    }

    /// True when the session has a transmit ring ([`Frame::transmit`]).
    pub fn can_transmit(&self) -> bool {
        self.channels.iter().all(|c| c.transmit.is_some())
    }

    /// The session's number.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Receive queues (one channel each).
    pub fn queues(&self) -> usize {
        self.channels.len()
    }

    /// Buffers this session may hold per queue.
    pub fn quota(&self) -> u32 {
        self.quota
    }

    /// Buffers given back per refill batch: [`Options::batch`], at most half the quota.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// True when frames carry their metadata ([`Frame::meta`]).
    pub fn metadata(&self) -> bool {
        self.metadata
    }

    /// True when frames carry checksums ([`Frame::verify`]).
    pub fn checksums(&self) -> bool {
        self.checksums
    }

    /// Regions memplex announced after this session had read its first frame: memory
    /// added during the session (a route's provider used for the first time, say).
    pub fn regions_added_mid_session(&self) -> u64 {
        self.late_regions.get()
    }

    /// Turns a busy-polling [`Consumer::next`] has spun without finding a frame: near 0
    /// means this side is the slower one.
    pub fn idle_spins(&self) -> u64 {
        self.idle_spins.get()
    }

    /// How this session waits (busy-poll when memplex offers no eventfds).
    pub fn wake(&self) -> Wake {
        self.wake
    }

    /// The socket, for an event loop to watch (region announcements and the end of the
    /// session arrive on it).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The eventfds memplex writes when a queue has frames for a sleeping consumer.
    pub fn eventfds(&self) -> impl Iterator<Item = std::os::fd::BorrowedFd<'_>> + '_ {
        self.channels
            .iter()
            .filter_map(|c| c.eventfd.as_ref().map(|e| e.as_fd()))
    }

    /// The next frame from any queue, waiting up to `timeout` (forever with `None`).
    /// `Ok(None)` when the time ran out; an error when the session ended (memplex
    /// stopping is [`Error::is_shutdown`]).
    #[inline]
    pub fn next(&self, timeout: Option<Duration>) -> Result<Option<Frame<'_>>, Error> {
        self.wait_for(timeout, || self.try_next())
    }

    /// Hands `f` the frames ready now, up to `max`, waiting up to `timeout` (forever with
    /// `None`) for the first; returns how many it handed over (0 when the time ran out, or
    /// at once for a `max` of 0).
    /// An error when the session ended (memplex stopping is [`Error::is_shutdown`]).
    ///
    /// The batch form of [`next`](Self::next), for consumers that read fast: each frame
    /// is built where `f` receives it, never moved through a `Result`, and what `next`
    /// checks per frame (the session's end, where the round robin over the queues is) is
    /// checked once per call. `f` owns each frame: dropping it gives its buffers back, and
    /// keeping it (up to the quota) holds them, as with `next`.
    ///
    /// ```no_run
    /// # let c = memplex_consumer::Consumer::connect("/run/memplex/tcp.sock",
    /// #     &memplex_consumer::Options::new("tcp"))?;
    /// let mut bytes = 0;
    /// while c.next_burst(64, None, |frame| bytes += frame.len())? > 0 {}
    /// # Ok::<(), memplex_consumer::Error>(())
    /// ```
    #[inline]
    pub fn next_burst<'c>(
        &'c self,
        max: usize,
        timeout: Option<Duration>,
        mut f: impl FnMut(Frame<'c>),
    ) -> Result<usize, Error> {
        if max == 0 {
            // Nothing asked for: nothing to wait for.
            return self.check_ended().map(|()| 0);
        }
        let got = self.wait_for(timeout, || {
            let n = self.try_next_burst(max, &mut f)?;
            Ok((n > 0).then_some(n))
        })?;
        Ok(got.unwrap_or(0))
    }

    /// Waits up to `timeout` for `attempt` to find something: busy-polling or sleeping on
    /// the eventfds, as the session's wake-up mode says.
    #[inline]
    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut attempt: impl FnMut() -> Result<Option<T>, Error>,
    ) -> Result<Option<T>, Error> {
        // One place where a frame is taken and returned: with two (a first try before
        // the clock is read, then the loop), each was a 256-byte move of the frame, one
        // of them a `memmove` call. The clock is first read after an attempt that found
        // nothing.
        let mut deadline = None;
        let mut spins = 0u32;
        // With eventfd wake-ups and `Options::spin`: when the rings stop being polled
        // and the consumer sleeps (set at the first empty turn).
        let mut spin_until = None;
        loop {
            if let Some(got) = attempt()? {
                return Ok(Some(got));
            }
            if spins == 0 && deadline.is_none() {
                let spin = self.wake == Wake::EventFd && !self.spin.is_zero();
                let now = (timeout.is_some() || spin).then(Instant::now);
                deadline = Some(timeout.zip(now).map(|(t, now)| now + t));
                spin_until = now.filter(|_| spin).map(|now| now + self.spin);
            }
            let deadline = deadline.flatten();
            // A spinning consumer reads the clock once in 64 turns (a clock read costs
            // as much as a frame), and only for a deadline or the end of its spin.
            let timed =
                spins.is_multiple_of(64) || (self.wake == Wake::EventFd && spin_until.is_none());
            let now = (timed && (deadline.is_some() || spin_until.is_some())).then(Instant::now);
            if now.is_some_and(|now| deadline.is_some_and(|d| now >= d)) {
                return Ok(None);
            }
            if let (Some(now), Some(until)) = (now, spin_until) {
                if now >= until {
                    spin_until = None;
                }
            }
            let wake = match spin_until {
                Some(_) => Wake::BusyPoll,
                None => self.wake,
            };
            match wake {
                Wake::BusyPoll => {
                    spins = spins.wrapping_add(1);
                    self.idle_spins.set(self.idle_spins.get() + 1);
                    // Nothing to read: give back what was dropped, rather than sit on
                    // it until a batch fills (as a sleeping consumer does before it
                    // sleeps).
                    if spins == 1 {
                        self.flush();
                    }
                    if spins.is_multiple_of(4096) {
                        self.flush();
                        self.read_socket(false)?;
                    }
                    std::hint::spin_loop();
                }
                Wake::EventFd => self.sleep(deadline)?,
            }
        }
    }

    /// The next frame if one is ready, without waiting.
    #[inline]
    pub fn try_next(&self) -> Result<Option<Frame<'_>>, Error> {
        self.check_ended()?;
        // Round robin from the queue after the last one read. Wrapped by a compare, not
        // `%`: two divisions a frame, in the cycles a frame has.
        let n = self.channels.len();
        let mut q = self.next_queue.get();
        for _ in 0..n {
            if q >= n {
                q = 0;
            }
            if let Some(f) = self.read_frame(q, |f| f)? {
                self.next_queue.set(q + 1);
                return Ok(Some(f));
            }
            q += 1;
        }
        Ok(None)
    }

    /// Hands `f` the frames ready now, up to `max`, without waiting; returns how many.
    /// See [`next_burst`](Self::next_burst).
    #[inline]
    pub fn try_next_burst<'c>(
        &'c self,
        max: usize,
        mut f: impl FnMut(Frame<'c>),
    ) -> Result<usize, Error> {
        self.check_ended()?;
        // Round robin, a frame from each queue in turn, as `try_next`; a queue found
        // empty is passed over until every queue was, in a row.
        let n = self.channels.len();
        let mut q = self.next_queue.get();
        let mut got = 0;
        let mut empty = 0;
        while got < max && empty < n {
            if q >= n {
                q = 0;
            }
            if self.read_frame(q, &mut f)?.is_some() {
                got += 1;
                empty = 0;
            } else {
                empty += 1;
            }
            q += 1;
        }
        self.next_queue.set(q);
        Ok(got)
    }

    /// The end of the session, as an error, once memplex said it ended.
    #[inline]
    fn check_ended(&self) -> Result<(), Error> {
        if self.ended.borrow().is_some() {
            if let Some((reason, text)) = self.ended.borrow().clone() {
                return Err(Error::Ended { reason, text });
            }
        }
        Ok(())
    }

    /// Writes the tokens of dropped frames to the refill rings, and tells memplex how far
    /// each completion ring has been read, now.
    pub fn flush(&self) {
        for q in 0..self.channels.len() {
            self.flush_queue(q);
            self.channels[q].completion.borrow_mut().sync();
        }
    }

    fn flush_queue(&self, q: usize) {
        let ch = &self.channels[q];
        let mut r = ch.returned.borrow_mut();
        if r.is_empty() {
            return;
        }
        let mut w = ch.refill.borrow_mut();
        // memplex's index is read only when the last one read leaves too little room: it
        // is a cache line memplex's core writes.
        let n = match w.has_room(0, r.len() as u32) {
            Ok(true) => r.len(),
            _ => (w.free().unwrap_or(0) as usize).min(r.len()),
        };
        w.write_staged(0, r[..n].as_bytes());
        w.publish(n as u32);
        r.drain(..n);
    }

    /// Ends the session politely (dropping the consumer does too, less politely: memplex
    /// sees the socket close and takes every buffer back either way).
    pub fn close(self) {
        self.flush();
        let _ = msg::send(
            &self.sock,
            Kind::Bye,
            &msg::Bye {
                reason: msg::ByeReason::Done as u32,
                text: msg::fixed("done"),
            },
            &[],
        );
    }

    /// Sleeps on the eventfds and the socket until frames may be ready.
    fn sleep(&self, deadline: Option<Instant>) -> Result<(), Error> {
        // Nothing to read: give back what was dropped, rather than sit on it.
        self.flush();
        for ch in &self.channels {
            ch.completion.borrow().want_wakeup();
        }
        // Frames published before the flags were seen: no sleep.
        let ready = self
            .channels
            .iter()
            .any(|ch| ch.completion.borrow_mut().available().unwrap_or(0) > 0);
        if !ready {
            let mut fds: Vec<PollFd<'_>> = self
                .channels
                .iter()
                .filter_map(|c| c.eventfd.as_ref())
                .map(|e| PollFd::new(e, PollFlags::IN))
                .collect();
            fds.push(PollFd::new(&self.sock, PollFlags::IN));
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ts = left.map(|l| rustix::time::Timespec {
                tv_sec: l.as_secs() as i64,
                tv_nsec: i64::from(l.subsec_nanos()),
            });
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::Io(e.into())),
            }
            let socket_ready = fds.last().is_some_and(|f| !f.revents().is_empty());
            drop(fds);
            for e in self.channels.iter().filter_map(|c| c.eventfd.as_ref()) {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(e, &mut b);
            }
            if socket_ready {
                self.read_socket(false)?;
            }
        }
        for ch in &self.channels {
            ch.completion.borrow().no_wakeup();
        }
        Ok(())
    }

    /// Handles what arrived on the socket: regions, or the end of the session. With
    /// `block`, waits (up to a second) for one message.
    fn read_socket(&self, block: bool) -> Result<(), Error> {
        let mut buf = [0u8; msg::MAX_MSG];
        loop {
            let flags = if block {
                RecvFlags::empty()
            } else {
                RecvFlags::DONTWAIT
            };
            if block {
                let _ = rustix::net::sockopt::set_socket_timeout(
                    &self.sock,
                    rustix::net::sockopt::Timeout::Recv,
                    Some(Duration::from_secs(1)),
                );
            }
            let got = msg::recv(&self.sock, &mut buf, flags);
            let (n, fds) = match got {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let mut e = self.ended.borrow_mut();
                    if e.is_none() {
                        *e = Some((u32::MAX, "memplex closed the connection".into()));
                    }
                    return Err(Error::Closed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            match msg::decode(&buf[..n]).map_err(Error::Protocol)? {
                (Kind::Region, body) => {
                    let r: msg::Region = msg::body(body).map_err(Error::Protocol)?;
                    let fd = fds
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::Protocol("a Region without its descriptor".into()))?;
                    let kept = fd.try_clone().ok();
                    let map = RegionMap::new(fd, r.offset, r.len).map_err(|e| {
                        Error::Protocol(format!(
                            "region {} of provider `{}`: {e}",
                            r.index,
                            msg::text(&r.provider)
                        ))
                    })?;
                    let i = r.index as usize;
                    // Announced again (by another queue's worker, say): the first stands.
                    if self.regions.add(i, map) {
                        let mut fds = self.region_fds.borrow_mut();
                        if fds.len() <= i {
                            fds.resize_with(i + 1, || None);
                        }
                        fds[i] = kept;
                        if self.frames_read.get() > 0 {
                            self.late_regions.set(self.late_regions.get() + 1);
                        }
                    }
                }
                (Kind::Bye, body) => {
                    let (reason, text) = match ended(body) {
                        Error::Ended { reason, text } => (reason, text),
                        _ => (u32::MAX, String::new()),
                    };
                    *self.ended.borrow_mut() = Some((reason, text.clone()));
                    return Err(Error::Ended { reason, text });
                }
                (k, _) => return Err(Error::Protocol(format!("unexpected {k:?}"))),
            }
            if block {
                return Ok(());
            }
        }
    }

    #[inline]
    fn region(&self, index: u32) -> Result<&RegionMap, Error> {
        if let Some(r) = self.regions.get(index as usize) {
            return Ok(r);
        }
        self.region_slow(index)
    }

    #[cold]
    fn region_slow(&self, index: u32) -> Result<&RegionMap, Error> {
        for _ in 0..3 {
            if let Some(r) = self.regions.get(index as usize) {
                return Ok(r);
            }
            // Announced on the socket before the entry was published: read it.
            self.read_socket(true)?;
        }
        Err(Error::Protocol(format!(
            "region {index} was never announced"
        )))
    }

    /// Asks the CPU for the parts of the frame whose descriptors start at `at` (up to
    /// `avail`, published): a hint only, so descriptors it cannot use (a region not yet
    /// announced, a part outside its region) are passed over, and the next read checks
    /// them as usual. Inline runs are in the ring already.
    #[inline(never)]
    fn prefetch_frame(&self, ring: &RingReader, mut at: u32, avail: u32) {
        while at < avail {
            let d: Desc = ring.read(at);
            at += 1;
            if d.is_inline() {
                at = at.saturating_add(layout::inline_slots(d.len() as usize) as u32);
            } else if let Some(r) = self.regions.get(usize::from(d.region())) {
                if r.contains(d.offset(), d.len()) {
                    memplex_proto::ring::prefetch_bytes_to_l2(r.slice(d.offset(), d.len()));
                }
            }
            if !d.more() {
                break;
            }
        }
    }

    /// Reads queue `q`'s next frame, if one is ready, and hands it to `f`.
    #[inline]
    fn read_frame<'c, T>(
        &'c self,
        q: usize,
        f: impl FnOnce(Frame<'c>) -> T,
    ) -> Result<Option<T>, Error> {
        let ch = &self.channels[q];
        let mut ring = ch.completion.borrow_mut();
        let avail = ring.ready().map_err(|e| Error::Protocol(e.to_string()))?;
        if avail == 0 {
            return Ok(None);
        }
        // The frame's descriptors, up to the first without D_MORE. memplex publishes
        // whole frames, so one that runs past what is published breaks the protocol.
        // The frame is built from its pieces at the end: filled where it is, its 256
        // bytes were moved with three calls to `memcpy` on the way to the caller.
        let mut inline = smallvec::SmallVec::<[u8; INLINE_HELD]>::new();
        let mut copied = false;
        let mut mapped = smallvec::SmallVec::new();
        let mut len = 0u32;
        let mut at = 0;
        loop {
            if at >= avail {
                return Err(Error::Protocol(format!(
                    "a frame runs past the {avail} descriptors published"
                )));
            }
            let d: Desc = ring.read(at);
            at += 1;
            if d.is_inline() {
                let run = d.len() as usize;
                let slots = layout::inline_slots(run) as u32;
                if !inline.is_empty() || slots > avail - at {
                    return Err(Error::Protocol(format!(
                        "an inline run of {run} bytes past the {avail} descriptors published, or a second one"
                    )));
                }
                if run <= INLINE_HELD {
                    // Whole slots into a zeroed array (a few wide stores), which becomes
                    // the frame's run: `resize` zeroed it a byte at a time, and a copy of
                    // `len` bytes was a `memcpy` call. (The bytes after the run in its
                    // last slot land past the frame's length, unused.)
                    let mut held = [0u8; INLINE_HELD];
                    ring.read_entries(at, slots as usize, &mut held);
                    inline = smallvec::SmallVec::from_buf_and_len(held, run);
                } else {
                    inline.resize(run, 0);
                    ring.read_bytes(at, &mut inline);
                }
                at += slots;
                len = len.saturating_add(run as u32);
                copied = d.copied();
            } else {
                // Its region, as the part is read (a region is announced on the socket
                // before any entry names it; an unknown one is read from there).
                let region = d.region();
                let r = self.region(u32::from(region))?;
                if !r.contains(d.offset(), d.len()) {
                    return Err(Error::Protocol(format!(
                        "a part at {}+{} past region {region}'s {} bytes",
                        d.offset(),
                        d.len(),
                        r.len()
                    )));
                }
                mapped.push((d, r));
                len = len.saturating_add(d.len());
            }
            if !d.more() {
                break;
            }
        }
        if self.read_ahead && at < avail {
            self.prefetch_frame(&ring, at, avail);
        }
        ring.release_lazily(at);
        drop(ring);
        let meta = match &ch.meta {
            Some(m) => {
                let mut m = m.borrow_mut();
                let e: FrameMeta = m.read(0);
                m.advance(1);
                Some(e)
            }
            None => None,
        };
        self.frames_read.set(self.frames_read.get() + 1);
        Ok(Some(f(Frame {
            consumer: self,
            queue: q as u32,
            len,
            meta,
            inline,
            copied,
            parts: mapped,
        })))
    }
}

/// Ways to break the protocol on purpose, for tests of memplex's defences. Not for
/// consumers.
#[doc(hidden)]
pub mod testing {
    use super::Consumer;

    /// Writes `tokens` to queue `q`'s refill ring as they are.
    pub fn write_tokens(c: &Consumer, q: usize, tokens: &[u64]) {
        let mut w = c.channels[q].refill.borrow_mut();
        for (i, t) in tokens.iter().enumerate() {
            w.write(i as u32, t);
        }
        w.publish(tokens.len() as u32);
    }

    /// Writes one transmit entry naming `parts` (as they are, however many) with
    /// `count` in its parts field, to queue `q`'s transmit ring; false when the session
    /// has none.
    pub fn write_tx(c: &Consumer, q: usize, count: u16, parts: &[(u64, u32, u32)]) -> bool {
        let Some(tx) = &c.channels[q].transmit else {
            return false;
        };
        let mut w = tx.borrow_mut();
        let mut e = memplex_proto::layout::TxEntry {
            parts: count,
            ..Default::default()
        };
        for (slot, &(token, offset, len)) in e.part.iter_mut().zip(parts) {
            *slot = memplex_proto::layout::TxPart { token, offset, len };
        }
        w.write(0, &e);
        w.publish(1);
        true
    }

    /// How many regions the consumer has mapped.
    pub fn mapped_regions(c: &Consumer) -> usize {
        c.regions.count()
    }

    /// Moves queue `q`'s refill producer index by `by`.
    pub fn move_refill_index(c: &Consumer, q: usize, by: u32) {
        let w = c.channels[q].refill.borrow();
        w.force_shared_index(w.position().wrapping_add(by));
    }

    /// Moves queue `q`'s completion consumer index by `by`.
    pub fn move_completion_index(c: &Consumer, q: usize, by: u32) {
        let r = c.channels[q].completion.borrow();
        r.force_shared_index(r.position().wrapping_add(by));
    }

    /// Tries to map the region of `f`'s first part writable through the descriptor
    /// memplex sent: the error the system gives (memplex sends read-only descriptors).
    pub fn try_map_writable(c: &Consumer, f: &super::Frame<'_>) -> String {
        let Some((p, _)) = f.parts.first() else {
            return "no part".into();
        };
        match c.region_fds.borrow().get(usize::from(p.region())) {
            Some(Some(fd)) => super::map::try_writable(fd),
            _ => "no descriptor kept".into(),
        }
    }

    /// How the session ended, if memplex has said so (reads the socket, not the rings).
    pub fn ended(c: &Consumer) -> Option<(u32, String)> {
        let _ = c.read_socket(false);
        c.ended.borrow().clone()
    }

    /// Tokens of dropped frames on queue `q` not written to its refill ring yet.
    pub fn unreturned(c: &Consumer, q: usize) -> usize {
        c.channels[q].returned.borrow().len()
    }

    /// Takes the tokens of a frame without giving them back when it is dropped.
    pub fn keep_tokens(f: super::Frame<'_>) -> Vec<u64> {
        let mut f = std::mem::ManuallyDrop::new(f);
        let tokens = f.parts.iter().map(|(p, _)| p.token).collect();
        // Its fields are dropped here; only its Drop, which returns the tokens, is not run.
        drop(std::mem::take(&mut f.parts));
        drop(std::mem::take(&mut f.inline));
        tokens
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Receives one message: kind, body, descriptors.
fn recv(
    sock: &OwnedFd,
    buf: &mut [u8; msg::MAX_MSG],
    flags: RecvFlags,
) -> Result<(Kind, Vec<u8>, Vec<OwnedFd>), Error> {
    let (n, fds) = msg::recv(sock, buf, flags)?.ok_or(Error::Closed)?;
    let (kind, body) = msg::decode(&buf[..n]).map_err(Error::Protocol)?;
    Ok((kind, body.to_vec(), fds))
}

fn ended(body: &[u8]) -> Error {
    match msg::body::<msg::Bye>(body) {
        Ok(b) => Error::Ended {
            reason: b.reason,
            text: msg::text(&b.text),
        },
        Err(e) => Error::Protocol(e),
    }
}
