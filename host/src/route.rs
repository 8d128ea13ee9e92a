//! Routing: config rules to (head provider, frags provider) per frame, first match wins.
//!
//! Rules are compiled once into [`Matcher`]s that compare plain integers and prefixes,
//! so matching a frame allocates nothing and calls nothing.

use crate::config::{MatchConfig, PortRange, RouteConfig, Scalar};
use crate::wire::app::App;
use crate::wire::FrameMeta;
use ipnet::IpNet;
use std::collections::BTreeMap;

/// A compiled `match = { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    ethertype: Option<u16>,
    vlan: Option<u16>,
    protocol: Option<u8>,
    src: Option<IpNet>,
    dst: Option<IpNet>,
    src_port: Option<PortRange>,
    dst_port: Option<PortRange>,
    port: Option<PortRange>,
    vni: Option<u32>,
    app: Option<App>,
}

type CompileError = (&'static str, String, &'static str);

impl Matcher {
    /// Compiles a match table; an error gives the field, the problem and what is allowed.
    pub fn compile(m: &MatchConfig) -> Result<Matcher, CompileError> {
        let ethertype = match (&m.ethertype, m.l3.as_ref()) {
            (Some(_), Some(_)) => {
                return Err((
                    "l3",
                    "is given together with `ethertype`".into(),
                    "one of the two",
                ))
            }
            (Some(Scalar::Int(n)), None) if (0..=0xffff).contains(n) => Some(*n as u16),
            (Some(Scalar::Str(s)), None) | (None, Some(s)) => Some(match s.as_str() {
                "ipv4" => 0x0800,
                "ipv6" => 0x86dd,
                "arp" => 0x0806,
                other => {
                    return Err((
                        "ethertype",
                        format!("`{other}` is not a known ethertype"),
                        "ipv4, ipv6, arp or a number 0-65535",
                    ))
                }
            }),
            (Some(other), None) => {
                return Err((
                    "ethertype",
                    format!("`{other}` is not an ethertype"),
                    "ipv4, ipv6, arp or a number 0-65535",
                ))
            }
            (None, None) => None,
        };
        let protocol = match &m.l4 {
            None => None,
            Some(Scalar::Int(n)) if (0..=255).contains(n) => Some(*n as u8),
            Some(Scalar::Str(s)) => Some(match s.as_str() {
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                "icmpv6" => 58,
                other => {
                    return Err((
                        "l4",
                        format!("`{other}` is not a known protocol"),
                        "tcp, udp, icmp, icmpv6 or a number 0-255",
                    ))
                }
            }),
            Some(other) => {
                return Err((
                    "l4",
                    format!("`{other}` is not a protocol"),
                    "tcp, udp, icmp, icmpv6 or a number 0-255",
                ))
            }
        };
        let app = match m.app.as_deref() {
            None => None,
            Some("nvme-tcp") => Some(App::NvmeTcp),
            Some("iscsi") => Some(App::Iscsi),
            Some(other) => {
                return Err((
                    "app",
                    format!("`{other}` is not a known application protocol"),
                    "nvme-tcp, iscsi",
                ))
            }
        };
        if m.vlan.is_some_and(|v| v > 4095) {
            return Err((
                "vlan",
                format!("{} is not a VLAN id", m.vlan.unwrap_or_default()),
                "0 to 4095",
            ));
        }
        if m.vni.is_some_and(|v| v > 0xff_ffff) {
            return Err((
                "vni",
                format!("{} does not fit 24 bits", m.vni.unwrap_or_default()),
                "0 to 16777215",
            ));
        }
        Ok(Matcher {
            ethertype,
            vlan: m.vlan,
            protocol,
            src: m.src.map(|n| n.trunc()),
            dst: m.dst.map(|n| n.trunc()),
            src_port: m.src_port,
            dst_port: m.dst_port,
            port: m.port,
            vni: m.vni,
            app,
        })
    }

    /// True when every given field matches `meta`.
    #[inline]
    pub fn matches(&self, meta: &FrameMeta) -> bool {
        fn opt<T: PartialEq + Copy>(want: Option<T>, got: Option<T>) -> bool {
            want.is_none() || want == got
        }
        fn range(want: Option<PortRange>, got: Option<u16>) -> bool {
            match (want, got) {
                (None, _) => true,
                (Some(PortRange(a, b)), Some(p)) => (a..=b).contains(&p),
                (Some(_), None) => false,
            }
        }
        fn net(want: &Option<IpNet>, got: Option<std::net::IpAddr>) -> bool {
            match (want, got) {
                (None, _) => true,
                (Some(n), Some(a)) => n.contains(&a),
                (Some(_), None) => false,
            }
        }
        self.ethertype.is_none_or(|e| e == meta.ethertype)
            && opt(self.vlan, meta.vlan)
            && opt(self.protocol, meta.protocol)
            && net(&self.src, meta.src)
            && net(&self.dst, meta.dst)
            && range(self.src_port, meta.src_port)
            && range(self.dst_port, meta.dst_port)
            && (self.port.is_none()
                || range(self.port, meta.src_port)
                || range(self.port, meta.dst_port))
            && opt(self.vni, meta.vni)
            && opt(self.app, meta.app)
    }
}

/// Where one route sends a frame's buffers, as indices into the provider list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The head buffer's provider.
    pub head: usize,
    /// The first frag buffer's provider.
    pub frags: usize,
    /// Later frag buffers' provider.
    pub frags_rest: usize,
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct RouteTable {
    rules: Vec<(Matcher, Route)>,
}

impl RouteTable {
    /// Compiles validated routes; `index` maps provider names to positions.
    pub fn new(routes: &[RouteConfig], index: &BTreeMap<String, usize>) -> Self {
        let id = |name: &str| index[name];
        let rules = routes
            .iter()
            .map(|r| {
                let matcher = Matcher::compile(&r.matches).expect("validated with the config");
                let frags = id(&r.frags);
                let route = Route {
                    head: id(&r.head),
                    frags,
                    frags_rest: r.frags_rest.as_deref().map_or(frags, id),
                };
                (matcher, route)
            })
            .collect();
        RouteTable { rules }
    }

    /// The first rule matching `meta`: its index and route.
    #[inline]
    pub fn route(&self, meta: &FrameMeta) -> Option<(usize, Route)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, (m, _))| m.matches(meta))
            .map(|(i, (_, r))| (i, *r))
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
