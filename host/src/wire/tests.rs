//! Split decisions on byte-exact frames built with etherparse, and properties over
//! arbitrary bytes.

use super::*;
use etherparse::{PacketBuilder, TcpOptionElement, VlanId};
use proptest::prelude::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const V4_A: [u8; 4] = [10, 0, 0, 1];
const V4_B: [u8; 4] = [10, 0, 0, 2];

fn splitter(mode: SplitMode) -> Splitter {
    Splitter {
        mode,
        fixed_offset: 30,
        hds_threshold: 0,
    }
}

fn udp4(payload: &[u8], dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .udp(40000, dport)
        .write(&mut f, payload)
        .unwrap();
    f
}

fn tcp4_opts(payload: &[u8], dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4(V4_A, V4_B, 64)
        .tcp(50000, dport, 1, 65535)
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
            TcpOptionElement::Timestamp(1, 2),
        ])
        .unwrap()
        .write(&mut f, payload)
        .unwrap();
    f
}

#[test]
fn udp_over_ipv4_at_every_layer() {
    let f = udp4(&[7; 100], 9000);
    let at = |mode| splitter(mode).split(&f);
    assert_eq!(at(SplitMode::L2).head_len, 14);
    assert_eq!(at(SplitMode::L3).head_len, 34);
    assert_eq!(at(SplitMode::L4).head_len, 42);
    assert_eq!(at(SplitMode::App).head_len, 42, "no app header: as l4");
    assert_eq!(at(SplitMode::App).outcome, Ok(Layer::L4));
    assert_eq!(at(SplitMode::Fixed).head_len, 30);
    assert_eq!(at(SplitMode::None).outcome, Err(Unsplit::Disabled));
    let m = at(SplitMode::L4).meta;
    assert_eq!(
        (m.ethertype(), m.protocol(), m.src_port(), m.dst_port()),
        (0x0800, Some(17), Some(40000), Some(9000))
    );
    assert_eq!(m.dst(), Some(IpAddr::V4(Ipv4Addr::from(V4_B))));
}

#[test]
fn vlan_tcp_with_options() {
    let f = tcp4_opts(&[1; 500], 80);
    let s = splitter(SplitMode::L4).split(&f);
    // 14 Ethernet + 4 VLAN + 20 IPv4 + 20 TCP + options: MSS 4, NOP 1, window scale 3,
    // timestamps 10 = 18, padded to 20.
    assert_eq!(s.head_len, 14 + 4 + 20 + 20 + 20);
    assert_eq!(s.meta.vlan(), Some(100));
    assert_eq!(f.len() - s.head_len, 500);
}

/// UDP over IPv4 behind two VLAN tags, 10 then 20.
fn qinq_udp(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
        .ipv4(V4_A, V4_B, 64)
        .udp(1, 2)
        .write(&mut f, payload)
        .unwrap();
    f
}

const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An untagged IPv6 frame with no extension header: UDP to `dport`, or TCP (with an
/// option) to it.
fn ip6(tcp: bool, payload: &[u8], dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(V6_A, V6_B, 64);
    match tcp {
        true => b
            .tcp(50000, dport, 1, 65535)
            .options(&[TcpOptionElement::MaximumSegmentSize(1440)])
            .unwrap()
            .write(&mut f, payload),
        false => b.udp(40000, dport).write(&mut f, payload),
    }
    .unwrap();
    f
}

#[test]
fn qinq() {
    let f = qinq_udp(&[0; 64]);
    let s = splitter(SplitMode::L4).split(&f);
    assert_eq!(
        (s.meta.vlan(), s.meta.vlan_inner(), s.head_len),
        (Some(10), Some(20), 14 + 8 + 20 + 8)
    );
}

#[test]
fn ipv6_with_extension_headers() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1, 2)
        .write(&mut f, &[0; 64])
        .unwrap();
    assert_eq!(splitter(SplitMode::L4).split(&f).head_len, 14 + 40 + 8);
    // Insert a hop-by-hop header (8 bytes) and a destination-options header (16 bytes).
    let mut g = f[..14 + 40].to_vec();
    g[14 + 6] = 0; // next header: hop-by-hop
    let plen = u16::from_be_bytes([g[18], g[19]]) + 24;
    g[18..20].copy_from_slice(&plen.to_be_bytes());
    g.extend([60, 0, 0, 0, 0, 0, 0, 0]);
    g.extend([17, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    g.extend(&f[14 + 40..]);
    let s = splitter(SplitMode::L4).split(&g);
    assert_eq!(s.head_len, 14 + 40 + 24 + 8);
    assert_eq!(splitter(SplitMode::L3).split(&g).head_len, 14 + 40 + 24);
    assert_eq!(s.meta.protocol(), Some(17));
}

#[test]
fn icmp() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut f, &[0; 56])
        .unwrap();
    assert_eq!(splitter(SplitMode::L4).split(&f).head_len, 14 + 20 + 8);
}

#[test]
fn vxlan_splits_after_the_inner_l4_header() {
    let inner = tcp4_opts(&[9; 300], 443);
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    vx.extend(&inner);
    let f = udp4(&vx, tunnel::VXLAN_PORT);
    let s = splitter(SplitMode::L4).split(&f);
    assert_eq!(s.meta.vni(), Some(42));
    assert_eq!(
        s.meta.dst_port(),
        Some(4789),
        "routing sees the outer headers"
    );
    assert_eq!(
        f.len() - s.head_len,
        300,
        "the payload is the inner TCP payload"
    );
    assert_eq!(
        splitter(SplitMode::L3).split(&f).head_len,
        34,
        "l3 is the outer IP header"
    );
}

#[test]
fn geneve_with_options_and_inner_ipv4() {
    let mut inner = Vec::new();
    PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, V4_A, V4_B).unwrap(),
        Default::default(),
    ))
    .udp(5, 6)
    .write(&mut inner, &[3; 200])
    .unwrap();
    let mut gn = vec![0x01, 0, 0x08, 0x00, 0, 0, 7, 0, 0, 0, 0, 0];
    gn.extend(&inner);
    let f = udp4(&gn, tunnel::GENEVE_PORT);
    let s = splitter(SplitMode::L4).split(&f);
    assert_eq!((s.meta.vni(), f.len() - s.head_len), (Some(7), 200));
}

#[test]
fn nvme_tcp_pdu_header() {
    let mut pdu = vec![0x07, 0, 24, 24];
    pdu.extend(4120u32.to_le_bytes());
    pdu.resize(24, 0);
    pdu.extend([0xab; 1000]);
    let f = tcp4_opts(&pdu, app::NVME_TCP_PORT);
    let s = splitter(SplitMode::App).split(&f);
    assert_eq!(
        (s.outcome, s.meta.app()),
        (Ok(Layer::App), Some(App::NvmeTcp))
    );
    assert_eq!(f.len() - s.head_len, 1000);
    // A segment from the middle of a PDU falls back to an l4 split.
    let f = tcp4_opts(&[0xab; 1000], app::NVME_TCP_PORT);
    assert_eq!(splitter(SplitMode::App).split(&f).outcome, Ok(Layer::L4));
}

#[test]
fn threshold_and_padding() {
    let f = udp4(&[1; 4], 9); // 46 bytes: under the Ethernet minimum, no padding added here
    let mut padded = f.clone();
    padded.resize(60, 0);
    let mut s = splitter(SplitMode::L4);
    assert_eq!(s.split(&padded).head_len, 42);
    s.hds_threshold = 4;
    assert_eq!(
        s.split(&padded).outcome,
        Err(Unsplit::BelowThreshold),
        "padding is not payload"
    );
    assert_eq!(s.split(&padded).head_len, 60);
}

#[test]
fn unsplittable_frames_have_reasons() {
    let l4 = splitter(SplitMode::L4);
    let f = udp4(&[0; 64], 1);
    assert_eq!(
        l4.split(&f[..10]).outcome,
        Err(Unsplit::Truncated(Layer::L2))
    );
    assert_eq!(
        l4.split(&f[..30]).outcome,
        Err(Unsplit::Truncated(Layer::L3))
    );
    let mut arp = f.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(l4.split(&arp).outcome, Err(Unsplit::NotIp));
    assert_eq!(
        splitter(SplitMode::L2).split(&arp).head_len,
        14,
        "l2 splits any Ethernet frame"
    );
    let mut frag = f.clone();
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10; // fragment offset 16
    assert_eq!(l4.split(&frag).outcome, Err(Unsplit::Fragment));
    let mut esp = f.clone();
    esp[14 + 9] = 50;
    assert_eq!(l4.split(&esp).outcome, Err(Unsplit::NotTransport));
    let mut bad = f.clone();
    bad[14] = 0x43;
    assert!(l4.split(&bad).outcome.unwrap_err().is_malformed());
    let mut triple = f.clone();
    triple.splice(12..12, [0x81, 0, 0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3]);
    assert_eq!(l4.split(&triple).outcome, Err(Unsplit::TooDeep(Layer::L2)));
}

proptest! {
    #[test]
    fn never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..300), mode in 0u8..6) {
        let mode = [SplitMode::None, SplitMode::Fixed, SplitMode::L2, SplitMode::L3, SplitMode::L4, SplitMode::App][mode as usize];
        let s = Splitter { mode, fixed_offset: 17, hds_threshold: 0 }.split(&bytes);
        prop_assert!(s.head_len <= bytes.len());
        if s.outcome.is_ok() {
            prop_assert!(s.head_len < bytes.len());
        }
    }

    #[test]
    fn udp_and_tcp_split_where_etherparse_says_the_payload_starts(
        payload in proptest::collection::vec(any::<u8>(), 1..1400), tcp in any::<bool>(), vlan in any::<bool>(),
    ) {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        match (tcp, vlan) {
            (true, true) => b.single_vlan(VlanId::try_new(5).unwrap()).ipv4(V4_A, V4_B, 9).tcp(1, 2, 3, 4).write(&mut f, &payload),
            (true, false) => b.ipv6([1; 16], [2; 16], 9).tcp(1, 2, 3, 4).write(&mut f, &payload),
            (false, true) => b.single_vlan(VlanId::try_new(5).unwrap()).ipv6([1; 16], [2; 16], 9).udp(1, 2).write(&mut f, &payload),
            (false, false) => b.ipv4(V4_A, V4_B, 9).udp(1, 2).write(&mut f, &payload),
        }.unwrap();
        let sliced = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let reference = match sliced.transport.unwrap() {
            etherparse::TransportSlice::Tcp(t) => t.payload().as_ptr() as usize,
            etherparse::TransportSlice::Udp(u) => u.payload().as_ptr() as usize,
            _ => unreachable!(),
        } - f.as_ptr() as usize;
        let s = splitter(SplitMode::L4).split(&f);
        prop_assert_eq!(s.head_len, reference);
        prop_assert_eq!(&f[s.head_len..], &payload[..]);
    }
}

/// Both walks of `frame`: the straight-line ones (untagged, tagged, IPv6 or ICMP, if
/// one answers) must equal the general one.
fn assert_fast_walk_agrees(frame: &[u8]) -> bool {
    // The worker reuses its decisions: whatever another frame left must be overwritten.
    let mut fast_meta = FrameMeta::default()
        .with_ethertype(1)
        .with_vlan(7)
        .with_vlan_inner(8)
        .with_vni(9)
        .with_app(App::Iscsi)
        .with_addrs("::1".parse().unwrap(), "::2".parse().unwrap());
    let fast = fast_walk(frame, &mut fast_meta).or_else(|| fast_walk_other(frame, &mut fast_meta));
    let Some(fast) = fast else {
        return false;
    };
    let mut meta = FrameMeta::default();
    let general = walk_headers(frame, &mut meta);
    assert_eq!(fast_meta, meta, "routing fields of {frame:02x?}");
    assert_eq!(
        (
            fast.l2_end,
            fast.l3_end,
            fast.l4_end,
            fast.app_end,
            fast.end,
            fast.stop
        ),
        (
            general.l2_end,
            general.l3_end,
            general.l4_end,
            general.app_end,
            general.end,
            general.stop
        ),
        "layer ends of {frame:02x?}"
    );
    true
}

/// `f` with `bytes` written over it from `at`.
fn patched_at(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

#[test]
fn fast_walk_agrees_with_the_walk() {
    // The frames it takes.
    assert!(assert_fast_walk_agrees(&udp4(b"hello", 53)));
    let mut tcp = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .tcp(50000, 80, 1, 65535)
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
        .unwrap()
        .write(&mut tcp, &[7; 100])
        .unwrap();
    assert!(assert_fast_walk_agrees(&tcp));
    // Padded past the datagram (a short frame on the wire), and a UDP length of 0.
    let mut padded = udp4(b"", 9);
    padded.extend([0; 20]);
    assert!(assert_fast_walk_agrees(&padded));
    let mut zero = udp4(b"abc", 9);
    zero[38..40].copy_from_slice(&[0, 0]);
    assert!(assert_fast_walk_agrees(&zero));
    // Application headers are looked for after TCP only.
    assert!(assert_fast_walk_agrees(&udp4(&[0; 16], app::NVME_TCP_PORT)));
    // One 802.1Q tag, with TCP options.
    let tagged = tcp4_opts(b"x", 80);
    assert!(assert_fast_walk_agrees(&tagged));
    // ICMP (either version, under either IP, as the general walk takes them), tagged
    // or not.
    assert!(assert_fast_walk_agrees(&patched_at(
        tagged.clone(),
        27,
        &[1]
    )));
    assert!(assert_fast_walk_agrees(&patched_at(udp4(b"", 9), 23, &[1])));
    assert!(assert_fast_walk_agrees(&patched_at(
        udp4(b"", 9),
        23,
        &[58]
    )));
    // IPv6 with no extension header: UDP, TCP with an option, ICMPv6, and padded.
    let udp6 = ip6(false, b"hello", 53);
    assert!(assert_fast_walk_agrees(&udp6));
    assert!(assert_fast_walk_agrees(&ip6(true, &[7; 100], 80)));
    assert!(assert_fast_walk_agrees(&patched_at(
        udp6.clone(),
        20,
        &[58]
    )));
    let mut padded6 = udp6.clone();
    padded6.extend([0; 20]);
    assert!(assert_fast_walk_agrees(&padded6));
    // The frames it leaves to the general walk: two tags or another TPID, fragments,
    // tunnels, application ports, other protocols, and short or inconsistent headers.
    let mut leaves = vec![
        qinq_udp(&[0; 8]),
        patched_at(tagged.clone(), 12, &[0x88, 0xa8]), // an S-tag
        patched_at(tagged.clone(), 27, &[2]),          // tagged IGMP
        patched_at(tagged.clone(), 18, &[0x46]),       // tagged, IPv4 options
        udp4(b"vxlan", tunnel::VXLAN_PORT),
        udp4(b"geneve", tunnel::GENEVE_PORT),
    ];
    let mut nvme = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .tcp(50000, app::NVME_TCP_PORT, 1, 65535)
        .write(&mut nvme, &[0; 24])
        .unwrap();
    leaves.push(nvme);
    let patched = patched_at;
    leaves.extend([
        patched(udp4(b"x", 9), 14, &[0x46]),       // IPv4 options
        patched(udp4(b"x", 9), 20, &[0x00, 0x10]), // a later fragment
        patched(udp4(b"xxxxxxxx", 9), 23, &[2]),   // IGMP
        patched(patched(udp4(b"x", 9), 16, &[0, 27]), 23, &[1]), // ICMP, 7 bytes
        patched(udp4(b"x", 9), 16, &[0x05, 0xdc]), // a datagram past the frame
        patched(udp4(b"x", 9), 38, &[0, 4]),       // a UDP length below 8
        patched(tcp.clone(), 46, &[0x40]),         // a TCP header past the datagram
        tcp[..50].to_vec(),                        // a TCP header cut short
    ]);
    // IPv6 it leaves: an extension header, a jumbogram's zero length, a datagram past
    // the frame, another version, another transport, a tunnel, an application port,
    // a tag before it, and a header cut short.
    let tagged6 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(VlanId::try_new(6).unwrap())
            .ipv6(V6_A, V6_B, 64)
            .udp(1, 2)
            .write(&mut f, &[0; 8])
            .unwrap();
        f
    };
    leaves.extend([
        patched(udp6.clone(), 20, &[0]),          // hop-by-hop
        patched(udp6.clone(), 20, &[44]),         // a fragment header
        patched(udp6.clone(), 20, &[59]),         // no next header
        patched(udp6.clone(), 18, &[0, 0]),       // a jumbogram's length
        patched(udp6.clone(), 18, &[0x05, 0xdc]), // a datagram past the frame
        patched(udp6.clone(), 14, &[0x40]),       // version 4 under 0x86dd
        patched(udp6.clone(), 58, &[0, 4]),       // a UDP length below 8
        ip6(false, b"vxlan", tunnel::VXLAN_PORT),
        ip6(true, &[0; 24], app::NVME_TCP_PORT),
        tagged6,
        udp6[..60].to_vec(),
        ip6(true, b"", 80)[..70].to_vec(),
    ]);
    for f in &leaves {
        assert!(!assert_fast_walk_agrees(f), "taken: {f:02x?}");
    }
    // A decision reused from another frame (a VXLAN one, which sets every field the
    // plain walk does not) reads as a fresh one.
    let l4 = splitter(SplitMode::L4);
    let mut reused = l4.split(&leaves[1]);
    for f in [udp4(b"hello", 53), tcp.clone()] {
        l4.split_into(&f, &mut reused);
        assert_eq!(reused, l4.split(&f));
    }
}

proptest! {
    /// Valid TCP and UDP frames over IPv4 or IPv6, untagged or with one tag, with bytes
    /// of their headers overwritten and their ends cut: wherever a straight-line walk
    /// answers, it answers as the general one.
    #[test]
    fn fast_walk_agrees_on_damaged_frames(
        payload_len in 0usize..80, tcp in any::<bool>(), dport in any::<u16>(),
        damage in proptest::collection::vec((0usize..84, any::<u8>()), 0..4),
        cut in 0usize..160, vlan in proptest::option::of(0u16..4096), v6 in any::<bool>(),
    ) {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let b = match (vlan, v6) {
            (Some(id), false) => b.single_vlan(VlanId::try_new(id).unwrap()).ipv4(V4_A, V4_B, 9),
            (Some(id), true) => b.single_vlan(VlanId::try_new(id).unwrap()).ipv6(V6_A, V6_B, 9),
            (None, false) => b.ipv4(V4_A, V4_B, 9),
            (None, true) => b.ipv6(V6_A, V6_B, 9),
        };
        let payload = vec![0xa5; payload_len];
        if tcp {
            b.tcp(1000, dport, 3, 4).write(&mut f, &payload).unwrap();
        } else {
            b.udp(1000, dport).write(&mut f, &payload).unwrap();
        }
        for (at, byte) in damage {
            if let Some(b) = f.get_mut(at) {
                *b = byte;
            }
        }
        f.truncate(f.len().saturating_sub(cut % 20).max(cut.min(f.len())));
        assert_fast_walk_agrees(&f);
    }

    #[test]
    fn fast_walk_agrees_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut f = bytes;
        // Mostly IP with a plain header, so the checks after those are reached: IPv4
        // untagged, IPv4 with a tag before it, or IPv6 (with its transport named
        // directly in one frame in two).
        match f.first().map(|b| b % 4) {
            Some(1) if f.len() > 18 => {
                f[12..14].copy_from_slice(&[0x81, 0x00]);
                f[16..19].copy_from_slice(&[0x08, 0x00, 0x45]);
            }
            Some(2 | 3) if f.len() > 20 => {
                f[12..15].copy_from_slice(&[0x86, 0xdd, 0x60]);
                if f[0] % 8 < 4 {
                    f[20] = [6, 17, 1, 58][usize::from(f[1] % 4)];
                }
            }
            _ if f.len() > 14 => f[12..15].copy_from_slice(&[0x08, 0x00, 0x45]),
            _ => {}
        }
        assert_fast_walk_agrees(&f);
    }
}

proptest! {
    /// Each field of the packed metadata reads back as it was set, whatever else is set
    /// and in whatever order; unset ones read `None`; and metadata built in the same
    /// way compares equal.
    #[test]
    fn frame_meta_reads_back_what_was_set(
        ethertype in any::<u16>(),
        vlan in proptest::option::of(any::<u16>()),
        vlan_inner in proptest::option::of(any::<u16>()),
        addrs in proptest::option::of(prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>())
                .prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d))),
            (any::<[u8; 16]>(), any::<[u8; 16]>())
                .prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d))),
        ]),
        protocol in proptest::option::of(any::<u8>()),
        ports in proptest::option::of((any::<u16>(), any::<u16>())),
        vni in proptest::option::of(any::<u32>()),
        app in proptest::option::of(prop_oneof![Just(App::NvmeTcp), Just(App::Iscsi)]),
        reverse in any::<bool>(),
    ) {
        let mut steps: Vec<Box<dyn Fn(FrameMeta) -> FrameMeta>> = vec![
            Box::new(move |m| m.with_ethertype(ethertype)),
            Box::new(move |m| vlan.map_or(m, |v| m.with_vlan(v))),
            Box::new(move |m| vlan_inner.map_or(m, |v| m.with_vlan_inner(v))),
            Box::new(move |m| addrs.map_or(m, |(s, d)| m.with_addrs(s, d))),
            Box::new(move |m| protocol.map_or(m, |p| m.with_protocol(p))),
            Box::new(move |m| ports.map_or(m, |(s, d)| m.with_ports(s, d))),
            Box::new(move |m| vni.map_or(m, |v| m.with_vni(v))),
            Box::new(move |m| app.map_or(m, |a| m.with_app(a))),
        ];
        if reverse {
            steps.reverse();
        }
        let m = steps.iter().fold(FrameMeta::default(), |m, step| step(m));
        prop_assert_eq!(m.ethertype(), ethertype);
        prop_assert_eq!((m.vlan(), m.vlan_inner()), (vlan, vlan_inner));
        prop_assert_eq!((m.src(), m.dst()), (addrs.map(|a| a.0), addrs.map(|a| a.1)));
        prop_assert_eq!(m.protocol(), protocol);
        prop_assert_eq!((m.src_port(), m.dst_port()), (ports.map(|p| p.0), ports.map(|p| p.1)));
        prop_assert_eq!((m.vni(), m.app()), (vni, app));
        let again = steps.iter().rev().fold(FrameMeta::default(), |m, step| step(m));
        prop_assert_eq!(m, again);
    }
}
