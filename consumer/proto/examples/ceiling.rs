//! The most any delivery to another process can keep of an in-process sink's rate on
//! this machine: the least work the host side of a delivery does, with none of
//! memplex's bookkeeping, against the same work ending in place.
//!
//! A producer thread on CPU 0 takes a buffer from a free stack, copies a frame into it
//! (from 64 flows of `SIZE` bytes each) and counts it, a burst of 64 at a time.
//! - **alone**: the burst's buffers go back on the stack at once (the in-process sink).
//! - **pair**: each frame is one 16-byte descriptor in a completion ring to a consumer
//!   thread on CPU 1, published once a burst; the consumer busy-polls, reads every
//!   descriptor and writes its token back through a refill ring in batches of 32; the
//!   producer takes the tokens back onto the stack before each burst. No tables, no
//!   token checks, no metadata: one descriptor and one token a frame, the least
//!   memplex's protocol carries (a whole frame in one lent buffer).
//!
//! `WORK` adds that many rounds of dependent arithmetic per frame on the producer in
//! both, to stand for the rest of a host's work (split, route, counters): the out-of-
//! order core can overlap them with the ring's misses, so the ratio it gives is a
//! ceiling, not an estimate. Rounds alternate alone and pair; the medians of each and
//! of the per-pair ratios are printed, with the producer's extra nanoseconds a frame
//! in the pair.
//!
//! `cargo run --release -p memplex-proto --example ceiling [SIZE] [WORK] [ROUNDS]`
use memplex_proto::layout::{Desc, RingKind, Token};
use memplex_proto::ring::{ChannelMap, Consumer, Producer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BURST: usize = 64;
const BUF: usize = 2048;
const BUFS: usize = 4096;
const ENTRIES: u32 = 4096;
const REFILL_BATCH: u32 = 32;
const ROUND: Duration = Duration::from_millis(500);

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// The producer's side of either round: buffers, frames, counters.
struct Host {
    arena: Vec<u8>,
    free: Vec<u32>,
    frames: Vec<Vec<u8>>,
    next: usize,
    work: u32,
    frames_done: u64,
    bytes: u64,
    mix: u64,
}

impl Host {
    fn new(size: usize, work: u32) -> Host {
        let frames = (0..64u8)
            .map(|f| (0..size).map(|i| (i as u8).wrapping_mul(31) ^ f).collect())
            .collect();
        Host {
            arena: vec![0; BUF * BUFS],
            free: (0..BUFS as u32).rev().collect(),
            frames,
            next: 0,
            work,
            frames_done: 0,
            bytes: 0,
            mix: 1,
        }
    }

    /// Places the next frame in a buffer from the stack; its id and length.
    #[inline]
    fn place(&mut self) -> (u32, usize) {
        let id = self.free.pop().expect("a free buffer");
        let frame = &self.frames[self.next];
        self.next = (self.next + 1) % self.frames.len();
        let at = id as usize * BUF;
        self.arena[at..at + frame.len()].copy_from_slice(frame);
        self.frames_done += 1;
        self.bytes += frame.len() as u64;
        for _ in 0..self.work {
            self.mix = self.mix.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(7);
        }
        (id, frame.len())
    }
}

/// Frames a second placed and given back in place.
fn alone(size: usize, work: u32) -> f64 {
    pin(0);
    let mut host = Host::new(size, work);
    let mut ids = [0u32; BURST];
    let start = Instant::now();
    while start.elapsed() < ROUND {
        for _ in 0..256 {
            for id in &mut ids {
                *id = host.place().0;
            }
            host.free.extend(ids.iter().rev());
        }
    }
    std::hint::black_box((host.mix, host.bytes));
    host.frames_done as f64 / start.elapsed().as_secs_f64()
}

/// Frames a second placed and handed to a consumer thread, and the consumer's empty
/// polls a frame.
fn pair(size: usize, work: u32) -> (f64, f64) {
    let (map, fd) = ChannelMap::create(0, ENTRIES, ENTRIES, 0, false).expect("a channel");
    let map = Arc::new(map);
    let peer = Arc::new(ChannelMap::open(fd, map.len()).expect("mapped"));
    let stop = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (stop, idle) = (Arc::clone(&stop), Arc::clone(&idle));
        std::thread::spawn(move || {
            pin(1);
            let mut rx = Consumer::new(peer.ring(RingKind::Completion));
            let mut back = Producer::new(peer.ring(RingKind::Refill));
            let (mut pending, mut empty, mut seen) = (0u32, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let n = rx.ready().expect("an honest producer");
                if n == 0 {
                    empty += 1;
                    if pending > 0 {
                        back.publish(pending);
                        pending = 0;
                    }
                    rx.sync();
                    std::hint::spin_loop();
                    continue;
                }
                for i in 0..n {
                    let d = rx.read::<Desc>(i);
                    seen += u64::from(d.len());
                    while !back.has_room(pending, 1).expect("an honest host") {
                        std::hint::spin_loop();
                    }
                    back.write(pending, &d.token);
                    pending += 1;
                    if pending == REFILL_BATCH {
                        back.publish(pending);
                        pending = 0;
                    }
                }
                rx.release_lazily(n);
            }
            idle.store(empty, Ordering::Relaxed);
            seen
        })
    };
    pin(0);
    let mut host = Host::new(size, work);
    let mut tx = Producer::new(map.ring(RingKind::Completion));
    let mut back = Consumer::new(map.ring(RingKind::Refill));
    let mut stage = [Desc::default(); BURST];
    let start = Instant::now();
    let mut bursts = 0u64;
    while !bursts.is_multiple_of(256) || start.elapsed() < ROUND {
        let n = back.available().expect("an honest consumer");
        for i in 0..n {
            host.free.push(back.read::<u64>(i) as u32);
        }
        back.release(n);
        if host.free.len() < BURST || !tx.has_room(0, BURST as u32).expect("honest") {
            std::hint::spin_loop();
            continue;
        }
        for d in &mut stage {
            let (id, len) = host.place();
            let token = Token {
                id,
                generation: 1,
                region: 1,
            };
            *d = Desc::part(token, u64::from(id) * BUF as u64, len as u32, false);
        }
        tx.write_staged(0, zerocopy::IntoBytes::as_bytes(&stage[..]));
        tx.publish(BURST as u32);
        tx.prefetch(0, BURST as u32);
        bursts += 1;
    }
    let rate = host.frames_done as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let seen = consumer.join().expect("the consumer");
    std::hint::black_box((host.mix, seen));
    (
        rate,
        idle.load(Ordering::Relaxed) as f64 / host.frames_done as f64,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (size, work, rounds) = (arg(1, 64) as usize, arg(2, 0) as u32, arg(3, 7) as usize);
    assert!((16..=BUF).contains(&size), "SIZE is 16 to {BUF} bytes");
    let (mut a, mut p, mut r, mut idle) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds.max(1) {
        let one = alone(size, work);
        let (two, empty) = pair(size, work);
        a.push(one);
        p.push(two);
        r.push(two / one);
        idle.push(empty);
    }
    let (a, p) = (median(&mut a), median(&mut p));
    println!(
        "{rounds} pairs of {ROUND:?} rounds, {size} B frames, {work} rounds of arithmetic a frame; producer CPU 0, consumer CPU 1; medians"
    );
    println!(
        "alone (in place):     {:6.2} Mpps ({:.1} ns a frame)",
        a / 1e6,
        1e9 / a
    );
    println!(
        "pair (to CPU 1):      {:6.2} Mpps ({:.1} ns a frame)",
        p / 1e6,
        1e9 / p
    );
    println!(
        "pair / alone:         {:6.3} (median of the per-pair ratios)",
        median(&mut r)
    );
    println!("extra a frame:        {:6.1} ns", 1e9 / p - 1e9 / a);
    println!("consumer idle/frame:  {:6.2}", median(&mut idle));
}
