//! The Prometheus endpoint of `memplex run`: axum serves `GET /metrics` on a loopback
//! address, and prometheus-client encodes the live stats in the OpenMetrics text format
//! (`# HELP`, `# TYPE`, `_total` counters), each family from [`memplex::stats::families`],
//! the same definitions the JSON comes from.

use anyhow::{Context, Result};
use memplex::stats::{families, Kind, QueueStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The latest per-queue stats, encoded afresh on every scrape.
#[derive(Debug)]
struct Live(Arc<Mutex<Vec<QueueStats>>>);

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let queues = self.0.lock().map(|l| l.clone()).unwrap_or_default();
        for family in families(&queues) {
            let kind = match family.kind {
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
                Kind::Gauge => ConstGauge::new(0i64).metric_type(),
            };
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                match family.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(sample)?,
                    Kind::Gauge => ConstGauge::new(*value as i64).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// The registry behind the endpoint: every family, prefixed `memplex_`.
fn registry(live: Arc<Mutex<Vec<QueueStats>>>) -> Registry {
    let mut r = Registry::with_prefix("memplex");
    r.register_collector(Box::new(Live(live)));
    r
}

/// The metrics text now.
pub fn render(live: &Arc<Mutex<Vec<QueueStats>>>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry(Arc::clone(live)));
    out
}

/// Binds `addr` and serves `GET /metrics` from `live` until the runtime ends.
pub async fn serve(addr: SocketAddr, live: Arc<Mutex<Vec<QueueStats>>>) -> Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("serving metrics on {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render(&live);
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    eprintln!("metrics: http://{addr}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
