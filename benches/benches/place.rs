//! Placing frames through the real engine (a worker on an in-memory replay queue: l4
//! split, a head buffer and frag buffers from slab pools, one copy per byte, the count
//! sink, buffers recycled after each burst) against a plain memcpy of the same bytes, in
//! the same run. Target (1500 B): placement >= 0.8x memcpy's throughput.
//!
//! Both sides read the same 8 MiB of distinct frames in turn, as an in-memory replay
//! does; memcpy writes into a ring of about 1 MiB, so neither side works out of a warm
//! L1 alone. The engine's time includes starting and stopping its worker per sample
//! (criterion's `iter_custom`), a fixed cost spread over a million frames or more.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memplex::config::Config;
use memplex::device::replay::{self, Recorded};
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl};
use memplex_testkit::traffic::{generate, Proto, Shape};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

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

fn place(c: &mut Criterion) {
    let config = Config::from_toml(CONFIG, "place bench", Default::default(), None).unwrap();
    let engine = Engine::new(config, &PluginPath::from_env()).unwrap();
    for size in [1500usize, 65_535] {
        let frames = generate(Shape {
            frame_size: size,
            flows: ((8 << 20) / size) as u16,
            proto: Proto::Tcp,
            vlan: None,
        })
        .unwrap();
        let replayed: Arc<[Recorded]> = Recorded::synthetic(frames.clone()).into();
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
        let depth = ((1 << 20) / size).max(8);
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
            || {
                for _ in 0..block {
                    ring[dst].copy_from_slice(black_box(&frames[src][..]));
                    black_box(&mut ring[dst]);
                    src = (src + 1) % frames.len();
                    dst = (dst + 1) % depth;
                }
            },
        );
    }
}

criterion_group!(benches, place);
criterion_main!(benches);
