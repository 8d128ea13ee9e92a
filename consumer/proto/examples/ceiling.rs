//! The most any delivery to another process can keep of an in-process sink's rate on
//! this machine: the least work the host side of a delivery does, with none of
//! memplex's bookkeeping, against the same work ending in place.
//!
//! A producer thread on CPU 0 takes a buffer from a free stack, copies a frame into it
//! (from 64 flows of `--size` bytes each) and counts it, a burst of 64 at a time.
//! - **alone**: the burst's buffers go back on the stack at once (the in-process sink).
//! - **pair**: each frame is `--slots` 16-byte entries in a completion ring to a
//!   consumer thread on CPU 1 (the first a descriptor of the buffer, the others standing
//!   for a head inline), published once a burst; the consumer busy-polls, reads every
//!   descriptor and writes its token back through a refill ring in batches of 32; the
//!   producer takes the tokens back onto the stack before each burst. No tables, no
//!   token checks, no metadata. One entry a frame is the least memplex's protocol
//!   carries (a whole frame in one lent buffer); `configs/deliver.toml`'s frames are 5
//!   (a descriptor and three slots for a 42-byte head inline, a payload descriptor).
//!
//! `--checksum`: the sink of the `checksum` pairs. Alone, the producer takes a CRC-32 of
//! each frame it placed, from its buffer; in the pair the consumer does, reading the
//! buffer through its own read-only mapping of the buffers' memfd and asking for the
//! next frame's lines as it takes a frame, as `memplex consume --mode checksum` does.
//!
//! `--in-order`: the consumer gives buffers back in the order it got them, by its
//! completion ring index alone (as an AF_PACKET ring's blocks go back), and writes no
//! tokens: only the completion ring crosses between the cores.
//!
//! `--work N` adds N rounds of dependent arithmetic per frame on the producer in both,
//! to stand for the rest of a host's work (split, route, counters); `--like NS` finds
//! the N that makes the producer alone take about NS nanoseconds a frame (the in-process
//! sink's, from `memplex bench`). The out-of-order core can overlap that arithmetic with
//! the ring's misses, so the ratio is a ceiling, not an estimate. Rounds alternate alone
//! and pair; the medians of each and of the per-pair ratios are printed (`--json`: one
//! object), with the producer's extra nanoseconds a frame in the pair.
//!
//! `cargo run --release -p memplex-proto --example ceiling -- [--size 64] [--slots 1]
//! [--work N | --like NS] [--rounds 5] [--in-order] [--checksum] [--json]`
#![allow(
    unsafe_code,
    reason = "the buffers' memfd mapped twice, for the producer to write and the consumer to read"
)]
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
/// A round of the search for `--like`'s work.
const PROBE: Duration = Duration::from_millis(60);

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// The buffers' memory: a memfd, mapped for the producer to write and, apart, for the
/// consumer to read.
fn arena() -> (memmap2::MmapMut, memmap2::Mmap) {
    let fd = rustix::fs::memfd_create("ceiling", rustix::fs::MemfdFlags::CLOEXEC).expect("a memfd");
    let file = std::fs::File::from(fd);
    file.set_len((BUF * BUFS) as u64).expect("sized");
    // SAFETY: the memfd is this process's alone and never resized. The producer writes a
    // buffer only while no descriptor of it is out (before the release store that
    // publishes it, after the acquire load that saw its token come back); the consumer
    // reads it only in between, so the two mappings never touch the same bytes at once.
    unsafe {
        (
            memmap2::MmapMut::map_mut(&file).expect("mapped for writing"),
            memmap2::Mmap::map(&file).expect("mapped for reading"),
        )
    }
}

/// The producer's side of either round: buffers, frames, counters.
struct Host {
    arena: memmap2::MmapMut,
    /// Alone with `--checksum`: a CRC-32 of each frame placed, from its buffer.
    checksum: bool,
    digest: u32,
    free: Vec<u32>,
    frames: Vec<Vec<u8>>,
    next: usize,
    work: u32,
    frames_done: u64,
    bytes: u64,
    mix: u64,
}

impl Host {
    fn new(size: usize, work: u32, arena: memmap2::MmapMut, checksum: bool) -> Host {
        let frames = (0..64u8)
            .map(|f| (0..size).map(|i| (i as u8).wrapping_mul(31) ^ f).collect())
            .collect();
        Host {
            arena,
            checksum,
            digest: 0,
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
        if self.checksum {
            let crc = crc32fast::hash(&self.arena[at..at + frame.len()]);
            self.digest = self.digest.wrapping_add(crc);
        }
        self.frames_done += 1;
        self.bytes += frame.len() as u64;
        for _ in 0..self.work {
            self.mix = self.mix.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(7);
        }
        (id, frame.len())
    }
}

/// Frames a second placed and given back in place.
fn alone(size: usize, work: u32, checksum: bool, round: Duration) -> f64 {
    pin(0);
    let mut host = Host::new(size, work, arena().0, checksum);
    let mut ids = [0u32; BURST];
    let start = Instant::now();
    while start.elapsed() < round {
        for _ in 0..256 {
            for id in &mut ids {
                *id = host.place().0;
            }
            host.free.extend(ids.iter().rev());
        }
    }
    std::hint::black_box((host.mix, host.bytes, host.digest));
    host.frames_done as f64 / start.elapsed().as_secs_f64()
}

/// Frames a second placed and handed to a consumer thread, and the consumer's empty
/// polls a frame.
fn pair(size: usize, work: u32, slots: usize, in_order: bool, checksum: bool) -> (f64, f64) {
    let step = slots as u32;
    let (arena, view) = arena();
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
                let mut i = 0;
                while i < n {
                    let d = rx.read::<Desc>(i);
                    i += step;
                    seen += u64::from(d.len());
                    if checksum {
                        let bytes = |d: Desc| {
                            let at = d.offset() as usize;
                            view.get(at..at + d.len() as usize).unwrap_or_default()
                        };
                        if i < n {
                            let next = rx.read::<Desc>(i);
                            memplex_proto::ring::prefetch_bytes_to_l2(bytes(next));
                        }
                        seen += u64::from(crc32fast::hash(bytes(d)));
                    }
                    if in_order {
                        // Given back by the ring's index alone.
                        continue;
                    }
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
    let mut host = Host::new(size, work, arena, false);
    let mut tx = Producer::new(map.ring(RingKind::Completion));
    let mut back = Consumer::new(map.ring(RingKind::Refill));
    let mut stage = vec![Desc::default(); BURST * slots];
    // With `in_order`, the buffers lent, oldest first.
    let mut lent = std::collections::VecDeque::with_capacity(ENTRIES as usize);
    let start = Instant::now();
    let mut bursts = 0u64;
    while !bursts.is_multiple_of(256) || start.elapsed() < ROUND {
        if in_order {
            tx.free().expect("an honest consumer");
            let out = (tx.in_flight() / step) as usize;
            while lent.len() > out {
                host.free.extend(lent.pop_front());
            }
        } else {
            let n = back.available().expect("an honest consumer");
            for i in 0..n {
                host.free.push(back.read::<u64>(i) as u32);
            }
            back.release(n);
        }
        if host.free.len() < BURST || !tx.has_room(0, (BURST * slots) as u32).expect("honest") {
            std::hint::spin_loop();
            continue;
        }
        for d in stage.chunks_mut(slots) {
            let (id, len) = host.place();
            let token = Token {
                id,
                generation: 1,
                region: 1,
            };
            d[0] = Desc::part(token, u64::from(id) * BUF as u64, len as u32, false);
            if in_order {
                lent.push_back(id);
            }
        }
        tx.write_staged(0, zerocopy::IntoBytes::as_bytes(&stage[..]));
        tx.publish((BURST * slots) as u32);
        tx.prefetch(0, (BURST * slots) as u32);
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

/// The work a frame that makes the producer alone take about `ns` a frame: a bisection
/// over short rounds (time falls as work rises, give or take the noise).
fn calibrate(size: usize, ns: f64, checksum: bool) -> u32 {
    let at = |work| 1e9 / alone(size, work, checksum, PROBE);
    let (mut lo, mut hi) = (0u32, 1u32);
    while at(hi) < ns && hi < 1 << 16 {
        (lo, hi) = (hi, hi * 2);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at(mid) < ns {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

struct Args {
    size: usize,
    slots: usize,
    work: Option<u32>,
    like: Option<f64>,
    rounds: usize,
    json: bool,
    in_order: bool,
    checksum: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        size: 64,
        slots: 1,
        work: None,
        like: None,
        rounds: 5,
        json: false,
        in_order: false,
        checksum: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--json" => a.json = true,
            "--in-order" => a.in_order = true,
            "--checksum" => a.checksum = true,
            _ => {}
        }
        if matches!(flag.as_str(), "--json" | "--in-order" | "--checksum") {
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value}: not {what}");
        match flag.as_str() {
            "--size" => {
                a.size = value
                    .parse()
                    .ok()
                    .filter(|n| (16..=BUF).contains(n))
                    .ok_or(bad(&format!("a frame size of 16 to {BUF} bytes")))?;
            }
            "--slots" => {
                a.slots = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or(bad("1 to 64 entries"))?;
            }
            "--work" => a.work = Some(value.parse().map_err(|_| bad("a number of rounds"))?),
            "--like" => {
                a.like = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&x: &f64| x > 0.0 && x < 1e6)
                        .ok_or(bad("a time a frame in ns"))?,
                );
            }
            "--rounds" => {
                a.rounds = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(bad("a positive number of rounds"))?;
            }
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    if a.work.is_some() && a.like.is_some() {
        return Err("--work and --like are one or the other".into());
    }
    Ok(a)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ceiling: {e}\nusage: ceiling [--size 64] [--slots 1] [--work N | --like NS] [--rounds 5] [--in-order] [--checksum] [--json]");
            std::process::exit(2);
        }
    };
    let work = match (a.work, a.like) {
        (Some(w), _) => w,
        (None, Some(ns)) => calibrate(a.size, ns, a.checksum),
        (None, None) => 0,
    };
    let (mut alone_rates, mut pair_rates, mut ratios, mut idle) = (vec![], vec![], vec![], vec![]);
    for _ in 0..a.rounds {
        let one = alone(a.size, work, a.checksum, ROUND);
        let (two, empty) = pair(a.size, work, a.slots, a.in_order, a.checksum);
        alone_rates.push(one);
        pair_rates.push(two);
        ratios.push(two / one);
        idle.push(empty);
    }
    let (one, two) = (median(&mut alone_rates), median(&mut pair_rates));
    let (ratio, idle) = (median(&mut ratios), median(&mut idle));
    let (size, slots, rounds) = (a.size, a.slots, a.rounds);
    if a.json {
        println!(
            "{{\"size\": {size}, \"slots\": {slots}, \"in_order\": {}, \"checksum\": {}, \"work\": {work}, \"rounds\": {rounds}, \"alone_ns\": {:.2}, \"pair_ns\": {:.2}, \"ratio\": {ratio:.4}, \"consumer_idle\": {idle:.3}}}",
            a.in_order,
            a.checksum,
            1e9 / one,
            1e9 / two
        );
        return;
    }
    println!(
        "{rounds} pairs of {ROUND:?} rounds, {size} B frames, {slots} ring entries a frame{}, {work} rounds of arithmetic a frame; producer CPU 0, consumer CPU 1; medians",
        match (a.in_order, a.checksum) {
            (false, false) => "",
            (true, false) => ", given back in order",
            (false, true) => ", each checksummed",
            (true, true) => ", each checksummed, given back in order",
        }
    );
    println!(
        "alone (in place):     {:6.2} Mpps ({:.1} ns a frame)",
        one / 1e6,
        1e9 / one
    );
    println!(
        "pair (to CPU 1):      {:6.2} Mpps ({:.1} ns a frame)",
        two / 1e6,
        1e9 / two
    );
    println!("pair / alone:         {ratio:6.3} (median of the per-pair ratios)");
    println!("extra a frame:        {:6.1} ns", 1e9 / two - 1e9 / one);
    println!("consumer idle/frame:  {idle:6.2}");
}
