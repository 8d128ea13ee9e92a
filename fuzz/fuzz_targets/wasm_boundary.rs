//! Fuzzes the WASM boundary: descriptor batches and release verdicts from a guest, all
//! chosen by the fuzzer (`fuzz/guests/replay.wat` replays them). The body is
//! `memplex_testkit::fuzz::wasm_boundary`, which the tests also run on every seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memplex_testkit::fuzz::wasm_boundary(data));
