//! TCP (with options), UDP, and ICMP / ICMPv6 header lengths and ports.

use super::Error;

/// IP protocol numbers memplex knows, with unknown values carried through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpProtocol {
    /// 6
    Tcp,
    /// 17
    Udp,
    /// 1
    Icmp,
    /// 58
    Icmpv6,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        match v {
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            1 => IpProtocol::Icmp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    /// The number on the wire.
    fn from(p: IpProtocol) -> u8 {
        match p {
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmp => 1,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(v) => v,
        }
    }
}

/// A TCP header view.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// The smallest header.
    pub const MIN_LEN: usize = 20;

    /// Wraps after checking the data offset and that the options fit the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < Self::MIN_LEN {
            return Err(Error::Truncated);
        }
        let p = TcpPacket { buffer };
        if p.header_len() < Self::MIN_LEN {
            return Err(Error::Malformed);
        }
        if p.buffer.as_ref().len() < p.header_len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// Source port.
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[0], self.buffer.as_ref()[1]])
    }

    /// Destination port.
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[2], self.buffer.as_ref()[3]])
    }

    /// Header length with options: the data offset in bytes.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }
}

/// A UDP header view.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// The header's length.
    pub const HEADER_LEN: usize = 8;

    /// Wraps after checking the header fits and its length field is at least 8.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = UdpPacket { buffer };
        if p.len() < Self::HEADER_LEN && p.len() != 0 {
            return Err(Error::Malformed);
        }
        Ok(p)
    }

    /// Source port.
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[0], self.buffer.as_ref()[1]])
    }

    /// Destination port.
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.buffer.as_ref()[2], self.buffer.as_ref()[3]])
    }

    /// The length field (header + payload; 0 in GSO super-frames).
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(u16::from_be_bytes([
            self.buffer.as_ref()[4],
            self.buffer.as_ref()[5],
        ]))
    }
}

/// The length of an ICMP or ICMPv6 header (type, code, checksum, 4 bytes of rest).
pub const ICMP_HEADER_LEN: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_with_options() {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&[0x11, 0x44, 0x00, 0x50]);
        h[12] = 8 << 4; // 32-byte header
        let t = TcpPacket::new_checked(&h[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port(), t.header_len()), (4420, 80, 32));
        assert_eq!(
            TcpPacket::new_checked(&h[..31]).unwrap_err(),
            Error::Truncated
        );
        h[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&h[..]).unwrap_err(),
            Error::Malformed
        );
    }

    #[test]
    fn udp() {
        let h = [0x12, 0xb5, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4];
        let u = UdpPacket::new_checked(&h[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port(), u.len()), (4789, 53, 12));
        assert_eq!(
            UdpPacket::new_checked(&h[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&[0, 0, 0, 0, 0, 5, 0, 0][..]).unwrap_err(),
            Error::Malformed
        );
        assert_eq!(IpProtocol::from(132), IpProtocol::Unknown(132));
    }
}
