//! The workload behind `memplex demo --synthetic`: the `default` traffic mix, split after
//! its L4 headers, placed through real pools and providers on two threads, no device.
//!
//! ```text
//!  producer thread (owns both pools)                 consumer thread
//!  frame -> split at L4 header -> head pool buf  ==>  verify head + frags == frame
//!                              -> frag pool bufs       recycle via Recycler (ring)
//! ```
//!
//! Every byte is copied once, into provider memory; the consumer checks every frame byte
//! for byte and returns every buffer from its own thread, so the pools' cross-thread ring
//! and the leak accounting are exercised for real.

use crate::pool::{Pool, PoolBuf, PoolError, PoolReport, Recycler};
use crate::provider::{InitParams, LoadError, ProviderPlugin};
use arrayvec::ArrayVec;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

/// The most frags one frame may span in the demo.
pub const MAX_FRAGS: usize = 8;

/// Workload settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Frames to push through.
    pub frames: u64,
    /// Head buffer size; headers longer than this are not split.
    pub head_size: u32,
    /// Frag buffer size; payloads longer than this span several frags.
    pub frag_size: u32,
    /// Pool size passed to providers (their capacity defaults to twice this).
    pub pool_size: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            frames: 400_000,
            head_size: 128,
            frag_size: 1024,
            pool_size: 1024,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A provider could not be started.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A pool failed for a reason other than running dry.
    #[error("{0}")]
    Pool(PoolError),
    /// A buffer was too small for what had to be placed in it.
    #[error("placing a frame failed: {0}")]
    Place(#[from] crate::pool::PlaceError),
    /// The demo thread died.
    #[error("demo worker thread panicked")]
    Worker,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct DemoResult {
    /// The provider (`name (origin)`).
    pub provider: String,
    /// Frames placed and verified.
    pub frames: u64,
    /// Bytes placed.
    pub bytes: u64,
    /// Frames split into head + frags (the rest were placed whole in the head buffer).
    pub split: u64,
    /// Frag buffers used.
    pub frag_bufs: u64,
    /// Frames that did not reassemble to what was sent (should be 0).
    pub mismatches: u64,
    /// Times the producer found a pool dry and waited for buffers to come back.
    pub waits: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The head pool at shutdown.
    pub head: PoolReport,
    /// The frag pool at shutdown.
    pub frags: PoolReport,
}

impl DemoResult {
    /// Million frames per second.
    pub fn mpps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Gigabits per second of frame bytes.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// A frame placed in provider memory.
struct Placed {
    index: u32,
    head: PoolBuf,
    head_len: u32,
    frags: ArrayVec<(PoolBuf, u32), MAX_FRAGS>,
}

/// The demo's frames with their L4 split points: the `default` traffic mix, split by
/// the real header walk.
fn frames() -> Vec<(Vec<u8>, usize)> {
    let splitter = crate::wire::Splitter {
        mode: crate::wire::SplitMode::L4,
        fixed_offset: 0,
        hds_threshold: 0,
    };
    crate::traffic::mix("default", 1024)
        .expect("a built-in mix")
        .into_iter()
        .map(|f| {
            let at = splitter.split(&f).head_len;
            (f, at)
        })
        .collect()
}

/// Runs the workload with `plugin` providing both head and frag buffers (separate
/// instances, as two queues' worth of providers would be).
pub fn run(plugin: &ProviderPlugin, opts: &DemoOptions) -> Result<DemoResult, DemoError> {
    let head_provider = plugin.instantiate(&InitParams::new(0, opts.head_size, opts.pool_size))?;
    let frag_provider = plugin.instantiate(&InitParams::new(1, opts.frag_size, opts.pool_size))?;
    let mut head_pool = Pool::new(head_provider, opts.pool_size as usize);
    let mut frag_pool = Pool::new(frag_provider, opts.pool_size as usize);
    let frames = frames();
    let (tx, rx) = sync_channel::<Placed>(256);
    let recyclers = (head_pool.recycler(), frag_pool.recycler());

    let start = Instant::now();
    let consumer = {
        let frames = frames.clone();
        std::thread::spawn(move || consume(rx, &frames, &recyclers))
    };
    let mut result = (0u64, 0u64, 0u64, 0u64);
    let mut failure = None;
    for i in 0..opts.frames {
        let index = (i % frames.len() as u64) as u32;
        let (frame, hdr) = &frames[index as usize];
        match place(
            &mut head_pool,
            &mut frag_pool,
            index,
            frame,
            *hdr,
            opts,
            &mut result.3,
        ) {
            Ok(placed) => {
                result.0 += frame.len() as u64;
                result.1 += u64::from(!placed.frags.is_empty());
                result.2 += placed.frags.len() as u64;
                if tx.send(placed).is_err() {
                    failure = Some(DemoError::Worker);
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let mismatches = consumer.join().map_err(|_| DemoError::Worker)?;
    let elapsed = start.elapsed();
    let head = head_pool.shutdown(Duration::from_secs(1));
    let frags = frag_pool.shutdown(Duration::from_secs(1));
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(DemoResult {
        provider: plugin.label(),
        frames: opts.frames,
        bytes: result.0,
        split: result.1,
        frag_bufs: result.2,
        mismatches,
        waits: result.3,
        elapsed,
        head,
        frags,
    })
}

/// Takes a buffer, waiting (bounded) while the provider is dry and buffers are on their way back.
fn alloc(pool: &mut Pool, waits: &mut u64) -> Result<PoolBuf, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match pool.alloc() {
            Ok(b) => return Ok(b),
            Err(PoolError::Exhausted { .. }) if Instant::now() < deadline => {
                *waits += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(DemoError::Pool(e)),
        }
    }
}

fn place(
    head_pool: &mut Pool,
    frag_pool: &mut Pool,
    index: u32,
    frame: &[u8],
    hdr: usize,
    opts: &DemoOptions,
    waits: &mut u64,
) -> Result<Placed, DemoError> {
    // Like hds-thresh: a frame that fits the head buffer whole is not split.
    let head_len = if frame.len() <= opts.head_size as usize {
        frame.len()
    } else {
        hdr.min(opts.head_size as usize)
    };
    let mut head = alloc(head_pool, waits)?;
    head_pool.place(&mut head, 0, &frame[..head_len])?;
    let mut frags = ArrayVec::new();
    for chunk in frame[head_len..].chunks(opts.frag_size as usize) {
        let mut buf = alloc(frag_pool, waits)?;
        frag_pool.place(&mut buf, 0, chunk)?;
        frags.push((buf, chunk.len() as u32));
    }
    Ok(Placed {
        index,
        head,
        head_len: head_len as u32,
        frags,
    })
}

fn consume(
    rx: std::sync::mpsc::Receiver<Placed>,
    frames: &[(Vec<u8>, usize)],
    recyclers: &(Recycler, Recycler),
) -> u64 {
    let mut mismatches = 0;
    for p in rx {
        let want = &frames[p.index as usize].0;
        let head = p.head.as_slice().map(|m| &m[..p.head_len as usize]);
        let mut ok = head == Some(&want[..p.head_len as usize]);
        let mut at = p.head_len as usize;
        for (buf, len) in &p.frags {
            let len = *len as usize;
            ok &= buf.as_slice().map(|m| &m[..len]) == want.get(at..at + len);
            at += len;
        }
        mismatches += u64::from(!ok || at != want.len());
        let _ = recyclers.0.recycle(p.head);
        for (buf, _) in p.frags {
            let _ = recyclers.1.recycle(buf);
        }
    }
    mismatches
}
