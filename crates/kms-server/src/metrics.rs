//! Prometheus metrics: requests by RPC and outcome, request latency histograms, the HSM's
//! calls by operation with their latency and errors, and gauges read at scrape time (session
//! pool, requests in flight, keys by state), served as text on a separate HTTP port
//! (`--metrics-listen`) beside `/livez` and `/readyz` for orchestrators' probes.
//!
//! Names and labels carry RPC and operation names only: never a key id, principal or byte of
//! a request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A gauge read when the metrics are scraped: its samples, each with at most one label.
pub struct Gauge {
    /// The metric's name.
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// The samples: an optional (label name, label value), and the value.
    pub samples: Vec<(Option<(&'static str, &'static str)>, f64)>,
}

/// Where gauges come from: called at every scrape, on a blocking thread.
pub type GaugeSource = Box<dyn Fn() -> Vec<Gauge> + Send + Sync>;

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (count, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {count}\n\
             {name}_sum{{{label}=\"{value}\"}} {sum}\n\
             {name}_count{{{label}=\"{value}\"}} {count}",
            count = self.count,
            sum = self.sum_seconds,
        );
    }
}

#[derive(Default)]
struct Counters {
    /// Requests by (RPC, outcome).
    requests: BTreeMap<(&'static str, &'static str), u64>,
    /// Latency by RPC.
    latency: BTreeMap<&'static str, Histogram>,
    /// HSM calls by operation: latency, and the count of failures.
    hsm: BTreeMap<&'static str, (Histogram, u64)>,
    /// Connections refused before any request, by reason.
    refused_connections: BTreeMap<&'static str, u64>,
}

/// The metrics of one kmsd.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    gauges: Mutex<Vec<GaugeSource>>,
}

impl Metrics {
    /// Metrics with no gauges yet.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds gauges read from `source` at every scrape.
    pub fn add_gauges(&self, source: GaugeSource) {
        self.gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Records one request: its RPC, outcome (`success`, `denied`, `failed`, `throttled`) and
    /// how long it took.
    pub fn record(&self, rpc: &'static str, outcome: &'static str, elapsed: Duration) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.requests.entry((rpc, outcome)).or_default() += 1;
        counters.latency.entry(rpc).or_default().observe(elapsed);
    }

    /// The HSM call observer (for kms-hsm) that records into these metrics.
    pub fn hsm_observer(self: &Arc<Self>) -> kms_hsm::CallObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |operation, elapsed, ok| metrics.record_hsm_call(operation, elapsed, ok))
    }

    /// Records one HSM call: its operation, how long it took, whether it succeeded (kms-hsm's
    /// call observer).
    pub fn record_hsm_call(&self, operation: &'static str, elapsed: Duration, ok: bool) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let (histogram, errors) = counters.hsm.entry(operation).or_default();
        histogram.observe(elapsed);
        if !ok {
            *errors += 1;
        }
    }

    /// Records a connection refused before any request: a failed or timed-out TLS handshake,
    /// or the connection limit. `reason` is one of a few fixed words.
    pub fn record_refused_connection(&self, reason: &'static str) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.refused_connections.entry(reason).or_default() += 1;
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
                histogram.render(&mut out, "kms_request_duration_seconds", "rpc", rpc);
            }
            out.push_str("# HELP kms_hsm_calls_total Calls made to the HSM, by operation.\n");
            out.push_str("# TYPE kms_hsm_calls_total counter\n");
            for (operation, (histogram, _)) in &counters.hsm {
                let _ = writeln!(
                    out,
                    "kms_hsm_calls_total{{operation=\"{operation}\"}} {}",
                    histogram.count
                );
            }
            out.push_str("# HELP kms_hsm_errors_total HSM calls that failed, by operation.\n");
            out.push_str("# TYPE kms_hsm_errors_total counter\n");
            for (operation, (_, errors)) in &counters.hsm {
                let _ = writeln!(
                    out,
                    "kms_hsm_errors_total{{operation=\"{operation}\"}} {errors}"
                );
            }
            out.push_str(
                "# HELP kms_refused_connections_total Connections refused before any request \
                 (failed TLS handshakes, the connection limit), by reason.\n",
            );
            out.push_str("# TYPE kms_refused_connections_total counter\n");
            for (reason, count) in &counters.refused_connections {
                let _ = writeln!(
                    out,
                    "kms_refused_connections_total{{reason=\"{reason}\"}} {count}"
                );
            }
            out.push_str(
                "# HELP kms_hsm_call_duration_seconds HSM call latency by operation (without \
                 the wait for a session).\n",
            );
            out.push_str("# TYPE kms_hsm_call_duration_seconds histogram\n");
            for (operation, (histogram, _)) in &counters.hsm {
                histogram.render(
                    &mut out,
                    "kms_hsm_call_duration_seconds",
                    "operation",
                    operation,
                );
            }
        }
        let gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        for gauge in gauges.iter().flat_map(|source| source()) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge",
                name = gauge.name,
                help = gauge.help
            );
            for (label, value) in gauge.samples {
                match label {
                    Some((label, label_value)) => {
                        let _ =
                            writeln!(out, "{}{{{label}=\"{label_value}\"}} {value}", gauge.name);
                    }
                    None => {
                        let _ = writeln!(out, "{} {value}", gauge.name);
                    }
                }
            }
        }
        out
    }
}

/// Serves, on `listener` until the task is dropped: `GET /metrics`; `GET /livez`, 200 while
/// the process runs; `GET /readyz`, 200 while `ready` (the health service says SERVING), else
/// 503.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "metrics at http://{address}/metrics (probes: /livez, /readyz)");
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
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                let ready = ready.load(Ordering::SeqCst);
                async move { answer(request.method(), request.uri().path(), metrics, ready).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    method: &Method,
    path: &str,
    metrics: Arc<Metrics>,
    ready: bool,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    let text = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
    };
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/metrics" => {
            // Gauges may read the store: not on an async worker.
            let rendered = tokio::task::spawn_blocking(move || metrics.render()).await;
            match rendered {
                Ok(body) => Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(body))),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n"),
            }
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "SERVING\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n"),
        _ => text(StatusCode::NOT_FOUND, "GET /metrics, /livez or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_hsm_calls_and_gauges() {
        let metrics = Metrics::new();
        metrics.add_gauges(Box::new(|| {
            vec![Gauge {
                name: "kms_keys",
                help: "Keys by state.",
                samples: vec![(Some(("state", "Enabled")), 4.0)],
            }]
        }));
        metrics.record("Encrypt", "success", Duration::from_micros(700));
        metrics.record("Encrypt", "failed", Duration::from_millis(3));
        metrics.record_hsm_call("hmac", Duration::from_micros(100), true);
        metrics.record_hsm_call("hmac", Duration::from_millis(2), false);
        let text = metrics.render();
        for line in [
            "kms_requests_total{rpc=\"Encrypt\",outcome=\"success\"} 1",
            "kms_requests_total{rpc=\"Encrypt\",outcome=\"failed\"} 1",
            "kms_request_duration_seconds_bucket{rpc=\"Encrypt\",le=\"0.001\"} 1",
            "kms_request_duration_seconds_bucket{rpc=\"Encrypt\",le=\"0.004\"} 2",
            "kms_request_duration_seconds_count{rpc=\"Encrypt\"} 2",
            "kms_hsm_calls_total{operation=\"hmac\"} 2",
            "kms_hsm_errors_total{operation=\"hmac\"} 1",
            "kms_hsm_call_duration_seconds_bucket{operation=\"hmac\",le=\"0.00025\"} 1",
            "kms_hsm_call_duration_seconds_count{operation=\"hmac\"} 2",
            "# TYPE kms_keys gauge",
            "kms_keys{state=\"Enabled\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn readyz_follows_the_health_and_livez_always_answers() {
        let metrics = Arc::new(Metrics::new());
        let status = |path: &'static str, ready: bool| {
            let metrics = Arc::clone(&metrics);
            async move {
                answer(&Method::GET, path, metrics, ready)
                    .await
                    .map(|r| r.status())
                    .ok()
            }
        };
        assert_eq!(status("/readyz", true).await, Some(StatusCode::OK));
        assert_eq!(
            status("/readyz", false).await,
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(status("/livez", false).await, Some(StatusCode::OK));
        assert_eq!(status("/metrics", false).await, Some(StatusCode::OK));
        assert_eq!(status("/other", true).await, Some(StatusCode::NOT_FOUND));
    }
}
