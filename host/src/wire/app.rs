//! Application headers that `app` split mode splits after: NVMe/TCP PDUs and iSCSI PDUs.
//!
//! A TCP segment need not start at a PDU boundary; a header is recognised only when its
//! fields are consistent (a known PDU type, lengths that agree), else the frame is split
//! after the TCP header instead and counted as such.

/// The IANA TCP port of NVMe/TCP.
pub const NVME_TCP_PORT: u16 = 4420;
/// The IANA TCP port of iSCSI.
pub const ISCSI_PORT: u16 = 3260;

/// The application protocols memplex recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// NVMe over TCP.
    NvmeTcp,
    /// iSCSI.
    Iscsi,
}

impl App {
    /// The protocol on this TCP port pair, if any.
    pub fn for_ports(src: u16, dst: u16) -> Option<App> {
        match (src, dst) {
            (NVME_TCP_PORT, _) | (_, NVME_TCP_PORT) => Some(App::NvmeTcp),
            (ISCSI_PORT, _) | (_, ISCSI_PORT) => Some(App::Iscsi),
            _ => None,
        }
    }

    /// Length of the PDU header at the front of `b`, when `b` starts with one.
    pub fn header_len(self, b: &[u8]) -> Option<usize> {
        match self {
            App::NvmeTcp => nvme_tcp(b),
            App::Iscsi => iscsi(b),
        }
    }
}

/// NVMe/TCP common header (8 bytes): type, flags, HLEN, PDO, PLEN (LE). Data starts at
/// PDO when the PDU has data, else after HLEN and the header digest if enabled.
fn nvme_tcp(b: &[u8]) -> Option<usize> {
    let h = b.get(..8)?;
    let (ty, flags, hlen, pdo) = (h[0], h[1], usize::from(h[2]), usize::from(h[3]));
    let plen = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    // Expected HLEN by PDU type (NVMe/TCP transport spec, section 3.6).
    let expected = match ty {
        0x00 | 0x01 => 128, // ICReq, ICResp
        0x02 | 0x03 => 24,  // H2C/C2H termination requests
        0x04 => 72,         // command capsule
        0x05 => 24,         // response capsule
        0x06 | 0x07 => 24,  // H2C/C2H data
        0x09 => 24,         // R2T
        _ => return None,
    };
    if hlen != expected || plen < hlen {
        return None;
    }
    let header = hlen + if flags & 0x01 != 0 { 4 } else { 0 };
    let split = if pdo != 0 { pdo } else { header };
    (split >= header && split <= plen && split <= b.len()).then_some(split)
}

/// iSCSI basic header segment (48 bytes) plus additional header segments.
fn iscsi(b: &[u8]) -> Option<usize> {
    let h = b.get(..48)?;
    let opcode = h[0] & 0x3f;
    let known = matches!(opcode, 0x00..=0x06 | 0x10 | 0x1c..=0x26 | 0x31 | 0x32 | 0x3c..=0x3f);
    let len = 48 + usize::from(h[4]) * 4;
    (known && len <= b.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c2h_data(pdo: u8, flags: u8, plen: u32) -> Vec<u8> {
        let mut h = vec![0x07, flags, 24, pdo];
        h.extend(plen.to_le_bytes());
        h.resize(200, 0);
        h
    }

    #[test]
    fn nvme_tcp_data_pdu_splits_at_pdo() {
        assert_eq!(App::NvmeTcp.header_len(&c2h_data(24, 0, 4120)), Some(24));
        assert_eq!(App::NvmeTcp.header_len(&c2h_data(28, 1, 4120)), Some(28)); // header digest
        assert_eq!(App::NvmeTcp.header_len(&c2h_data(0, 0, 24)), Some(24));
        assert_eq!(
            App::NvmeTcp.header_len(&c2h_data(20, 0, 4120)),
            None,
            "PDO inside the header"
        );
        assert_eq!(
            App::NvmeTcp.header_len(&c2h_data(24, 0, 10)),
            None,
            "PLEN below HLEN"
        );
        let mut bad = c2h_data(24, 0, 4120);
        bad[0] = 0x42;
        assert_eq!(App::NvmeTcp.header_len(&bad), None);
        assert_eq!(App::for_ports(50000, 4420), Some(App::NvmeTcp));
    }

    #[test]
    fn iscsi_bhs_with_ahs() {
        let mut h = vec![0x25, 0x80, 0, 0, 2];
        h.resize(100, 0);
        assert_eq!(App::Iscsi.header_len(&h), Some(56));
        assert_eq!(App::Iscsi.header_len(&h[..50]), None);
        h[0] = 0x3a;
        assert_eq!(App::Iscsi.header_len(&h), None);
    }
}
