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
        ("ipv6_ext", v6),
        ("vlan_tcp_1500", one(1500, Proto::Tcp, Some(100))),
        ("vxlan", vxlan),
    ]
}
