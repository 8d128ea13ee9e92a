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
    /// Host to consumer: frame descriptors ([`Desc`]).
    Completion = 1,
    /// Consumer to host: buffer tokens to give back (`u64` each).
    Refill = 2,
    /// Consumer to host: frames to send out of a device ([`TxEntry`] and what follows
    /// it). It has entries only when the consumer's config names a `transmit` device.
    Transmit = 3,
    /// Host to consumer: a [`FrameMeta`] per frame, when the consumer asked for it; else
    /// 0 entries.
    Meta = 4,
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

/// Slots in the ring table: completion, refill, transmit, metadata.
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

/// Bytes of a completion ring descriptor.
pub const DESC: usize = 16;

/// Bytes of a metadata ring entry.
pub const META: usize = 64;

/// [`Desc::word`]: bits of the offset in the region (1 TiB).
pub const D_OFFSET_BITS: u32 = 40;
/// [`Desc::word`]: bits of the length, above the offset (up to 4 MiB - 1).
pub const D_LEN_BITS: u32 = 22;
/// [`Desc::word`]: the frame's next descriptor follows this one (AF_XDP's
/// `XDP_PKT_CONTD`).
pub const D_MORE: u64 = 1 << 62;
/// [`Desc::word`], on an inline descriptor: the bytes are the whole frame (a route with
/// `copy = true` whose memory cannot be shared), not only its head.
pub const D_COPIED: u64 = 1 << 63;

/// The [`FrameMeta::flags`] bit: the head came inline.
pub const F_HEAD_INLINE: u16 = 2;
/// [`FrameMeta::flags`]: `checksum` holds the CRC-32 of the whole frame.
pub const F_CHECKSUM: u16 = 4;
/// [`FrameMeta::flags`]: the whole frame came inline (`copy = true`).
pub const F_COPIED: u16 = 8;
/// [`TxEntry::flags`]: more entries of this frame follow.
pub const F_CONTINUED: u16 = 1;

/// One descriptor of the completion ring (16 bytes, as an AF_XDP descriptor). A frame is
/// a run of descriptors, each but the last with [`D_MORE`]; the first is its head.
///
/// - A **part** names a buffer: `token` (never 0) gives it back, and `word` holds where
///   its bytes are in the region the token names (bits 0-39), how many (bits 40-61) and
///   the flags (62-63).
/// - An **inline** descriptor (`token` 0) is followed by `ceil(len / 16)` slots of raw
///   bytes: a head whose memory cannot be shared, or with [`D_COPIED`] a whole frame.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Desc {
    /// A [`Token`] as a `u64`; 0 for inline bytes.
    pub token: u64,
    /// Offset, length and flags, packed (see [`Desc`]).
    pub word: u64,
}

const OFFSET_MASK: u64 = (1 << D_OFFSET_BITS) - 1;
const LEN_MASK: u64 = (1 << D_LEN_BITS) - 1;

/// The largest offset in a region a [`Desc`] can name.
pub const MAX_OFFSET: u64 = OFFSET_MASK;
/// The longest part or inline run a [`Desc`] can name.
pub const MAX_LEN: u32 = LEN_MASK as u32;

impl Desc {
    /// A part: `len` bytes at `offset` in the region of `token`.
    #[inline]
    pub const fn part(token: Token, offset: u64, len: u32, more: bool) -> Desc {
        Desc {
            token: token.to_u64(),
            word: (offset & OFFSET_MASK)
                | ((len as u64 & LEN_MASK) << D_OFFSET_BITS)
                | if more { D_MORE } else { 0 },
        }
    }

    /// An inline run of `len` bytes, in the slots after it.
    #[inline]
    pub const fn inline(len: u32, copied: bool, more: bool) -> Desc {
        Desc {
            token: 0,
            word: ((len as u64 & LEN_MASK) << D_OFFSET_BITS)
                | if more { D_MORE } else { 0 }
                | if copied { D_COPIED } else { 0 },
        }
    }

    /// True for inline bytes (no buffer).
    pub const fn is_inline(&self) -> bool {
        self.token == 0
    }

    /// Where a part's bytes start in its region.
    pub const fn offset(&self) -> u64 {
        self.word & OFFSET_MASK
    }

    /// Bytes of the part, or of the inline run.
    pub const fn len(&self) -> u32 {
        ((self.word >> D_OFFSET_BITS) & LEN_MASK) as u32
    }

    /// True when the length is 0.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's next descriptor follows.
    pub const fn more(&self) -> bool {
        self.word & D_MORE != 0
    }

    /// An inline run that is the whole frame.
    pub const fn copied(&self) -> bool {
        self.word & D_COPIED != 0
    }

    /// The region a part's token names.
    pub const fn region(&self) -> u16 {
        Token::from_u64(self.token).region
    }
}

/// Slots of raw bytes after an inline descriptor of `len` bytes.
pub const fn inline_slots(len: usize) -> usize {
    len.div_ceil(DESC)
}

/// Completion ring slots a frame takes: one per part, and an inline descriptor with its
/// slots when there are inline bytes.
pub const fn slots_for(parts: usize, inline_len: usize) -> usize {
    parts
        + if inline_len > 0 {
            1 + inline_slots(inline_len)
        } else {
            0
        }
}

/// A frame's metadata, in the metadata ring (when the consumer asked for it with
/// [`crate::msg::FEATURE_META`]): the `n`-th frame of a channel's completion ring has
/// its metadata in slot `n` of the metadata ring, which has as many entries as the
/// completion ring. A consumer reads it before it releases the frame's descriptors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FrameMeta {
    /// Per-queue sequence number of the frame as received.
    pub seq: u64,
    /// Capture timestamp (ns since the Unix epoch; the capture's, on replay).
    pub timestamp_ns: u64,
    /// CLOCK_MONOTONIC when the host received it, in ns.
    pub rx_mono_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// Bytes captured (all of them are in the frame's descriptors).
    pub cap_len: u32,
    /// A hash of the flow (addresses, protocol, ports): how sessions of one consumer
    /// share a route.
    pub flow_hash: u32,
    /// CRC-32 (IEEE) of the frame when [`F_CHECKSUM`] is set.
    pub checksum: u32,
    /// The host queue.
    pub queue: u16,
    /// The route rule that placed it.
    pub route: u16,
    /// `F_*` flags.
    pub flags: u16,
    /// Bytes of the head (inline or in the head part).
    pub head_len: u16,
    /// Parts of the frame (buffers lent), head part included.
    pub parts: u16,
    /// Inline bytes (a head, or with [`F_COPIED`] the frame).
    pub inline_len: u16,
    /// GSO segment size, 0 for none.
    pub gso_size: u16,
    /// Where checksumming starts, for a partial checksum.
    pub csum_start: u16,
    /// Where the checksum goes from `csum_start`.
    pub csum_offset: u16,
    /// The layer split after (0 none, 2 L2, 3 L3, 4 L4, 5 tunnel, 7 application).
    pub layer: u8,
    /// GSO type: 0 none, 1 TCPv4, 3 UDP, 4 TCPv6 (`virtio_net_hdr` numbers).
    pub gso_type: u8,
    /// Checksum state: 0 none, 1 partial (needs finishing), 2 verified.
    pub csum: u8,
    /// Reserved, 0.
    pub reserved: [u8; 3],
}

const _: () = assert!(size_of::<Desc>() == DESC);
const _: () = assert!(size_of::<FrameMeta>() == META);

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

/// A buffer token: which region the buffer is in (and so which pool: a region belongs
/// to one provider's pool), which buffer, and the generation of this loan, so a stale,
/// foreign or forged token is told apart from a live one.
///
/// Its fields are in the order of their bits in [`to_u64`](Self::to_u64), low to high,
/// so that on a little-endian CPU the conversion moves a register: in the default
/// layout, packing a token into a descriptor took a dozen shifts and masks per part.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The provider's id of the buffer.
    pub id: u32,
    /// Counts the loans of this buffer; never 0 in a live token.
    pub generation: u16,
    /// The region, as a [`crate::msg::Region`] numbered it.
    pub region: u16,
}

impl Token {
    /// As written in a [`Desc`] and the refill ring.
    pub const fn to_u64(self) -> u64 {
        (self.region as u64) << 48 | (self.generation as u64) << 32 | self.id as u64
    }

    /// From the ring (any `u64`; validity is the host's business).
    pub const fn from_u64(v: u64) -> Token {
        Token {
            region: (v >> 48) as u16,
            generation: (v >> 32) as u16,
            id: v as u32,
        }
    }
}

/// Lays out a channel with a completion ring of `completion` descriptors, a refill ring
/// of `refill` tokens, a transmit ring of `transmit` entries (0: none), and with `meta` a
/// metadata ring as long as the completion ring: the header to write and the total bytes.
pub fn channel(
    queue: u32,
    completion: u32,
    refill: u32,
    transmit: u32,
    meta: bool,
) -> (ChannelHeader, usize) {
    let align = |n: usize| n.next_multiple_of(4096);
    let meta_entries = if meta { completion } else { 0 };
    let comp_at = CHANNEL_HEADER;
    let refill_at = align(comp_at + RING_HEADER + completion as usize * DESC);
    let tx_at = align(refill_at + RING_HEADER + refill as usize * 8);
    let meta_at = align(tx_at + RING_HEADER + transmit as usize * TX_ENTRY);
    let total = align(meta_at + RING_HEADER + meta_entries as usize * META);
    let ring = |kind: RingKind, entry_size: usize, entries: u32, offset: usize| RingDesc {
        kind: kind as u32,
        entry_size: entry_size as u32,
        entries,
        reserved: 0,
        offset: offset as u64,
    };
    (
        ChannelHeader {
            magic: CHANNEL_MAGIC,
            version: crate::VERSION,
            queue,
            nrings: RINGS as u32,
            rings: [
                ring(RingKind::Completion, DESC, completion, comp_at),
                ring(RingKind::Refill, 8, refill, refill_at),
                ring(RingKind::Transmit, TX_ENTRY, transmit, tx_at),
                ring(RingKind::Meta, META, meta_entries, meta_at),
            ],
        },
        total,
    )
}

/// Checks a channel header read from shared memory of `len` bytes: the ring table must
/// describe rings of the right kinds and entry sizes that lie inside it, with
/// power-of-two sizes, and a metadata ring (if any) as long as the completion ring. The
/// consumer's side of "never follow what the other side wrote".
pub fn check_channel(h: &ChannelHeader, len: usize) -> Result<(), String> {
    if h.magic != CHANNEL_MAGIC {
        return Err(format!("channel magic {:#x}", h.magic));
    }
    if h.version != crate::VERSION {
        return Err(format!("channel version {}", h.version));
    }
    let kinds = [
        (RingKind::Completion, DESC),
        (RingKind::Refill, 8),
        (RingKind::Transmit, TX_ENTRY),
        (RingKind::Meta, META),
    ];
    for (i, (r, (kind, size))) in h.rings.iter().zip(kinds).enumerate() {
        if r.kind != kind as u32 {
            return Err(format!("ring {i} has kind {}, not {}", r.kind, kind as u32));
        }
        if r.entries != 0 && r.entry_size as usize != size {
            return Err(format!(
                "ring {i} has {}-byte entries, not {size}",
                r.entry_size
            ));
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
    let meta = h.rings[RingKind::Meta as usize - 1].entries;
    if meta != 0 && meta != h.rings[0].entries {
        return Err(format!(
            "a metadata ring of {meta} entries for a completion ring of {}",
            h.rings[0].entries
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_descriptors_and_sizes() {
        let t = Token {
            region: 3,
            generation: 0xbeef,
            id: 77,
        };
        assert_eq!(Token::from_u64(t.to_u64()), t);
        let d = Desc::part(t, MAX_OFFSET, MAX_LEN, true);
        assert_eq!(
            (d.offset(), d.len(), d.more(), d.copied(), d.is_inline()),
            (MAX_OFFSET, MAX_LEN, true, false, false)
        );
        assert_eq!(d.region(), 3);
        let d = Desc::part(t, 4096, 1500, false);
        assert_eq!((d.offset(), d.len(), d.more()), (4096, 1500, false));
        let d = Desc::inline(54, true, false);
        assert_eq!(
            (d.is_inline(), d.len(), d.copied(), d.more()),
            (true, 54, true, false)
        );
        // Each field stays in its bits: a length never spills into the flags.
        assert_eq!(
            Desc::inline(MAX_LEN, false, false).word & (D_MORE | D_COPIED),
            0
        );
        assert_eq!(slots_for(2, 0), 2);
        assert_eq!(slots_for(1, 54), 1 + 1 + 4);
        assert_eq!(slots_for(0, 16), 2);
        assert_eq!(tx_entries_for(1), 1);
        assert_eq!(tx_entries_for(3), 1);
        assert_eq!(tx_entries_for(4), 2);
        assert_eq!(tx_entries_for(33), 9);
        for meta in [false, true] {
            let (h, len) = channel(1, 1024, 2048, 512, meta);
            assert_eq!(check_channel(&h, len), Ok(()));
            assert!(len >= 256 + 1024 * 16 + 2048 * 8 + 512 * 64 + usize::from(meta) * 1024 * 64);
        }
        let (h, len) = channel(1, 1024, 2048, 0, true);
        assert_eq!(check_channel(&h, len), Ok(()));
        assert!(check_channel(&h, len - 4096)
            .unwrap_err()
            .contains("does not fit"));
        let mut bad = h;
        bad.rings[1].entries = 1000;
        assert!(check_channel(&bad, len)
            .unwrap_err()
            .contains("power of two"));
        let mut bad = h;
        bad.rings[3].entries = 512;
        assert!(check_channel(&bad, len)
            .unwrap_err()
            .contains("metadata ring of 512"));
        let mut bad = h;
        bad.rings[0].entry_size = 128;
        assert!(check_channel(&bad, len).unwrap_err().contains("128-byte"));
    }
}
