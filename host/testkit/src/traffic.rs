//! Deterministic traffic mixes for captures, demos and tests, built with etherparse.
//!
//! Every mix is a list of valid Ethernet frames (plus, in `malformed`, broken ones), the
//! same on every run, so a capture written from it is a repeatable workload.

use etherparse::{PacketBuilder, TcpOptionElement, VlanId};
use std::path::Path;

/// The mixes `memplex gen-pcap` knows.
pub const MIXES: &str = "default, nvme, tunnel, malformed";

const MAC_A: [u8; 6] = [0x02, 0x6d, 0x70, 0x78, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0x6d, 0x70, 0x78, 0, 2];
const V4_A: [u8; 4] = [10, 77, 0, 1];
const V4_B: [u8; 4] = [10, 77, 0, 2];
const V6_A: [u8; 16] = [0xfd, 0x6d, 0x70, 0x78, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0xfd, 0x6d, 0x70, 0x78, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A small deterministic generator (xorshift), so mixes need no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn udp4(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .udp(sport, dport)
        .write(&mut f, payload)
        .expect("valid frame");
    f
}

fn tcp4(vlan: Option<u16>, sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let opts = [
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(seq, 7),
    ];
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
    match vlan {
        Some(v) => b
            .single_vlan(VlanId::try_new(v).expect("vid"))
            .ipv4(V4_A, V4_B, 64)
            .tcp(sport, dport, seq, 65535)
            .options(&opts),
        None => b
            .ipv4(V4_A, V4_B, 64)
            .tcp(sport, dport, seq, 65535)
            .options(&opts),
    }
    .expect("options fit")
    .write(&mut f, payload)
    .expect("valid frame");
    f
}

fn udp6(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_A, V6_B, 64)
        .udp(sport, dport)
        .write(&mut f, payload)
        .expect("valid frame");
    f
}

fn nvme_pdu(rng: &mut Rng, data: usize) -> Vec<u8> {
    let mut pdu = vec![0x07, 0, 24, 24];
    pdu.extend(((24 + data) as u32).to_le_bytes());
    pdu.resize(24, 0);
    pdu.extend(rng.bytes(data));
    pdu
}

fn sizes(rng: &mut Rng) -> usize {
    [18, 64, 200, 512, 1000, 1400, 1458][(rng.next() % 7) as usize]
}

/// What [`generate`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Every frame's length in bytes, Ethernet header included (no FCS).
    pub frame_size: usize,
    /// Distinct flows (source ports), spread over receive queues by their hash.
    pub flows: u16,
    /// `udp`, `tcp` (with a timestamp option), or `mix` (alternating, every third IPv6).
    pub proto: Proto,
    /// An 802.1Q tag on every frame.
    pub vlan: Option<u16>,
}

/// The protocols [`generate`] can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP over IPv4.
    Udp,
    /// TCP over IPv4, with options.
    Tcp,
    /// UDP and TCP over IPv4 and UDP over IPv6, in turn.
    Mix,
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Proto::Udp),
            "tcp" => Ok(Proto::Tcp),
            "mix" => Ok(Proto::Mix),
            _ => Err(format!("`{s}` is not a protocol: udp, tcp or mix")),
        }
    }
}

/// The smallest frame [`generate`] can build for `proto` (headers of the largest kind
/// in the mix, VLAN tag included, one payload byte).
pub fn min_frame(proto: Proto, vlan: bool) -> usize {
    let l2 = 14 + if vlan { 4 } else { 0 };
    l2 + 1
        + match proto {
            Proto::Udp => 20 + 8,
            Proto::Tcp => 20 + 32,
            Proto::Mix => 40 + 32,
        }
}

/// `shape.flows` frames (one per flow) of exactly `shape.frame_size` bytes, for the
/// benchmark's traffic sources: replayed in memory, from a capture, or sent over a veth.
/// `Err` names what is out of range.
pub fn generate(shape: Shape) -> Result<Vec<Vec<u8>>, String> {
    let min = min_frame(shape.proto, shape.vlan.is_some());
    if shape.frame_size < min || shape.frame_size > 65_535 {
        return Err(format!(
            "frame size {} is out of range: {min} to 65535 bytes for {} frames{}",
            shape.frame_size,
            match shape.proto {
                Proto::Udp => "udp",
                Proto::Tcp => "tcp",
                Proto::Mix => "mix",
            },
            if shape.vlan.is_some() {
                " with a VLAN tag"
            } else {
                ""
            }
        ));
    }
    if shape.flows == 0 {
        return Err("flows must be at least 1".into());
    }
    if let Some(v) = shape
        .vlan
        .filter(|&v| VlanId::try_new(v).is_err() || v == 0)
    {
        return Err(format!("VLAN id {v} is out of range: 1 to 4095"));
    }
    let mut rng = Rng(0x6d70_7862_656e_6368);
    let frames = (0..shape.flows)
        .map(|i| {
            // Source ports from 10000; past 50000 flows the destination port moves on
            // too, so every flow of the 65535 a `u16` allows is its own 5-tuple.
            let (sport, dport) = (10_000 + i % 50_000, 9000 + i / 50_000);
            let kind = match shape.proto {
                Proto::Mix => [Proto::Udp, Proto::Tcp, Proto::Mix][usize::from(i) % 3],
                p => p,
            };
            let build = |payload: &[u8]| -> Vec<u8> {
                let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
                let vlan = shape
                    .vlan
                    .map(|v| VlanId::try_new(v).expect("checked above"));
                let mut f = Vec::with_capacity(shape.frame_size);
                let opts = [
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::Timestamp(u32::from(i), 7),
                ];
                match (kind, vlan) {
                    (Proto::Udp, None) => b
                        .ipv4(V4_A, V4_B, 64)
                        .udp(sport, dport)
                        .write(&mut f, payload),
                    (Proto::Udp, Some(v)) => b
                        .single_vlan(v)
                        .ipv4(V4_A, V4_B, 64)
                        .udp(sport, dport)
                        .write(&mut f, payload),
                    (Proto::Tcp, None) => b
                        .ipv4(V4_A, V4_B, 64)
                        .tcp(sport, dport, 1, 65535)
                        .options(&opts)
                        .expect("options fit")
                        .write(&mut f, payload),
                    (Proto::Tcp, Some(v)) => b
                        .single_vlan(v)
                        .ipv4(V4_A, V4_B, 64)
                        .tcp(sport, dport, 1, 65535)
                        .options(&opts)
                        .expect("options fit")
                        .write(&mut f, payload),
                    (Proto::Mix, None) => b
                        .ipv6(V6_A, V6_B, 64)
                        .udp(sport, dport)
                        .write(&mut f, payload),
                    (Proto::Mix, Some(v)) => b
                        .single_vlan(v)
                        .ipv6(V6_A, V6_B, 64)
                        .udp(sport, dport)
                        .write(&mut f, payload),
                }
                .expect("valid frame");
                f
            };
            let headers = build(&[]).len();
            build(&rng.bytes(shape.frame_size - headers))
        })
        .collect();
    Ok(frames)
}

/// Frames of mix `name` (one of [`MIXES`]), `count` of them.
pub fn mix(name: &str, count: usize) -> Option<Vec<Vec<u8>>> {
    let mut rng = Rng(0x6d70_7800_0000_0001 ^ name.len() as u64);
    let mut frames = Vec::with_capacity(count);
    for i in 0..count {
        let n = sizes(&mut rng);
        let f = match name {
            "default" => match i % 6 {
                0 => udp4(40000 + (i % 8) as u16, 9000, &rng.bytes(n)),
                1 | 2 => tcp4(None, 50000, 5201, i as u32, &rng.bytes(n)),
                3 => tcp4(Some(100), 50001, 80, i as u32, &rng.bytes(n)),
                4 => udp6(40001, 9001, &rng.bytes(n.min(1400))),
                _ => {
                    let mut f = Vec::new();
                    PacketBuilder::ethernet2(MAC_A, MAC_B)
                        .ipv4(V4_A, V4_B, 64)
                        .icmpv4_echo_request(1, i as u16)
                        .write(&mut f, &rng.bytes(56))
                        .expect("valid frame");
                    f
                }
            },
            "nvme" => match i % 4 {
                0 | 1 => tcp4(
                    None,
                    50010,
                    memplex::wire::app::NVME_TCP_PORT,
                    i as u32,
                    &nvme_pdu(&mut rng, n.min(1400)),
                ),
                2 => tcp4(
                    None,
                    memplex::wire::app::NVME_TCP_PORT,
                    50010,
                    i as u32,
                    &rng.bytes(n),
                ),
                _ => udp4(40000, 9000, &rng.bytes(n)),
            },
            "tunnel" => {
                let inner = if i % 2 == 0 {
                    tcp4(None, 50020, 443, i as u32, &rng.bytes(n.min(1300)))
                } else {
                    udp4(5000, 5001, &rng.bytes(n.min(1300)))
                };
                let (port, mut header) = if i % 3 == 0 {
                    (
                        memplex::wire::tunnel::GENEVE_PORT,
                        vec![0x00, 0, 0x65, 0x58, 0, 0, 0x2a, 0],
                    )
                } else {
                    (
                        memplex::wire::tunnel::VXLAN_PORT,
                        vec![0x08, 0, 0, 0, 0, 0, if i % 2 == 0 { 10 } else { 20 }, 0],
                    )
                };
                header.extend(&inner);
                udp4(40000 + (i % 16) as u16, port, &header)
            }
            "malformed" => {
                let mut f = tcp4(None, 50030, 5201, i as u32, &rng.bytes(n));
                match i % 4 {
                    0 => f.truncate(30),         // cut inside the IPv4 header
                    1 => f[14] = 0x41,           // IHL 1
                    2 => f[14 + 20 + 12] = 0x10, // TCP data offset 4
                    _ => {}                      // a good one
                }
                f
            }
            _ => return None,
        };
        frames.push(f);
    }
    Some(frames)
}

/// Writes `frames` to a pcap file.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let io = memplex::device::pcap::io_error;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = pcap_file::pcap::PcapWriter::new(file).map_err(io)?;
    for (i, f) in frames.iter().enumerate() {
        let ts = std::time::Duration::from_micros(i as u64 * 10);
        w.write_packet(&pcap_file::pcap::PcapPacket::new(ts, f.len() as u32, f))
            .map_err(io)?;
    }
    w.into_writer().into_inner().map_err(|e| e.into_error())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_frames_have_the_asked_size_and_parse() {
        for proto in [Proto::Udp, Proto::Tcp, Proto::Mix] {
            for vlan in [None, Some(100)] {
                for size in [
                    min_frame(proto, vlan.is_some()),
                    64.max(min_frame(proto, vlan.is_some())),
                    1500,
                    9000,
                ] {
                    let shape = Shape {
                        frame_size: size,
                        flows: 6,
                        proto,
                        vlan,
                    };
                    let frames = generate(shape).unwrap();
                    assert_eq!(frames.len(), 6);
                    for f in &frames {
                        assert_eq!(f.len(), size, "{shape:?}");
                        let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
                        assert!(p.transport.is_some(), "{shape:?}");
                        assert_eq!(p.link_exts.is_empty(), vlan.is_none(), "{shape:?}");
                    }
                    let flows: std::collections::BTreeSet<_> = frames
                        .iter()
                        .map(|f| {
                            match etherparse::SlicedPacket::from_ethernet(f)
                                .unwrap()
                                .transport
                            {
                                Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
                                Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
                                other => panic!("{other:?}"),
                            }
                        })
                        .collect();
                    assert_eq!(flows.len(), 6, "one flow per frame");
                }
            }
        }
    }

    #[test]
    fn every_flow_a_u16_allows_is_its_own_five_tuple() {
        let frames = generate(Shape {
            frame_size: 128,
            flows: u16::MAX,
            proto: Proto::Tcp,
            vlan: None,
        })
        .unwrap();
        let tuples: std::collections::HashSet<_> = frames
            .iter()
            .map(|f| {
                match etherparse::SlicedPacket::from_ethernet(f)
                    .unwrap()
                    .transport
                {
                    Some(etherparse::TransportSlice::Tcp(t)) => {
                        (t.source_port(), t.destination_port())
                    }
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(tuples.len(), usize::from(u16::MAX));
    }

    #[test]
    fn generate_names_what_is_out_of_range() {
        let shape = Shape {
            frame_size: 40,
            flows: 1,
            proto: Proto::Tcp,
            vlan: None,
        };
        assert!(generate(shape)
            .unwrap_err()
            .contains("frame size 40 is out of range: 67 to 65535"));
        let shape = Shape {
            frame_size: 64,
            flows: 0,
            proto: Proto::Udp,
            vlan: None,
        };
        assert!(generate(shape).unwrap_err().contains("flows"));
        let shape = Shape {
            frame_size: 64,
            flows: 1,
            proto: Proto::Udp,
            vlan: Some(5000),
        };
        assert!(generate(shape).unwrap_err().contains("VLAN id 5000"));
        assert!("sctp"
            .parse::<Proto>()
            .unwrap_err()
            .contains("udp, tcp or mix"));
    }
}
