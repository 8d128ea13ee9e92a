//! Placing frames through the real engine (a worker on an in-memory replay queue: l4
//! split, a head buffer and frag buffers from slab pools, one copy per byte, the count
//! sink, buffers recycled after each burst) against a plain memcpy of the same bytes, in
//! the same run. Target (1500 B): placement >= 0.8x memcpy's throughput.
//!
//! All sides read one copy of 8 MiB of distinct frames in turn, as an in-memory replay
//! does; memcpy writes into a ring of about 1 MiB, so neither side works out of a warm
//! L1 alone. The engine's time includes starting and stopping its worker per sample
//! (criterion's `iter_custom`), a fixed cost spread over a million frames or more.
//!
//! A third side, `bare`, does the least work a header split needs, for scale: how far
//! memplex is from the work itself, on the machine at hand (see [`Bare`]).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memplex::config::Config;
use memplex::device::replay::{self, Recorded};
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex_testkit::traffic::{generate, Proto, Shape};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[device]
kind = "pcap"
path = "(in memory)"

[split]
mode = "l4"

[providers.hdr]
plugin = "builtin:slab"
buf_size = 256
pool_size = 1024

[providers.payload]
plugin = "builtin:slab"
buf_size = 2048
pool_size = 4096

[[route]]
head = "hdr"
frags = "payload"
"#;

/// The least work a header split does per frame, written as plainly as it can be: the
/// Ethernet, IPv4 and TCP headers read for where the payload starts; a head buffer and
/// frag buffers popped off plain stacks and filled with one copy per byte; the parts
/// counted and the buffers pushed back after each vector of 8 frames, as the worker
/// does. Frames come straight from memory, with no device poll. No routing table, no
/// pools shared with other threads, no counters but two, none of the checks an
/// untrusted provider needs. `memplex` over `bare` is what memplex costs beyond the
/// work; `bare` over `memcpy` is the most the placement targets could read here.
struct Bare {
    heads: Vec<Box<[u8]>>,
    frags: Vec<Box<[u8]>>,
    /// This vector's parts: head or frag, the buffer, the bytes in it.
    parts: Vec<(bool, Box<[u8]>, usize)>,
    frames: u64,
    bytes: u64,
}

impl Bare {
    /// Frames per vector, as the worker's.
    const VECTOR: usize = 8;

    fn new() -> Bare {
        let bufs = |n, size| (0..n).map(|_| vec![0u8; size].into_boxed_slice()).collect();
        Bare {
            heads: bufs(64, 256),
            frags: bufs(1024, 2048),
            parts: Vec::with_capacity(64 * Self::VECTOR),
            frames: 0,
            bytes: 0,
        }
    }

    /// Where the payload of an untagged IPv4 TCP frame starts; the whole frame for
    /// anything else.
    fn head_len(frame: &[u8]) -> usize {
        let Some(h) = frame.get(..54) else {
            return frame.len();
        };
        if h[12..14] != [0x08, 0x00] || h[14] != 0x45 || h[23] != 6 {
            return frame.len();
        }
        (34 + usize::from(h[46] >> 4) * 4).min(frame.len())
    }

    /// Places `frames` (one vector), counts them, and takes their buffers back.
    fn vector(&mut self, frames: &[Recorded]) {
        for f in frames {
            let f: &[u8] = &f.data;
            let head_len = Self::head_len(f);
            let (mut at, mut head) = (0, true);
            while head || at < f.len() {
                let stack = if head {
                    &mut self.heads
                } else {
                    &mut self.frags
                };
                let Some(mut buf) = stack.pop() else {
                    break;
                };
                let want = if head { head_len } else { f.len() };
                let n = (want - at).min(buf.len());
                buf[..n].copy_from_slice(&f[at..at + n]);
                self.parts.push((head, buf, n));
                at += n;
                head = false;
            }
            self.frames += 1;
        }
        for (head, buf, n) in self.parts.drain(..) {
            self.bytes += n as u64;
            match head {
                true => self.heads.push(buf),
                false => self.frags.push(buf),
            }
        }
    }

    /// Places `n` frames of `frames` from `*at` on, in vectors, wrapping around.
    fn run(&mut self, frames: &[Recorded], at: &mut usize, n: u64) {
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(Self::VECTOR).min(frames.len() - *at);
            self.vector(&frames[*at..*at + k]);
            *at = (*at + k) % frames.len();
            left -= k;
        }
    }
}

/// The memcpy loop: each frame copied once into a ring of about 1 MiB, in turn.
struct Memcpy {
    ring: Vec<Vec<u8>>,
    src: usize,
    dst: usize,
}

impl Memcpy {
    fn new(size: usize) -> Memcpy {
        let depth = ((1 << 20) / size).max(8);
        Memcpy {
            ring: vec![vec![0u8; size]; depth],
            src: 0,
            dst: 0,
        }
    }

    /// Copies the next `n` frames of `frames`.
    fn run(&mut self, frames: &[Recorded], n: u64) {
        for _ in 0..n {
            self.ring[self.dst].copy_from_slice(black_box(&frames[self.src].data[..]));
            black_box(&mut self.ring[self.dst]);
            self.src = (self.src + 1) % frames.len();
            self.dst = (self.dst + 1) % self.ring.len();
        }
    }
}

fn place(c: &mut Criterion) {
    let config = Config::from_toml(CONFIG, "place bench", Default::default(), None).unwrap();
    let engine = Engine::new(config, &PluginPath::from_env()).unwrap();
    for size in [128usize, 1500, 65_535] {
        let frames = generate(Shape {
            frame_size: size,
            flows: ((8 << 20) / size).min(usize::from(u16::MAX)) as u16,
            proto: Proto::Tcp,
            vlan: None,
        })
        .unwrap();
        // One copy of the frames, which all three sides read: the same memory, so
        // where its pages landed in the caches weighs on each side alike.
        let replayed: Arc<[Recorded]> = Recorded::synthetic(frames).into();
        let mut g = c.benchmark_group(format!("place/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function("memplex", |b| {
            b.iter_custom(|iters| {
                let rx = replay::queues("bench", replayed.clone(), 1, u32::MAX, None).unwrap();
                let rx = memplex::device::boxed(rx.into_iter().map(|q| q.limit(iters)));
                let report = engine.run(rx, &RunControl::default()).unwrap();
                assert_eq!(report.total().received.frames, iters);
                assert_eq!(report.total().dropped.sum(), 0);
                report.elapsed.max(Duration::from_nanos(1))
            })
        });
        let mut memcpy = Memcpy::new(size);
        g.bench_function("memcpy", |b| b.iter(|| memcpy.run(&replayed, 1)));
        let mut bare = Bare::new();
        let mut at = 0;
        g.bench_function("bare", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                bare.run(&replayed, &mut at, iters);
                black_box(&mut bare);
                start.elapsed()
            })
        });
        assert_eq!(bare.parts.len(), 0);
        // Every byte of every frame placed once, no buffer short.
        assert_eq!(bare.bytes, bare.frames * size as u64);
        g.finish();
        // The target's ratio, measured in alternating blocks (see `Paired`): `a` places
        // a block of frames through the engine (big enough that starting its worker is
        // a small part), `b` copies as many.
        let block = ((512 << 20) / size) as u64;
        memplex_benches::interleaved(
            &format!("place/{size}/memplex_over_memcpy_throughput"),
            || {
                let rx = replay::queues("bench", replayed.clone(), 1, u32::MAX, None).unwrap();
                let rx = memplex::device::boxed(rx.into_iter().map(|q| q.limit(block)));
                let report = engine.run(rx, &RunControl::default()).unwrap();
                assert_eq!(report.total().received.frames, block);
            },
            || memcpy.run(&replayed, block),
        );
        // How much of the memcpy loop's rate the least work reaches here.
        memplex_benches::interleaved(
            &format!("place/{size}/bare_over_memcpy_throughput"),
            || bare.run(&replayed, &mut at, block),
            || memcpy.run(&replayed, block),
        );
    }
}

criterion_group!(benches, place);
criterion_main!(benches);
