//! The runtime: one worker per receive queue, each owning its pools, so nothing on the
//! frame path locks.
//!
//! ```text
//!  device::RxQueue --&[RxFrame]--> worker: split --> route --> head pool ─┐ place (one copy)
//!  (burst + RxMeta)                                          frag pools ─┘        |
//!                                       Sink::consume(&PlacedBurst) <─────────────┘
//!                                               | then recycle (per-queue cache)
//! ```
//!
//! - [`Engine`] (`engine.rs`): a config made ready (providers loaded, routes compiled);
//!   `run` with the config's sink, `run_with` your own, `stream` as a tokio `Stream`;
//! - the worker (`worker.rs`): one queue's loop, a burst at a time, which for a replay
//!   past L2 measures whether asking for frames ahead pays on this CPU (`read_ahead.rs`);
//! - frames (`frame.rs`): [`PlacedBurst`] and [`PlacedFrame`] for sinks that look in
//!   place, [`OwnedFrame`] for consumers on other threads;
//! - sinks (`sink.rs`): [`CountSink`], [`VerifySink`], [`ChecksumSink`], [`PcapSink`],
//!   and the channel behind `stream`.
//!
//! A sink of one's own sees every frame's receive metadata and split decision:
//!
//! ```
//! use memplex::config::Config;
//! use memplex::device::{self, replay::{self, Recorded}};
//! use memplex::provider::PluginPath;
//! use memplex::runtime::{Engine, PlacedBurst, RunControl, Sink};
//! use memplex::stats::SinkCounters;
//!
//! /// Remembers each frame's sequence number and how many buffers it took.
//! struct Log(Vec<(u64, usize)>);
//! impl Sink for Log {
//!     fn consume(&mut self, burst: &PlacedBurst<'_>) {
//!         self.0.extend(burst.frames().map(|f| (f.rx.seq, f.parts.len())));
//!     }
//!     fn counters(&self) -> SinkCounters {
//!         SinkCounters { written: self.0.len() as u64, ..Default::default() }
//!     }
//! }
//!
//! let toml = r#"
//!     [device]
//!     kind = "pcap"
//!     path = "unused: the frames below are replayed from memory"
//!     [providers.hot]
//!     plugin = "builtin:slab"
//!     buf_size = 256
//!     [[route]]
//!     head = "hot"
//!     frags = "hot"
//! "#;
//! let config = Config::from_toml(toml, "example", Default::default(), None)?;
//! let engine = Engine::new(config, &PluginPath::from_env())?;
//! let frames = Recorded::synthetic(vec![vec![0u8; 600]; 100]);
//! let queues = device::boxed(replay::queues("example", frames.into(), 1, 1, None)?);
//! let report = engine.run_with(queues, &RunControl::default(), |_| Box::new(Log(Vec::new())))?;
//! let total = report.total();
//! assert_eq!(total.sink.written, 100);
//! assert_eq!(total.providers[0].placed.frames, 300, "600 bytes in 256-byte buffers: 3 each");
//! assert_eq!(report.leaked(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Workers are dedicated threads: a queue is a busy loop over a device, and a thread per
//! queue with the pools on its stack is the shape page_pool has under NAPI. A program
//! embedding memplex (the CLI included) drives signals, stats and metrics around them.

mod engine;
mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod hostile;
#[cfg(test)]
mod one_core;
mod read_ahead;
mod sink;
mod worker;

pub use engine::Engine;
pub use frame::{OwnedFrame, Part, PlacedBurst, PlacedFrame};
pub use sink::{ChecksumSink, CountSink, PcapOut, PcapSink, Sink, VerifySink};

use crate::device::DeviceError;
use crate::pool::PoolReport;
use crate::provider::LoadError;
use crate::stats::QueueStats;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A provider could not be loaded or started.
    #[error("provider `{name}`: {cause}")]
    Provider {
        /// The provider's name in the config.
        name: String,
        /// Why.
        cause: LoadError,
    },
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The sink could not write.
    #[error("sink {path}: {cause}")]
    Sink {
        /// The output.
        path: String,
        /// What the system said.
        cause: std::io::Error,
    },
    /// A route names a provider the config does not define.
    #[error(transparent)]
    Route(#[from] crate::route::UnknownProvider),
    /// A worker thread panicked.
    #[error("worker for {0} panicked")]
    Worker(String),
    /// A queue failed mid-run (its device went away, its sink could not be written):
    /// the run stopped, and `report` has what every queue did until then, the failed
    /// one's buffers included.
    #[error("{cause}")]
    Failed {
        /// Why.
        cause: Box<RunError>,
        /// The figures of the run up to the failure.
        report: Box<RunReport>,
    },
    /// A consumer's socket could not be set up.
    #[error(transparent)]
    Deliver(#[from] crate::deliver::ServerError),
    /// A route delivers to a consumer memory that cannot be shared, or is sized so a
    /// consumer could starve the provider.
    #[error("route[{route}] delivers to consumer `{consumer}`, but {problem}")]
    NotDeliverable {
        /// The rule's index.
        route: usize,
        /// The consumer's name.
        consumer: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A route forwards to a device that cannot send, or from memory the host cannot
    /// read.
    #[error("route[{route}] forwards to device `{device}`, but {problem}")]
    NotForwardable {
        /// The rule's index.
        route: usize,
        /// The device's name (`in`: the device each frame came in on).
        device: String,
        /// What is wrong, and what to do.
        problem: String,
    },
}

/// A run in the background behind a [`FrameStream`].
#[derive(Debug)]
pub struct StreamRun {
    /// Set `control.stop` to end the run.
    pub control: RunControl,
    /// The run's thread; its result is the run's report.
    pub thread: std::thread::JoinHandle<Result<RunReport, RunError>>,
}

/// A tokio `Stream` of placed frames (see [`Engine::stream`]).
pub type FrameStream = tokio_stream::wrappers::ReceiverStream<OwnedFrame>;

/// Shared between a run and whoever watches it.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Set to stop every worker after its current batch.
    pub stop: Arc<AtomicBool>,
    /// The latest published stats of each queue (updated a few times a second).
    pub live: Arc<Mutex<Vec<QueueStats>>>,
}

/// What a finished run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Final stats per queue.
    pub queues: Vec<QueueStats>,
    /// Each pool's shutdown report, per queue, in provider order.
    pub pools: Vec<Vec<PoolReport>>,
    /// Wall time.
    pub elapsed: Duration,
    /// Provider names, in index order.
    pub providers: Vec<String>,
}

impl RunReport {
    /// Buffers that never came back, over all pools.
    pub fn leaked(&self) -> u64 {
        self.pools.iter().flatten().map(|p| p.leaked).sum()
    }

    /// The queues' stats added up.
    pub fn total(&self) -> QueueStats {
        crate::stats::total(&self.queues)
    }
}
