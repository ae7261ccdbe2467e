//! Prometheus metrics: requests by RPC and outcome, request latency histograms, and the
//! HSM's calls by operation, served as text on a separate HTTP port (`--metrics-listen`).
//!
//! Names and labels carry RPC and operation names only: never a key id, principal or byte of
//! a request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    4.096,
];

/// Where the HSM's call counts come from (kms-hsm's `HsmKeyStore::call_counts`).
pub type HsmCallCounts = Arc<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

#[derive(Default)]
struct Counters {
    /// Requests by (RPC, outcome).
    requests: BTreeMap<(&'static str, &'static str), u64>,
    /// Latency by RPC.
    latency: BTreeMap<&'static str, Histogram>,
}

/// The metrics of one kmsd.
pub struct Metrics {
    counters: Mutex<Counters>,
    hsm_calls: HsmCallCounts,
}

impl Metrics {
    /// Metrics whose HSM section reads `hsm_calls`.
    pub fn new(hsm_calls: HsmCallCounts) -> Self {
        Metrics {
            counters: Mutex::new(Counters::default()),
            hsm_calls,
        }
    }

    /// Records one request: its RPC, outcome (`success`, `denied`, `failed`) and how long it
    /// took.
    pub fn record(&self, rpc: &'static str, outcome: &'static str, elapsed: Duration) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.requests.entry((rpc, outcome)).or_default() += 1;
        let histogram = counters.latency.entry(rpc).or_default();
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_seconds += seconds;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            out.push_str("# HELP kms_requests_total gRPC requests by RPC and outcome.\n");
            out.push_str("# TYPE kms_requests_total counter\n");
            for ((rpc, outcome), count) in &counters.requests {
                let _ = writeln!(
                    out,
                    "kms_requests_total{{rpc=\"{rpc}\",outcome=\"{outcome}\"}} {count}"
                );
            }
            out.push_str("# HELP kms_request_duration_seconds gRPC request latency by RPC.\n");
            out.push_str("# TYPE kms_request_duration_seconds histogram\n");
            for (rpc, histogram) in &counters.latency {
                for (count, bound) in histogram.buckets.iter().zip(BUCKETS) {
                    let _ = writeln!(
                        out,
                        "kms_request_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"{bound}\"}} {count}"
                    );
                }
                let _ = writeln!(
                    out,
                    "kms_request_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"+Inf\"}} {}\n\
                     kms_request_duration_seconds_sum{{rpc=\"{rpc}\"}} {}\n\
                     kms_request_duration_seconds_count{{rpc=\"{rpc}\"}} {}",
                    histogram.count, histogram.sum_seconds, histogram.count
                );
            }
        }
        out.push_str("# HELP kms_hsm_calls_total Calls made to the HSM, by operation.\n");
        out.push_str("# TYPE kms_hsm_calls_total counter\n");
        for (operation, count) in (self.hsm_calls)() {
            let _ = writeln!(
                out,
                "kms_hsm_calls_total{{operation=\"{operation}\"}} {count}"
            );
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "metrics at http://{address}/metrics");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move {
                    if request.method() == Method::GET && request.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only GET /metrics\n")))
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_hsm_calls() {
        let metrics = Metrics::new(Arc::new(|| vec![("hmac", 3)]));
        metrics.record("Encrypt", "success", Duration::from_micros(700));
        metrics.record("Encrypt", "failed", Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("kms_requests_total{rpc=\"Encrypt\",outcome=\"success\"} 1"));
        assert!(text.contains("kms_requests_total{rpc=\"Encrypt\",outcome=\"failed\"} 1"));
        assert!(
            text.contains("kms_request_duration_seconds_bucket{rpc=\"Encrypt\",le=\"0.001\"} 1")
        );
        assert!(
            text.contains("kms_request_duration_seconds_bucket{rpc=\"Encrypt\",le=\"0.004\"} 2")
        );
        assert!(text.contains("kms_request_duration_seconds_count{rpc=\"Encrypt\"} 2"));
        assert!(text.contains("kms_hsm_calls_total{operation=\"hmac\"} 3"));
    }
}
