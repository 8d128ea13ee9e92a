//! Sinks: where placed frames end inside the process. `count`, `verify`, `checksum` and
//! `pcap` look at each burst in place on the worker; the channel behind
//! [`Engine::stream`](super::Engine::stream) takes the frames away.

use super::frame::{OwnedFrame, PlacedBurst};
use super::RunError;
use crate::device::pcap::io_error;
use crate::stats::SinkCounters;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A consumer of placed frames, run inline on the worker, a burst at a time.
pub trait Sink: Send {
    /// Takes a look at one burst; its buffers go back to their pools afterwards.
    fn consume(&mut self, burst: &PlacedBurst<'_>);
    /// True for a sink that takes frames away ([`consume_owned`](Self::consume_owned))
    /// instead of looking at them in place.
    fn takes_frames(&self) -> bool {
        false
    }
    /// Takes ownership of a burst's frames; their buffers return to their pools when
    /// each is dropped, on whatever thread. Frames the sink does not pull from `frames`
    /// are dropped. Called instead of `consume` when `takes_frames` is true.
    fn consume_owned(&mut self, frames: &mut dyn Iterator<Item = OwnedFrame>) {
        frames.for_each(drop);
    }
    /// Called after each poll of the device.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Counters for stats.
    fn counters(&self) -> SinkCounters;
    /// What the sink writes to, for errors (`pcap file out.pcap`).
    fn name(&self) -> String {
        "the sink".into()
    }
}

/// Counts only; the worker already counts frames and bytes.
#[derive(Debug, Default)]
pub struct CountSink;

impl Sink for CountSink {
    fn consume(&mut self, _: &PlacedBurst<'_>) {}
    fn counters(&self) -> SinkCounters {
        SinkCounters::default()
    }
}

/// Checks that head + frags reassemble to the frame as received.
#[derive(Debug, Default)]
pub struct VerifySink {
    counters: SinkCounters,
    /// Bytes read through a provider's `read` op (reused: no allocation per frame).
    scratch: Vec<u8>,
}

impl Sink for VerifySink {
    fn consume(&mut self, burst: &PlacedBurst<'_>) {
        'frames: for f in burst.frames() {
            let mut at = 0;
            for p in f.parts {
                let bytes = match p.buf.as_slice() {
                    Some(mem) => &mem[..p.len],
                    None => {
                        self.scratch.clear();
                        if !f.read_part(p, &mut self.scratch) {
                            self.counters.unreadable += 1;
                            continue 'frames;
                        }
                        &self.scratch[..]
                    }
                };
                if f.original.get(at..at + p.len) != Some(bytes) {
                    self.counters.mismatched += 1;
                    continue 'frames;
                }
                at += p.len;
            }
            if at == f.original.len() {
                self.counters.verified += 1;
            } else {
                self.counters.mismatched += 1;
            }
        }
    }
    fn counters(&self) -> SinkCounters {
        self.counters
    }
}

/// Reads every placed byte, in place, for a CRC-32 per frame (head, then frags, in
/// frame order: the CRC-32 of the frame as received), and sums them into a digest. The
/// in-process counterpart of `memplex consume --mode checksum`: both touch all of each
/// frame's data and nothing else, so a benchmark can set one against the other, and
/// their digests agree when the same frames reach both.
#[derive(Debug, Default)]
pub struct ChecksumSink {
    counters: SinkCounters,
    /// Bytes read through a provider's `read` op (reused: no allocation per frame).
    scratch: Vec<u8>,
}

impl Sink for ChecksumSink {
    fn consume(&mut self, burst: &PlacedBurst<'_>) {
        let mut digest = self.counters.digest as u32;
        'frames: for f in burst.frames() {
            let mut crc = crc32fast::Hasher::new();
            for p in f.parts {
                match p.buf.as_slice() {
                    Some(mem) => crc.update(&mem[..p.len]),
                    None => {
                        self.scratch.clear();
                        if !f.read_part(p, &mut self.scratch) {
                            self.counters.unreadable += 1;
                            continue 'frames;
                        }
                        crc.update(&self.scratch);
                    }
                }
            }
            digest = digest.wrapping_add(crc.finalize());
            self.counters.checksummed += 1;
        }
        self.counters.digest = u64::from(digest);
    }
    fn counters(&self) -> SinkCounters {
        self.counters
    }
}

/// A pcap file shared by every queue's [`PcapSink`].
pub type PcapOut = Arc<Mutex<PcapWriter<BufWriter<File>>>>;

/// The largest frame the pcap sink writes (a TAP read: a BIG TCP super-frame).
const SNAPLEN: u32 = 256 * 1024;

/// Writes reassembled frames to a pcap file shared by all queues, with each frame's
/// capture timestamp (nanosecond resolution) and length on the wire. Each queue gathers
/// a burst locally and takes the file's lock once per poll, not per frame.
pub struct PcapSink {
    out: PcapOut,
    path: std::path::PathBuf,
    batch: Vec<u8>,
    /// (timestamp, length on the wire, bytes in `batch`) per frame.
    frames: Vec<(Duration, u32, usize)>,
    counters: SinkCounters,
}

impl PcapSink {
    /// A pcap writer for the queues' sinks to share.
    pub fn create(path: &Path) -> Result<PcapOut, RunError> {
        let err = |e: std::io::Error| RunError::Sink {
            path: path.display().to_string(),
            cause: e,
        };
        let file = File::create(path).map_err(err)?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let w =
            PcapWriter::with_header(BufWriter::new(file), header).map_err(|e| err(io_error(e)))?;
        Ok(Arc::new(Mutex::new(w)))
    }

    /// A sink writing to `out`, the file at `path`.
    pub fn new(out: PcapOut, path: &Path) -> Self {
        PcapSink {
            out,
            path: path.to_path_buf(),
            batch: Vec::new(),
            frames: Vec::new(),
            counters: SinkCounters::default(),
        }
    }

    /// Flushes `out` and reports a failed write, for the last handle to it.
    pub fn finish(out: PcapOut, path: &Path) -> Result<(), RunError> {
        let Ok(w) = Arc::try_unwrap(out) else {
            return Ok(());
        };
        let w = w
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.into_writer()
            .into_inner()
            .map(drop)
            .map_err(|e| RunError::Sink {
                path: path.display().to_string(),
                cause: e.into_error(),
            })
    }
}

impl Sink for PcapSink {
    fn consume(&mut self, burst: &PlacedBurst<'_>) {
        'frames: for f in burst.frames() {
            let start = self.batch.len();
            for p in f.parts {
                if !f.read_part(p, &mut self.batch) {
                    self.batch.truncate(start);
                    self.counters.unreadable += 1;
                    continue 'frames;
                }
            }
            let ts = Duration::from_nanos(f.rx.timestamp_ns);
            let wire = f.rx.orig_len.max((self.batch.len() - start) as u32);
            self.frames.push((ts, wire, self.batch.len() - start));
            self.counters.written += 1;
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = 0;
        for &(ts, wire, len) in &self.frames {
            let data = &self.batch[at..at + len];
            out.write_packet(&PcapPacket::new(ts, wire, data))
                .map_err(io_error)?;
            at += len;
        }
        self.batch.clear();
        self.frames.clear();
        Ok(())
    }

    fn counters(&self) -> SinkCounters {
        self.counters
    }

    fn name(&self) -> String {
        format!("pcap file {}", self.path.display())
    }
}

/// Hands frames to a tokio channel: the sink behind [`Engine::stream`](super::Engine::stream).
pub(super) struct ChannelSink {
    pub tx: tokio::sync::mpsc::Sender<OwnedFrame>,
    pub sent: u64,
    pub stop: Arc<AtomicBool>,
}

impl Sink for ChannelSink {
    fn consume(&mut self, _: &PlacedBurst<'_>) {}
    fn takes_frames(&self) -> bool {
        true
    }
    fn consume_owned(&mut self, frames: &mut dyn Iterator<Item = OwnedFrame>) {
        for frame in frames {
            // Blocks while the channel is full: backpressure, and memory stays bounded by
            // the channel's capacity. A closed channel drops the frame, returning its
            // buffers.
            match self.tx.blocking_send(frame) {
                Ok(()) => self.sent += 1,
                // The stream was dropped: nobody wants frames any more, so end the run.
                Err(_) => self.stop.store(true, Relaxed),
            }
        }
    }
    fn counters(&self) -> SinkCounters {
        SinkCounters {
            written: self.sent,
            ..SinkCounters::default()
        }
    }
}
