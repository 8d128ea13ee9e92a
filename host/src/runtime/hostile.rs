//! A consumer that does whatever a script of bytes says, honest or not, against a worker
//! driven by hand in the same thread: reads its completion ring, gives tokens back,
//! sends frames through its transmit ring, gives back tokens twice or made up, moves the
//! shared ring indexes anywhere, writes transmit entries that break the rules, leaves
//! without a word and comes back. The named misbehaviours each have a test with real
//! processes (`memplex-cli`'s `deliver` tests, with `consumer/examples/misbehave`);
//! this one runs hundreds of mixtures of them, where one kind of lie follows another.
//!
//! After every script, these must hold (see [`play`]):
//! - nothing is lost: once every session has ended, every buffer is back in its pool,
//!   and every frame the worker received was either delivered or dropped with a reason;
//! - only a lie ends a session but leaving, and every session a lie ended says why as
//!   `bad_token`, `bad_index` or `bad_entry`; the lies a host can always tell (a token
//!   given back twice, a refill index past what was written, a bad transmit entry) end
//!   the session the next time the host serves it;
//! - the transmit counters say what the device took and refused, and with no lie every
//!   frame sent reached it;
//! - the host is unaffected: an honest consumer that connects afterwards gets every
//!   frame of a burst, its bytes whole, and gives every buffer back.
//!
//! The scripts come from a fixed pseudo-random sequence, so a failure names the seed
//! that reproduces it (`MEMPLEX_HOSTILE_SEED=N`); `MEMPLEX_HOSTILE_SCRIPTS` runs more.

use super::worker::Worker;
use super::{CountSink, Engine};
use crate::config::Config;
use crate::deliver::{Inbox, NewChannel, Session};
use crate::device::{RxFrame, RxMeta};
use crate::provider::PluginPath;
use crate::stats::Disconnect;
use memplex_proto::layout::{self, Desc, RingKind, Token, TX_MAX_PARTS};
use memplex_proto::ring::{ChannelMap, Consumer, Producer};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Heads inline (heap), payload in shared memory, every frame delivered. Small pools
/// and quota, so that quota and full-ring drops happen within a script.
const INLINE_HEADS: &str = r#"
[device]
kind = "pcap"
path = "(in memory)"

[split]
mode = "l4"

[providers.hdr]
plugin = "builtin:heap"
buf_size = 256
unverified = true

[providers.payload]
plugin = "builtin:shm"
buf_size = 512
pool_size = 64
settings = { buffers = 1024 }

[consumers.app]
socket = "/nonexistent/hostile.sock"
ring_entries = 256
quota = 160
policy = "drop"

[[route]]
head = "hdr"
frags = "payload"
deliver = "app"
"#;

/// Frames per burst the worker handles.
const BURST: usize = 32;

/// Reads a script: bytes, then zeros once it is spent.
struct Script<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Script<'_> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

/// The consumer's end of one session.
struct Peer {
    session: Arc<Session>,
    /// The socket's other end (regions are announced on it; kept, unread).
    _sock: OwnedFd,
    /// The channel's memory (the rings below point into it).
    _map: Arc<ChannelMap>,
    completion: Consumer,
    meta: Option<Consumer>,
    refill: Producer,
    /// Tokens read and not given back, with their parts' lengths.
    held: Vec<(u64, u32)>,
    /// Its transmit ring (with a setup that has one).
    transmit: Option<Producer>,
    /// Frames it published to send, in honest entries.
    sent: u64,
    /// Tokens given back (the last 64), to give back again.
    returned: Vec<u64>,
    /// Its completion index was moved by hand: its reads no longer line up with frames.
    derailed: bool,
    /// Its refill index was moved by hand: it gives nothing back after that.
    refill_moved: bool,
    /// Its refill index when the worker last served it: the host has taken everything
    /// up to there.
    refill_served: u32,
    /// It lied: the host may end its session.
    lied: bool,
    /// It told a lie the host must catch the next time it serves the session: a token
    /// given back twice, a refill index past what it wrote (stale tokens or zeros), or
    /// a transmit entry that breaks the rules.
    /// (A made-up token may name a buffer lent but not yet read, which the host cannot
    /// tell from a true one.)
    caught_next: bool,
    /// Frames it read.
    frames: u64,
}

/// A session of consumer 0 for the worker `inbox` feeds, on a channel of `entries`
/// completion entries (twice as many refill entries), with a metadata ring when `meta`
/// and `transmit` transmit entries: the session, its channel (for the consumer's ends
/// of the rings) and the socket's other end (regions are announced on it; kept,
/// unread).
pub(super) fn open_session(
    inbox: &Inbox,
    entries: u32,
    meta: bool,
    transmit: u32,
) -> (Arc<Session>, Arc<ChannelMap>, OwnedFd) {
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .expect("a socket pair");
    let (map, _fd) =
        ChannelMap::create(0, entries, 2 * entries, transmit, meta).expect("a channel");
    let map = Arc::new(map);
    let session = Arc::new(Session::for_test(1, ours));
    inbox.push(NewChannel {
        consumer: 0,
        session: Arc::clone(&session),
        map: Arc::clone(&map),
        eventfd: None,
    });
    (session, map, theirs)
}

/// `frames` as a device hands them over, whole, numbered in order from 0.
pub(super) fn received(frames: &[Vec<u8>]) -> Vec<RxFrame<'_>> {
    frames
        .iter()
        .enumerate()
        .map(|(seq, f)| RxFrame {
            data: f,
            meta: RxMeta {
                seq: seq as u64,
                orig_len: f.len() as u32,
                cap_len: f.len() as u32,
                ..Default::default()
            },
        })
        .collect()
}

impl Peer {
    /// A new session of consumer 0 for the worker `inbox` feeds.
    fn connect(inbox: &Inbox, meta: bool, transmit: bool) -> Peer {
        let (session, map, theirs) = open_session(inbox, 256, meta, if transmit { 64 } else { 0 });
        Peer {
            session,
            _sock: theirs,
            completion: Consumer::new(map.ring(RingKind::Completion)),
            meta: meta.then(|| Consumer::new(map.ring(RingKind::Meta))),
            refill: Producer::new(map.ring(RingKind::Refill)),
            transmit: transmit.then(|| Producer::new(map.ring(RingKind::Transmit))),
            _map: map,
            held: Vec::new(),
            sent: 0,
            returned: Vec::new(),
            derailed: false,
            refill_moved: false,
            refill_served: 0,
            lied: false,
            caught_next: false,
            frames: 0,
        }
    }

    /// Reads every frame published, as an honest consumer does, checking each against
    /// the frames sent (when `sent` is given: frames in the order they were delivered);
    /// its tokens join `held`.
    fn read(&mut self, sent: Option<&[&[u8]]>) {
        if self.derailed {
            return;
        }
        let avail = self.completion.available().expect("an honest host");
        let mut i = 0;
        let mut inline = [0u8; 256];
        while i < avail {
            let mut seen = 0;
            loop {
                let d: Desc = self.completion.read(i);
                i += 1;
                if d.is_inline() {
                    let len = d.len() as usize;
                    assert!(len <= inline.len(), "an inline head of {len} bytes");
                    self.completion.read_bytes(i, &mut inline[..len]);
                    i += layout::inline_slots(len) as u32;
                    if let Some(sent) = sent {
                        let frame = sent[self.frames as usize];
                        assert_eq!(&inline[..len], &frame[..len], "frame {}", self.frames);
                    }
                } else {
                    assert_ne!(d.token, 0, "a part has a token");
                    self.held.push((d.token, d.len()));
                }
                seen += d.len() as usize;
                if !d.more() {
                    break;
                }
            }
            if let Some(sent) = sent {
                assert_eq!(
                    seen,
                    sent[self.frames as usize].len(),
                    "frame {}",
                    self.frames
                );
            }
            if let Some(m) = self.meta.as_mut() {
                let _: layout::FrameMeta = m.read(0);
                m.release(1);
            }
            self.frames += 1;
        }
        assert!(i == avail, "a frame published in part");
        self.completion.release(avail);
    }

    /// Writes `tokens` to the refill ring and publishes them, as many as fit: true when
    /// all did.
    fn give(&mut self, tokens: &[u64]) -> bool {
        if self.refill_moved {
            // Its next publish would write over the index it moved.
            return false;
        }
        for &t in tokens {
            match self.refill.has_room(0, 1) {
                Ok(true) => {}
                // Full (the host has not served it yet), or an index moved by hand.
                _ => return false,
            }
            self.refill.write(0, &t);
            self.refill.publish(1);
            self.returned.push(t);
            if self.returned.len() > 64 {
                self.returned.remove(0);
            }
        }
        true
    }

    /// Gives back `n` held tokens, the oldest or the newest first.
    fn give_back(&mut self, n: usize, newest: bool) {
        let n = n.min(self.held.len());
        let taken = if newest {
            self.held.split_off(self.held.len() - n)
        } else {
            self.held.drain(..n).collect()
        };
        let tokens: Vec<u64> = taken.iter().map(|&(t, _)| t).collect();
        self.give(&tokens);
    }

    /// Publishes one frame to send, of `parts` (token, offset, length) and `count`
    /// parts in its first entry (the true count, or a lie): true when it fit. The
    /// tokens count as given back.
    fn send(&mut self, parts: &[(u64, u32, u32)], count: u16) -> bool {
        let Some(tx) = self.transmit.as_mut() else {
            return false;
        };
        let need = layout::tx_entries_for(parts.len()) as u32;
        if !matches!(tx.has_room(0, need), Ok(true)) {
            return false;
        }
        let part = |&(token, offset, len): &(u64, u32, u32)| layout::TxPart { token, offset, len };
        let mut first = layout::TxEntry {
            parts: count,
            flags: if need > 1 { layout::F_CONTINUED } else { 0 },
            ..Default::default()
        };
        for (slot, p) in first.part.iter_mut().zip(parts) {
            *slot = part(p);
        }
        tx.write(0, &first);
        for (k, more) in parts
            .get(layout::TX_PARTS..)
            .unwrap_or_default()
            .chunks(layout::TX_MORE_PARTS)
            .enumerate()
        {
            let mut e = layout::TxPartsEntry::default();
            for (slot, p) in e.part.iter_mut().zip(more) {
                *slot = part(p);
            }
            tx.write(1 + k as u32, &e);
        }
        tx.publish(need);
        for &(t, _, _) in parts {
            self.returned.push(t);
        }
        true
    }

    /// Whether the session has ended (the host caught a lie, or it left).
    fn session_ended(&self) -> bool {
        self.session.ended().is_some()
    }
}

/// What the consumer does next.
#[derive(Clone, Copy)]
enum Op {
    /// The worker handles a burst and serves its consumers.
    Burst,
    /// Reads what is published (honest).
    Read,
    /// Gives back some of the tokens it holds (honest).
    GiveBack,
    /// Gives back a token it gave back before.
    Duplicate,
    /// Gives back a made-up token, or a held one with a field changed.
    Forge,
    /// Moves the refill ring's producer index anywhere.
    WildRefill,
    /// Moves the completion ring's consumer index anywhere.
    WildCompletion,
    /// Sends a frame made of buffers it holds (honest).
    Transmit,
    /// Publishes a transmit entry that breaks the rules: no parts, too many, bytes
    /// outside a buffer, or a token given back already.
    TxLie,
    /// Dies: its session ends with what it holds. (Between sessions: connects.)
    Leave,
    /// The worker serves its consumers only.
    Service,
}

/// What a script runs on, from its first byte.
struct Setup {
    config: String,
    /// Sessions have a metadata ring.
    meta: bool,
    /// Sessions have a transmit ring, and the worker a device for it.
    transmit: bool,
    /// The consumer tells no lie (its lies are read as the worker serving it).
    honest: bool,
    /// Bytes a frame.
    size: usize,
}

impl Setup {
    /// Bits 0 to 3 choose metadata, frame size, lent heads and a transmit ring; a
    /// quarter of the choices (bits 4 and 5 both set) are honest.
    fn of(choice: u8) -> Setup {
        let config = if choice & 4 != 0 {
            // Heads lent from shared memory too: two buffers a frame, one pool.
            INLINE_HEADS.replace("[[route]]\nhead = \"hdr\"", "[[route]]\nhead = \"payload\"")
        } else {
            INLINE_HEADS.to_string()
        };
        Setup {
            config,
            meta: choice & 1 != 0,
            // Frames of one part after an inline head, or of several (1500 B into 512 B).
            size: if choice & 2 != 0 { 1500 } else { 64 },
            transmit: choice & 8 != 0,
            honest: choice & 48 == 48,
        }
    }
}

/// A device that takes frames a consumer sends, refusing every fifth: what it took.
#[derive(Default)]
struct Device {
    /// Frames taken, their bytes, frames refused.
    log: std::sync::Mutex<(u64, u64, u64)>,
}

impl crate::device::TxQueue for Device {
    fn send(&self, _: &crate::device::VnetHdr, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut log = self.log.lock().expect("not poisoned");
        if (log.0 + log.2) % 5 == 4 {
            log.2 += 1;
            return Err(std::io::Error::other("refused (every fifth frame)"));
        }
        log.0 += 1;
        log.1 += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(())
    }

    fn name(&self) -> &str {
        "hostile-test"
    }
}

/// What a script came to.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code, reason = "read by the tests only"))]
pub(crate) struct Outcome {
    /// Sessions the host ended for a lie.
    caught: u64,
    /// Frames delivered (into some session's completion ring).
    delivered: u64,
    /// Frames consumers sent that reached the device (taken or refused).
    to_device: u64,
}

/// Runs one script against a fresh worker and checks what must hold after it (the
/// module's doc). Panics, naming what broke, when something does not.
pub(crate) fn play(script: &[u8]) -> Outcome {
    let mut s = Script {
        bytes: script,
        at: 0,
    };
    let Setup {
        config,
        meta,
        transmit,
        honest,
        size,
    } = Setup::of(s.u8());
    let config = Config::from_toml(&config, "hostile", Default::default(), None).expect("valid");
    let engine = Engine::new(config, &PluginPath::from_env()).expect("built-in providers");
    let inbox = Arc::new(Inbox::default());
    let mut worker = engine
        .test_worker(Box::new(CountSink), Some(Arc::clone(&inbox)))
        .expect("a worker");
    let device = Arc::new(Device::default());
    if transmit {
        let d = worker.delivery.as_mut().expect("delivering");
        d.set_transmitter(0, Arc::clone(&device) as Arc<dyn crate::device::TxQueue>);
    }
    let frames = udp_frames(size, 256);
    let rx = received(&frames);
    let mut next = 0;
    let mut burst = |worker: &mut Worker| {
        let at = next % rx.len();
        let end = (at + BURST).min(rx.len());
        worker.handle(&rx[at..end]);
        next += end - at;
        worker.service();
    };
    let mut peer = Some(Peer::connect(&inbox, meta, transmit));
    // A session lied; sessions left on purpose; frames honest sessions sent.
    let (mut lied, mut left, mut sent) = (false, 0u64, 0u64);
    worker.service();
    while !s.done() {
        // Lies are an eighth of the ops, so sessions live long enough to fill their
        // ring and quota between them.
        let op = match s.u8() % 32 {
            0..=9 => Op::Burst,
            10..=15 => Op::Read,
            16..=23 => Op::GiveBack,
            24 if !honest => Op::Duplicate,
            25 if !honest => Op::Forge,
            26 if !honest => Op::WildRefill,
            27 if !honest => Op::WildCompletion,
            28 => Op::Leave,
            29 if transmit => Op::Transmit,
            30 if transmit && !honest => Op::TxLie,
            _ => Op::Service,
        };
        let Some(p) = peer.as_mut() else {
            // Between sessions: frames arrive with nobody to take them, until the
            // script connects again.
            match op {
                Op::Burst | Op::Service => burst(&mut worker),
                _ => peer = Some(Peer::connect(&inbox, meta, transmit)),
            }
            continue;
        };
        match op {
            Op::Burst => burst(&mut worker),
            Op::Read => p.read(None),
            Op::GiveBack => {
                let n = usize::from(s.u8() % 64) + 1;
                p.give_back(n, s.u8() & 1 != 0);
            }
            Op::Duplicate => {
                // A token given back already.
                if !p.returned.is_empty() {
                    let t = p.returned[usize::from(s.u8()) % p.returned.len()];
                    if p.give(&[t]) {
                        p.lied = true;
                        p.caught_next = true;
                    }
                }
            }
            Op::Forge => {
                // A made-up token, or a real one's fields changed: honest only if it
                // happens to be one it holds.
                let t = match (p.held.first().map(|h| h.0), s.u8() % 3) {
                    (Some(h), 0) => {
                        let mut t = Token::from_u64(h);
                        t.generation = t.generation.wrapping_add(1);
                        t.to_u64()
                    }
                    (Some(h), 1) => h ^ (1 << (s.u8() % 64)),
                    _ => s.u64(),
                };
                let held = p.held.iter().position(|h| h.0 == t);
                if p.give(&[t]) {
                    match held {
                        Some(at) => {
                            p.held.swap_remove(at);
                        }
                        None => p.lied = true,
                    }
                }
            }
            Op::WildRefill => {
                // The refill ring's producer index, anywhere. Past what it wrote, the
                // entries it claims are stale tokens or zeros, or more than the ring
                // holds: caught. Back to between what the host took and what it wrote,
                // it only hides tokens, which the host cannot tell from their not being
                // written yet.
                let delta = s.u32();
                if delta != 0 {
                    let (ours, served) = (p.refill.position(), p.refill_served);
                    p.lied = true;
                    p.caught_next |=
                        ours.wrapping_add(delta).wrapping_sub(served) > ours.wrapping_sub(served);
                    p.refill_moved = true;
                    p.refill
                        .force_shared_index(p.refill.position().wrapping_add(delta));
                }
            }
            Op::WildCompletion => {
                // The completion ring's consumer index, anywhere. (Within what was
                // published, the host cannot tell it from reading; past it, it can.)
                let delta = s.u32();
                if delta != 0 {
                    p.lied = true;
                    p.derailed = true;
                    p.completion
                        .force_shared_index(p.completion.position().wrapping_add(delta));
                }
            }
            Op::Transmit => {
                // Up to 9 parts (three entries), as held.
                let n = (usize::from(s.u8() % 9) + 1).min(p.held.len());
                let parts: Vec<(u64, u32, u32)> =
                    p.held[..n].iter().map(|&(t, len)| (t, 0, len)).collect();
                if n > 0 && p.send(&parts, n as u16) {
                    p.held.drain(..n);
                    p.sent += 1;
                }
            }
            Op::TxLie => {
                let written = match (s.u8() % 4, p.held.first().copied(), p.returned.last()) {
                    (0, _, _) => p.send(&[(0, 0, 0)], 0),
                    (1, _, _) => p.send(&[(0, 0, 0)], TX_MAX_PARTS as u16 + 1 + u16::from(s.u8())),
                    (2, Some((t, _)), _) => {
                        // Past the end of its 512-byte buffer.
                        let (offset, len) = (u32::from(s.u8()) * 4, 513 + u32::from(s.u8()));
                        let w = p.send(&[(t, offset, len)], 1);
                        if w {
                            p.held.remove(0);
                        }
                        w
                    }
                    (_, _, Some(&t)) => p.send(&[(t, 0, 1)], 1),
                    _ => false,
                };
                if written {
                    p.lied = true;
                    p.caught_next = true;
                }
            }
            Op::Leave => {
                // Killed: the session ends with whatever it held.
                p.session.end(Disconnect::Left);
                left += 1;
                worker.service();
                lied |= p.lied;
                sent += p.sent;
                peer = None;
            }
            Op::Service => worker.service(),
        }
        if let Some(p) = peer.as_mut() {
            if matches!(op, Op::Burst | Op::Service) {
                p.refill_served = p.refill.position();
            }
            if p.caught_next && matches!(op, Op::Burst | Op::Service) {
                assert!(p.session_ended(), "a lie the host served was not caught");
            }
            if p.session_ended() {
                // A lie was caught (the host ended the session): the consumer finds out
                // and goes away.
                lied |= p.lied;
                sent += p.sent;
                assert!(p.lied, "an honest consumer's session ended");
                peer = None;
            }
        }
    }
    if let Some(p) = peer.take() {
        lied |= p.lied;
        sent += p.sent;
        p.session.end(Disconnect::Left);
        left += 1;
    }
    worker.service();

    // The host is unaffected: an honest consumer now gets a whole burst, checked byte
    // for byte, and gives everything back.
    let mut newcomer = Peer::connect(&inbox, meta, transmit);
    worker.service();
    let at = next % rx.len();
    let end = (at + BURST).min(rx.len());
    worker.handle(&rx[at..end]);
    let burst_sent: Vec<&[u8]> = rx[at..end].iter().map(|f| f.data).collect();
    newcomer.read(Some(&burst_sent));
    assert_eq!(
        newcomer.frames,
        burst_sent.len() as u64,
        "an honest consumer after the script"
    );
    let held = newcomer.held.len();
    newcomer.give_back(held, false);
    worker.service();
    assert!(!newcomer.session_ended(), "the honest session goes on");
    newcomer.session.end(Disconnect::Left);
    left += 1;
    worker.service();

    // Nothing is lost.
    let d = worker.delivery.as_mut().expect("delivering");
    d.close_all(&mut worker.pools, std::time::Duration::ZERO);
    worker.service();
    for p in &worker.pools {
        assert_eq!(p.stats().inflight, 0, "every buffer back in its pool");
    }
    let c = &worker.delivery.as_ref().expect("delivering").stats()[0];
    assert_eq!(c.counters.lent, 0, "no buffer still lent");
    assert_eq!(worker.stats.unsplit.sum(), 0, "every frame split at L4");
    let dropped = &worker.stats.dropped;
    assert_eq!(
        worker.stats.received.frames,
        // Delivered frames a session never read are dropped too (`consumer_gone`).
        c.counters.frames + dropped.sum() - c.counters.gone,
        "every frame delivered or dropped with a reason: {dropped:?}, {:?}",
        c.counters
    );
    // Only a lie ends a session but leaving, and it says why.
    let d = &c.disconnects;
    let caught =
        d.get(Disconnect::BadToken) + d.get(Disconnect::BadIndex) + d.get(Disconnect::BadEntry);
    assert_eq!(
        d.sum(),
        left + caught,
        "sessions end by leaving or by a lie caught: {d:?}"
    );
    if !lied {
        assert_eq!(caught, 0, "no lie, yet a session ended for one: {d:?}");
    }
    // What the device took is what the counters say, and with no lie, every frame sent.
    let (took, bytes, refused) = *device.log.lock().expect("not poisoned");
    assert_eq!(
        (
            c.counters.transmitted,
            c.counters.transmitted_bytes,
            c.counters.tx_refused
        ),
        (took, bytes, refused),
        "the transmit counters"
    );
    if !lied {
        assert_eq!(took + refused, sent, "every frame sent went to the device");
    }
    assert!(!(honest && lied), "an honest setup lied");
    Outcome {
        caught,
        delivered: c.counters.frames,
        to_device: took + refused,
    }
}

/// `flows` UDP/IPv4 frames of `size` bytes (at least 42), one a flow (source ports
/// from 40000), each payload byte its frame's number plus its offset: built here
/// rather than by `memplex-testkit`, which the fuzz target cannot depend on.
pub(super) fn udp_frames(size: usize, flows: u16) -> Vec<Vec<u8>> {
    let size = size.max(42);
    (0..flows)
        .map(|flow| {
            let mut f = vec![0u8; size];
            f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut f[14..34];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((size - 14) as u16).to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
            let sum = ip
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum::<u32>();
            let sum = (sum & 0xffff) + (sum >> 16);
            ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
            let udp = &mut f[34..42];
            udp[0..2].copy_from_slice(&(40000 + flow).to_be_bytes());
            udp[2..4].copy_from_slice(&9999u16.to_be_bytes());
            udp[4..6].copy_from_slice(&((size - 34) as u16).to_be_bytes());
            for (i, b) in f[42..].iter_mut().enumerate() {
                *b = (flow as usize + i) as u8;
            }
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small pseudo-random generator (xorshift64*), for scripts that are the same run
    /// after run.
    fn script_of(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    /// Hundreds of scripts (each 64 to 512 bytes, over every setup), each checked as the
    /// module's doc says.
    #[test]
    fn hostile_consumers_lose_nothing_and_leave_the_host_unaffected() {
        let only: Option<u64> = std::env::var("MEMPLEX_HOSTILE_SEED")
            .ok()
            .and_then(|v| v.parse().ok());
        let scripts: u64 = std::env::var("MEMPLEX_HOSTILE_SCRIPTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(240);
        for seed in only.map_or(0..scripts, |s| s..s + 1) {
            let mut script = script_of(seed, 64 + (seed as usize * 37) % 449);
            // Every setup in turn.
            script[0] = seed as u8;
            let result = std::panic::catch_unwind(|| {
                play(&script);
            });
            if let Err(e) = result {
                panic!(
                    "script of seed {seed} failed (rerun it alone: MEMPLEX_HOSTILE_SEED={seed}): {}",
                    e.downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| e.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic")
                );
            }
        }
    }

    /// The fuzz target's seeds (`fuzz/seeds/hostile_consumer`), and any input it found
    /// that failed once and was added there, still pass.
    #[test]
    fn every_fuzz_seed_plays_clean() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/hostile_consumer");
        let mut ran = 0;
        for entry in std::fs::read_dir(&dir).expect("the seeds") {
            let path = entry.expect("a seed").path();
            let script = std::fs::read(&path).expect("readable");
            if let Err(e) = std::panic::catch_unwind(|| {
                play(&script);
            }) {
                panic!("{}: {e:?}", path.display());
            }
            ran += 1;
        }
        assert!(ran >= 7, "{ran} seeds in {}", dir.display());
    }

    /// Script bytes of some ops (see `play`).
    const BURST_OP: u8 = 0;
    const READ_OP: u8 = 10;
    const GIVE_BACK_OP: u8 = 16;
    const DUPLICATE_OP: u8 = 24;
    const TRANSMIT_OP: u8 = 29;
    const SERVICE_OP: u8 = 31;

    /// An honest script (reads, gives back, bursts) ends no session and loses nothing; a
    /// script that only lies is caught.
    #[test]
    fn an_honest_script_ends_no_session_and_a_lie_is_caught() {
        // With a transmit ring (setup 8): bursts, reads, a frame of three parts sent, and
        // give-backs of 64 from the oldest.
        let honest: Vec<u8> = std::iter::once(8)
            .chain((0..40).flat_map(|_| [BURST_OP, READ_OP, TRANSMIT_OP, 2, GIVE_BACK_OP, 63, 0]))
            .collect();
        let out = play(&honest);
        assert_eq!(out.caught, 0);
        // 40 bursts of 32 and the honest consumer's last one, none dropped; 40 frames sent
        // (every fifth refused: `play` checks the counts against the device's).
        assert_eq!(out.delivered, 41 * 32, "{out:?}");
        assert_eq!(out.to_device, 40, "{out:?}");
        // A burst, a read, a token given back (the oldest), then given back again.
        let lying = [
            0,
            BURST_OP,
            READ_OP,
            GIVE_BACK_OP,
            0,
            0,
            DUPLICATE_OP,
            0,
            SERVICE_OP,
        ];
        let out = play(&lying);
        assert_eq!(
            out.caught, 1,
            "the duplicate token ended the session: {out:?}"
        );
    }
}
