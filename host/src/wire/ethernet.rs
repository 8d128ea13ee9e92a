//! Ethernet II and 802.1Q / 802.1ad (QinQ) VLAN tags.

use super::{Error, Field};

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
}

/// Length of the untagged header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;
/// Length of one VLAN tag (TCI + the next ethertype).
pub const TAG_LEN: usize = 4;

/// Ethertypes memplex knows, with unknown values carried through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    /// 0x0800
    Ipv4,
    /// 0x86dd
    Ipv6,
    /// 0x0806
    Arp,
    /// 0x8100 (C-tag), 0x88a8 (S-tag), 0x9100 (legacy QinQ)
    Vlan,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x86dd => EtherType::Ipv6,
            0x0806 => EtherType::Arp,
            0x8100 | 0x88a8 | 0x9100 => EtherType::Vlan,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    /// The number on the wire (0x8100 for [`EtherType::Vlan`]).
    fn from(e: EtherType) -> u16 {
        match e {
            EtherType::Ipv4 => 0x0800,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::Unknown(v) => v,
        }
    }
}

/// A view of an Ethernet header at the front of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps without checking the length; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps after checking the buffer holds the untagged header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// Destination MAC.
    pub fn dst(&self) -> [u8; 6] {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("6 bytes")
    }

    /// Source MAC.
    pub fn src(&self) -> [u8; 6] {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("6 bytes")
    }

    /// The ethertype (or TPID of the first VLAN tag).
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[12], self.buffer.as_ref()[13]])
    }
}

/// A view of one VLAN tag: the 4 bytes after a VLAN TPID.
#[derive(Debug, Clone, Copy)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    /// Wraps after checking the buffer holds a tag.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(Tag { buffer })
    }

    /// VLAN id, the low 12 bits of the TCI.
    pub fn vid(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[0], self.buffer.as_ref()[1]]) & 0x0fff
    }

    /// Priority code point.
    pub fn pcp(&self) -> u8 {
        self.buffer.as_ref()[0] >> 5
    }

    /// The ethertype after this tag.
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[2], self.buffer.as_ref()[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 18] = [
        0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x81, 0x00, 0x20, 0x64, 0x08, 0x00,
    ];

    #[test]
    fn parses_mac_and_tag() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(EtherType::from(f.ethertype()), EtherType::Vlan);
        let t = Tag::new_checked(&FRAME[14..]).unwrap();
        assert_eq!((t.vid(), t.pcp()), (100, 1));
        assert_eq!(EtherType::from(t.ethertype()), EtherType::Ipv4);
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).err(),
            Some(Error::Truncated)
        );
        assert_eq!(Tag::new_checked(&FRAME[15..]).err(), Some(Error::Truncated));
    }
}
