//! IPv4, with options.

use super::{Error, Field};

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Field = 2..4;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const PROTOCOL: usize = 9;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// The smallest header (no options).
pub const MIN_HEADER_LEN: usize = 20;

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps after checking version, header length and total length; after this no
    /// accessor can panic. [`Error::Truncated`] when shorter than the header or the total
    /// length says, [`Error::Malformed`] when the version is not 4, IHL is below 5 or the
    /// total length is below the header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Packet { buffer };
        let (hl, tl) = (p.header_len(), p.total_len());
        if p.version() != 4 || hl < MIN_HEADER_LEN || tl < hl {
            return Err(Error::Malformed);
        }
        if p.buffer.as_ref().len() < tl {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// IP version (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length: header and payload, without link-layer padding.
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes(
            self.buffer.as_ref()[field::TOTAL_LEN]
                .try_into()
                .expect("2 bytes"),
        ))
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        u16::from_be_bytes(
            self.buffer.as_ref()[field::FLAGS_FRAG]
                .try_into()
                .expect("2 bytes"),
        ) & 0x1fff
    }

    /// The payload's protocol number.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Source address.
    pub fn src(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("4 bytes")
    }

    /// Destination address.
    pub fn dst(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("4 bytes")
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The payload, up to the total length.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..self.total_len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 24-byte header (one 4-byte option), 4 bytes of payload, 2 bytes of padding.
    const PACKET: [u8; 30] = [
        0x46, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 1, 0, 0, 0xaa,
        0xbb, 0xcc, 0xdd, 0, 0,
    ];

    #[test]
    fn parses_options_and_excludes_padding() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!((p.header_len(), p.total_len(), p.protocol()), (24, 28, 17));
        assert_eq!((p.src(), p.dst()), ([10, 0, 0, 1], [10, 0, 0, 2]));
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(p.frag_offset(), 0);
    }

    #[test]
    fn refuses_bad_packets() {
        assert_eq!(
            Packet::new_checked(&PACKET[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&PACKET[..27]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = PACKET;
        bad[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        let mut bad = PACKET;
        bad[3] = 10; // total length below the header
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
    }
}
