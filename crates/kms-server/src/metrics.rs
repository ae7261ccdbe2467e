//! Prometheus metrics: requests by RPC and outcome, request latency histograms, the HSM's
//! calls by operation with their latency and errors, and gauges read at scrape time (session
//! pool, requests in flight, keys by state), served as text on a separate HTTP port
//! (`--metrics-listen`) beside `/livez` and `/readyz` for orchestrators' probes.
//!
//! Names and labels carry RPC and operation names only: never a key id, principal or byte of
//! a request.
//!
//! The registry, counters, histograms and the text format (0.0.4) are the Prometheus project's
//! `prometheus-client`; the gauges read at scrape time are a collector of its. Its text differs
//! from what kmsd wrote by hand before in ways no scraper sees, with the same names, labels,
//! HELP texts and buckets: the series of a family come in no fixed order (they were sorted); a
//! family with no series yet is left out, HELP and TYPE too (`kms_refused_connections_total`
//! before the first refusal); a histogram's `_sum` that is a whole number ends in `.0` (`5.0`,
//! was `5`), and one below a microsecond has an exponent (`1e-7`). The tests pin the rest, line
//! for line, against the hand-written text.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, GaugeValueEncoder, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
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

/// The labels of `kms_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcOutcome {
    rpc: &'static str,
    outcome: &'static str,
}

/// The label of `kms_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    rpc: &'static str,
}

/// The label of the HSM's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

/// The label of `kms_refused_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// Latency histograms, one per label set.
type Latency<S> = Family<S, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The metrics of one kmsd.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcOutcome, Counter>,
    latency: Latency<Rpc>,
    hsm_calls: Family<Operation, Counter>,
    hsm_errors: Family<Operation, Counter>,
    hsm_latency: Latency<Operation>,
    refused_connections: Family<Reason, Counter>,
    gauges: Arc<GaugeSources>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics with no gauges yet.
    pub fn new() -> Self {
        let requests = Family::default();
        let latency = Latency::new_with_constructor(latency_histogram as fn() -> Histogram);
        let hsm_calls = Family::default();
        let hsm_errors = Family::default();
        let hsm_latency = Latency::new_with_constructor(latency_histogram as fn() -> Histogram);
        let refused_connections = Family::default();
        let gauges = Arc::new(GaugeSources::default());
        // The library adds a counter's `_total` and a full stop to each HELP text; the order
        // of registration is the order of the exposition.
        let mut registry = Registry::default();
        registry.register(
            "kms_requests",
            "gRPC requests by RPC and outcome",
            requests.clone(),
        );
        registry.register(
            "kms_request_duration_seconds",
            "gRPC request latency by RPC",
            latency.clone(),
        );
        registry.register(
            "kms_hsm_calls",
            "Calls made to the HSM, by operation",
            hsm_calls.clone(),
        );
        registry.register(
            "kms_hsm_errors",
            "HSM calls that failed, by operation",
            hsm_errors.clone(),
        );
        registry.register(
            "kms_refused_connections",
            "Connections refused before any request (failed TLS handshakes, the connection \
             limit), by reason",
            refused_connections.clone(),
        );
        registry.register(
            "kms_hsm_call_duration_seconds",
            "HSM call latency by operation (without the wait for a session)",
            hsm_latency.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&gauges)));
        Metrics {
            registry,
            requests,
            latency,
            hsm_calls,
            hsm_errors,
            hsm_latency,
            refused_connections,
            gauges,
        }
    }

    /// Adds gauges read from `source` at every scrape.
    pub fn add_gauges(&self, source: GaugeSource) {
        self.gauges
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Records one request: its RPC, outcome (`success`, `denied`, `failed`, `throttled`) and
    /// how long it took.
    pub fn record(&self, rpc: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RpcOutcome { rpc, outcome })
            .inc();
        self.latency
            .get_or_create(&Rpc { rpc })
            .observe(elapsed.as_secs_f64());
    }

    /// The HSM call observer (for kms-hsm) that records into these metrics.
    pub fn hsm_observer(self: &Arc<Self>) -> kms_hsm::CallObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |operation, elapsed, ok| metrics.record_hsm_call(operation, elapsed, ok))
    }

    /// Records one HSM call: its operation, how long it took, whether it succeeded (kms-hsm's
    /// call observer).
    pub fn record_hsm_call(&self, operation: &'static str, elapsed: Duration, ok: bool) {
        // Three series updated one after the other: a scrape between them may see the call
        // counted in one and not yet in another.
        let labels = Operation { operation };
        self.hsm_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.hsm_calls.get_or_create(&labels).inc();
        // An operation's error count is shown from its first call, at 0 until one fails.
        let errors = self.hsm_errors.get_or_create(&labels);
        if !ok {
            errors.inc();
        }
    }

    /// Records a connection refused before any request: a failed or timed-out TLS handshake,
    /// or the connection limit. `reason` is one of a few fixed words.
    pub fn record_refused_connection(&self, reason: &'static str) {
        self.refused_connections
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The gauge sources, a collector the registry asks at every scrape.
#[derive(Default)]
struct GaugeSources(Mutex<Vec<GaugeSource>>);

impl fmt::Debug for GaugeSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GaugeSources")
    }
}

impl Collector for GaugeSources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let sources = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for gauge in sources.iter().flat_map(|source| source()) {
            let mut family =
                encoder.encode_descriptor(gauge.name, gauge.help, None, MetricType::Gauge)?;
            for (label, value) in gauge.samples {
                let value = GaugeValue(value);
                match label {
                    Some(label) => family.encode_family(&[label])?.encode_gauge(&value)?,
                    None => family.encode_gauge(&value)?,
                }
            }
        }
        Ok(())
    }
}

/// A gauge's value, written as a whole number when it is one (`4`, not `4.0`), as kmsd
/// always wrote its gauges (they are counts).
struct GaugeValue(f64);

impl EncodeGaugeValue for GaugeValue {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> Result<(), fmt::Error> {
        /// 2^53: every whole number below it is exact in an f64 and in an i64.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let value = self.0;
        if value.fract() == 0.0 && value.abs() < EXACT {
            #[allow(clippy::cast_possible_truncation, reason = "whole and below 2^53")]
            EncodeGaugeValue::encode(&(value as i64), encoder)
        } else {
            EncodeGaugeValue::encode(&value, encoder)
        }
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
                Ok(Ok(body)) => Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(body))),
                Ok(Err(_)) | Err(_) => {
                    text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
                }
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
        let text = metrics.render().unwrap();
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

    /// The exposition kmsd wrote by hand before it used prometheus-client, for these
    /// observations, line for line: the same families in the same order, with the same HELP,
    /// TYPE, names, labels, buckets and values. Only the order of the series within a family
    /// may differ (it was sorted), so each family's samples are compared sorted.
    const HAND_WRITTEN: &str = r#"# HELP kms_requests_total gRPC requests by RPC and outcome.
# TYPE kms_requests_total counter
kms_requests_total{rpc="Decrypt",outcome="success"} 1
kms_requests_total{rpc="Encrypt",outcome="failed"} 1
kms_requests_total{rpc="Encrypt",outcome="success"} 1
# HELP kms_request_duration_seconds gRPC request latency by RPC.
# TYPE kms_request_duration_seconds histogram
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.00025"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.0005"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.001"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.002"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.004"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.008"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.016"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.032"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.064"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.128"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.256"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="0.512"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="1.024"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="4.096"} 0
kms_request_duration_seconds_bucket{rpc="Decrypt",le="+Inf"} 1
kms_request_duration_seconds_sum{rpc="Decrypt"} 5.5
kms_request_duration_seconds_count{rpc="Decrypt"} 1
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.00025"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.0005"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.001"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.002"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.004"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.008"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.016"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.032"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.064"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.128"} 0
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.256"} 1
kms_request_duration_seconds_bucket{rpc="Encrypt",le="0.512"} 2
kms_request_duration_seconds_bucket{rpc="Encrypt",le="1.024"} 2
kms_request_duration_seconds_bucket{rpc="Encrypt",le="4.096"} 2
kms_request_duration_seconds_bucket{rpc="Encrypt",le="+Inf"} 2
kms_request_duration_seconds_sum{rpc="Encrypt"} 0.75
kms_request_duration_seconds_count{rpc="Encrypt"} 2
# HELP kms_hsm_calls_total Calls made to the HSM, by operation.
# TYPE kms_hsm_calls_total counter
kms_hsm_calls_total{operation="hmac"} 2
# HELP kms_hsm_errors_total HSM calls that failed, by operation.
# TYPE kms_hsm_errors_total counter
kms_hsm_errors_total{operation="hmac"} 1
# HELP kms_refused_connections_total Connections refused before any request (failed TLS handshakes, the connection limit), by reason.
# TYPE kms_refused_connections_total counter
kms_refused_connections_total{reason="handshake"} 1
# HELP kms_hsm_call_duration_seconds HSM call latency by operation (without the wait for a session).
# TYPE kms_hsm_call_duration_seconds histogram
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.00025"} 0
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.0005"} 0
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.001"} 1
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.002"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.004"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.008"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.016"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.032"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.064"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.128"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.256"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="0.512"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="1.024"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="4.096"} 2
kms_hsm_call_duration_seconds_bucket{operation="hmac",le="+Inf"} 2
kms_hsm_call_duration_seconds_sum{operation="hmac"} 0.003
kms_hsm_call_duration_seconds_count{operation="hmac"} 2
# HELP kms_hsm_connected 1 while connected, else 0.
# TYPE kms_hsm_connected gauge
kms_hsm_connected 1
# HELP kms_hsm_sessions Sessions by state.
# TYPE kms_hsm_sessions gauge
kms_hsm_sessions{state="open"} 2
kms_hsm_sessions{state="in_use"} 0
# HELP kms_ratio A fraction.
# TYPE kms_ratio gauge
kms_ratio 0.5
# HELP kms_keys Keys by state.
# TYPE kms_keys gauge
"#;

    /// `text` with the samples of each family sorted, HELP and TYPE first.
    fn sorted_by_family(text: &str) -> Vec<Vec<&str>> {
        let mut families: Vec<Vec<&str>> = Vec::new();
        for line in text.lines() {
            match families.last_mut() {
                Some(family) if !line.starts_with("# HELP") => family.push(line),
                _ => families.push(vec![line]),
            }
        }
        for family in &mut families {
            family[2..].sort_unstable();
        }
        families
    }

    #[test]
    fn the_exposition_is_the_one_kmsd_wrote_by_hand() {
        let metrics = Metrics::new();
        metrics.add_gauges(Box::new(|| {
            vec![
                Gauge {
                    name: "kms_hsm_connected",
                    help: "1 while connected, else 0.",
                    samples: vec![(None, 1.0)],
                },
                Gauge {
                    name: "kms_hsm_sessions",
                    help: "Sessions by state.",
                    samples: vec![
                        (Some(("state", "open")), 2.0),
                        (Some(("state", "in_use")), 0.0),
                    ],
                },
            ]
        }));
        metrics.add_gauges(Box::new(|| {
            vec![
                Gauge {
                    name: "kms_ratio",
                    help: "A fraction.",
                    samples: vec![(None, 0.5)],
                },
                Gauge {
                    name: "kms_keys",
                    help: "Keys by state.",
                    samples: vec![],
                },
            ]
        }));
        metrics.record("Encrypt", "success", Duration::from_millis(500));
        metrics.record("Encrypt", "failed", Duration::from_millis(250));
        metrics.record("Decrypt", "success", Duration::from_millis(5_500));
        metrics.record_hsm_call("hmac", Duration::from_millis(1), true);
        metrics.record_hsm_call("hmac", Duration::from_millis(2), false);
        metrics.record_refused_connection("handshake");
        let text = metrics.render().unwrap();
        assert_eq!(
            sorted_by_family(&text),
            sorted_by_family(HAND_WRITTEN),
            "\n{text}"
        );
    }

    /// A family with no series yet is left out, HELP and TYPE too (the hand-written
    /// exposition listed them empty).
    #[test]
    fn families_without_series_are_left_out() {
        assert_eq!(Metrics::new().render().unwrap(), "");
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
