//! IPv6 and a bounded walk over its extension headers.

use super::{Error, Field};

mod field {
    use super::Field;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

/// The fixed header's length.
pub const HEADER_LEN: usize = 40;
/// The most extension headers walked before the packet is called malformed.
pub const MAX_EXT_HEADERS: usize = 8;

/// A checked view of an IPv6 packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps after checking the version and that the payload length fits the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        let p = Packet { buffer };
        if p.buffer.as_ref().len() < p.end() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// Payload length from the header (extension headers included).
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes(
            self.buffer.as_ref()[field::PAYLOAD_LEN]
                .try_into()
                .expect("2 bytes"),
        ))
    }

    /// End of the packet in the buffer, without link-layer padding. A zero payload length
    /// (a jumbogram) is taken to run to the end of the buffer.
    pub fn end(&self) -> usize {
        match self.payload_len() {
            0 => self.buffer.as_ref().len(),
            n => HEADER_LEN + n,
        }
    }

    /// The first next-header value.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Source address.
    pub fn src(&self) -> [u8; 16] {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("16 bytes")
    }

    /// Destination address.
    pub fn dst(&self) -> [u8; 16] {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("16 bytes")
    }

    /// Walks the extension headers: returns the upper-layer protocol, the offset of its
    /// header from the start of this packet, and whether the packet is a non-first
    /// fragment (which carries no upper-layer header). [`Error::TooDeep`] past
    /// [`MAX_EXT_HEADERS`] extension headers.
    pub fn upper_layer(&self) -> Result<(u8, usize, bool), Error> {
        let b = &self.buffer.as_ref()[..self.end()];
        let mut next = self.next_header();
        let mut at = HEADER_LEN;
        for _ in 0..=MAX_EXT_HEADERS {
            let len = match next {
                // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
                0 | 43 | 60 | 135 | 139 | 140 => {
                    let n = *b.get(at + 1).ok_or(Error::Truncated)?;
                    (usize::from(n) + 1) * 8
                }
                // Fragment: fixed 8 bytes; a non-zero offset means no upper-layer header.
                44 => {
                    let off = b.get(at + 2..at + 4).ok_or(Error::Truncated)?;
                    if u16::from_be_bytes([off[0], off[1]]) >> 3 != 0 {
                        return Ok((*b.get(at).ok_or(Error::Truncated)?, at, true));
                    }
                    8
                }
                // Authentication header: length in 4-byte units, minus 2.
                51 => {
                    let n = *b.get(at + 1).ok_or(Error::Truncated)?;
                    (usize::from(n) + 2) * 4
                }
                upper => return Ok((upper, at, false)),
            };
            next = *b.get(at).ok_or(Error::Truncated)?;
            at += len;
            if at > b.len() {
                return Err(Error::Truncated);
            }
        }
        Err(Error::TooDeep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, exts: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend(((exts.len() + payload.len()) as u16).to_be_bytes());
        p.extend([next, 64]);
        p.extend([0xfd; 16]);
        p.extend([0xfe; 16]);
        p.extend(exts);
        p.extend(payload);
        p
    }

    #[test]
    fn walks_extension_headers_to_the_upper_layer() {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP.
        let mut exts = vec![60, 0, 0, 0, 0, 0, 0, 0];
        exts.extend([17, 1]);
        exts.extend([0; 14]);
        let p = packet(0, &exts, &[0; 8]);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper_layer(), Ok((17, 40 + 24, false)));
        assert_eq!(v.src(), [0xfd; 16]);
    }

    #[test]
    fn non_first_fragment_has_no_upper_layer() {
        let p = packet(44, &[6, 0, 0, 8 << 3, 0, 0, 0, 1], &[0; 8]);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper_layer(), Ok((6, 40, true)));
    }

    #[test]
    fn bounded_and_truncated() {
        let mut exts = Vec::new();
        for _ in 0..10 {
            exts.extend([60, 0, 0, 0, 0, 0, 0, 0]);
        }
        let p = packet(60, &exts, &[]);
        assert_eq!(
            Packet::new_checked(&p[..]).unwrap().upper_layer(),
            Err(Error::TooDeep)
        );
        let p = packet(0, &[17, 5, 0, 0], &[]); // says 48 bytes, has 4
        assert_eq!(
            Packet::new_checked(&p[..]).unwrap().upper_layer(),
            Err(Error::Truncated)
        );
        let mut p = packet(17, &[], &[0; 8]);
        p.truncate(45);
        assert_eq!(Packet::new_checked(&p[..]).unwrap_err(), Error::Truncated);
    }
}
