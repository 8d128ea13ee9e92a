//! The pool's fast path (alloc + recycle of one buffer from the per-queue cache) against
//! one uncontended atomic fetch_add, in the same run. Targets: <= 1.0x the atomic, and
//! <= 0.3x per buffer in bursts of 32 (the burst API, as a device's fill ring takes one
//! pool's buffers). The slow path (a bulk provider call per 64 buffers) is measured
//! beside it.

use criterion::{criterion_group, criterion_main, Criterion};
use memplex::pool::Pool;
use memplex::provider::ProviderPlugin;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

fn fast_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_fast_path");
    let counter = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| {
        b.iter(|| black_box(&counter).fetch_add(1, Ordering::Relaxed))
    });

    let provider = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&memplex_benches::params())
        .unwrap();
    let mut pool = Pool::new(provider, 1024);
    let warm = pool.alloc().unwrap();
    pool.recycle(warm).unwrap();
    g.bench_function("alloc_recycle", |b| {
        b.iter(|| {
            let buf = pool.alloc().unwrap();
            pool.recycle(black_box(buf)).unwrap();
        })
    });
    // The fast path alone, as the worker's placement takes it (the slow path is its
    // own call when the cache is empty).
    g.bench_function("alloc_cached_recycle", |b| {
        b.iter(|| {
            let buf = match pool.alloc_cached() {
                Some(b) => b,
                None => pool.alloc().unwrap(),
            };
            pool.recycle(black_box(buf)).unwrap();
        })
    });
    // The target's ratio, measured in alternating blocks (see `Paired`).
    memplex_benches::interleaved(
        "pool_fast_path/alloc_recycle_over_atomic",
        || {
            black_box(black_box(&counter).fetch_add(1, Ordering::Relaxed));
        },
        || {
            let buf = pool.alloc().unwrap();
            pool.recycle(black_box(buf)).unwrap();
        },
    );
    // A burst of 32 allocations, then 32 recycles, as a receive poll does: per buffer.
    g.throughput(criterion::Throughput::Elements(32));
    let mut burst = arrayvec::ArrayVec::<memplex::pool::PoolBuf, 32>::new();
    g.bench_function("alloc_recycle_burst32", |b| {
        b.iter(|| {
            for _ in 0..32 {
                burst.push(pool.alloc().unwrap());
            }
            black_box(&mut burst);
            for buf in burst.drain(..) {
                pool.recycle(buf).unwrap();
            }
        })
    });
    // The same burst through the burst API, as a device's fill ring takes buffers of
    // one pool: one copy of each cache array off the cache and one back, one pool check
    // and one count update each way.
    let mut bufs = pool.burst(32);
    g.bench_function("alloc_recycle_burst32_bulk", |b| {
        b.iter(|| {
            pool.alloc_burst(32, &mut bufs).unwrap();
            black_box(&mut bufs);
            pool.recycle_burst(&mut bufs).unwrap();
        })
    });
    // The target's ratio per buffer, in alternating blocks: 32 atomic adds against one
    // burst of 32 there and back.
    memplex_benches::interleaved(
        "pool_fast_path/burst32_per_buffer_over_atomic",
        || {
            for _ in 0..32 {
                black_box(black_box(&counter).fetch_add(1, Ordering::Relaxed));
            }
        },
        || {
            pool.alloc_burst(32, &mut bufs).unwrap();
            black_box(&mut bufs);
            pool.recycle_burst(&mut bufs).unwrap();
        },
    );
    g.finish();

    // The slow path: cache empty, every 64th alloc is a bulk provider call and the cache
    // overflows into the ring. Measured per buffer over a batch of 256.
    let mut g = c.benchmark_group("pool_slow_path");
    g.throughput(criterion::Throughput::Elements(256));
    let provider = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&memplex_benches::params())
        .unwrap();
    let mut pool = Pool::new(provider, 64);
    let mut held = Vec::with_capacity(256);
    g.bench_function("alloc_256_then_recycle", |b| {
        b.iter(|| {
            held.extend((0..256).map(|_| pool.alloc().unwrap()));
            for buf in held.drain(..) {
                pool.recycle(buf).unwrap();
            }
        })
    });
    g.finish();
    let _ = pool.shutdown(std::time::Duration::ZERO);
}

criterion_group!(benches, fast_path);
criterion_main!(benches);
