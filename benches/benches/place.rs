//! Placing frames as the receive path does (l4 split, a head buffer and frag buffers from
//! pools, one copy per byte, buffers recycled when the consumer is done) against a plain
//! memcpy of the same bytes, in the same run. Target (1500 B): placement >= 0.8x memcpy's
//! throughput.
//!
//! Both sides read the same 8 MiB of distinct frames in turn, as an in-memory replay does,
//! and write into a working set of the same size (about 1 MiB in flight: the frames the
//! pool has handed out and not yet got back, or a ring of plain buffers for memcpy), so
//! neither side gets to work out of a warm L1 alone.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memplex::pool::{Pool, PoolBuf};
use memplex::provider::{InitParams, ProviderPlugin};
use memplex::traffic::{generate, Proto, Shape};
use memplex::wire::{SplitMode, Splitter};
use std::collections::VecDeque;
use std::hint::black_box;

const FRAG: usize = 2048;

fn pool(buf_size: u32, pool_size: u32) -> Pool {
    let p = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&InitParams::new(0, buf_size, pool_size))
        .unwrap();
    Pool::new(p, 1024)
}

fn place(c: &mut Criterion) {
    let splitter = Splitter {
        mode: SplitMode::L4,
        fixed_offset: 0,
        hds_threshold: 0,
    };
    for size in [1500usize, 65_535] {
        let frames = generate(Shape {
            frame_size: size,
            flows: ((8 << 20) / size) as u16,
            proto: Proto::Tcp,
            vlan: None,
        })
        .unwrap();
        let depth = ((1 << 20) / size).max(8);
        let per_frame = size.div_ceil(FRAG) + 1;
        let (mut heads, mut frags) = (
            pool(256, depth as u32),
            pool(FRAG as u32, (depth * per_frame) as u32),
        );
        // Buffers in flight, oldest first, flat (as a receive ring holds them), and how
        // many belong to each frame.
        let mut in_flight: VecDeque<(usize, PoolBuf)> = VecDeque::with_capacity(depth * per_frame);
        let mut counts: VecDeque<usize> = VecDeque::with_capacity(depth);
        let mut g = c.benchmark_group(format!("place/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut next = 0;
        let mut s = memplex::wire::Split::default();
        g.bench_function("memplex", |b| {
            b.iter(|| {
                let frame = black_box(&frames[next][..]);
                next = (next + 1) % frames.len();
                if counts.len() == depth {
                    for _ in 0..counts.pop_front().unwrap() {
                        let (p, buf) = in_flight.pop_front().unwrap();
                        [&mut heads, &mut frags][p].recycle(buf).unwrap();
                    }
                }
                splitter.split_into(frame, &mut s);
                let mut head = heads.alloc().unwrap();
                heads.place(&mut head, 0, &frame[..s.head_len]).unwrap();
                in_flight.push_back((0, head));
                let mut n = 1;
                for chunk in frame[s.head_len..].chunks(FRAG) {
                    let mut buf = frags.alloc().unwrap();
                    frags.place(&mut buf, 0, chunk).unwrap();
                    in_flight.push_back((1, buf));
                    n += 1;
                }
                counts.push_back(n);
            })
        });
        let mut ring = vec![vec![0u8; size]; depth];
        let (mut src, mut dst) = (0, 0);
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                ring[dst].copy_from_slice(black_box(&frames[src][..]));
                black_box(&mut ring[dst]);
                src = (src + 1) % frames.len();
                dst = (dst + 1) % depth;
            })
        });
        g.finish();
    }
}

criterion_group!(benches, place);
criterion_main!(benches);
