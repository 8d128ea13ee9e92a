//! Fuzzes the config loader: no text may panic it, and a config it accepts compiles and
//! holds numbers in range. The body is `memplex_testkit::fuzz::config`, which the tests
//! also run on every seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memplex_testkit::fuzz::config(data));
