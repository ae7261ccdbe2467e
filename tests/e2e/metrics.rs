//! kmsd's Prometheus exposition, read with a real parser of the text format
//! (`prometheus-parse`) and checked against the format's rules as a whole, whatever metrics
//! kmsd has; then the counters of a known series of RPCs.
//!
//! prometheus-parse is lenient: it silently skips a line it cannot read, reads a histogram's
//! `_sum` and `_count` as untyped, and splits labels on `,` and `=` without unescaping. So
//! [`scrape`] also reads the text line by line with the parser's own line reader and fails on
//! anything it would have dropped or misread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;

use kms_e2e::TestEnv;
use prometheus_parse::{HistogramCount, LineInfo, SampleType, Scrape, Value};
use tonic::Code;

use crate::{ctx, expect_error};

/// A parsed and checked scrape of `/metrics`.
pub struct Exposition {
    scrape: Scrape,
    /// Each family's type, by family name (a histogram's name without `_bucket`).
    types: BTreeMap<String, SampleType>,
}

/// Fetches `url` (kmsd's `/metrics`) and parses it with [`Exposition::parse`]; checks the
/// content type of the text format 0.0.4.
pub fn scrape(url: &str) -> Exposition {
    let out = Command::new("curl")
        .args(["-sS", "-f", "--dump-header", "-", url])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let answer = String::from_utf8(out.stdout).expect("/metrics is UTF-8");
    assert!(
        out.status.success(),
        "curl {url}: {answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (headers, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {answer}"));
    let content_type = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim())
        })
        .unwrap_or_else(|| panic!("no content type: {headers}"));
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    Exposition::parse(body).unwrap_or_else(|e| panic!("{url}: {e}\n{body}"))
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($message)+));
        }
    };
}

impl Exposition {
    /// Parses `text` with prometheus-parse and checks, for every family whatever its name:
    /// every line is a comment, a HELP, a TYPE or a sample the parser reads, and none is
    /// dropped; each family has one HELP and one TYPE, before its samples, and its lines form
    /// one group; no series appears twice; label names and values are plain; counters end in
    /// `_total` and are finite and non-negative; each histogram series has its buckets in
    /// increasing order of `le`, cumulative, ending with `+Inf` equal to `_count`, and a
    /// `_sum`. `Err` says what is wrong, and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut types = BTreeMap::new();
        let mut helps = HashSet::new();
        // The family whose lines are being read, and those already finished.
        let mut current: Option<String> = None;
        let mut finished = HashSet::new();
        let mut series = HashSet::new();
        let mut sample_lines = 0;
        for (n, line) in text.lines().enumerate() {
            let at = format!("line {}: {line:?}", n + 1);
            let family = match LineInfo::parse(line) {
                LineInfo::Empty => continue,
                LineInfo::Ignored => {
                    // A comment other than HELP or TYPE is allowed; anything else is a line
                    // the parser cannot read.
                    ensure!(line.starts_with('#'), "not Prometheus text, {at}");
                    ensure!(
                        !line.contains("HELP") && !line.contains("TYPE"),
                        "a malformed HELP or TYPE, {at}"
                    );
                    continue;
                }
                LineInfo::Doc { metric_name, .. } => {
                    ensure!(helps.insert(metric_name.to_owned()), "second HELP, {at}");
                    metric_name.to_owned()
                }
                LineInfo::Type {
                    metric_name,
                    metric_alias,
                    sample_type,
                } => {
                    let family = metric_alias.unwrap_or(metric_name);
                    ensure!(
                        matches!(
                            line.split_whitespace().nth(3),
                            Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                        ),
                        "unknown type, {at}"
                    );
                    ensure!(
                        types.insert(family.clone(), sample_type).is_none(),
                        "second TYPE, {at}"
                    );
                    // A TYPE after its family's samples cannot pass: those samples found no
                    // TYPE before them.
                    family
                }
                LineInfo::Sample {
                    metric_name,
                    labels,
                    value,
                    timestamp,
                } => {
                    sample_lines += 1;
                    ensure!(timestamp.is_none(), "kmsd sets no timestamps, {at}");
                    let value = parse_value(value).ok_or_else(|| format!("bad value, {at}"))?;
                    check_labels(labels.unwrap_or_default()).map_err(|e| format!("{e}, {at}"))?;
                    let family = family_of(metric_name, &types)
                        .ok_or_else(|| format!("a sample without a TYPE before it, {at}"))?;
                    if types[&family] == SampleType::Counter {
                        ensure!(metric_name.ends_with("_total"), "counter name, {at}");
                        ensure!(value.is_finite() && value >= 0.0, "counter value, {at}");
                    }
                    let mut sorted: Vec<&str> = labels.unwrap_or_default().split(',').collect();
                    sorted.sort_unstable();
                    ensure!(
                        series.insert((metric_name.to_owned(), sorted.join(","))),
                        "a series appears twice, {at}"
                    );
                    family
                }
            };
            if current.as_ref() != Some(&family) {
                ensure!(
                    !finished.contains(&family),
                    "the lines of {family} are not one group, {at}"
                );
                finished.extend(current.replace(family));
            }
        }
        for family in types.keys() {
            ensure!(helps.contains(family), "{family} has no HELP");
        }
        for family in &helps {
            ensure!(
                types.contains_key(family),
                "{family} has a HELP but no TYPE"
            );
        }

        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .map_err(|e| format!("prometheus-parse: {e}"))?;
        let parsed: usize = scrape
            .samples
            .iter()
            .map(|s| match &s.value {
                Value::Histogram(buckets) => buckets.len(),
                Value::Summary(quantiles) => quantiles.len(),
                _ => 1,
            })
            .sum();
        ensure!(
            parsed == sample_lines,
            "prometheus-parse read {parsed} of {sample_lines} samples"
        );
        let exposition = Exposition { scrape, types };
        exposition.check_histograms()?;
        Ok(exposition)
    }

    /// Every histogram series: buckets in increasing order of `le`, cumulative, the last
    /// `+Inf` and equal to `_count`; a `_sum`.
    // Counts are whole numbers, exact in an f64.
    #[allow(clippy::float_cmp)]
    fn check_histograms(&self) -> Result<(), String> {
        for sample in &self.scrape.samples {
            let Value::Histogram(buckets) = &sample.value else {
                continue;
            };
            let name = &sample.metric;
            let series = format!("{name}{{{}}}", sample.labels);
            ensure!(
                self.types.get(name) == Some(&SampleType::Histogram),
                "{series} is not a histogram"
            );
            for pair in buckets.windows(2) {
                ensure!(
                    pair[0].less_than < pair[1].less_than,
                    "{series}: le not increasing: {buckets:?}"
                );
                ensure!(
                    pair[0].count <= pair[1].count,
                    "{series}: buckets not cumulative: {buckets:?}"
                );
            }
            ensure!(
                buckets
                    .iter()
                    .all(|b| b.count >= 0.0 && b.count.fract() == 0.0),
                "{series}: a bucket count is not a whole number: {buckets:?}"
            );
            let last = buckets
                .last()
                .ok_or_else(|| format!("{series} has no bucket"))?;
            ensure!(
                last.less_than == f64::INFINITY,
                "{series}: the last bucket is not +Inf: {buckets:?}"
            );
            let labels: Vec<(&str, &str)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = self
                .value(&format!("{name}_count"), &labels)
                .ok_or_else(|| format!("{series} has no _count"))?;
            ensure!(
                last.count == count,
                "{series}: the +Inf bucket ({}) is not _count ({count})",
                last.count
            );
            let sum = self
                .value(&format!("{name}_sum"), &labels)
                .ok_or_else(|| format!("{series} has no _sum"))?;
            ensure!(sum.is_finite() && sum >= 0.0, "{series}: _sum {sum}");
        }
        Ok(())
    }

    /// The families and their types.
    pub fn types(&self) -> &BTreeMap<String, SampleType> {
        &self.types
    }

    /// The value of the counter, gauge or untyped sample (a histogram's `_sum` and `_count`
    /// included) `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            Value::Histogram(_) | Value::Summary(_) => None,
        })
    }

    /// The buckets of the histogram `name` (without `_bucket`) with exactly `labels` (`le`
    /// aside).
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&[HistogramCount]> {
        self.find(name, labels).and_then(|s| match &s.value {
            Value::Histogram(buckets) => Some(buckets.as_slice()),
            _ => None,
        })
    }

    /// Every sample of the family `name` (counters, gauges: the metric itself), with its
    /// labels and value.
    pub fn samples(&self, name: &str) -> Vec<(HashMap<String, String>, f64)> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                    Some(((*s.labels).clone(), v))
                }
                Value::Histogram(_) | Value::Summary(_) => None,
            })
            .collect()
    }

    /// Every label (name, value) of every sample.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.scrape
            .samples
            .iter()
            .flat_map(|s| s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&prometheus_parse::Sample> {
        self.scrape.samples.iter().find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }
}

/// The family a sample named `name` belongs to: itself, or the histogram or summary whose
/// `_bucket`, `_sum` or `_count` it is.
fn family_of(name: &str, types: &BTreeMap<String, SampleType>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        match types.get(base) {
            Some(SampleType::Histogram) => Some(base.to_owned()),
            Some(SampleType::Summary) if *suffix != "_bucket" => Some(base.to_owned()),
            _ => None,
        }
    })
}

/// A sample value as the text format writes it: a Go float, `+Inf`, `-Inf` or `NaN`.
fn parse_value(value: &str) -> Option<f64> {
    match value {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

/// `labels` (the text between the braces) is `name="value"` pairs separated by commas, with
/// names `[a-zA-Z_][a-zA-Z0-9_]*` not starting `__`, and values prometheus-parse reads as
/// written: none of `"`, `\`, `,`, `=`, `{`, `}` or a line break, which it cannot unescape
/// or would split on.
fn check_labels(labels: &str) -> Result<(), String> {
    if labels.is_empty() {
        return Ok(());
    }
    let mut names = HashSet::new();
    for pair in labels.split(',') {
        let (name, quoted) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not name=\"value\""))?;
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with("__");
        ensure!(valid_name, "label name {name:?}");
        ensure!(names.insert(name), "label {name} twice");
        let value = quoted
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("label value {quoted} is not quoted"))?;
        ensure!(
            !value.contains(['"', '\\', ',', '=', '{', '}', '\n']),
            "label value {value:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
// Counts are whole numbers, exact in an f64.
#[allow(clippy::float_cmp)]
async fn metrics_parse_as_prometheus_text_and_count_each_rpc_and_derivation() {
    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.extend(["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let kmsd = env.start_with(&args, &[]).unwrap();
    let url = kmsd.metrics_url();

    // Before any request the exposition is already well formed; whatever the HSM did at
    // startup (the audit key) is the baseline.
    let before = scrape(&url);
    let hmac_before = before
        .value("kms_hsm_calls_total", &[("operation", "hmac")])
        .unwrap_or(0.0);

    let mut c = kmsd.client().await;
    let key = c.create_key("metered").await.unwrap().key_id;
    let mut blobs = Vec::new();
    for i in 0..3 {
        let plaintext = format!("metered {i}");
        let r = c
            .encrypt(&key, plaintext.as_bytes(), &ctx(&[("app", "metrics")]))
            .await
            .unwrap();
        blobs.push(r.ciphertext_blob);
    }
    c.decrypt(&blobs[0], &ctx(&[("app", "metrics")]), None)
        .await
        .unwrap();
    // Wrong context: the key is derived in the HSM, then the commitment or tag fails.
    expect_error(
        c.decrypt(&blobs[1], &ctx(&[("app", "other")]), None).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    for _ in 0..2 {
        c.generate_data_key(&key, &ctx(&[]), kms_client::DataKeySize::Aes256)
            .await
            .unwrap();
    }
    // Failed before the HSM: no such key.
    expect_error(
        c.encrypt("00000000-0000-4000-8000-000000000000", b"x", &ctx(&[]))
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    // Denied: a key whose policy lets only someone else use it.
    let locked = c.create_key("locked").await.unwrap().key_id;
    c.put_key_policy(
        &locked,
        r#"{"Statement":[{"Effect":"Allow","Principal":"spiffe://kms.test/someone-else","Action":"kms:*"}]}"#,
        true,
    )
    .await
    .unwrap();
    expect_error(
        c.encrypt(&locked, b"x", &ctx(&[])).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    // 3 Encrypt, 1 Decrypt, 1 failed Decrypt, 2 GenerateDataKey.
    let derivations = 7.0;

    let after = scrape(&url);
    println!("metric families: {:?}", after.types());
    for family in [
        "kms_requests_total",
        "kms_request_duration_seconds",
        "kms_hsm_calls_total",
    ] {
        assert!(after.types().contains_key(family), "no {family}");
    }
    assert_eq!(
        after.types()["kms_request_duration_seconds"],
        SampleType::Histogram
    );
    let expected: BTreeMap<(&str, &str), f64> = [
        (("CreateKey", "success"), 2.0),
        (("Encrypt", "success"), 3.0),
        (("Encrypt", "failed"), 1.0),
        (("Encrypt", "denied"), 1.0),
        (("Decrypt", "success"), 1.0),
        (("Decrypt", "failed"), 1.0),
        (("GenerateDataKey", "success"), 2.0),
        (("PutKeyPolicy", "success"), 1.0),
    ]
    .into();
    let mut by_rpc: BTreeMap<&str, f64> = BTreeMap::new();
    for ((rpc, outcome), count) in &expected {
        assert_eq!(
            after.value("kms_requests_total", &[("rpc", rpc), ("outcome", outcome)]),
            Some(*count),
            "kms_requests_total{{rpc={rpc:?},outcome={outcome:?}}}"
        );
        *by_rpc.entry(rpc).or_default() += count;
    }
    // Any other series (say, pre-registered at zero) counted nothing.
    for (labels, value) in after.samples("kms_requests_total") {
        let rpc = labels.get("rpc").map_or("", String::as_str);
        let outcome = labels.get("outcome").map_or("", String::as_str);
        if !expected.contains_key(&(rpc, outcome)) {
            assert_eq!(value, 0.0, "kms_requests_total{labels:?}");
        }
    }
    // One latency observation per request, whatever its outcome.
    for (rpc, count) in &by_rpc {
        let buckets = after
            .histogram("kms_request_duration_seconds", &[("rpc", rpc)])
            .unwrap_or_else(|| panic!("no latency histogram for {rpc}"));
        assert_eq!(buckets.last().map(|b| b.count), Some(*count), "{rpc}");
    }
    // One HSM derivation per symmetric Encrypt, Decrypt and GenerateDataKey, failed Decrypt
    // included; none for a request refused before the key was used.
    assert_eq!(
        after.value("kms_hsm_calls_total", &[("operation", "hmac")]),
        Some(hmac_before + derivations),
        "HSM derivations"
    );
    // Metrics name RPCs, outcomes and operations: never a key.
    for (name, value) in after.labels() {
        assert!(
            name != "key_id" && value != key && value != locked,
            "a key id in the metrics: {name}={value}"
        );
    }
}

#[test]
fn the_checks_refuse_what_prometheus_would_not_read() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 0.5\nh_count 2\n";
    let parsed = Exposition::parse(good).unwrap();
    assert_eq!(parsed.value("a_total", &[("x", "1")]), Some(2.0));
    assert_eq!(parsed.histogram("h", &[]).map(<[_]>::len), Some(2));
    let histogram = |buckets: &str, count: u32| {
        format!("# HELP h2 H.\n# TYPE h2 histogram\n{buckets}h2_sum 1\nh2_count {count}\n")
    };
    for (bad, why) in [
        ("garbage\n".to_owned(), "not Prometheus text"),
        ("a_total{x=\"1\"} two\n".to_owned(), "bad value"),
        ("a_total{x=1} 2\n".to_owned(), "not quoted"),
        ("a_total{x=\"a,b\"} 2\n".to_owned(), "label"),
        ("b 1\n".to_owned(), "without a TYPE"),
        ("a_total{x=\"1\"} 3\n".to_owned(), "twice"),
        ("a_total{x=\"2\"} 3\n".to_owned(), "not one group"),
        ("# TYPE c_total counter\nc_total 1\n".to_owned(), "no HELP"),
        (
            "# HELP c C.\n# TYPE c counter\nc 1\n".to_owned(),
            "counter name",
        ),
        (
            histogram("h2_bucket{le=\"1\"} 3\nh2_bucket{le=\"+Inf\"} 2\n", 2),
            "not cumulative",
        ),
        (
            histogram("h2_bucket{le=\"1\"} 1\nh2_bucket{le=\"+Inf\"} 2\n", 3),
            "is not _count",
        ),
        (histogram("h2_bucket{le=\"1\"} 1\n", 1), "not +Inf"),
    ] {
        match Exposition::parse(&format!("{good}{bad}")) {
            Ok(_) => panic!("accepted {bad:?}"),
            Err(e) => assert!(e.contains(why), "{bad:?}: {e}"),
        }
    }
}
