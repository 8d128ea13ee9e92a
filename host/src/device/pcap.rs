//! Replaying a pcap or pcapng capture (pcap-file crate), for unprivileged use and
//! repeatable runs: the whole capture is read into memory when the device opens, with
//! each record's timestamp and original length, and [`replay`](super::replay)ed.

use super::replay::{self, Recorded, ReplayQueue};
use super::DeviceError;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::DataLink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The I/O error inside a pcap-file error, which is what went wrong (pcap-file's own
/// text for it reads "Error reading bytes", even when writing to a full disk); any other
/// pcap-file error as an I/O error with its text.
pub fn io_error(e: pcap_file::PcapError) -> std::io::Error {
    match e {
        pcap_file::PcapError::IoError(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

/// The largest capture replayed: it is held in memory.
pub const MAX_CAPTURE: u64 = 4 << 30;

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads every Ethernet frame of a pcap or pcapng file, with its capture time and
/// length on the wire.
pub fn read_frames(path: &Path) -> Result<Vec<Recorded>, DeviceError> {
    let err = |message: String| DeviceError::Capture {
        path: path.display().to_string(),
        message,
    };
    // A FIFO, a device or a directory would be read forever or not at all; a capture is
    // held in memory, so its size is bounded too.
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err(format!(
            "is not a regular file (it is {}); give a pcap or pcapng file",
            kind_of(&meta)
        )));
    }
    if meta.len() > MAX_CAPTURE {
        return Err(err(format!(
            "is {} MiB; a replayed capture is held in memory, at most {} MiB",
            meta.len() >> 20,
            MAX_CAPTURE >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut frames = Vec::new();
    match bytes.get(..4) {
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => {
            let (mut rest, mut parser) = PcapNgParser::new(&bytes[..])
                .map_err(|e| err(format!("not a valid pcapng file: {e}")))?;
            while !rest.is_empty() {
                let (next, block) = parser.next_block(rest).map_err(|e| {
                    err(format!(
                        "corrupt pcapng block after {} frames: {e}",
                        frames.len()
                    ))
                })?;
                rest = next;
                let (data, link, ts, orig_len) = match block {
                    Block::EnhancedPacket(p) => {
                        let link = parser.packet_interface(&p).map(|i| i.linktype);
                        (p.data.into_owned(), link, p.timestamp, p.original_len)
                    }
                    Block::SimplePacket(p) => (
                        p.data.into_owned(),
                        parser.interfaces().first().map(|i| i.linktype),
                        Duration::ZERO,
                        p.original_len,
                    ),
                    _ => continue,
                };
                if let Some(link) = link.filter(|l| *l != DataLink::ETHERNET) {
                    return Err(err(format!(
                        "link type {link:?} is not Ethernet; memplex splits Ethernet frames"
                    )));
                }
                frames.push(record(data, ts, orig_len));
            }
        }
        _ => {
            let mut r = PcapReader::new(&bytes[..])
                .map_err(|e| err(format!("not a pcap or pcapng file: {e}")))?;
            let link = r.header().datalink;
            if link != DataLink::ETHERNET {
                return Err(err(format!(
                    "link type {link:?} is not Ethernet; memplex splits Ethernet frames"
                )));
            }
            while let Some(p) = r.next_packet() {
                let p = p.map_err(|e| {
                    err(format!(
                        "corrupt packet record after {} frames: {e}",
                        frames.len()
                    ))
                })?;
                frames.push(record(p.data.into_owned(), p.timestamp, p.orig_len));
            }
        }
    }
    Ok(frames)
}

fn record(data: Vec<u8>, ts: Duration, orig_len: u32) -> Recorded {
    Recorded {
        orig_len: orig_len.max(data.len() as u32),
        data: data.into_boxed_slice(),
        timestamp_ns: ts.as_nanos() as u64,
    }
}

/// Opens `queues` queues over the frames of `path`, each replaying its flows `repeat`
/// times, at `rate` frames per second over all queues when given.
pub fn open(
    path: &Path,
    queues: u16,
    repeat: u32,
    rate: Option<u64>,
) -> Result<Vec<ReplayQueue>, DeviceError> {
    let frames: Arc<[Recorded]> = read_frames(path)?.into();
    if frames.is_empty() {
        return Err(DeviceError::Capture {
            path: path.display().to_string(),
            message: "holds no frames".into(),
        });
    }
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    replay::queues(&file, frames, queues, repeat, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_capture_file_is_refused_with_why() {
        for (path, want) in [
            ("/dev/zero", "not a regular file (it is a device)"),
            ("/", "not a regular file (it is a directory)"),
            ("/no/such/capture.pcap", "cannot read"),
        ] {
            let e = read_frames(Path::new(path)).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(path), "{e}");
        }
        let empty = std::env::temp_dir().join(format!("memplex-empty-{}.pcap", std::process::id()));
        std::fs::write(&empty, b"").unwrap();
        let e = read_frames(&empty).unwrap_err().to_string();
        assert!(e.contains("not a pcap or pcapng file"), "{e}");
        std::fs::remove_file(empty).unwrap();
    }
}
