//! Shared set-up for memplex's criterion benchmarks (`benches/benches/*.rs`).
//!
//! Run them with `cargo xtask bench`, which builds the `.so` plugins in release mode
//! first; the benchmarks load them from the build directory beside the bench binary.
#![deny(missing_docs)]

use memplex::provider::{InitParams, PluginPath, ProviderPlugin, Trust};

/// The shipped providers, by name.
pub const PROVIDERS: [&str; 4] = ["heap", "slab", "hugepage", "shm"];

/// Init params the benchmarks use: 2 KiB buffers, a pool of 1024.
pub fn params() -> InitParams {
    InitParams::new(0, 2048, 1024)
}

/// The built-in (statically linked) and native (`.so`) plugins of provider `name`,
/// trusted without a declared region (`heap` declares none).
///
/// # Panics
/// When the `.so` is not built; run `cargo xtask bench`.
pub fn both(name: &str) -> (ProviderPlugin, ProviderPlugin) {
    let builtin = ProviderPlugin::builtin(name).expect("a built-in provider");
    let native = ProviderPlugin::load(name, &PluginPath::from_env()).unwrap_or_else(|e| {
        panic!("{e}\n(run `cargo xtask bench`, which builds the plugins first)")
    });
    (
        builtin.with_trust(Trust::Unverified),
        native.with_trust(Trust::Unverified),
    )
}

/// One frame of each kind the header-split benchmarks cover, named: 64 B UDP, 1500 B TCP
/// with options, IPv6 with a hop-by-hop extension header, 802.1Q VLAN, VXLAN.
pub fn frame_kinds() -> Vec<(&'static str, Vec<u8>)> {
    use memplex_testkit::traffic::{generate, Proto, Shape};
    let one = |frame_size, proto, vlan| {
        generate(Shape {
            frame_size,
            flows: 1,
            proto,
            vlan,
        })
        .expect("a valid shape")
        .remove(0)
    };
    let mut v6 = generate(Shape {
        frame_size: 512,
        flows: 3,
        proto: Proto::Mix,
        vlan: None,
    })
    .expect("a valid shape")
    .remove(2);
    // As it is: its transport right after the fixed header.
    let v6_plain = v6.clone();
    // Insert an 8-byte hop-by-hop header (PadN) between IPv6 and UDP.
    assert_eq!(v6[12..14], [0x86, 0xdd]);
    v6[14 + 6] = 0; // next header: hop-by-hop
    let plen = u16::from_be_bytes([v6[18], v6[19]]) + 8;
    v6[18..20].copy_from_slice(&plen.to_be_bytes());
    v6.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    let vxlan = memplex_testkit::traffic::mix("tunnel", 64)
        .expect("the tunnel mix")
        .into_iter()
        .find(|f| f.len() > 50 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == [0x12, 0xb5])
        .expect("a VXLAN frame in the tunnel mix");
    vec![
        ("udp_64", one(64, Proto::Udp, None)),
        ("tcp_opts_1500", one(1500, Proto::Tcp, None)),
        ("ipv6_udp_512", v6_plain),
        ("ipv6_ext", v6),
        ("vlan_tcp_1500", one(1500, Proto::Tcp, Some(100))),
        ("vxlan", vxlan),
    ]
}

/// Two measurements taken in alternating blocks, for a ratio this machine's noise does
/// not skew.
///
/// Criterion times one benchmark after another, so on a shared VM whose speed drifts
/// over seconds a ratio of two medians mixes the code's difference with the drift
/// (identical code in two `.so`s read 0.99x to 1.17x across runs). Here `a` and `b`
/// run in short blocks of the same number of iterations, in alternating order, and the
/// ratio is the median of the per-round ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Rounds taken (one block of each per round).
    pub rounds: usize,
    /// Median time of one iteration of `a`, in ns.
    pub a_ns: f64,
    /// Median time of one iteration of `b`, in ns.
    pub b_ns: f64,
    /// Median over rounds of `b`'s block time over `a`'s.
    pub ratio: f64,
}

/// Runs [`Paired`] for benchmark `id` (`group/name`) when criterion's command line
/// selects it, prints the result and, under `cargo bench`, saves it beside criterion's
/// estimates as `paired/<id>.json` (with `/` as `_`) for `cargo xtask bench`'s summary.
/// Under `cargo test` (no `--bench`) it runs two tiny rounds, to show the code works.
pub fn interleaved(id: &str, mut a: impl FnMut(), mut b: impl FnMut()) -> Option<Paired> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !selected(id, &args) || args.iter().any(|a| a == "--profile-time" || a == "--list") {
        return None;
    }
    let bench = args.iter().any(|a| a == "--bench");
    let (rounds, block) = match bench {
        true => (31, std::time::Duration::from_millis(20)),
        false => (2, std::time::Duration::from_micros(200)),
    };
    // Generic, so each routine is inlined into its timing loop as criterion's
    // `Bencher::iter` inlines it: through `&mut dyn FnMut` every iteration was a call and
    // a stack frame, a cost of the harness that skewed the ratio of a short routine (the
    // pool's round trip read 1.5x the atomic here against 0.95x under criterion).
    fn time(f: &mut impl FnMut(), n: u64) -> f64 {
        let start = std::time::Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_secs_f64()
    }
    // Iterations per block: doubled until a block of `a` takes `block`.
    let mut n = 1u64;
    while time(&mut a, n) < block.as_secs_f64() && n < 1 << 40 {
        n *= 2;
    }
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = match round % 2 {
            0 => {
                let x = time(&mut a, n);
                (x, time(&mut b, n))
            }
            _ => {
                let y = time(&mut b, n);
                (time(&mut a, n), y)
            }
        };
        ta.push(x * 1e9 / n as f64);
        tb.push(y * 1e9 / n as f64);
        ratios.push(y / x);
    }
    let paired = Paired {
        rounds,
        a_ns: median(&mut ta),
        b_ns: median(&mut tb),
        ratio: median(&mut ratios),
    };
    println!(
        "{id}: {:.3}x (median of {rounds} interleaved rounds of {n} iterations; {:.1} ns against {:.1} ns)",
        paired.ratio, paired.b_ns, paired.a_ns
    );
    if bench {
        if let Err(e) = save(id, &paired) {
            eprintln!("{id}: not saved: {e}");
        }
    }
    Some(paired)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Whether criterion's filter (its first free argument, a regular expression) selects
/// `id`; no filter selects everything.
fn selected(id: &str, args: &[String]) -> bool {
    // Criterion's options that take a value; the value is not a filter.
    const VALUED: [&str; 14] = [
        "--color",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
    ];
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if VALUED.contains(&arg.as_str()) {
            rest.next();
        } else if !arg.starts_with('-') {
            return regex::Regex::new(arg).is_ok_and(|r| r.is_match(id));
        }
    }
    true
}

fn save(id: &str, p: &Paired) -> std::io::Result<()> {
    // The bench binary is <target>/release/deps/NAME; criterion writes <target>/criterion.
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| std::io::Error::other("no target directory above the bench binary"))?;
    let dir = target.join("criterion").join("paired");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({
        "id": id,
        "rounds": p.rounds,
        "a_ns": p.a_ns,
        "b_ns": p.b_ns,
        "ratio": p.ratio,
    });
    std::fs::write(
        dir.join(format!("{}.json", id.replace('/', "_"))),
        json.to_string(),
    )
}
