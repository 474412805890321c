//! The cost of `[redact]` per diverted record on a 1 KB JSON request, against building the
//! record itself (parsing both bodies into it): what redaction adds to each review.
//!
//! `cargo bench --bench redact -- --quick` runs it briefly; a ratio table closes the run.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use criterion::Criterion;
use reviewloop::config::Config;
use reviewloop::decision::Decision;
use reviewloop::exchange::{Captured, Exchange};
use reviewloop::record::Reason;
use reviewloop::review::review_record;
use reviewloop::route::RouteTable;
use serde_json::{Value, json};

/// A support ticket of about 1 KB: free text with an email, a phone and a card number in it,
/// customer fields, and some numbers.
fn request_body() -> Vec<u8> {
    let body = json!({
        "customer": {"id": 81723, "email": "ann.lee@example.com", "name": "Ann Lee",
            "phone": "+44 20 7946 0958", "country": "GB"},
        "ticket": {
            "subject": "Charged twice for order 4471-22",
            "text": "Hello, I was charged twice for my last order. The card ending 1111 \
                     (4111 1111 1111 1111) shows two payments of 42.50 on 2026-11-30. Please \
                     refund one of them to the same card or to my account DE89 3704 0044 0532 \
                     0130 00. You can reach me at ann.lee@example.com or on (415) 555-0123 \
                     between 9 and 5. I placed the order from 192.168.1.20 at home. Thanks for \
                     your help, this is the second time it happens and I would like to know \
                     why it keeps happening before I order again next week.",
            "tags": ["billing", "refund", "card", "duplicate"],
            "history": [{"at": "2026-11-30T10:12:00Z", "status": "open"},
                        {"at": "2026-11-30T10:15:00Z", "status": "triaged"}],
        },
        "scores": [0.12, 0.33, 0.08, 0.47],
        "channel": {"source": "web-form", "locale": "en-GB", "agent": "Mozilla/5.0 (X11; Linux \
            x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
            "received": "2026-11-30T10:11:58Z"},
    });
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!((1000..1100).contains(&bytes.len()), "{} bytes", bytes.len());
    bytes
}

fn routes(redact: &str, key: &Path) -> Arc<RouteTable> {
    let toml = format!(
        "[redact]\n{redact}\nhash_key_file = {:?}\n",
        key.display().to_string()
    );
    Config::from_toml_with_env(&toml, "bench.toml", Vec::new())
        .unwrap()
        .routes
}

const CASES: [(&str, &str); 3] = [
    (
        "patterns-mask",
        r#"patterns = ["email", "phone", "credit_card", "iban", "ipv4", "ipv6"]"#,
    ),
    (
        "patterns-hash",
        "patterns = [\"email\", \"phone\", \"credit_card\", \"iban\", \"ipv4\", \"ipv6\"]\npattern_action = \"hash\"",
    ),
    (
        "fields+patterns",
        "fields = [{ path = \"request.customer.email\", action = \"hash\" }, \
         { path = \"request.customer.name\", action = \"drop\" }, \
         { path = \"request.customer.phone\", action = \"mask\" }]\n\
         patterns = [\"email\", \"phone\", \"credit_card\", \"iban\", \"ipv4\", \"ipv6\"]",
    ),
];

fn benches(c: &mut Criterion, key: &Path) {
    let request = Bytes::from(request_body());
    let response = Bytes::from_static(br#"[{"label":"billing","score":0.41}]"#);
    let decision = Decision {
        confidence: Some(0.41),
        reasons: vec![Reason::LowConfidence],
        conditions: vec![],
        sample_percent: 1.0,
        over_budget: false,
        threshold: None,
        response_is_json: false,
    };
    let mut group = c.benchmark_group("record-1KB");
    for (i, (name, redact)) in CASES.into_iter().enumerate() {
        let routes = routes(redact, key);
        let route = routes.resolve("/invocations").clone();
        let exchange = Exchange {
            id: "0192a6c1-7a4e-7cc3-9e0f-53c7b5a4b1d2".into(),
            route: route.clone(),
            received_at: SystemTime::now(),
            request: Captured {
                content_type: Some("application/json".into()),
                body: request.clone(),
                truncated: false,
            },
            status: 200,
            response: Captured {
                content_type: Some("application/json".into()),
                body: response.clone(),
                truncated: false,
            },
            force: None,
            traceparent: None,
            model: Default::default(),
        };
        let mut check = review_record(&exchange, &decision);
        route.redactor().apply(&mut check);
        let text = serde_json::to_string(&check).unwrap();
        assert!(
            !text.contains("4111 1111 1111 1111") && !text.contains("ann.lee@"),
            "{text}"
        );
        if i == 0 {
            group.bench_function("build", |b| {
                b.iter(|| review_record(black_box(&exchange), &decision))
            });
        }
        group.bench_function(format!("build+redact/{name}"), |b| {
            b.iter(|| {
                let mut record = review_record(black_box(&exchange), &decision);
                route.redactor().apply(&mut record);
                record
            })
        });
    }
    group.finish();
}

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
fn median(dir: &Path, function: &str) -> Option<f64> {
    let path = dir
        .join("record-1KB")
        .join(function)
        .join("new/estimates.json");
    let estimates: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(estimates["median"]["point_estimate"].as_f64()? * 1e-9)
}

fn print_ratios(dir: &Path) {
    let Some(build) = median(dir, "build") else {
        return;
    };
    println!("\nredaction per diverted record (1 KB JSON request), criterion's medians, this run");
    println!(
        "{:<20} {:>12} {:>12} {:>10}",
        "rules", "build", "redaction", "ratio"
    );
    for (name, _) in CASES {
        // Criterion names the directory after the function with '/' replaced by '_'.
        if let Some(both) = median(dir, &format!("build+redact_{name}")) {
            let redaction = both - build;
            println!(
                "{:<20} {:>10.2}µs {:>10.2}µs {:>9.2}×",
                name,
                build * 1e6,
                redaction * 1e6,
                redaction / build
            );
        }
    }
}

fn main() {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "a benchmark key of 32 bytes long").unwrap();
    let dir = criterion_dir();
    let mut criterion = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut criterion, key.path());
    criterion.final_summary();
    print_ratios(&dir);
}
