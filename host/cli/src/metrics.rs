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
use std::time::Duration;

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

/// At most this many scrapes at once; a connection past it is closed at once.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it is doing.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves `GET /metrics` from `live` until the runtime ends.
///
/// The loop outlives what a scraper or an attacker on loopback can do to it: an accept
/// error (out of file descriptors, say) is logged and retried after a pause, not the end
/// of the endpoint; idle clients are cut off after [`HEADER_TIMEOUT`] (and every
/// connection after [`CONNECTION_TIMEOUT`]); and at most [`MAX_CONNECTIONS`] are served
/// at once.
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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                drop(slot);
            });
        }
    });
    Ok(())
}
