//! Header-split in software: zero-copy header views and the split decision.
//!
//! One file per header, in smoltcp's style: a view over the frame's bytes that is checked
//! once (`new_checked`) and after which no accessor can panic. [`walk`] chains them
//! (each layer's payload feeds the next layer's `new_checked`) and records where each
//! layer ends plus the fields routing matches on; [`Splitter`] turns that into a split
//! point for the configured [`SplitMode`]:
//!
//! ```text
//!  | Ethernet | VLAN* | IPv4+opts / IPv6+ext* | TCP+opts / UDP / ICMP | [VXLAN|GENEVE | inner L2..L4] | app hdr | payload
//!            l2       l3                      l4                                               app
//! ```
//!
//! Written here rather than taken from etherparse because the split walk *is* the
//! per-frame path: it stops at the depth the mode needs, never allocates, and yields
//! offsets and routing fields in one pass; its cost is measured against etherparse's
//! slicing of the same frames in the benchmarks. Nothing here is `unsafe`, and no input
//! makes it panic: malformed and truncated frames come back unsplit with a reason, which
//! the runtime counts (fuzzed by `fuzz/fuzz_targets/split.rs`).
#![deny(unsafe_code)]

pub mod app;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod transport;
pub mod tunnel;

use app::App;
use ethernet::EtherType;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use transport::IpProtocol;

/// A byte range of a header field.
pub type Field = core::ops::Range<usize>;

/// Where a frame is split into head and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Never split: the whole frame goes to the head provider (spilling into frags when
    /// it does not fit one head buffer).
    None,
    /// After a fixed number of bytes.
    Fixed,
    /// After the Ethernet header and VLAN tags.
    L2,
    /// After the IP header, options and extension headers included.
    L3,
    /// After the TCP/UDP/ICMP header; for VXLAN and GENEVE, after the inner one.
    L4,
    /// After an application header (NVMe/TCP, iSCSI); else as `l4`.
    App,
}

impl SplitMode {
    /// The names accepted in configs.
    pub const NAMES: &'static str = "none, fixed, l2, l3, l4, app";
}

/// Why a header is unusable: the one error type of every view in `wire`.
///
/// The walk turns it into an [`Unsplit`] reason with [`Error::at`], naming the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// Shorter than the header (or a length field in it) says.
    Truncated,
    /// A field that makes no sense: a wrong version, a length below the minimum, a flag
    /// that says this is not the protocol expected.
    Malformed,
    /// More nested headers than are walked (IPv6 extension headers past
    /// [`ipv6::MAX_EXT_HEADERS`]).
    TooDeep,
    /// A well-formed header carrying a protocol memplex does not split (a GENEVE payload
    /// type, by its ethertype).
    Unsupported(u16),
}

impl Error {
    /// The reason a frame stopping with this error at `layer` is placed whole.
    #[inline]
    pub fn at(self, layer: Layer) -> Unsplit {
        match self {
            Error::Truncated => Unsplit::Truncated(layer),
            Error::TooDeep => Unsplit::TooDeep(layer),
            Error::Malformed | Error::Unsupported(_) => Unsplit::Malformed(layer),
        }
    }
}

/// A protocol layer, for reasons and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet and VLAN tags.
    L2,
    /// IPv4 / IPv6.
    L3,
    /// TCP / UDP / ICMP.
    L4,
    /// VXLAN / GENEVE and the frame inside.
    Tunnel,
    /// An application header.
    App,
}

impl Layer {
    /// Every layer, in [`index`](Self::index) order.
    pub const ALL: [Layer; 5] = [Layer::L2, Layer::L3, Layer::L4, Layer::Tunnel, Layer::App];
    /// Counter names, in [`index`](Self::index) order.
    pub const NAMES: [&'static str; 5] = ["l2", "l3", "l4", "tunnel", "app"];

    /// A dense index, 0 to 4, for counters.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for counters.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// Why a frame was placed whole rather than split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unsplit {
    /// Split mode `none`.
    Disabled,
    /// The payload is no longer than `hds_threshold`.
    BelowThreshold,
    /// Shorter than a header at this layer says.
    Truncated(Layer),
    /// A header at this layer is inconsistent.
    Malformed(Layer),
    /// More VLAN tags (2) or IPv6 extension headers (8) than are walked.
    TooDeep(Layer),
    /// Not IPv4 or IPv6 (ARP, LLDP ...) where the mode needs L3.
    NotIp,
    /// An IP protocol with no header memplex splits after (ESP, SCTP ...).
    NotTransport,
    /// A non-first IP fragment: it has no transport header.
    Fragment,
}

impl Unsplit {
    /// Counter names, in [`index`](Self::index) order (`TooDeep` is counted as one
    /// reason whatever its layer).
    pub const NAMES: [&'static str; 16] = [
        "disabled",
        "below_threshold",
        "not_ip",
        "not_transport",
        "fragment",
        "too_many_headers",
        "truncated_l2",
        "truncated_l3",
        "truncated_l4",
        "truncated_tunnel",
        "truncated_app",
        "malformed_l2",
        "malformed_l3",
        "malformed_l4",
        "malformed_tunnel",
        "malformed_app",
    ];

    /// A dense index below `NAMES.len()`, for counters.
    #[inline]
    pub fn index(self) -> usize {
        match self {
            Unsplit::Disabled => 0,
            Unsplit::BelowThreshold => 1,
            Unsplit::NotIp => 2,
            Unsplit::NotTransport => 3,
            Unsplit::Fragment => 4,
            Unsplit::TooDeep(_) => 5,
            Unsplit::Truncated(l) => 6 + l.index(),
            Unsplit::Malformed(l) => 11 + l.index(),
        }
    }

    /// A short `snake_case` name for counters.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// True for the reasons that mean the frame itself is bad, not just unsplittable.
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            Unsplit::Truncated(_) | Unsplit::Malformed(_) | Unsplit::TooDeep(_)
        )
    }
}

/// The fields routing rules match on, from the outermost headers (and the VNI of a tunnel).
///
/// Read through accessors (`src()`, `protocol()` ...), each `None` when the walk did not
/// get that far. Stored packed rather than as a struct of `Option`s, because the split
/// writes one of these for every frame: as ten optional fields (two of them
/// `Option<IpAddr>`) the straight-line walk wrote it with 17 stores; packed, with 7
/// (each address two 8-byte words, the L3/L4 fields and presence bits one, the tags
/// and VNI one, the application byte). Unset fields are zero, so equal metadata
/// compares equal. On the AMD EPYC of family 23 model 49 this measured neutral
/// (`cargo xtask ab`, 4 pairs at 128 B: x1.022, with the memcpy loop x1.029 in the same
/// pairs): that CPU was not short of stores there. It stays for CPUs that are, and for
/// its smaller size (56 bytes, from 64).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// Source address: an IPv4 address in the first 4 bytes, the rest zero.
    src: [u8; 16],
    /// Destination address, as `src`.
    dst: [u8; 16],
    /// The ethertype (bits 0-15), the IP protocol (16-23), the presence bits (24-31),
    /// the source port (32-47) and the destination port (48-63).
    l3l4: u64,
    /// The outer VLAN id (bits 0-15), the inner one (16-31), the VNI (32-63).
    tags: u64,
    app: Option<App>,
}

const _: () = assert!(core::mem::size_of::<FrameMeta>() == 56);

/// Presence bits of [`FrameMeta::l3l4`], from bit 24.
mod has {
    pub const VLAN: u64 = 1 << 24;
    pub const VLAN_INNER: u64 = 1 << 25;
    pub const V4: u64 = 1 << 26;
    pub const V6: u64 = 1 << 27;
    pub const PROTOCOL: u64 = 1 << 28;
    pub const PORTS: u64 = 1 << 29;
    pub const VNI: u64 = 1 << 30;
}

impl FrameMeta {
    #[inline(always)]
    fn has(&self, bit: u64) -> bool {
        self.l3l4 & bit != 0
    }

    /// The ethertype after any VLAN tags (0 when the frame had no Ethernet header).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        self.l3l4 as u16
    }

    /// The outer VLAN id.
    #[inline]
    pub fn vlan(&self) -> Option<u16> {
        self.has(has::VLAN).then_some(self.tags as u16)
    }

    /// The inner VLAN id of a QinQ frame.
    #[inline]
    pub fn vlan_inner(&self) -> Option<u16> {
        self.has(has::VLAN_INNER)
            .then_some((self.tags >> 16) as u16)
    }

    fn addr(&self, bytes: &[u8; 16]) -> Option<IpAddr> {
        if self.has(has::V4) {
            Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            )))
        } else if self.has(has::V6) {
            Some(IpAddr::V6(Ipv6Addr::from(*bytes)))
        } else {
            None
        }
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> Option<IpAddr> {
        self.addr(&self.src)
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> Option<IpAddr> {
        self.addr(&self.dst)
    }

    /// IP protocol number of the transport header.
    #[inline]
    pub fn protocol(&self) -> Option<u8> {
        self.has(has::PROTOCOL).then_some((self.l3l4 >> 16) as u8)
    }

    /// Transport source port.
    #[inline]
    pub fn src_port(&self) -> Option<u16> {
        self.has(has::PORTS).then_some((self.l3l4 >> 32) as u16)
    }

    /// Transport destination port.
    #[inline]
    pub fn dst_port(&self) -> Option<u16> {
        self.has(has::PORTS).then_some((self.l3l4 >> 48) as u16)
    }

    /// VXLAN / GENEVE virtual network id.
    #[inline]
    pub fn vni(&self) -> Option<u32> {
        self.has(has::VNI).then_some((self.tags >> 32) as u32)
    }

    /// The application protocol recognised at the start of the TCP payload.
    #[inline]
    pub fn app(&self) -> Option<App> {
        self.app
    }

    /// With the ethertype `ethertype`.
    pub fn with_ethertype(mut self, ethertype: u16) -> Self {
        self.l3l4 = self.l3l4 & !0xffff | u64::from(ethertype);
        self
    }

    /// With outer VLAN id `vid`.
    pub fn with_vlan(mut self, vid: u16) -> Self {
        self.tags = self.tags & !0xffff | u64::from(vid);
        self.l3l4 |= has::VLAN;
        self
    }

    /// With inner VLAN id `vid`.
    pub fn with_vlan_inner(mut self, vid: u16) -> Self {
        self.tags = self.tags & !0xffff_0000 | u64::from(vid) << 16;
        self.l3l4 |= has::VLAN_INNER;
        self
    }

    /// With source and destination addresses. (A walk always gives two of one family;
    /// given one of each, the IPv4 address is kept in its IPv6-mapped form.)
    pub fn with_addrs(mut self, src: IpAddr, dst: IpAddr) -> Self {
        let v6 = |a: IpAddr| match a {
            IpAddr::V4(v) => v.to_ipv6_mapped(),
            IpAddr::V6(v) => v,
        };
        let family;
        (self.src, self.dst, family) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (v4_word(s.octets()), v4_word(d.octets()), has::V4),
            (s, d) => (v6(s).octets(), v6(d).octets(), has::V6),
        };
        self.l3l4 = self.l3l4 & !(has::V4 | has::V6) | family;
        self
    }

    /// With IP protocol `protocol`.
    pub fn with_protocol(mut self, protocol: u8) -> Self {
        self.l3l4 = self.l3l4 & !0xff_0000 | u64::from(protocol) << 16 | has::PROTOCOL;
        self
    }

    /// With transport ports `src` and `dst`.
    pub fn with_ports(mut self, src: u16, dst: u16) -> Self {
        self.l3l4 =
            self.l3l4 & 0xffff_ffff | u64::from(src) << 32 | u64::from(dst) << 48 | has::PORTS;
        self
    }

    /// With virtual network id `vni`.
    pub fn with_vni(mut self, vni: u32) -> Self {
        self.tags = self.tags & 0xffff_ffff | u64::from(vni) << 32;
        self.l3l4 |= has::VNI;
        self
    }

    /// With application protocol `app`.
    pub fn with_app(mut self, app: App) -> Self {
        self.app = Some(app);
        self
    }

    /// The straight-line walks' metadata: an IP family (`l3`: the ethertype and its
    /// presence bit), its addresses (an IPv4 address as [`v4_word`] makes it), the
    /// `protocol`, and the ports' bits of `l3l4` ([`fast_l4`]'s, 0 for ICMP); nothing
    /// else. Each word is built in a register and stored once.
    #[inline(always)]
    fn ip(l3: u64, src: [u8; 16], dst: [u8; 16], protocol: u8, ports: u64) -> Self {
        FrameMeta {
            src,
            dst,
            l3l4: l3 | u64::from(protocol) << 16 | has::PROTOCOL | ports,
            tags: 0,
            app: None,
        }
    }
}

/// An IPv4 address as [`FrameMeta`] keeps it: its 4 bytes, then 12 zeros. Made as one
/// 16-byte word, which the straight-line walk stores at once (the array built in place
/// took three stores).
#[inline(always)]
fn v4_word(octets: [u8; 4]) -> [u8; 16] {
    u128::from(u32::from_le_bytes(octets)).to_le_bytes()
}

impl core::fmt::Debug for FrameMeta {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameMeta")
            .field("ethertype", &format_args!("{:#06x}", self.ethertype()))
            .field("vlan", &self.vlan())
            .field("vlan_inner", &self.vlan_inner())
            .field("src", &self.src())
            .field("dst", &self.dst())
            .field("protocol", &self.protocol())
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("vni", &self.vni())
            .field("app", &self.app())
            .finish()
    }
}

/// Where each layer of a frame ends, as far as the walk got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Walk {
    /// Routing fields.
    pub meta: FrameMeta,
    /// End of Ethernet + VLAN tags.
    pub l2_end: Option<usize>,
    /// End of the IP header (and options / extension headers).
    pub l3_end: Option<usize>,
    /// End of the transport header; for tunnels, of the inner transport header.
    pub l4_end: Option<usize>,
    /// End of the application header.
    pub app_end: Option<usize>,
    /// End of the IP datagram (frame length for non-IP frames): bytes past it are
    /// link-layer padding.
    pub end: usize,
    /// Why the walk stopped early, if it did.
    pub stop: Option<Unsplit>,
}

/// Walks the headers of an Ethernet frame. Never panics, never allocates.
pub fn walk(frame: &[u8]) -> Walk {
    let mut meta = FrameMeta::default();
    let ends = walk_into(frame, &mut meta);
    Walk {
        meta,
        l2_end: ends.l2_end,
        l3_end: ends.l3_end,
        l4_end: ends.l4_end,
        app_end: ends.app_end,
        end: ends.end,
        stop: ends.stop,
    }
}

/// A walk in progress: the routing fields go straight to `meta`, which for
/// [`Splitter::split`] is the result's own. Walking into a local and copying it out cost
/// a store-forwarding stall per frame (narrow stores read back as wide loads), measured
/// at a third of the split decision.
struct Walker<'m> {
    meta: &'m mut FrameMeta,
    l2_end: Option<usize>,
    l3_end: Option<usize>,
    l4_end: Option<usize>,
    app_end: Option<usize>,
    end: usize,
}

/// Where the layers end, as [`Walk`] has them, without the routing fields.
#[derive(Debug, Clone, Copy)]
struct Ends {
    l2_end: Option<usize>,
    l3_end: Option<usize>,
    l4_end: Option<usize>,
    app_end: Option<usize>,
    end: usize,
    stop: Option<Unsplit>,
}

/// The walk of [`walk`], into `meta`, which must hold the defaults: the straight-line
/// walk writes every field, the general one only those it finds.
#[inline]
fn walk_into(frame: &[u8], meta: &mut FrameMeta) -> Ends {
    match fast_walk(frame, meta).or_else(|| fast_walk_other(frame, meta)) {
        Some(ends) => ends,
        None => walk_headers(frame, meta),
    }
}

/// The straight-line walk the ethertype names, for a frame the untagged IPv4 walk
/// ([`fast_walk`]) did not take: tagged, IPv6, or ICMP. Picked by the ethertype, not
/// tried in turn: in turn, the tagged frame took 21.1 ns to split, not 11.8, and IPv6
/// with extension headers 28.1, not 24.0 (criterion `split`, session 41).
#[inline(always)]
fn fast_walk_other(frame: &[u8], meta: &mut FrameMeta) -> Option<Ends> {
    match frame.get(12..14)? {
        [0x81, 0x00] => fast_walk_tagged(frame, meta),
        [0x86, 0xdd] => fast_walk_v6(frame, meta),
        [0x08, 0x00] => fast_walk_icmp(frame, meta),
        _ => None,
    }
}

/// Where the first IPv4 header starts on an untagged frame.
const FAST_L3: usize = ethernet::HEADER_LEN;
/// Where the transport header starts after an IPv4 header without options.
const FAST_L4: usize = FAST_L3 + ipv4::MIN_HEADER_LEN;

/// The walk of the commonest frame in straight-line code: untagged Ethernet, IPv4
/// without options, not a fragment, then TCP or UDP with no tunnel or application port.
/// Anything else, or anything the general walk would judge (a short or inconsistent
/// header), gives `None` and takes the general walk, [`walk_headers`]. When it answers,
/// the answer is the general walk's, field for field: `fast_walk_agrees_with_the_walk`
/// checks that on every kind of frame and on arbitrary bytes.
///
/// Why a second walk: the general one chains a view per layer, each with its own checks,
/// enum dispatch and optional fields, which measured about 9 ns a frame; the common
/// frame needs a dozen loads and compares.
///
/// Always inlined, as [`Splitter::split_into`] is: left to itself the compiler made
/// each a call per frame, with their registers saved and restored around it; inlined,
/// tcp-split at 128 B went from 470 to 410 instructions a frame (`cargo xtask
/// instructions`) and placed 1.28x as many frames (`cargo xtask ab`, 6 of 6 pairs).
#[inline(always)]
fn fast_walk(frame: &[u8], meta: &mut FrameMeta) -> Option<Ends> {
    fast_walk_at::<0, false>(frame, meta)
}

/// [`fast_walk`] of a frame with one 802.1Q tag (TPID 0x8100) before its IPv4 header.
/// Such a frame took the general walk, about 20 ns against 9 for an untagged one
/// (criterion `split/vlan_tcp_1500` and `split/tcp_opts_1500`, AMD EPYC family 23 model
/// 49, session 40; 10 ns this way); a sixth of the demo's mix is tagged. Tried after
/// the untagged walk fails, on a path of its own (see [`Splitter::split_into_as`]).
#[inline(always)]
fn fast_walk_tagged(frame: &[u8], meta: &mut FrameMeta) -> Option<Ends> {
    if frame.get(12..14)? != [0x81, 0x00] {
        return None;
    }
    let ends = fast_walk_at::<{ ethernet::TAG_LEN }, true>(frame, meta)?;
    let vid = u16::from_be_bytes([frame[FAST_L3], frame[FAST_L3 + 1]]) & 0x0fff;
    *meta = meta.with_vlan(vid);
    Some(ends)
}

/// [`fast_walk`] of an untagged IPv4 frame that carries ICMP. Apart from the untagged
/// walk, as the IPv6 one is: an ICMP arm there cost 7 instructions a frame on every
/// TCP frame (`cargo xtask instructions`, tcp-split at 128 B: 270 to 277).
#[inline(always)]
fn fast_walk_icmp(frame: &[u8], meta: &mut FrameMeta) -> Option<Ends> {
    if !matches!(frame.get(FAST_L3 + 9)?, 1 | 58) {
        return None;
    }
    fast_walk_at::<0, true>(frame, meta)
}

/// The straight-line walk with `TAG` bytes of VLAN tag between the Ethernet header and
/// IPv4 (0 or [`ethernet::TAG_LEN`]), and ICMP taken or not ([`fast_l4`]); each offset
/// a constant in each version.
#[inline(always)]
fn fast_walk_at<const TAG: usize, const ICMP: bool>(
    frame: &[u8],
    meta: &mut FrameMeta,
) -> Option<Ends> {
    let (l3, l4) = (FAST_L3 + TAG, FAST_L4 + TAG);
    // Ethernet, any tag, IPv4 and the first 4 bytes of the transport header (its
    // ports), as an array of the tagged frame's length in both versions, so that each
    // read of it is known in bounds: every frame either takes is at least that long (a
    // UDP header ends 4 bytes past the ports). As a slice, the compiler kept `be16` a
    // call, with its bounds tests: 92 more instructions a frame.
    let h: &[u8; FAST_L4 + ethernet::TAG_LEN + 4] = frame
        .get(..FAST_L4 + ethernet::TAG_LEN + 4)?
        .try_into()
        .ok()?;
    let be16 = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    let ethertype = be16(12 + TAG);
    // IPv4 (version 4, a 20-byte header) and not a later fragment.
    if ethertype != 0x0800 || h[l3] != 0x45 || be16(l3 + 6) & 0x1fff != 0 {
        return None;
    }
    let end = l3 + usize::from(be16(l3 + 2));
    if end < l4 || end > frame.len() {
        return None;
    }
    let protocol = h[l3 + 9];
    let l4_part = fast_l4::<ICMP>(frame, l4, end, protocol, be16(l4), be16(l4 + 2))?;
    let addr = |at: usize| v4_word([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    // Every field, in one assignment: the caller's `meta` may hold another frame's.
    *meta = FrameMeta::ip(
        0x0800 | has::V4,
        addr(l3 + 12),
        addr(l3 + 16),
        protocol,
        l4_part.ports,
    );
    Some(Ends {
        l2_end: Some(l3),
        l3_end: Some(l4),
        l4_end: Some(l4_part.end),
        app_end: None,
        end,
        stop: None,
    })
}

/// Where the transport header starts after an untagged IPv6 header with no extension
/// header.
const FAST6_L4: usize = FAST_L3 + ipv6::HEADER_LEN;

/// [`fast_walk`] of an untagged IPv6 frame whose fixed header names its transport
/// (no extension header) and gives its length (not a jumbogram). Such a frame took the
/// general walk; in the demo's mix a sixth of the frames are IPv6. Tried after the
/// untagged IPv4 walk and the tagged one fail.
#[inline(always)]
fn fast_walk_v6(frame: &[u8], meta: &mut FrameMeta) -> Option<Ends> {
    // Ethernet, IPv6 and the transport's ports, as an array: every frame this walk
    // takes is at least that long (a UDP or ICMP header ends 4 bytes past it).
    let h: &[u8; FAST6_L4 + 4] = frame.get(..FAST6_L4 + 4)?.try_into().ok()?;
    let be16 = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    if be16(12) != 0x86dd || h[FAST_L3] >> 4 != 6 {
        return None;
    }
    // A jumbogram's length of 0 puts the end at the transport header, which every
    // transport below refuses: it takes the general walk.
    let end = FAST6_L4 + usize::from(be16(FAST_L3 + 4));
    if end > frame.len() {
        return None;
    }
    let protocol = h[FAST_L3 + 6];
    let l4_part = fast_l4::<true>(
        frame,
        FAST6_L4,
        end,
        protocol,
        be16(FAST6_L4),
        be16(FAST6_L4 + 2),
    )?;
    let addr = |at: usize| -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&h[at..at + 16]);
        a
    };
    *meta = FrameMeta::ip(
        0x86dd | has::V6,
        addr(FAST_L3 + 8),
        addr(FAST_L3 + 24),
        protocol,
        l4_part.ports,
    );
    Some(Ends {
        l2_end: Some(FAST_L3),
        l3_end: Some(FAST6_L4),
        l4_end: Some(l4_part.end),
        app_end: None,
        end,
        stop: None,
    })
}

/// What [`fast_l4`] found of a transport header.
#[derive(Clone, Copy)]
struct FastL4 {
    /// Where it ends.
    end: usize,
    /// Its ports as [`FrameMeta`]'s `l3l4` keeps them, with their presence bit; 0 for
    /// ICMP, which has none.
    ports: u64,
}

/// The transport header at `l4` of a datagram of `protocol` ending at `end`, for the
/// straight-line walks, with its ports read by the caller (from its in-bounds array):
/// TCP with no application port, UDP with no tunnel port, or where `ICMP` says, ICMP
/// (either version, as the general walk takes either under either IP). `None` for
/// anything else, or for anything the general walk would judge (a header past the
/// datagram, a bad length).
#[inline(always)]
fn fast_l4<const ICMP: bool>(
    frame: &[u8],
    l4: usize,
    end: usize,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
) -> Option<FastL4> {
    let ports = has::PORTS | u64::from(src_port) << 32 | u64::from(dst_port) << 48;
    match IpProtocol::from(protocol) {
        IpProtocol::Tcp => {
            let min = l4 + transport::TcpPacket::<&[u8]>::MIN_LEN;
            let header_len = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
            let l4_end = l4 + header_len;
            if end < min || header_len < transport::TcpPacket::<&[u8]>::MIN_LEN || end < l4_end {
                return None;
            }
            if App::for_ports(src_port, dst_port).is_some() {
                return None;
            }
            Some(FastL4 { end: l4_end, ports })
        }
        IpProtocol::Udp => {
            let l4_end = l4 + transport::UdpPacket::<&[u8]>::HEADER_LEN;
            let udp_len = u16::from_be_bytes([*frame.get(l4 + 4)?, *frame.get(l4 + 5)?]);
            if end < l4_end
                || (usize::from(udp_len) < transport::UdpPacket::<&[u8]>::HEADER_LEN
                    && udp_len != 0)
                || matches!(dst_port, tunnel::VXLAN_PORT | tunnel::GENEVE_PORT)
            {
                return None;
            }
            Some(FastL4 { end: l4_end, ports })
        }
        IpProtocol::Icmp | IpProtocol::Icmpv6 if ICMP => {
            let l4_end = l4 + transport::ICMP_HEADER_LEN;
            if end < l4_end {
                return None;
            }
            Some(FastL4 {
                end: l4_end,
                ports: 0,
            })
        }
        _ => None,
    }
}

/// The general walk: every layer through its view, from Ethernet on.
fn walk_headers(frame: &[u8], meta: &mut FrameMeta) -> Ends {
    let mut w = Walker {
        meta,
        l2_end: None,
        l3_end: None,
        l4_end: None,
        app_end: None,
        end: frame.len(),
    };
    let stop = walk_l2(frame, 0, &mut w, true).err();
    Ends {
        l2_end: w.l2_end,
        l3_end: w.l3_end,
        l4_end: w.l4_end,
        app_end: w.app_end,
        end: w.end,
        stop,
    }
}

fn walk_l2(frame: &[u8], base: usize, w: &mut Walker<'_>, outer: bool) -> Result<(), Unsplit> {
    let layer = if outer { Layer::L2 } else { Layer::Tunnel };
    let eth = ethernet::EthernetFrame::new_checked(&frame[base..]).map_err(|e| e.at(layer))?;
    let mut ethertype = eth.ethertype();
    let mut at = base + ethernet::HEADER_LEN;
    let mut tags = 0;
    while EtherType::from(ethertype) == EtherType::Vlan {
        if tags == 2 {
            return Err(Unsplit::TooDeep(layer));
        }
        let tag = ethernet::Tag::new_checked(&frame[at..]).map_err(|e| e.at(layer))?;
        if outer {
            match tags {
                0 => *w.meta = w.meta.with_vlan(tag.vid()),
                _ => *w.meta = w.meta.with_vlan_inner(tag.vid()),
            }
        }
        ethertype = tag.ethertype();
        at += ethernet::TAG_LEN;
        tags += 1;
    }
    if outer {
        *w.meta = w.meta.with_ethertype(ethertype);
        w.l2_end = Some(at);
    }
    walk_l3(frame, at, ethertype, w, outer)
}

fn walk_l3(
    frame: &[u8],
    at: usize,
    ethertype: u16,
    w: &mut Walker<'_>,
    outer: bool,
) -> Result<(), Unsplit> {
    let l3 = if outer { Layer::L3 } else { Layer::Tunnel };
    let (protocol, l3_end, end, fragment) = match EtherType::from(ethertype) {
        EtherType::Ipv4 => {
            let ip = ipv4::Packet::new_checked(&frame[at..]).map_err(|e| e.at(l3))?;
            if outer {
                *w.meta = w.meta.with_addrs(
                    IpAddr::V4(Ipv4Addr::from(ip.src())),
                    IpAddr::V4(Ipv4Addr::from(ip.dst())),
                );
            }
            (
                ip.protocol(),
                at + ip.header_len(),
                at + ip.total_len(),
                ip.frag_offset() != 0,
            )
        }
        EtherType::Ipv6 => {
            let ip = ipv6::Packet::new_checked(&frame[at..]).map_err(|e| e.at(l3))?;
            if outer {
                *w.meta = w.meta.with_addrs(
                    IpAddr::V6(Ipv6Addr::from(ip.src())),
                    IpAddr::V6(Ipv6Addr::from(ip.dst())),
                );
            }
            let (protocol, upper, fragment) = ip.upper_layer().map_err(|e| e.at(l3))?;
            (protocol, at + upper, at + ip.end(), fragment)
        }
        // Not IP, outside or inside a tunnel (ARP inside VXLAN is not malformed).
        _ => return Err(Unsplit::NotIp),
    };
    if outer {
        *w.meta = w.meta.with_protocol(protocol);
        w.l3_end = Some(l3_end);
        w.end = end;
    }
    if fragment {
        return Err(Unsplit::Fragment);
    }
    walk_l4(&frame[..end], l3_end, protocol, w, outer)
}

fn walk_l4(
    datagram: &[u8],
    at: usize,
    protocol: u8,
    w: &mut Walker<'_>,
    outer: bool,
) -> Result<(), Unsplit> {
    let layer = if outer { Layer::L4 } else { Layer::Tunnel };
    let map = |e: Error| e.at(layer);
    let rest = &datagram[at..];
    match IpProtocol::from(protocol) {
        IpProtocol::Tcp => {
            let tcp = transport::TcpPacket::new_checked(rest).map_err(map)?;
            let l4_end = at + tcp.header_len();
            w.l4_end = Some(l4_end);
            let (src, dst) = (tcp.src_port(), tcp.dst_port());
            if outer {
                *w.meta = w.meta.with_ports(src, dst);
            }
            if let Some(app) = App::for_ports(src, dst) {
                if outer {
                    *w.meta = w.meta.with_app(app);
                }
                w.app_end = app.header_len(&datagram[l4_end..]).map(|len| l4_end + len);
            }
            Ok(())
        }
        IpProtocol::Udp => {
            let udp = transport::UdpPacket::new_checked(rest).map_err(map)?;
            let l4_end = at + transport::UdpPacket::<&[u8]>::HEADER_LEN;
            w.l4_end = Some(l4_end);
            if !outer {
                return Ok(());
            }
            *w.meta = w.meta.with_ports(udp.src_port(), udp.dst_port());
            let tunnel = match udp.dst_port() {
                tunnel::VXLAN_PORT => tunnel::vxlan(&datagram[l4_end..]),
                tunnel::GENEVE_PORT => tunnel::geneve(&datagram[l4_end..]),
                _ => return Ok(()),
            };
            let t = tunnel.map_err(|e| e.at(Layer::Tunnel))?;
            *w.meta = w.meta.with_vni(t.vni);
            // From here the split point is the inner transport header's end.
            w.l4_end = None;
            let inner = l4_end + t.len;
            match t.inner {
                tunnel::Inner::Ethernet => walk_l2(datagram, inner, w, false),
                tunnel::Inner::Ip(ethertype) => walk_l3(datagram, inner, ethertype, w, false),
            }
        }
        IpProtocol::Icmp | IpProtocol::Icmpv6 => {
            if rest.len() < transport::ICMP_HEADER_LEN {
                return Err(Unsplit::Truncated(layer));
            }
            w.l4_end = Some(at + transport::ICMP_HEADER_LEN);
            Ok(())
        }
        IpProtocol::Unknown(_) => Err(Unsplit::NotTransport),
    }
}

/// The split decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Bytes that go to the head buffer; the rest of the frame is payload.
    pub head_len: usize,
    /// Where the outer IP header starts (after Ethernet and VLAN tags), when the walk got
    /// that far.
    pub l3_offset: Option<u16>,
    /// Where the outer transport header starts (after IP options and extension headers),
    /// when the walk got that far.
    pub l4_offset: Option<u16>,
    /// Routing fields.
    pub meta: FrameMeta,
    /// `Ok(layer)` when split after `layer` (`L4` for an `app` frame whose application
    /// header was not recognised), `Err(reason)` when placed whole.
    pub outcome: Result<Layer, Unsplit>,
}

/// Split settings: the mode, the fixed offset, and the threshold below which a frame
/// is not split (the kernel's `hds-thresh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splitter {
    /// Where to split.
    pub mode: SplitMode,
    /// The offset for [`SplitMode::Fixed`].
    pub fixed_offset: usize,
    /// Frames with no more payload than this are not split.
    pub hds_threshold: usize,
}

impl Default for Split {
    /// A frame of no bytes, not split.
    fn default() -> Self {
        Split {
            head_len: 0,
            l3_offset: None,
            l4_offset: None,
            meta: FrameMeta::default(),
            outcome: Err(Unsplit::Disabled),
        }
    }
}

impl Splitter {
    /// Decides where to split `frame`.
    pub fn split(&self, frame: &[u8]) -> Split {
        let mut split = Split::default();
        self.split_into(frame, &mut split);
        split
    }

    /// As [`split`](Self::split), into `split`: the receive path keeps one `Split` per
    /// worker, and the walk writes the routing fields straight into it. (Returning it by
    /// value copied it out with wide loads of the walk's narrow stores, a
    /// store-forwarding stall that measured a third of the decision.)
    ///
    /// Always inlined into the worker's loop, with the straight-line walk (see
    /// `fast_walk` for what that measured).
    #[inline(always)]
    pub fn split_into(&self, frame: &[u8], split: &mut Split) {
        self.split_into_as(self.mode, frame, split);
    }

    /// [`split_into`](Self::split_into) with `mode` in place of `self.mode`, for a
    /// caller that decides the mode once for many frames: passed a constant, the
    /// inlined decision has no dispatch on the mode left in it.
    #[inline(always)]
    pub(crate) fn split_into_as(&self, mode: SplitMode, frame: &[u8], split: &mut Split) {
        // The decision made apart for the untagged straight-line walk's answer, whose
        // ends are constants, folded into its own copy: with the other walks' answers
        // merged into one, they went through the stack (24 more instructions a frame,
        // session 40). Out of that path, the straight-line walk the ethertype names
        // ([`fast_walk_other`]), then the general one (called: inlined into its own
        // function with the tagged walk, it ran IPv6 with extension headers in 28 ns,
        // not 21).
        match fast_walk(frame, &mut split.meta) {
            Some(w) => self.decide(mode, frame, split, w),
            None => {
                let w = match fast_walk_other(frame, &mut split.meta) {
                    Some(w) => w,
                    None => {
                        split.meta = FrameMeta::default();
                        walk_headers(frame, &mut split.meta)
                    }
                };
                self.decide(mode, frame, split, w)
            }
        }
    }

    /// Where to split `frame`, whose walk ended as `w`: into `split`.
    #[inline(always)]
    fn decide(&self, mode: SplitMode, frame: &[u8], split: &mut Split, w: Ends) {
        // Offsets of at most 64 KiB fit; a BIG TCP frame's offsets are still header offsets.
        split.l3_offset = w.l2_end.map(|o| o as u16);
        split.l4_offset = w.l3_end.map(|o| o as u16);
        // The head length is stored once, either way.
        let whole = |split: &mut Split, reason| {
            split.head_len = frame.len();
            split.outcome = Err(reason);
        };
        let (at, layer) = match mode {
            SplitMode::None => return whole(split, Unsplit::Disabled),
            SplitMode::Fixed => (Some(self.fixed_offset.min(frame.len())), Layer::L2),
            SplitMode::L2 => (w.l2_end, Layer::L2),
            SplitMode::L3 => (w.l3_end, Layer::L3),
            SplitMode::L4 => (w.l4_end.filter(|_| w.stop.is_none()), Layer::L4),
            SplitMode::App => match (w.app_end, w.l4_end) {
                (Some(end), _) if w.stop.is_none() => (Some(end), Layer::App),
                (None, Some(end)) if w.stop.is_none() => (Some(end), Layer::L4),
                _ => (None, Layer::L4),
            },
        };
        let Some(at) = at else {
            return whole(split, w.stop.unwrap_or(Unsplit::NotTransport));
        };
        // The payload the threshold compares is the datagram's, without link padding.
        let payload = match mode {
            SplitMode::Fixed | SplitMode::L2 => frame.len().saturating_sub(at),
            _ => w.end.saturating_sub(at),
        };
        if payload <= self.hds_threshold || at >= frame.len() {
            return whole(split, Unsplit::BelowThreshold);
        }
        split.head_len = at;
        split.outcome = Ok(layer);
    }
}

#[cfg(test)]
mod tests;
