//! Criterion benchmarks for memplex; see `benches/`.
