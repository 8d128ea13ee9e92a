//! The completion ring's ceiling on this machine: frames of two 16-byte descriptors (a
//! head and a payload part) from a producer thread on CPU 0 to a consumer thread on
//! CPU 1, published in batches of 8 frames and released lazily, as the delivery path
//! uses the ring, with nothing else done per frame. Rounds
//! alternate between a consumer that reads each entry and one that only moves its index
//! (the cost of the cache lines crossing cores is the difference); medians are printed.
//!
//! `cargo run --release -p memplex-proto --example ringspeed [ROUNDS]`
use memplex_proto::layout::{Desc, RingKind, Token};
use memplex_proto::ring::{ChannelMap, Consumer, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRIES: u32 = 4096;
const BATCH: u32 = 8;
const ROUND: Duration = Duration::from_millis(500);

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// Frames per second through one fresh channel.
fn round(read: bool) -> f64 {
    let (map, fd) = ChannelMap::create(0, ENTRIES, 16, 0, false).expect("a channel");
    let map = Arc::new(map);
    let peer = Arc::new(ChannelMap::open(fd, map.len()).expect("mapped"));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let consumer = std::thread::spawn(move || {
        pin(1);
        let mut rx = Consumer::new(peer.ring(RingKind::Completion));
        let mut sum = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if rx.ready().expect("an honest producer") == 0 {
                std::hint::spin_loop();
                continue;
            }
            if read {
                let d = rx.read::<Desc>(0);
                sum = sum.wrapping_add(d.token);
                if d.more() {
                    sum = sum.wrapping_add(rx.read::<Desc>(1).token);
                }
                rx.release_lazily(1 + u32::from(d.more()));
            } else {
                rx.release_lazily(2);
            }
        }
        sum
    });
    pin(0);
    let mut tx = Producer::new(map.ring(RingKind::Completion));
    let (start, mut seq, mut pending) = (Instant::now(), 0u64, 0);
    while start.elapsed() < ROUND {
        for _ in 0..1024 {
            while !tx.has_room(pending, 2).expect("an honest consumer") {
                tx.publish(pending);
                pending = 0;
                std::hint::spin_loop();
            }
            let token = Token {
                region: 1,
                generation: 1,
                id: seq as u32,
            };
            tx.write(pending, &Desc::part(token, 0, 54, true));
            tx.write(pending + 1, &Desc::part(token, 2048, 10, false));
            (pending, seq) = (pending + 2, seq + 1);
            if pending == 2 * BATCH {
                tx.publish(pending);
                pending = 0;
            }
        }
    }
    let rate = seq as f64 / start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = consumer.join();
    rate
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let (mut read, mut index_only) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        read.push(round(true));
        index_only.push(round(false));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] / 1e6
    };
    let (r, i) = (median(&mut read), median(&mut index_only));
    println!("{rounds} rounds of {ROUND:?}, {ENTRIES}-entry ring, batches of {BATCH}, producer CPU 0, consumer CPU 1");
    println!("frames read:         {r:.1} M/s ({:.1} ns each)", 1e3 / r);
    println!("index moved only:    {i:.1} M/s ({:.1} ns each)", 1e3 / i);
    println!("reading / not:       {:.2}", r / i);
}
