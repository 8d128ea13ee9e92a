//! The channel memory: one memfd per queue and session, mapped shared by both sides.
//!
//! ```text
//! 0      ChannelHeader (256 B): magic, version, queue, rings[4] { kind, entry size,
//!        entries, offset }
//! ring   RingHeader (192 B, three cache lines): producer index and flags | consumer
//!        index | reserved; then `entries` entries of `entry size` bytes
//! ```
//!
//! Indexes are free-running `u32`s (AF_XDP style): the slot of index `i` is
//! `i & (entries - 1)`, and a ring holds `producer - consumer` entries (wrapping).
//! Producer and consumer index are on separate cache lines so the two sides never write
//! the same line.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MXRG` in memory order: the first four bytes of a channel.
pub const CHANNEL_MAGIC: u32 = u32::from_le_bytes(*b"MXRG");

/// Bytes of the channel header.
pub const CHANNEL_HEADER: usize = 256;

/// Bytes of a ring header.
pub const RING_HEADER: usize = 192;

/// Where the consumer index sits in a ring header.
pub const CONSUMER_OFFSET: usize = 64;

/// The ring-header flag a reader sets before it sleeps on the eventfd: the writer makes
/// one wake-up system call after publishing, and none while it is clear.
pub const NEED_WAKEUP: u32 = 1;

/// What a ring carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RingKind {
    /// Unused slot of the table.
    None = 0,
    /// Host to consumer: frame entries ([`FrameEntry`] and what follows it).
    Completion = 1,
    /// Consumer to host: buffer tokens to give back (`u64` each).
    Refill = 2,
    /// Consumer to host: frames to send out of a device ([`TxEntry`] and what follows
    /// it). It has entries only when the consumer's config names a `transmit` device.
    Transmit = 3,
}

/// One row of the channel's ring table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RingDesc {
    /// A [`RingKind`].
    pub kind: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// Entries (a power of two; 0 for a reserved ring).
    pub entries: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Where the ring header starts in the channel memory.
    pub offset: u64,
}

/// Slots in the ring table: completion, refill, transmit, and one spare.
pub const RINGS: usize = 4;

/// The first bytes of a channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ChannelHeader {
    /// [`CHANNEL_MAGIC`].
    pub magic: u32,
    /// [`crate::VERSION`].
    pub version: u32,
    /// The host queue.
    pub queue: u32,
    /// Rings in use in `rings`.
    pub nrings: u32,
    /// The ring table, indexed by `RingKind - 1`.
    pub rings: [RingDesc; RINGS],
}

const _: () = assert!(size_of::<ChannelHeader>() <= CHANNEL_HEADER);

/// Bytes of a completion entry.
pub const ENTRY: usize = 128;

/// Parts a [`FrameEntry`] carries itself; more go in [`PartsEntry`]s after it.
pub const FRAME_PARTS: usize = 2;

/// Parts a [`PartsEntry`] carries.
pub const MORE_PARTS: usize = 4;

/// [`FrameEntry::flags`]: more entries of this frame follow (inline head bytes, then
/// parts), as AF_XDP multi-buffer marks a descriptor.
pub const F_CONTINUED: u16 = 1;
/// [`FrameEntry::flags`]: the head is inline, in `inline_len` bytes of [`InlineEntry`]s.
pub const F_HEAD_INLINE: u16 = 2;
/// [`FrameEntry::flags`]: `checksum` holds the CRC-32C of the whole frame.
pub const F_CHECKSUM: u16 = 4;
/// [`FrameEntry::flags`]: the frame's bytes were copied into the ring (a route with
/// `copy = true` whose memory cannot be shared): `inline_len` bytes, no parts.
pub const F_COPIED: u16 = 8;

/// [`Part::flags`]: this part is the head.
pub const P_HEAD: u32 = 1;

/// One buffer of a frame: where its bytes are, and the token that gives it back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Part {
    /// Give it back by writing this to the refill ring. 0 never names a buffer.
    pub token: u64,
    /// Where the bytes start in the region.
    pub offset: u64,
    /// How many bytes.
    pub len: u32,
    /// The region, as a [`crate::msg::Region`] numbered it.
    pub region: u32,
    /// [`P_HEAD`] for the head.
    pub flags: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// The first entry of a frame: its metadata and its first parts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FrameEntry {
    /// Per-queue sequence number of the frame as received.
    pub seq: u64,
    /// Capture timestamp (ns since the Unix epoch; the capture's, on replay).
    pub timestamp_ns: u64,
    /// CLOCK_MONOTONIC when the host received it, in ns.
    pub rx_mono_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// Bytes captured (all of them are in the parts).
    pub cap_len: u32,
    /// A hash of the flow (addresses, protocol, ports): how sessions of one consumer
    /// share a route.
    pub flow_hash: u32,
    /// CRC-32C of the frame when [`F_CHECKSUM`] is set.
    pub checksum: u32,
    /// The host queue.
    pub queue: u16,
    /// The route rule that placed it.
    pub route: u16,
    /// `F_*` flags.
    pub flags: u16,
    /// Bytes of the head (inline or in the head part).
    pub head_len: u16,
    /// Parts of the frame in all (head part included, inline head not).
    pub parts: u16,
    /// Bytes in [`InlineEntry`]s after this entry.
    pub inline_len: u16,
    /// GSO segment size, 0 for none.
    pub gso_size: u16,
    /// Where checksumming starts, for a partial checksum.
    pub csum_start: u16,
    /// Where the checksum goes from `csum_start`.
    pub csum_offset: u16,
    /// The layer split after (0 none, 2 L2, 3 L3, 4 L4, 7 application).
    pub layer: u8,
    /// GSO type: 0 none, 1 TCPv4, 3 UDP, 4 TCPv6 (`virtio_net_hdr` numbers).
    pub gso_type: u8,
    /// Checksum state: 0 none, 1 partial (needs finishing), 2 verified.
    pub csum: u8,
    /// Reserved, 0.
    pub reserved: [u8; 3],
    /// The first parts (`min(parts, FRAME_PARTS)` of them).
    pub part: [Part; FRAME_PARTS],
}

/// Parts after a [`FrameEntry`]'s first ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PartsEntry {
    /// Up to [`MORE_PARTS`] more parts.
    pub part: [Part; MORE_PARTS],
}

/// Inline bytes (the head, or a copied frame), [`ENTRY`] a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InlineEntry {
    /// Bytes; the last entry's tail past `inline_len` is unspecified.
    pub bytes: [u8; ENTRY],
}

const _: () = assert!(size_of::<FrameEntry>() == ENTRY);
const _: () = assert!(size_of::<PartsEntry>() == ENTRY);
const _: () = assert!(size_of::<InlineEntry>() == ENTRY);
const _: () = assert!(size_of::<Part>() == 32);

/// Entries a frame takes in the completion ring: its [`FrameEntry`], the inline bytes,
/// and the parts that did not fit.
pub const fn entries_for(parts: usize, inline_len: usize) -> usize {
    let more = parts.saturating_sub(FRAME_PARTS);
    1 + inline_len.div_ceil(ENTRY) + more.div_ceil(MORE_PARTS)
}

/// Bytes of a transmit entry.
pub const TX_ENTRY: usize = 64;

/// Parts a [`TxEntry`] carries itself; more go in [`TxPartsEntry`]s after it.
pub const TX_PARTS: usize = 3;

/// Parts a [`TxPartsEntry`] carries.
pub const TX_MORE_PARTS: usize = 4;

/// The most parts one transmitted frame may name (the host's scatter-gather limit).
pub const TX_MAX_PARTS: usize = 160;

/// One buffer of a frame to transmit: a token the consumer holds, and which bytes of
/// that buffer go out.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TxPart {
    /// A token from a [`Part`] the consumer holds. The host takes the buffer back once
    /// the frame is sent (or refused): the token must not also go to the refill ring.
    pub token: u64,
    /// Where the bytes start, from the start of the buffer (a [`Part`]'s bytes start at
    /// 0 of their buffer).
    pub offset: u32,
    /// How many bytes.
    pub len: u32,
}

/// The first entry of a frame to transmit: how to send it and its first parts. The
/// frame is the parts' bytes in order. A verdict is the same thing: to forward a frame
/// as it came, send its parts; to drop it, give its tokens back through the refill ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TxEntry {
    /// Parts of the frame in all, 1 to [`TX_MAX_PARTS`].
    pub parts: u16,
    /// [`F_CONTINUED`] when [`TxPartsEntry`]s follow.
    pub flags: u16,
    /// GSO type (`virtio_net_hdr` numbers, as in [`FrameEntry::gso_type`]); 0 for a
    /// finished frame.
    pub gso_type: u8,
    /// 1: the checksum at `csum_start + csum_offset` is partial and must be finished
    /// (as [`FrameEntry::csum`] 1); 0 otherwise.
    pub csum: u8,
    /// GSO segment size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes from `csum_start`.
    pub csum_offset: u16,
    /// Length of the headers GSO copies into each segment (0: the device works it out).
    pub hdr_len: u16,
    /// Reserved, 0.
    pub reserved: u16,
    /// The first parts (`min(parts, TX_PARTS)` of them).
    pub part: [TxPart; TX_PARTS],
}

/// Parts after a [`TxEntry`]'s first ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TxPartsEntry {
    /// Up to [`TX_MORE_PARTS`] more parts.
    pub part: [TxPart; TX_MORE_PARTS],
}

const _: () = assert!(size_of::<TxEntry>() == TX_ENTRY);
const _: () = assert!(size_of::<TxPartsEntry>() == TX_ENTRY);
const _: () = assert!(size_of::<TxPart>() == 16);

/// Entries a frame of `parts` parts takes in the transmit ring.
pub const fn tx_entries_for(parts: usize) -> usize {
    1 + parts.saturating_sub(TX_PARTS).div_ceil(TX_MORE_PARTS)
}

/// A buffer token: which pool (one per provider and queue), which buffer, and the
/// generation of this loan, so a stale, foreign or forged token is told apart from a
/// live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The provider's pool index in the host's config order.
    pub pool: u16,
    /// Counts the loans of this buffer; never 0 in a live token.
    pub generation: u16,
    /// The provider's id of the buffer.
    pub id: u32,
}

impl Token {
    /// As written in a [`Part`] and the refill ring.
    pub const fn to_u64(self) -> u64 {
        (self.pool as u64) << 48 | (self.generation as u64) << 32 | self.id as u64
    }

    /// From the ring (any `u64`; validity is the host's business).
    pub const fn from_u64(v: u64) -> Token {
        Token {
            pool: (v >> 48) as u16,
            generation: (v >> 32) as u16,
            id: v as u32,
        }
    }
}

/// Lays out a channel with a completion ring of `completion` entries, a refill ring of
/// `refill` entries and a transmit ring of `transmit` entries (0: none): the header to
/// write and the total bytes.
pub fn channel(queue: u32, completion: u32, refill: u32, transmit: u32) -> (ChannelHeader, usize) {
    let align = |n: usize| n.next_multiple_of(4096);
    let comp_at = CHANNEL_HEADER;
    let refill_at = align(comp_at + RING_HEADER + completion as usize * ENTRY);
    let tx_at = align(refill_at + RING_HEADER + refill as usize * 8);
    let total = align(tx_at + RING_HEADER + transmit as usize * TX_ENTRY);
    let mut rings = [RingDesc::default(); RINGS];
    rings[0] = RingDesc {
        kind: RingKind::Completion as u32,
        entry_size: ENTRY as u32,
        entries: completion,
        reserved: 0,
        offset: comp_at as u64,
    };
    rings[1] = RingDesc {
        kind: RingKind::Refill as u32,
        entry_size: 8,
        entries: refill,
        reserved: 0,
        offset: refill_at as u64,
    };
    rings[2] = RingDesc {
        kind: RingKind::Transmit as u32,
        entry_size: TX_ENTRY as u32,
        entries: transmit,
        reserved: 0,
        offset: tx_at as u64,
    };
    (
        ChannelHeader {
            magic: CHANNEL_MAGIC,
            version: crate::VERSION,
            queue,
            nrings: 3,
            rings,
        },
        total,
    )
}

/// Checks a channel header read from shared memory of `len` bytes: the ring table must
/// describe rings that lie inside it, with power-of-two sizes. The consumer's side of
/// "never follow what the other side wrote".
pub fn check_channel(h: &ChannelHeader, len: usize) -> Result<(), String> {
    if h.magic != CHANNEL_MAGIC {
        return Err(format!("channel magic {:#x}", h.magic));
    }
    if h.version != crate::VERSION {
        return Err(format!("channel version {}", h.version));
    }
    for (i, r) in h.rings.iter().enumerate().take(3) {
        let want = [RingKind::Completion, RingKind::Refill, RingKind::Transmit][i] as u32;
        if r.kind != want {
            return Err(format!("ring {i} has kind {}, not {want}", r.kind));
        }
        if r.entries != 0 && !r.entries.is_power_of_two() {
            return Err(format!(
                "ring {i} has {} entries, not a power of two",
                r.entries
            ));
        }
        let end = u128::from(r.offset)
            + RING_HEADER as u128
            + u128::from(r.entries) * u128::from(r.entry_size);
        if !r.offset.is_multiple_of(64) || end > len as u128 {
            return Err(format!(
                "ring {i} at {} does not fit in {len} bytes",
                r.offset
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_sizes() {
        let t = Token {
            pool: 3,
            generation: 0xbeef,
            id: 77,
        };
        assert_eq!(Token::from_u64(t.to_u64()), t);
        assert_eq!(entries_for(1, 0), 1);
        assert_eq!(entries_for(2, 0), 1);
        assert_eq!(entries_for(3, 0), 2);
        assert_eq!(entries_for(7, 0), 3);
        assert_eq!(entries_for(1, 200), 3);
        assert_eq!(tx_entries_for(1), 1);
        assert_eq!(tx_entries_for(3), 1);
        assert_eq!(tx_entries_for(4), 2);
        assert_eq!(tx_entries_for(33), 9);
        let (h, len) = channel(1, 1024, 2048, 512);
        assert_eq!(check_channel(&h, len), Ok(()));
        assert!(len >= 256 + 1024 * 128 + 2048 * 8 + 512 * 64);
        let (h, len) = channel(1, 1024, 2048, 0);
        assert_eq!(check_channel(&h, len), Ok(()));
        assert!(check_channel(&h, len - 4096)
            .unwrap_err()
            .contains("does not fit"));
        let mut bad = h;
        bad.rings[1].entries = 1000;
        assert!(check_channel(&bad, len)
            .unwrap_err()
            .contains("power of two"));
    }
}
