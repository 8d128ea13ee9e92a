//! Routing: which providers a frame's head and frags go to, by rules over its fields,
//! first match wins.
//!
//! The grammar lives here. A `match = { ... }` table is parsed once, while the config is
//! deserialised, straight into a [`Matcher`] of plain integers and prefixes (protocol
//! names become the `wire` enums' numbers), so a bad field is an error naming it, and
//! matching a frame allocates nothing and calls nothing. [`RouteTable::new`] then only
//! resolves provider names to indexes.
//!
//! ```toml
//! [[route]]
//! match = { l4 = "tcp", dst_port = "4420-4421", dst = "10.0.0.0/8" }
//! head = "hdr"
//! frags = "payload"
//! frags_rest = "spill"      # frags after the first (default: frags)
//! ```

use crate::wire::app::App;
use crate::wire::ethernet::EtherType;
use crate::wire::transport::IpProtocol;
use crate::wire::FrameMeta;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A port or an inclusive range `"1000-2000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl PortRange {
    #[inline]
    fn contains(self, port: Option<u16>) -> bool {
        port.is_some_and(|p| (self.0..=self.1).contains(&p))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRange(a, b) if a == b => write!(f, "{a}"),
            PortRange(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::One(p) => Ok(PortRange(p, p)),
            Raw::Text(t) => {
                let bad = || {
                    serde::de::Error::custom(format!(
                        "`{t}` is not a port or a range like \"1000-2000\""
                    ))
                };
                let (a, b) = t.split_once('-').unwrap_or((&t, &t));
                let (a, b) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                Ok(PortRange(a, b))
            }
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A protocol given by name or number.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
enum NameOrNumber {
    Number(i64),
    Name(String),
}

/// `match = { ... }` as written; compiled into a [`Matcher`] when deserialised.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    ethertype: Option<NameOrNumber>,
    vlan: Option<u16>,
    l3: Option<String>,
    l4: Option<NameOrNumber>,
    src: Option<IpNet>,
    dst: Option<IpNet>,
    src_port: Option<PortRange>,
    dst_port: Option<PortRange>,
    port: Option<PortRange>,
    vni: Option<u32>,
    app: Option<String>,
    device: Option<String>,
}

/// Names of the ethertypes and protocols a match may use, with their wire numbers.
const ETHERTYPES: [(&str, EtherType); 3] = [
    ("ipv4", EtherType::Ipv4),
    ("ipv6", EtherType::Ipv6),
    ("arp", EtherType::Arp),
];
const PROTOCOLS: [(&str, IpProtocol); 4] = [
    ("tcp", IpProtocol::Tcp),
    ("udp", IpProtocol::Udp),
    ("icmp", IpProtocol::Icmp),
    ("icmpv6", IpProtocol::Icmpv6),
];
const APPS: [(&str, App); 2] = [("nvme-tcp", App::NvmeTcp), ("iscsi", App::Iscsi)];

/// A bad `match` field: the field, what is wrong, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`match.{field}`: {problem}; allowed: {allowed}")]
pub struct MatchError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
    /// What would be accepted.
    pub allowed: &'static str,
}

fn bad(field: &'static str, problem: String, allowed: &'static str) -> MatchError {
    MatchError {
        field,
        problem,
        allowed,
    }
}

/// A compiled `match = { ... }`: every given field must match. The default matches
/// every frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "MatchSpec", into = "MatchSpec")]
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
    /// The device the frame came in on, by name (`main` or a `[devices.NAME]`); resolved
    /// to an index by [`RouteTable::new`].
    device: Option<String>,
}

impl TryFrom<MatchSpec> for Matcher {
    type Error = MatchError;

    fn try_from(m: MatchSpec) -> Result<Matcher, MatchError> {
        const ETHER_ALLOWED: &str = "ipv4, ipv6, arp or a number 0-65535";
        const L4_ALLOWED: &str = "tcp, udp, icmp, icmpv6 or a number 0-255";
        let ethertype = match (&m.ethertype, m.l3.as_ref()) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "l3",
                    "is given together with `ethertype`".into(),
                    "one of the two",
                ))
            }
            (Some(NameOrNumber::Number(n)), None) => Some(
                u16::try_from(*n)
                    .map_err(|_| bad("ethertype", format!("{n} is out of range"), ETHER_ALLOWED))?,
            ),
            (Some(NameOrNumber::Name(s)), None) | (None, Some(s)) => {
                let field = if m.l3.is_some() { "l3" } else { "ethertype" };
                let e = ETHERTYPES.iter().find(|(n, _)| n == s).ok_or_else(|| {
                    bad(
                        field,
                        format!("`{s}` is not a known ethertype"),
                        ETHER_ALLOWED,
                    )
                })?;
                Some(u16::from(e.1))
            }
            (None, None) => None,
        };
        let protocol = match &m.l4 {
            None => None,
            Some(NameOrNumber::Number(n)) => Some(
                u8::try_from(*n)
                    .map_err(|_| bad("l4", format!("{n} is out of range"), L4_ALLOWED))?,
            ),
            Some(NameOrNumber::Name(s)) => {
                let p = PROTOCOLS.iter().find(|(n, _)| n == s).ok_or_else(|| {
                    bad("l4", format!("`{s}` is not a known protocol"), L4_ALLOWED)
                })?;
                Some(u8::from(p.1))
            }
        };
        let app =
            match m.app.as_deref() {
                None => None,
                Some(s) => Some(APPS.iter().find(|(n, _)| *n == s).map(|a| a.1).ok_or_else(
                    || {
                        bad(
                            "app",
                            format!("`{s}` is not a known application protocol"),
                            "nvme-tcp, iscsi",
                        )
                    },
                )?),
            };
        if let Some(v) = m.vlan.filter(|&v| v > 4095) {
            return Err(bad("vlan", format!("{v} is not a VLAN id"), "0 to 4095"));
        }
        if let Some(v) = m.vni.filter(|&v| v > 0xff_ffff) {
            return Err(bad(
                "vni",
                format!("{v} does not fit 24 bits"),
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
            device: m.device,
        })
    }
}

impl From<Matcher> for MatchSpec {
    fn from(m: Matcher) -> MatchSpec {
        let name_or_number = |n: i64, name: Option<&'static str>| match name {
            Some(s) => NameOrNumber::Name(s.into()),
            None => NameOrNumber::Number(n),
        };
        MatchSpec {
            ethertype: m.ethertype.map(|e| {
                let name = ETHERTYPES.iter().find(|(_, t)| u16::from(*t) == e);
                name_or_number(i64::from(e), name.map(|n| n.0))
            }),
            vlan: m.vlan,
            l3: None,
            l4: m.protocol.map(|p| {
                let name = PROTOCOLS.iter().find(|(_, t)| u8::from(*t) == p);
                name_or_number(i64::from(p), name.map(|n| n.0))
            }),
            src: m.src,
            dst: m.dst,
            src_port: m.src_port,
            dst_port: m.dst_port,
            port: m.port,
            vni: m.vni,
            app: m
                .app
                .and_then(|a| APPS.iter().find(|(_, x)| *x == a))
                .map(|a| a.0.to_string()),
            device: m.device,
        }
    }
}

impl fmt::Display for Matcher {
    /// `l4=tcp dst_port=4420-4421`, or `(every frame)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = serde_json::to_value(MatchSpec::from(self.clone())).unwrap_or_default();
        let fields: Vec<String> = spec
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        if fields.is_empty() {
            f.write_str("(every frame)")
        } else {
            f.write_str(&fields.join(" "))
        }
    }
}

impl Matcher {
    /// The input device it asks for, by name.
    pub fn device_name(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// True when it matches every frame.
    pub fn is_catch_all(&self) -> bool {
        *self == Matcher::default()
    }

    /// True when every given field matches `meta`.
    #[inline]
    pub fn matches(&self, meta: &FrameMeta) -> bool {
        fn opt<T: PartialEq + Copy>(want: Option<T>, got: Option<T>) -> bool {
            want.is_none() || want == got
        }
        fn net(want: &Option<IpNet>, got: Option<std::net::IpAddr>) -> bool {
            match (want, got) {
                (None, _) => true,
                (Some(n), Some(a)) => n.contains(&a),
                (Some(_), None) => false,
            }
        }
        self.ethertype.is_none_or(|e| e == meta.ethertype())
            && opt(self.vlan, meta.vlan())
            && opt(self.protocol, meta.protocol())
            && net(&self.src, meta.src())
            && net(&self.dst, meta.dst())
            && self.src_port.is_none_or(|r| r.contains(meta.src_port()))
            && self.dst_port.is_none_or(|r| r.contains(meta.dst_port()))
            && self
                .port
                .is_none_or(|r| r.contains(meta.src_port()) || r.contains(meta.dst_port()))
            && opt(self.vni, meta.vni())
            && opt(self.app, meta.app())
    }
}

/// `[[route]]`: which frames, and the providers of their head and frags.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Which frames; absent matches every frame.
    #[serde(default, rename = "match")]
    pub matches: Matcher,
    /// The provider of head buffers.
    pub head: String,
    /// The provider of the first frag buffer.
    pub frags: String,
    /// The provider of frag buffers after the first (default: `frags`).
    pub frags_rest: Option<String>,
    /// The consumer process (`[consumers.NAME]`) the frames go to, in the providers'
    /// memory; without it they go to the in-process sink.
    pub deliver: Option<String>,
    /// With `deliver`: copy frames whose memory cannot be shared into the ring (counted
    /// as copies). Without it such a route is refused at start.
    #[serde(default)]
    pub copy: bool,
    /// Send the frames out of a device: `main`, a `[devices.NAME]`, or `in` (back out of
    /// the device each frame came in on). Its buffers go back to their pools once the
    /// kernel has taken the bytes.
    pub forward: Option<String>,
}

/// Where a route sends its frames out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Out of the device of this index (0 is `main`).
    Device(u16),
    /// Back out of the device the frame came in on.
    In,
}

impl Forward {
    /// The device a frame that came in on `device` goes out of.
    #[inline]
    pub fn to(self, device: u16) -> u16 {
        match self {
            Forward::Device(d) => d,
            Forward::In => device,
        }
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
    /// The consumer the frames go to, if any.
    pub deliver: Option<u16>,
    /// Copy frames into the ring where their memory cannot be shared.
    pub copy: bool,
    /// The device the frames go out of, if any.
    pub forward: Option<Forward>,
}

/// A route naming a provider (or consumer) that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`route[{route}].{field}` names {kind} `{name}`, which is not defined; allowed: {}", if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") })]
pub struct UnknownProvider {
    /// The rule's index.
    pub route: usize,
    /// `head`, `frags`, `frags_rest`, `deliver`, `forward` or `match.device`.
    pub field: &'static str,
    /// `provider`, `consumer` or `device`.
    pub kind: &'static str,
    /// The name given.
    pub name: String,
    /// The providers that exist.
    pub known: Vec<String>,
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Each rule's matcher, the input device it wants (if any) and its route.
    rules: Vec<(Matcher, Option<u16>, Route)>,
    /// Each rule's first test, in rule order: what most rules are (a protocol, an
    /// ethertype, a device, or every frame), in 8 bytes, so routing a frame reads one
    /// small array and a rule's whole [`Matcher`] only when it asks for more.
    quick: Vec<Quick>,
    /// For an IPv4 (`[0]`) or IPv6 (`[1]`) frame of each IP protocol: the first rule
    /// whose ethertype and protocol tests it passes (`rules.len()` when none), so
    /// routing the common frame is one load rather than a walk of the rules before it.
    /// The rules before that one cannot match such a frame; that one matches it outright
    /// when it tests nothing else (`decided`), else the walk goes on from it.
    first: Box<[[u32; 256]; 2]>,
    /// Per rule: its quick test is all it has (no device, no further fields), so passing
    /// the ethertype and protocol tests is matching.
    decided: Vec<bool>,
}

/// The fields of a rule routing tests first; `full` when its [`Matcher`] has others.
#[derive(Debug, Clone, Copy)]
struct Quick {
    device: Option<u16>,
    ethertype: Option<u16>,
    protocol: Option<u8>,
    full: bool,
}

impl Quick {
    fn of(m: &Matcher, device: Option<u16>) -> Quick {
        let rest = Matcher {
            ethertype: None,
            protocol: None,
            device: None,
            ..m.clone()
        };
        Quick {
            device,
            ethertype: m.ethertype,
            protocol: m.protocol,
            full: !rest.is_catch_all(),
        }
    }
}

impl RouteTable {
    /// The rules of `routes`, with provider, consumer and device names resolved against
    /// `providers`, `consumers` and `devices` (whose order gives the indexes; the first
    /// device is `main`).
    pub fn new(
        routes: &[RouteConfig],
        providers: &[String],
        consumers: &[String],
        devices: &[String],
    ) -> Result<Self, UnknownProvider> {
        let rules = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // `name`'s index in `known`, a list of things of `kind`.
                let find =
                    |known: &[String], kind: &'static str, field: &'static str, name: &str| {
                        known
                            .iter()
                            .position(|k| k == name)
                            .ok_or_else(|| UnknownProvider {
                                route: i,
                                field,
                                kind,
                                name: name.to_string(),
                                known: known.to_vec(),
                            })
                    };
                let id = |field, name: &str| find(providers, "provider", field, name);
                let device =
                    |field, name: &str| find(devices, "device", field, name).map(|d| d as u16);
                let frags = id("frags", &r.frags)?;
                let deliver = match &r.deliver {
                    None => None,
                    Some(name) => Some(find(consumers, "consumer", "deliver", name)? as u16),
                };
                let forward = match r.forward.as_deref() {
                    None => None,
                    Some("in") => Some(Forward::In),
                    Some(name) => Some(Forward::Device(device("forward", name)?)),
                };
                let input = match &r.matches.device {
                    None => None,
                    Some(name) => Some(device("match.device", name)?),
                };
                let route = Route {
                    head: id("head", &r.head)?,
                    frags,
                    frags_rest: match &r.frags_rest {
                        Some(n) => id("frags_rest", n)?,
                        None => frags,
                    },
                    deliver,
                    copy: r.copy,
                    forward,
                };
                Ok((r.matches.clone(), input, route))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let quick: Vec<Quick> = rules.iter().map(|(m, d, _)| Quick::of(m, *d)).collect();
        let mut first = Box::new([[quick.len() as u32; 256]; 2]);
        for (class, ethertype) in [0x0800u16, 0x86dd].into_iter().enumerate() {
            for (protocol, slot) in first[class].iter_mut().enumerate() {
                if let Some(k) = quick.iter().position(|q| {
                    q.ethertype.is_none_or(|e| e == ethertype)
                        && q.protocol.is_none_or(|p| usize::from(p) == protocol)
                }) {
                    *slot = k as u32;
                }
            }
        }
        let decided = quick
            .iter()
            .map(|q| q.device.is_none() && !q.full)
            .collect();
        Ok(RouteTable {
            rules,
            quick,
            first,
            decided,
        })
    }

    /// The first rule matching `meta` of a frame that came in on device `device`: its
    /// index and route.
    #[inline]
    pub fn route(&self, meta: &FrameMeta, device: u16) -> Option<(usize, Route)> {
        let i = self.rule(meta, device)?;
        Some((i, self.rules[i].2))
    }

    /// The index of the first rule matching `meta` of a frame that came in on device
    /// `device`.
    #[inline]
    pub fn rule(&self, meta: &FrameMeta, device: u16) -> Option<usize> {
        let class = match meta.ethertype() {
            0x0800 => 0,
            0x86dd => 1,
            _ => return self.walk(0, meta, device),
        };
        let Some(protocol) = meta.protocol() else {
            return self.walk(0, meta, device);
        };
        let k = self.first[class][usize::from(protocol)] as usize;
        match self.decided.get(k) {
            Some(true) => Some(k),
            Some(false) => self.walk(k, meta, device),
            None => None,
        }
    }

    /// The first rule from `from` on matching `meta` of a frame from `device`, testing
    /// each in turn.
    #[inline(never)]
    fn walk(&self, from: usize, meta: &FrameMeta, device: u16) -> Option<usize> {
        let quick = self.quick.get(from..)?;
        let k = quick.iter().enumerate().position(|(i, q)| {
            q.device.is_none_or(|d| d == device)
                && q.ethertype.is_none_or(|e| e == meta.ethertype())
                && q.protocol.is_none_or(|p| Some(p) == meta.protocol())
                && (!q.full || self.matches_rest(from + i, meta))
        })?;
        Some(from + k)
    }

    /// Rule `i`'s whole matcher. Out of line: inlined, the compiler loaded every routing
    /// field of every frame ahead of the quick tests, for the rules that never ask.
    #[inline(never)]
    fn matches_rest(&self, i: usize, meta: &FrameMeta) -> bool {
        self.rules.get(i).is_some_and(|(m, _, _)| m.matches(meta))
    }

    /// Rule `i`'s route.
    #[inline]
    pub fn get(&self, i: usize) -> Route {
        self.rules[i].2
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

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(toml_table: &str) -> Result<Matcher, String> {
        #[derive(Deserialize)]
        struct W {
            m: Matcher,
        }
        config::Config::builder()
            .add_source(config::File::from_str(
                &format!("m = {toml_table}"),
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize::<W>())
            .map(|w| w.m)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_become_wire_numbers_and_print_back() {
        let m = matcher(r#"{ l4 = "tcp", l3 = "ipv6", dst_port = "4420-4421" }"#).unwrap();
        let meta = FrameMeta::default()
            .with_ethertype(0x86dd)
            .with_protocol(6)
            .with_ports(50_000, 4421);
        assert!(m.matches(&meta));
        assert!(!m.matches(&meta.with_ports(50_000, 4422)));
        assert_eq!(m.to_string(), "dst_port=4420-4421 ethertype=ipv6 l4=tcp");
        assert_eq!(Matcher::default().to_string(), "(every frame)");
    }

    #[test]
    fn the_first_rule_whose_every_test_passes_wins() {
        let rule = |m: &str, device: Option<&str>, head: &str| RouteConfig {
            matches: Matcher {
                device: device.map(Into::into),
                ..matcher(m).unwrap()
            },
            head: head.into(),
            frags: head.into(),
            frags_rest: None,
            deliver: None,
            copy: false,
            forward: None,
        };
        let routes = [
            rule(r#"{ l4 = "udp", port = 4789, vni = 7 }"#, None, "a"),
            rule(
                r#"{ dst = "10.1.0.0/16", src_port = "1000-1999" }"#,
                None,
                "b",
            ),
            rule(r#"{ l4 = "tcp" }"#, Some("b"), "c"),
            rule(r#"{ vlan = 5, app = "nvme-tcp" }"#, None, "d"),
            rule("{}", None, "e"),
        ];
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(Into::into).to_vec();
        let t = RouteTable::new(&routes, &names, &[], &["main".into(), "b".into()]).unwrap();
        let tcp = FrameMeta::default()
            .with_ethertype(0x0800)
            .with_protocol(6)
            .with_addrs("10.9.9.9".parse().unwrap(), "10.1.2.3".parse().unwrap())
            .with_ports(1500, 80);
        let vxlan = FrameMeta::default()
            .with_protocol(17)
            .with_ports(50_000, 4789)
            .with_vni(7);
        let nvme = tcp.with_vlan(5).with_app(App::NvmeTcp);
        let rule_of = |m: &FrameMeta, device| t.rule(m, device);
        // `port` matches either port; every test of a rule must pass.
        assert_eq!(rule_of(&vxlan, 0), Some(0));
        assert_eq!(rule_of(&vxlan.with_vni(8), 0), Some(4));
        // Prefix and range; then the same frame past its range falls through to the
        // device rule, on that device (`b`, index 1; `main` is 0) only.
        assert_eq!(rule_of(&tcp, 0), Some(1));
        let out_of_range = tcp.with_ports(2000, 80);
        assert_eq!(rule_of(&out_of_range, 1), Some(2));
        assert_eq!(rule_of(&out_of_range, 0), Some(4));
        assert_eq!(rule_of(&nvme.with_ports(2000, 80), 0), Some(3));
        // A field the frame does not have never passes a test on it.
        assert_eq!(rule_of(&FrameMeta::default(), 1), Some(4));
        assert_eq!(t.get(3).head, 3);
    }

    proptest::proptest! {
        /// The table of first candidates answers as testing every rule in order would,
        /// for any rules over ethertype, protocol, device and a port, and any frame.
        #[test]
        fn the_table_answers_as_the_walk_of_every_rule_does(
            rules in proptest::collection::vec(
                (0..4usize, 0..4usize, 0..3usize, proptest::option::of(0..3u16)),
                0..6,
            ),
            frames in proptest::collection::vec(
                (0..4usize, proptest::option::of(0..4usize), 0..2u16, 0..3u16),
                1..16,
            ),
        ) {
            const ETHERTYPES: [Option<u16>; 4] = [None, Some(0x0800), Some(0x86dd), Some(0x0806)];
            const PROTOCOLS: [Option<u8>; 4] = [None, Some(6), Some(17), Some(58)];
            let devices: Vec<String> = vec!["main".into(), "b".into()];
            let routes: Vec<RouteConfig> = rules
                .iter()
                .map(|&(e, p, d, port)| RouteConfig {
                    matches: Matcher {
                        ethertype: ETHERTYPES[e],
                        protocol: PROTOCOLS[p],
                        dst_port: port.map(|p| PortRange(p, p)),
                        device: [None, Some("main"), Some("b")][d].map(Into::into),
                        ..Matcher::default()
                    },
                    head: "a".into(),
                    frags: "a".into(),
                    frags_rest: None,
                    deliver: None,
                    copy: false,
                    forward: None,
                })
                .collect();
            let t = RouteTable::new(&routes, &["a".into()], &[], &devices).unwrap();
            for (e, p, device, port) in frames {
                let mut meta = FrameMeta::default()
                    .with_ethertype(ETHERTYPES[e].unwrap_or(0x88cc))
                    .with_ports(0, port);
                if let Some(protocol) = p.and_then(|p| PROTOCOLS[p]) {
                    meta = meta.with_protocol(protocol);
                }
                let walked = t.rules.iter().position(|(m, d, _)| {
                    d.is_none_or(|d| d == device) && m.matches(&meta)
                });
                proptest::prop_assert_eq!(t.rule(&meta, device), walked, "{:?}", meta);
            }
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let e = matcher(r#"{ l4 = "sctpx" }"#).unwrap_err();
        assert!(e.contains("match.l4") && e.contains("tcp, udp"), "{e}");
        let e = matcher(r#"{ l4 = 300 }"#).unwrap_err();
        assert!(e.contains("match.l4") && e.contains("300"), "{e}");
        let e = matcher(r#"{ vlan = 5000 }"#).unwrap_err();
        assert!(e.contains("match.vlan"), "{e}");
    }

    #[test]
    fn unknown_providers_are_named() {
        let route = RouteConfig {
            matches: Matcher::default(),
            head: "hot".into(),
            frags: "cold".into(),
            frags_rest: None,
            deliver: None,
            copy: false,
            forward: None,
        };
        let e = RouteTable::new(
            std::slice::from_ref(&route),
            &["hot".into()],
            &[],
            &["main".into()],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`route[0].frags` names provider `cold`, which is not defined; allowed: hot"
        );
        let route = RouteConfig {
            frags: "hot".into(),
            deliver: Some("app".into()),
            ..route
        };
        let e = RouteTable::new(&[route], &["hot".into()], &[], &["main".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`route[0].deliver` names consumer `app`, which is not defined; allowed: (none defined)"
        );
    }
}
