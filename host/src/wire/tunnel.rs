//! VXLAN (RFC 7348) and GENEVE (RFC 8926) encapsulation headers.

use super::Error;

/// The IANA UDP port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The IANA UDP port of GENEVE.
pub const GENEVE_PORT: u16 = 6081;

/// What a tunnel header carries next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inner {
    /// An Ethernet frame (VXLAN; GENEVE with protocol 0x6558).
    Ethernet,
    /// An IP packet with this ethertype (GENEVE with 0x0800 or 0x86dd).
    Ip(u16),
}

/// A parsed tunnel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The 24-bit virtual network identifier.
    pub vni: u32,
    /// The header's length, options included.
    pub len: usize,
    /// What follows.
    pub inner: Inner,
}

fn vni(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[4], b[5], b[6]])
}

/// Parses an 8-byte VXLAN header: the I flag must be set.
pub fn vxlan(b: &[u8]) -> Result<Header, Error> {
    let h = b.get(..8).ok_or(Error::Truncated)?;
    if h[0] & 0x08 == 0 {
        return Err(Error::Malformed);
    }
    Ok(Header {
        vni: vni(h),
        len: 8,
        inner: Inner::Ethernet,
    })
}

/// Parses a GENEVE header with its options.
pub fn geneve(b: &[u8]) -> Result<Header, Error> {
    let h = b.get(..8).ok_or(Error::Truncated)?;
    if h[0] >> 6 != 0 {
        return Err(Error::Malformed);
    }
    let len = 8 + usize::from(h[0] & 0x3f) * 4;
    if b.len() < len {
        return Err(Error::Truncated);
    }
    let inner = match u16::from_be_bytes([h[2], h[3]]) {
        0x6558 => Inner::Ethernet,
        t @ (0x0800 | 0x86dd) => Inner::Ip(t),
        other => return Err(Error::Unsupported(other)),
    };
    Ok(Header {
        vni: vni(h),
        len,
        inner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_header() {
        assert_eq!(
            vxlan(&[0x08, 0, 0, 0, 0, 0x12, 0x34, 0]),
            Ok(Header {
                vni: 0x1234,
                len: 8,
                inner: Inner::Ethernet
            })
        );
        assert_eq!(vxlan(&[0, 0, 0, 0, 0, 0, 1, 0]), Err(Error::Malformed));
        assert_eq!(vxlan(&[0x08, 0, 0]), Err(Error::Truncated));
    }

    #[test]
    fn geneve_header_with_options() {
        let mut h = vec![0x02, 0, 0x65, 0x58, 0, 0, 7, 0];
        h.extend([0; 8]);
        assert_eq!(
            geneve(&h),
            Ok(Header {
                vni: 7,
                len: 16,
                inner: Inner::Ethernet
            })
        );
        assert_eq!(geneve(&h[..12]), Err(Error::Truncated));
        h[2..4].copy_from_slice(&[0x88, 0x47]);
        assert_eq!(geneve(&h), Err(Error::Unsupported(0x8847)));
    }
}
