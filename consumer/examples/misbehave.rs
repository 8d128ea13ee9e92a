//! A consumer that breaks the protocol on purpose, for the tests of memplex's defences
//! (`cli::hostile_consumers_are_cut_off_and_the_host_is_unaffected`). Not an example to
//! follow.
//!
//! `misbehave SOCKET MODE`, MODE one of:
//! - `garbage-token`: gives back a token with a made-up generation;
//! - `duplicate-token`: gives a buffer back twice;
//! - `foreign-token`: gives back, on a second session, a token of the first;
//! - `wild-refill-index`: moves the refill ring's producer index a million ahead;
//! - `wild-completion-index`: moves the completion ring's consumer index a million ahead;
//! - `tx-forged-token`, `tx-out-of-range`, `tx-no-parts`: writes a transmit entry
//!   naming a made-up token, bytes past the end of a buffer it holds, or no parts (the
//!   consumer's config must name a `transmit` device);
//! - `write-payload`: tries to map a region writable (reports the error), then writes
//!   through its read-only mapping (and dies of SIGSEGV).
//!
//! Prints `ended REASON TEXT` when memplex ends the session, and exits 0; exits 1 when it
//! did not within five seconds.

use memplex_consumer::{testing, Consumer, Error, Options};
use std::time::{Duration, Instant};

fn first_frame_tokens(c: &Consumer) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(f)) = c.next(Some(Duration::from_millis(100))) {
            let t = testing::keep_tokens(f);
            if !t.is_empty() {
                return t;
            }
        }
    }
    eprintln!("misbehave: no frame with a part within 5 s");
    std::process::exit(1);
}

/// The first token of the first frame with a part, and the queue it came on.
fn first_frame_tokens_and_queue(c: &Consumer) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(f)) = c.next(Some(Duration::from_millis(100))) {
            let q = f.queue();
            if let Some(&t) = testing::keep_tokens(f).first() {
                return (t, q);
            }
        }
    }
    eprintln!("misbehave: no frame with a part within 5 s");
    std::process::exit(1);
}

/// Waits for the end without touching the rings again (which would write over what was
/// done to them).
fn wait_quietly(c: &Consumer) -> ! {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some((reason, text)) = testing::ended(c) {
            println!("ended {reason} {text}");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("misbehave: memplex did not end the session within 5 s");
    std::process::exit(1);
}

fn wait_for_end(c: &Consumer) -> ! {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match c.next(Some(Duration::from_millis(50))) {
            Ok(Some(f)) => drop(f),
            Ok(None) => {}
            Err(Error::Ended { reason, text }) => {
                println!("ended {reason} {text}");
                std::process::exit(0);
            }
            Err(e) => {
                println!("ended ? {e}");
                std::process::exit(0);
            }
        }
        c.flush();
    }
    eprintln!("misbehave: memplex did not end the session within 5 s");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(socket), Some(mode)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: misbehave SOCKET MODE");
        std::process::exit(2);
    };
    let opts = Options::new("");
    let c = Consumer::connect(socket, &opts).unwrap_or_else(|e| {
        eprintln!("misbehave: {e}");
        std::process::exit(2)
    });
    match mode.as_str() {
        "garbage-token" => {
            let t = first_frame_tokens(&c)[0];
            testing::write_tokens(&c, 0, &[t ^ 0x7777_0000_0000]);
        }
        "duplicate-token" => {
            let t = first_frame_tokens(&c)[0];
            testing::write_tokens(&c, 0, &[t, t]);
        }
        "foreign-token" => {
            let t = first_frame_tokens(&c)[0];
            let other = Consumer::connect(socket, &opts).unwrap_or_else(|e| {
                eprintln!("misbehave: second session: {e}");
                std::process::exit(2)
            });
            testing::write_tokens(&other, 0, &[t]);
            wait_for_end(&other);
        }
        "wild-refill-index" => {
            let _ = first_frame_tokens(&c);
            testing::move_refill_index(&c, 0, 1_000_000);
            wait_quietly(&c);
        }
        "wild-completion-index" => {
            let _ = first_frame_tokens(&c);
            testing::move_completion_index(&c, 0, 1_000_000);
            wait_quietly(&c);
        }
        "tx-forged-token" | "tx-out-of-range" | "tx-no-parts" => {
            let (t, q) = first_frame_tokens_and_queue(&c);
            let ok = match mode.as_str() {
                "tx-forged-token" => testing::write_tx(&c, q, 1, &[(t ^ 0x5555_0000_0000, 0, 64)]),
                "tx-out-of-range" => testing::write_tx(&c, q, 1, &[(t, 1 << 20, 64)]),
                _ => testing::write_tx(&c, q, 0, &[]),
            };
            if !ok {
                eprintln!("misbehave: the session has no transmit ring");
                std::process::exit(2);
            }
            wait_quietly(&c);
        }
        "write-payload" => write_payload(&c),
        other => {
            eprintln!("misbehave: unknown mode {other}");
            std::process::exit(2);
        }
    }
    wait_for_end(&c);
}

/// Shows that payload memory is read-only here: a writable mapping of the descriptor is
/// refused, and a write through the read-only mapping faults.
fn write_payload(c: &Consumer) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Ok(Some(f)) = c.next(Some(Duration::from_millis(100))) else {
            continue;
        };
        let target = f
            .frags()
            .next()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_ptr().cast_mut());
        if let Some(p) = target {
            println!("writable mapping: {}", testing::try_map_writable(c, &f));
            println!("writing through the read-only mapping at {p:p}");
            // SAFETY: none; this is the point. The page is mapped read-only, so the write
            // faults (SIGSEGV) and the process dies, which the test expects.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write_volatile(p, 0x55);
            }
            println!("the write went through: payload memory is writable");
            std::process::exit(3);
        }
    }
    std::process::exit(1);
}
