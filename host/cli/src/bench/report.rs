//! Summaries of `memplex bench` rounds: medians, spread and same-run ratios, as a
//! terminal table, Markdown, and an SVG plot.

use super::{Round, Workload, BARE, MEMCPY};
use anyhow::Result;
use comfy_table::Cell;
use memplex::stats::Stage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Median and spread of one variant on one traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    traffic: String,
    variant: String,
    rounds: usize,
    pps: f64,
    pps_min: f64,
    pps_max: f64,
    gbps: f64,
    drops: u64,
    cpu_ns_per_frame: Option<f64>,
    peak_rss_mib: Option<f64>,
    hit_rate: Option<f64>,
    providers: BTreeMap<String, u64>,
    /// pps / the baseline's pps, same traffic.
    vs_baseline: Option<f64>,
    /// pps / the bare read loop's pps, same traffic.
    of_bare: Option<f64>,
    /// pps / the read-and-copy loop's pps, same traffic.
    of_memcpy: Option<f64>,
    /// Consumer variants: median over rounds of each round's latency percentiles, ns.
    latency_ns: Option<super::measure::Latency>,
    /// Busy-polling consumer variants: median over rounds of the consumer's idle turns
    /// per frame read.
    consumer_idle_per_frame: Option<f64>,
    /// Consumer variants: where each side ran.
    cores: Option<String>,
    /// Consumer variants that measure latency: the stalls of the consumer's CPU, probed
    /// alone before each round, over all the rounds.
    stalls: Option<super::stalls::Stalls>,
    /// Consumer variants with eventfd wake-ups: the delays of waking a thread asleep on
    /// the consumer's CPU, probed before each round, over all the rounds.
    wakeups: Option<super::stalls::Wakeups>,
    /// With --profile: the host's ns per frame in each stage, over every round's bursts
    /// measured.
    profile_ns_per_frame: Option<BTreeMap<&'static str, f64>>,
}

impl Summary {
    /// What the machine alone takes from the consumer's CPU (and how long it takes to
    /// wake it), for a variant that measured latency.
    pub fn machine_lines(&self) -> impl Iterator<Item = String> + '_ {
        let stalls = self.stalls.map(|s| s.line(&self.variant));
        let wakeups = self.wakeups.map(|w| w.line(&self.variant));
        stalls.into_iter().chain(wakeups)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians per variant and traffic; `other_queues` are variants whose device has another
/// number of queues than the bare and memcpy loops read, so have no ratio to them.
pub fn summarise(
    rounds: &[Round],
    workloads: &[Workload],
    labels: &[&str],
    baseline: &str,
    other_queues: &[&str],
) -> Vec<Summary> {
    let mut out = Vec::new();
    for t in workloads {
        let of = |label: &str| {
            rounds
                .iter()
                .filter(|r| r.traffic == t.label && r.variant == label)
                .collect::<Vec<_>>()
        };
        let pps_of = |label: &str| {
            let rs = of(label);
            (!rs.is_empty()).then(|| median(rs.iter().map(|r| r.frames as f64 / r.secs).collect()))
        };
        let (base, bare, memcpy) = (pps_of(baseline), pps_of(BARE), pps_of(MEMCPY));
        for label in labels {
            let rs = of(label);
            if rs.is_empty() {
                continue;
            }
            let pps: Vec<f64> = rs.iter().map(|r| r.frames as f64 / r.secs).collect();
            let m = median(pps.clone());
            let frames: u64 = rs.iter().map(|r| r.frames).sum();
            let cpu: f64 = rs.iter().map(|r| r.cpu_secs).sum();
            let mut names: Vec<&String> = rs.iter().flat_map(|r| r.providers.keys()).collect();
            names.dedup();
            out.push(Summary {
                traffic: t.label.clone(),
                variant: label.to_string(),
                rounds: rs.len(),
                pps: m,
                pps_min: pps.iter().copied().fold(f64::INFINITY, f64::min),
                pps_max: pps.iter().copied().fold(0.0, f64::max),
                gbps: median(
                    rs.iter()
                        .map(|r| r.bytes as f64 * 8.0 / r.secs / 1e9)
                        .collect(),
                ),
                drops: median(rs.iter().map(|r| r.drops as f64).collect()) as u64,
                cpu_ns_per_frame: (frames > 0 && cpu > 0.0).then(|| cpu * 1e9 / frames as f64),
                peak_rss_mib: rs
                    .iter()
                    .map(|r| r.peak_rss_bytes.map(|b| b as f64 / f64::from(1 << 20)))
                    .collect::<Option<Vec<f64>>>()
                    .map(median),
                hit_rate: rs.iter().filter_map(|r| r.hit_rate).reduce(f64::min),
                providers: names
                    .into_iter()
                    .map(|n| {
                        (
                            n.clone(),
                            median(
                                rs.iter()
                                    .map(|r| r.providers.get(n).copied().unwrap_or(0) as f64)
                                    .collect(),
                            ) as u64,
                        )
                    })
                    .collect(),
                vs_baseline: base.map(|b| m / b),
                of_bare: bare
                    .filter(|_| !other_queues.contains(label))
                    .map(|b| m / b),
                of_memcpy: memcpy
                    .filter(|_| !other_queues.contains(label))
                    .map(|b| m / b),
                latency_ns: {
                    // A consumer without metadata has no receive times: no latency.
                    let l: Vec<_> = rs
                        .iter()
                        .filter_map(|r| r.latency)
                        .filter(|l| l.samples > 0)
                        .collect();
                    let med = |f: fn(&super::measure::Latency) -> u64| {
                        median(l.iter().map(|x| f(x) as f64).collect()) as u64
                    };
                    (!l.is_empty()).then(|| super::measure::Latency {
                        p50: med(|x| x.p50),
                        p99: med(|x| x.p99),
                        p999: med(|x| x.p999),
                        max: l.iter().map(|x| x.max).max().unwrap_or(0),
                        samples: l.iter().map(|x| x.samples).sum(),
                    })
                },
                consumer_idle_per_frame: {
                    let idle: Vec<f64> = rs.iter().filter_map(|r| r.consumer_idle).collect();
                    (!idle.is_empty()).then(|| median(idle))
                },
                cores: rs.iter().find_map(|r| r.cores.clone()),
                stalls: rs
                    .iter()
                    .filter_map(|r| r.stalls.as_ref())
                    .fold(None, |all: Option<super::stalls::Sample>, s| {
                        let mut all = all.unwrap_or_default();
                        all.merge(s);
                        Some(all)
                    })
                    .and_then(|all| super::stalls::Stalls::of(super::measure::CONSUMER_CPU, &all)),
                wakeups: {
                    let mut all: Vec<u64> = rs
                        .iter()
                        .filter_map(|r| r.wakeups.as_deref())
                        .flatten()
                        .copied()
                        .collect();
                    all.sort_unstable();
                    super::stalls::Wakeups::of(super::measure::CONSUMER_CPU, &all)
                },
                profile_ns_per_frame: rs
                    .iter()
                    .filter_map(|r| r.profile)
                    .reduce(|mut a, b| {
                        a += b;
                        a
                    })
                    .and_then(|t| t.per_frame())
                    .map(|ns| {
                        Stage::ALL
                            .iter()
                            .zip(ns)
                            .map(|(s, n)| (s.name(), n))
                            .collect()
                    }),
            });
        }
    }
    out
}

fn rows(s: &[Summary]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "traffic",
        "config",
        "Mpps",
        "spread",
        "Gbit/s",
        "x baseline",
        "of bare",
        "of memcpy",
        "drops",
        "CPU ns/frame",
        "peak RSS MiB",
        "pool hit rate",
        "latency p50/p99/p99.9 us",
        "idle/frame",
        "buffers per provider",
    ];
    let rows = s
        .iter()
        .map(|s| {
            vec![
                s.traffic.clone(),
                s.variant.clone(),
                format!("{:.3}", s.pps / 1e6),
                format!("{:.1}%", (s.pps_max - s.pps_min) / s.pps * 100.0),
                format!("{:.2}", s.gbps),
                s.vs_baseline.map_or("-".into(), |r| format!("{r:.3}")),
                s.of_bare.map_or("-".into(), |r| format!("{r:.3}")),
                s.of_memcpy.map_or("-".into(), |r| format!("{r:.3}")),
                s.drops.to_string(),
                s.cpu_ns_per_frame.map_or("-".into(), |c| format!("{c:.0}")),
                s.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
                s.hit_rate
                    .map_or("-".into(), |h| format!("{:.2}%", h * 100.0)),
                s.latency_ns.map_or("-".into(), |l| {
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        l.p50 as f64 / 1e3,
                        l.p99 as f64 / 1e3,
                        l.p999 as f64 / 1e3
                    )
                }),
                s.consumer_idle_per_frame
                    .map_or("-".into(), |i| format!("{i:.2}")),
                s.providers
                    .iter()
                    .map(|(n, b)| format!("{n} {b}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    (header, rows)
}

pub fn table(s: &[Summary]) -> comfy_table::Table {
    let (header, rows) = rows(s);
    let mut t = crate::table(&header);
    for r in rows {
        t.add_row(r.into_iter().map(Cell::new));
    }
    t
}

pub fn markdown(s: &[Summary]) -> String {
    let (header, rows) = rows(s);
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// Grouped bars: frames per second per config, one group per traffic.
pub fn plot(path: &Path, s: &[Summary], workloads: &[Workload], labels: &[&str]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = s.iter().map(|s| s.pps_max).fold(0.0, f64::max) / 1e6 * 1.15;
    let groups = workloads.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "memplex bench: frames per second (median, bar = min..max)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups as f64, 0.0..top.max(1e-3))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            workloads.get(i).map_or(String::new(), |t| t.label.clone())
        })
        .y_desc("Mpps")
        .draw()?;
    let width = 0.8 / labels.len() as f64;
    for (k, label) in labels.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars: Vec<_> = s
            .iter()
            .filter(|s| s.variant == *label)
            .filter_map(|s| {
                let g = workloads.iter().position(|t| t.label == s.traffic)? as f64;
                let x0 = g + 0.1 + width * k as f64;
                Some((x0, s))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|(x0, s)| {
                Rectangle::new(
                    [(*x0, 0.0), (x0 + width * 0.9, s.pps / 1e6)],
                    color.filled(),
                )
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(bars.iter().map(|(x0, s)| {
            let mid = x0 + width * 0.45;
            PathElement::new(
                vec![(mid, s.pps_min / 1e6), (mid, s.pps_max / 1e6)],
                BLACK.stroke_width(2),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The per-stage breakdown of `--profile`: ns per frame in each stage of the host's
/// workers, their sum, and what the median rate says a frame took (for a consumer
/// variant, the consumer's rate: the host's stages then show where its share went).
pub fn profile_table(s: &[Summary]) -> comfy_table::Table {
    let mut header = vec!["traffic", "config"];
    header.extend(Stage::ALL.iter().map(|s| s.name()));
    header.extend(["sum", "measured"]);
    let mut t = crate::table(&header);
    for x in s {
        let Some(p) = &x.profile_ns_per_frame else {
            continue;
        };
        let mut row = vec![Cell::new(&x.traffic), Cell::new(&x.variant)];
        let mut sum = 0.0;
        for stage in Stage::ALL {
            let ns = p.get(stage.name()).copied().unwrap_or(0.0);
            sum += ns;
            row.push(Cell::new(format!("{ns:.1}")));
        }
        row.push(Cell::new(format!("{sum:.1}")));
        row.push(Cell::new(if x.pps > 0.0 {
            format!("{:.1}", 1e9 / x.pps)
        } else {
            "-".to_string()
        }));
        t.add_row(row);
    }
    t
}
