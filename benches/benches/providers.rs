//! alloc_bulk + release_bulk of 64 through each shipped provider, linked statically
//! (built-in) and loaded as a `.so`, in the same run. Target: `.so` <= 1.1x built-in.
//! Both are measured through the same `Box<dyn MemoryProvider>`, without the host's
//! descriptor checks, so the difference is the plugin boundary alone; a third line adds
//! the checks (`CheckedProvider`) to the `.so` to show what they cost.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memplex::provider::Netmem;
use std::hint::black_box;

/// One alloc_bulk + release_bulk of 64 through `p`.
fn round(p: &mut dyn memplex::provider::MemoryProvider, out: &mut [Netmem; 64]) {
    let n = p.alloc_bulk(black_box(out)).unwrap();
    p.release_bulk(black_box(&out[..n])).unwrap();
}

/// Times [`round`] through `p` as benchmark `label` in `g`.
fn bench_bulk(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    p: &mut dyn memplex::provider::MemoryProvider,
) {
    let mut out = [Netmem::EMPTY; 64];
    g.bench_function(label, |b| b.iter(|| round(p, &mut out)));
}

fn bulk64(c: &mut Criterion) {
    for name in memplex_benches::PROVIDERS {
        let (builtin, native) = memplex_benches::both(name);
        let mut g = c.benchmark_group(format!("bulk64/{name}"));
        g.throughput(Throughput::Elements(64));
        let mut pb = builtin
            .instantiate_unchecked(&memplex_benches::params())
            .unwrap();
        let mut ps = native
            .instantiate_unchecked(&memplex_benches::params())
            .unwrap();
        bench_bulk(&mut g, "builtin", &mut *pb);
        bench_bulk(&mut g, "so", &mut *ps);
        let mut checked = native.instantiate(&memplex_benches::params()).unwrap();
        let mut out = [Netmem::EMPTY; 64];
        g.bench_function("so_checked", |b| {
            b.iter(|| {
                let n = checked.alloc_bulk(black_box(&mut out)).unwrap();
                checked.release_bulk(black_box(&out[..n]));
            })
        });
        g.finish();
        // The target's ratio, measured in alternating blocks (see `Paired`).
        let (mut ob, mut os) = ([Netmem::EMPTY; 64], [Netmem::EMPTY; 64]);
        memplex_benches::interleaved(
            &format!("bulk64/{name}/so_over_builtin"),
            || round(&mut *pb, &mut ob),
            || round(&mut *ps, &mut os),
        );
    }
}

criterion_group!(benches, bulk64);
criterion_main!(benches, wasm);

/// alloc_bulk + release_bulk of 64 through `slab.wasm` against the native `slab.so` (the
/// same LIFO strategy), with two bare wasmtime typed calls, the floor a bulk round
/// cannot go under, in the same run. Target: WASM <= 2x the native `.so` per buffer.
fn wasm_vs_native(c: &mut Criterion) {
    let path = memplex::provider::PluginPath::from_env();
    let native = memplex::provider::ProviderPlugin::load("slab", &path)
        .expect("slab.so (run `cargo xtask bench`)");
    let wasm = memplex::provider::ProviderPlugin::load("slab.wasm", &path)
        .expect("slab.wasm (run `cargo xtask bench`)");
    let ring = memplex::provider::ProviderPlugin::load("ring.wasm", &path)
        .expect("ring.wasm (run `cargo xtask bench`)");
    let mut g = c.benchmark_group("wasm_vs_native");
    g.throughput(Throughput::Elements(64));
    let params = memplex_benches::params();
    let mut so = native.instantiate_unchecked(&params).unwrap();
    let mut sandboxed = wasm.instantiate_unchecked(&params).unwrap();
    let mut fifo = ring.instantiate_unchecked(&params).unwrap();
    bench_bulk(&mut g, "so", &mut *so);
    bench_bulk(&mut g, "wasm", &mut *sandboxed);
    bench_bulk(&mut g, "ring_wasm", &mut *fifo);
    // The floor: two calls into a guest that returns at once (alloc and release).
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let module = wasmtime::Module::new(
        &engine,
        r#"(module (func (export "f") (param i32 i32) (result i32) local.get 1))"#,
    )
    .unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let f = instance
        .get_typed_func::<(i32, i32), i32>(&mut store, "f")
        .unwrap();
    g.bench_function("bare_typed_call_x2", |b| {
        b.iter(|| {
            black_box(f.call(&mut store, (1024, 64)).unwrap());
            black_box(f.call(&mut store, (1024, 64)).unwrap())
        })
    });
    g.finish();
    let (mut on, mut ow) = ([Netmem::EMPTY; 64], [Netmem::EMPTY; 64]);
    memplex_benches::interleaved(
        "wasm_vs_native/wasm_over_so",
        || round(&mut *so, &mut on),
        || round(&mut *sandboxed, &mut ow),
    );
}

criterion_group!(wasm, wasm_vs_native);
