//! alloc_bulk + release_bulk of 64 through each shipped provider, linked statically
//! (built-in) and loaded as a `.so`, in the same run. Target: `.so` <= 1.1x built-in.
//! Both are measured through the same `Box<dyn MemoryProvider>`, without the host's
//! descriptor checks, so the difference is the plugin boundary alone; a third line adds
//! the checks (`CheckedProvider`) to the `.so` to show what they cost.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memplex::provider::Netmem;
use std::hint::black_box;

fn bulk64(c: &mut Criterion) {
    for name in memplex_benches::PROVIDERS {
        let (builtin, native) = memplex_benches::both(name);
        let mut g = c.benchmark_group(format!("bulk64/{name}"));
        g.throughput(Throughput::Elements(64));
        for (label, plugin) in [("builtin", &builtin), ("so", &native)] {
            let mut p = plugin
                .instantiate_unchecked(&memplex_benches::params())
                .unwrap();
            let mut out = [Netmem::EMPTY; 64];
            g.bench_function(label, |b| {
                b.iter(|| {
                    let n = p.alloc_bulk(black_box(&mut out)).unwrap();
                    p.release_bulk(black_box(&out[..n])).unwrap();
                })
            });
        }
        let mut checked = native.instantiate(&memplex_benches::params()).unwrap();
        let mut out = [Netmem::EMPTY; 64];
        g.bench_function("so_checked", |b| {
            b.iter(|| {
                let n = checked.alloc_bulk(black_box(&mut out)).unwrap();
                checked.release_bulk(black_box(&out[..n]));
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bulk64);
criterion_main!(benches);
