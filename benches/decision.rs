//! Extraction + decision on 1 KB and 100 KB responses of several shapes, against the cost of
//! merely parsing the same bytes as JSON (the floor any reader of the response pays), and the
//! same decision with `review.target_rate` (the route's confidence sketch) against without.
//!
//! `cargo bench --bench decision -- --quick` runs it briefly; a ratio table closes the run.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use reviewloop::config::Config;
use reviewloop::decision::DecisionInput;
use reviewloop::route::RouteTable;
use serde_json::{Value, json};

/// A Hugging Face batch: every input with all labels' scores.
fn huggingface(target: usize) -> Vec<u8> {
    grow(target, |i| {
        json!([
            {"label": "POSITIVE", "score": 0.5 + (i % 50) as f64 / 101.0},
            {"label": "NEGATIVE", "score": 0.5 - (i % 50) as f64 / 101.0}
        ])
    })
}

/// A KServe v2 answer: one `[N, 10]` probability tensor beside a label tensor.
fn kserve_v2(target: usize) -> Vec<u8> {
    let mut rows = 1;
    loop {
        let data: Vec<f64> = (0..rows * 10)
            .map(|i| if i % 10 == 0 { 0.91 } else { 0.01 })
            .collect();
        let labels: Vec<u64> = (0..rows).map(|r| r as u64 % 10).collect();
        let body = json!({"model_name": "m", "id": "1", "outputs": [
            {"name": "label", "shape": [rows], "datatype": "INT64", "data": labels},
            {"name": "probabilities", "shape": [rows, 10], "datatype": "FP32", "data": data}
        ]});
        let bytes = serde_json::to_vec(&body).unwrap();
        if bytes.len() >= target {
            return bytes;
        }
        rows = (rows * 2).max(rows + 1);
    }
}

/// An OpenAI chat completion streamed as server-sent events, one token per chunk.
fn openai_stream(target: usize) -> Vec<u8> {
    let mut body = String::new();
    let mut i = 0;
    while body.len() < target {
        let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": " tok"},
            "logprobs": {"content": [{"token": " tok", "logprob": -0.01 * (i % 7) as f64,
            "bytes": [32, 116, 111, 107], "top_logprobs": []}]}, "finish_reason": null}]});
        body.push_str(&format!("data: {chunk}\n\n"));
        i += 1;
    }
    body.push_str("data: [DONE]\n\n");
    body.into_bytes()
}

/// A Rekognition moderation answer, decided by the A2I example conditions file.
fn rekognition(target: usize) -> Vec<u8> {
    let labels = grow_list(
        target,
        |i| json!({"Confidence": 50.0 + (i % 50) as f64, "Name": format!("Label {i}"), "ParentName": "Explicit Nudity"}),
    );
    serde_json::to_vec(&json!({"ModerationLabels": labels, "ModerationModelVersion": "7.0"}))
        .unwrap()
}

fn grow_list(target: usize, item: impl Fn(usize) -> Value) -> Vec<Value> {
    let mut items = Vec::new();
    let mut size = 0;
    while size < target {
        let value = item(items.len());
        size += value.to_string().len() + 1;
        items.push(value);
    }
    items
}

fn grow(target: usize, item: impl Fn(usize) -> Value) -> Vec<u8> {
    serde_json::to_vec(&Value::Array(grow_list(target, item))).unwrap()
}

/// The floor: parsing the body's JSON (each event's, for a stream) and nothing else.
fn parse_only(body: &[u8]) -> usize {
    if body.starts_with(b"data:") {
        std::str::from_utf8(body)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .count()
    } else {
        usize::from(serde_json::from_slice::<Value>(body).is_ok())
    }
}

/// The routes of a configuration; `/invocations` has the top-level policy.
fn decider(conditions: bool) -> Arc<RouteTable> {
    routes(if conditions {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/conditions.example.json"
        );
        format!("[review]\nconditions_file = {path:?}\n")
    } else {
        "[review]\nconfidence_below = 0.7\nsample_percent = 1\nbudget_per_second = 0\n".to_owned()
    })
}

/// The simple keys with a target rate, warmed up from the first response.
fn target_decider() -> Arc<RouteTable> {
    routes(
        "[review]\nconfidence_below = 1\nsample_percent = 1\ntarget_rate = 0.05\ntarget_warmup = 0\n"
            .to_owned(),
    )
}

fn routes(toml: String) -> Arc<RouteTable> {
    Config::from_toml_with_env(&toml, "bench.toml", Vec::new())
        .unwrap()
        .routes
}

fn benches(c: &mut Criterion) {
    type Shape = fn(usize) -> Vec<u8>;
    let cases: [(&str, Shape, Option<&str>, bool); 4] = [
        ("huggingface", huggingface, Some("application/json"), false),
        ("kserve-v2", kserve_v2, Some("application/json"), false),
        (
            "openai-sse",
            openai_stream,
            Some("text/event-stream"),
            false,
        ),
        (
            "rekognition+a2i",
            rekognition,
            Some("application/x-amz-json-1.1"),
            true,
        ),
    ];
    let plain = decider(false);
    let with_conditions = decider(true);
    let targeted = target_decider();
    for (name, shape, content_type, conditions) in cases {
        let routes = if conditions { &with_conditions } else { &plain };
        let decider = routes.resolve("/invocations").policy();
        let mut group = c.benchmark_group(name);
        for (size_name, size) in [("1KB", 1024), ("100KB", 100 * 1024)] {
            let body = shape(size);
            let case = format!("{name}/{size_name}");
            CASES.with(|cases| cases.borrow_mut().push((name, size_name)));
            let input = DecisionInput {
                id: "0192a6c1-7a4e-7cc3-9e0f-53c7b5a4b1d2",
                request_body: b"{}",
                response_content_type: content_type,
                response_body: &body,
                force: None,
            };
            assert!(
                decider.decide(&input, Instant::now()).confidence.is_some(),
                "{case}: the benchmark must read a confidence"
            );
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(
                BenchmarkId::new("parse-json", size_name),
                &body,
                |b, body| b.iter(|| parse_only(black_box(body))),
            );
            group.bench_with_input(BenchmarkId::new("decide", size_name), &input, |b, input| {
                let now = Instant::now();
                b.iter(|| decider.decide(black_box(input), now))
            });
            if !conditions {
                let targeted = targeted.resolve("/invocations").policy();
                group.bench_with_input(
                    BenchmarkId::new("decide-target", size_name),
                    &input,
                    |b, input| {
                        let start = Instant::now();
                        let mut tick = 0u32;
                        b.iter(|| {
                            // Time moves on (1 ms a decision), so the sketch decays as it would.
                            tick = tick.wrapping_add(1);
                            let now = start + std::time::Duration::from_millis(u64::from(tick));
                            targeted.decide(black_box(input), now)
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

thread_local! {
    /// The (group, size) pairs benchmarked, in order, for the closing table.
    static CASES: std::cell::RefCell<Vec<(&'static str, &'static str)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Where criterion keeps its results, as it decides by default (so `target/criterion` holds the
/// usual reports), made explicit so the summary below can read them back.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        Path::new(&target).join("criterion")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion")
    }
}

/// Criterion's median estimate of one benchmark in this run, in seconds.
fn median(dir: &Path, group: &str, function: &str, size: &str) -> Option<f64> {
    let path = dir
        .join(group)
        .join(function)
        .join(size)
        .join("new/estimates.json");
    let estimates: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(estimates["median"]["point_estimate"].as_f64()? * 1e-9)
}

fn print_ratios(dir: &Path) {
    println!("\nextraction + decision vs. parsing the same bytes (criterion's medians, this run)");
    println!(
        "{:<24} {:>12} {:>12} {:>8} {:>14} {:>10}",
        "case", "parse-json", "decide", "ratio", "decide-target", "vs decide"
    );
    for (group, size) in CASES.with(|cases| cases.borrow().clone()) {
        let parse = median(dir, group, "parse-json", size);
        let decide = median(dir, group, "decide", size);
        let target = median(dir, group, "decide-target", size);
        if let (Some(parse), Some(decide)) = (parse, decide) {
            let (target, versus) = match target {
                Some(t) => (format!("{:.1}µs", t * 1e6), format!("{:.2}×", t / decide)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            println!(
                "{:<24} {:>10.1}µs {:>10.1}µs {:>7.2}× {:>14} {:>10}",
                format!("{group}/{size}"),
                parse * 1e6,
                decide * 1e6,
                decide / parse,
                target,
                versus
            );
        }
    }
}

fn main() {
    let dir = criterion_dir();
    let mut criterion = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    print_ratios(&dir);
}
