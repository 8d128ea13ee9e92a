//! Replaying a pcap or pcapng capture (pcap-file crate), for unprivileged use and
//! repeatable runs.
//!
//! The whole capture is read into memory when the device opens, so replay makes no
//! system call at all: it measures the host's own cost, with the kernel out of the loop.
//! Flows are spread over queues by a symmetric 5-tuple hash.

use super::{flow_hash, DeviceError, Poll, RxQueue};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::DataLink;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads every Ethernet frame of a pcap or pcapng file.
pub fn read_frames(path: &Path) -> Result<Vec<Box<[u8]>>, DeviceError> {
    let err = |message: String| DeviceError::Capture {
        path: path.display().to_string(),
        message,
    };
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
                let (data, link) = match block {
                    Block::EnhancedPacket(p) => {
                        let link = parser.packet_interface(&p).map(|i| i.linktype);
                        (p.data.into_owned(), link)
                    }
                    Block::SimplePacket(p) => (
                        p.data.into_owned(),
                        parser.interfaces().first().map(|i| i.linktype),
                    ),
                    _ => continue,
                };
                if let Some(link) = link.filter(|l| *l != DataLink::ETHERNET) {
                    return Err(err(format!(
                        "link type {link:?} is not Ethernet; memplex splits Ethernet frames"
                    )));
                }
                frames.push(data.into_boxed_slice());
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
                frames.push(p.data.into_owned().into_boxed_slice());
            }
        }
    }
    Ok(frames)
}

/// One queue's share of a replayed capture.
pub struct PcapQueue {
    name: String,
    frames: Arc<[Box<[u8]>]>,
    mine: Vec<u32>,
    next: usize,
    round: u32,
    repeat: u32,
    pace: Option<Pace>,
}

/// Replay at a fixed rate: frames due by now, counted from the first poll.
struct Pace {
    per_sec: f64,
    start: Option<Instant>,
    sent: u64,
}

impl Pace {
    /// How many frames may go now (at most `budget`), and how long to wait when none may.
    fn allowance(&mut self, budget: usize) -> (usize, Duration) {
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = (start.elapsed().as_secs_f64() * self.per_sec) as u64 + 1;
        let n = due.saturating_sub(self.sent).min(budget as u64) as usize;
        let wait = Duration::from_secs_f64((self.sent + 1) as f64 / self.per_sec)
            .saturating_sub(start.elapsed());
        (n, wait)
    }
}

/// Opens `queues` queues over the frames of `path`, each replaying its flows `repeat`
/// times, at `rate` frames per second over all queues when given.
pub fn open(
    path: &Path,
    queues: u16,
    repeat: u32,
    rate: Option<u64>,
) -> Result<Vec<PcapQueue>, DeviceError> {
    let frames: Arc<[Box<[u8]>]> = read_frames(path)?.into();
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
    let mut shares: Vec<Vec<u32>> = vec![Vec::new(); usize::from(queues)];
    for (i, f) in frames.iter().enumerate() {
        shares[(flow_hash(f) % u64::from(queues)) as usize].push(i as u32);
    }
    Ok(shares
        .into_iter()
        .enumerate()
        .map(|(q, mine)| PcapQueue {
            name: format!("{file} q{q}"),
            frames: Arc::clone(&frames),
            mine,
            next: 0,
            round: 0,
            repeat,
            pace: rate.filter(|&r| r > 0).map(|r| Pace {
                per_sec: r as f64 / f64::from(queues),
                start: None,
                sent: 0,
            }),
        })
        .collect())
}

impl RxQueue for PcapQueue {
    fn poll(
        &mut self,
        budget: usize,
        timeout: Duration,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> Result<Poll, DeviceError> {
        let budget = match self.pace.as_mut() {
            None => budget,
            Some(pace) => match pace.allowance(budget) {
                (0, wait) => {
                    std::thread::sleep(wait.min(timeout));
                    return Ok(Poll::Idle);
                }
                (n, _) => {
                    pace.sent += n as u64;
                    n
                }
            },
        };
        let mut n = 0;
        while n < budget {
            if self.next == self.mine.len() {
                self.next = 0;
                self.round += 1;
            }
            if self.round >= self.repeat || self.mine.is_empty() {
                return Ok(if n == 0 { Poll::End } else { Poll::Frames(n) });
            }
            on_frame(&self.frames[self.mine[self.next] as usize]);
            self.next += 1;
            n += 1;
        }
        Ok(Poll::Frames(n))
    }

    fn name(&self) -> &str {
        &self.name
    }
}
