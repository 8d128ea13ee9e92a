//! Fuzzes a worker's delivery against a consumer that does what the input says: reads,
//! gives tokens back (twice, made up), sends frames (with entries that break the rules),
//! moves the shared ring indexes anywhere, dies and reconnects. The body is
//! `runtime::hostile::play` in the host crate, whose tests also run every seed: it
//! panics if a buffer is lost, a frame goes uncounted, an honest session is ended, a lie
//! the host can always tell goes uncaught, or an honest consumer afterwards does not get
//! its frames whole.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memplex::fuzzing::hostile_consumer(data));
