//! `reviewloop demo`: a short seeded run of the whole loop, through the library entry point and
//! through the binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reviewloop::demo::{self, DemoOptions};

/// Small enough for a loaded 2-core machine in a debug build; long enough that the joiner is
/// running and the model has learned from a few hundred reviews before the last window.
///
/// How early the joiner starts joining decides how much the first window already learned
/// (on this machine: 57% accurate, all answers unsure, against 94% and 34% in the last), so
/// the thresholds below leave room for a fast machine.
fn short_run() -> DemoOptions {
    DemoOptions {
        duration: Duration::from_secs(18),
        interval: Duration::from_secs(3),
        rps: 40,
        reviewers: 8,
        review_delay: Duration::from_millis(20),
        ..DemoOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_learns_from_its_reviews_and_accounts_for_every_one() {
    let mut out = Vec::new();
    let summary = demo::run(short_run(), &mut out, std::future::pending())
        .await
        .expect("the demo runs");
    let text = String::from_utf8(out).unwrap();
    println!("{text}");

    // Every review is accounted for: the proxy's diverted responses all reached Kafka, and each
    // became a retraining record, a dead letter, or is still pending in the joiner.
    let total = &summary.total;
    assert!(total.requests > 200, "{total:?}");
    assert_eq!(total.errors, 0, "{total:?}");
    assert!(
        summary.drained,
        "the reviews in flight were resolved before the end"
    );
    assert_eq!(summary.reviews_lost, 0);
    assert_eq!(summary.reviews_delivered, total.reviewed);
    assert_eq!(
        summary.reviews_delivered,
        summary.retraining + summary.dead_letters + summary.joiner_pending as u64,
        "{summary:#?}"
    );
    assert_eq!(summary.pending, 0);
    // One answer per review, no disagreement possible: every review became a retraining
    // record, and the model learned from each.
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(summary.answers, summary.retraining);
    assert_eq!(summary.learned, summary.retraining);
    assert!(summary.retraining > 100, "{summary:#?}");

    // The model got better, and needed fewer reviews.
    let first = summary.first().expect("a first window");
    let last = summary.last().expect("a last window");
    assert!(
        last.accuracy() > first.accuracy() + 0.1,
        "accuracy {:.3} → {:.3}",
        first.accuracy(),
        last.accuracy()
    );
    assert!(
        last.low_confidence_share() < first.low_confidence_share() - 0.2,
        "low confidence {:.3} → {:.3}",
        first.low_confidence_share(),
        last.low_confidence_share()
    );
    assert!(last.review_rate() < first.review_rate() - 0.2);

    assert!(text.contains("review  low-conf  retraining"), "{text}");
    assert!(text.contains("Summary:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_reviewers_become_dead_letters_and_the_counts_still_add_up() {
    let options = DemoOptions {
        duration: Duration::from_secs(9),
        interval: Duration::from_secs(3),
        rps: 30,
        reviewers: 6,
        review_delay: Duration::from_millis(10),
        // Three answers each, by coin-flip reviewers: a majority is often missing.
        answers_per_review: 3,
        reviewer_accuracy: 0.4,
        ..DemoOptions::default()
    };
    let summary = demo::run(options, &mut std::io::sink(), std::future::pending())
        .await
        .expect("the demo runs");
    assert!(summary.drained, "{summary:#?}");
    assert_eq!(summary.reviews_lost, 0);
    assert_eq!(summary.reviews_delivered, summary.total.reviewed);
    assert!(summary.reviews_delivered > 50, "{summary:#?}");
    assert_eq!(summary.answers, 3 * summary.reviews_delivered);
    assert!(summary.dead_letters > 0, "{summary:#?}");
    assert!(summary.retraining > 0, "{summary:#?}");
    assert_eq!(
        summary.reviews_delivered,
        summary.retraining + summary.dead_letters + summary.joiner_pending as u64,
        "{summary:#?}"
    );
    assert_eq!(summary.learned, summary.retraining);
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reviewloop"))
}

#[test]
fn the_command_prints_the_table_and_exits_0() {
    let output = binary()
        .args([
            "demo",
            "--duration",
            "4s",
            "--interval",
            "2s",
            "--rps",
            "20",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("reviewloop demo: seed 42"), "{stdout}");
    assert!(stdout.contains("/metrics"), "{stdout}");
    assert!(stdout.contains("    2s "), "a row per window:\n{stdout}");
    assert!(stdout.contains("Summary:"), "{stdout}");
    assert!(
        !stderr.contains("ERROR"),
        "no error logs in a healthy run:\n{stderr}"
    );
}

#[test]
fn bad_options_exit_64_naming_each() {
    let output = binary()
        .args(["demo", "--rps", "0", "--reviewer-accuracy", "2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rps") && stderr.contains("--reviewer-accuracy"),
        "{stderr}"
    );
}

#[test]
fn serve_runs_until_ctrl_c_and_says_where_to_watch() {
    let mut child = binary()
        .args(["demo", "--serve", "--rps", "10", "--interval", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    // The banner, then the first row: the loop is running.
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.trim_start().starts_with("1s ") {
            break;
        }
    }
    assert!(banner.contains("until Ctrl-C"), "{banner}");
    assert!(banner.contains("kcat -b 127.0.0.1:"), "{banner}");
    assert!(banner.contains("-t reviewloop.review"), "{banner}");
    assert!(banner.contains("curl -si http://127.0.0.1:"), "{banner}");
    std::thread::sleep(Duration::from_secs(1));
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", rest.join("\n"));
    assert!(
        rest.iter().any(|l| l.starts_with("Summary:")),
        "{}",
        rest.join("\n")
    );
}

/// A writer the test reads while the demo writes to it.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nhost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// With a quarter of the answers audited and reviewers who are always right, the accuracy the
/// joiner measures on the audit (`reviewloop_model_agreement_total{reason="sampled"}`) is the
/// clients' true accuracy on those answers, and estimates the accuracy on all answers within
/// the binomial error; the calibration buckets and the live threshold (`--target-rate`) are in
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audited_accuracy_estimates_the_true_accuracy() {
    let options = DemoOptions {
        sample_percent: 25.0,
        reviewer_accuracy: 1.0,
        target_rate: 0.1,
        ..short_run()
    };
    let out = Shared::default();
    let run = tokio::spawn({
        let mut out = out.clone();
        async move { demo::run(options, &mut out, std::future::pending()).await }
    });
    let admin = loop {
        let text = out.text();
        if let Some(line) = text
            .lines()
            .find(|l| l.trim_start().starts_with("metrics "))
        {
            let url = line.split_whitespace().nth(1).unwrap();
            break url
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned();
        }
        assert!(!run.is_finished(), "the demo ended early:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Within the 18 seconds of traffic.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let metrics = get(&admin, "/metrics").await;
    let summary = run.await.unwrap().expect("the demo runs");
    let text = out.text();
    println!("{text}");
    assert!(
        text.contains("review the least confident 10%, sample 25%"),
        "{text}"
    );

    assert!(summary.drained, "{summary:#?}");
    let audit = summary.audit;
    let total = &summary.total;
    // Every audited answer was reviewed and compared, and with reviewers who are always right
    // the comparison is the truth.
    assert_eq!(audit.compared, total.sampled, "{summary:#?}");
    assert_eq!(audit.agreed, total.sampled_correct, "{summary:#?}");
    assert!(audit.compared >= 100, "{summary:#?}");
    let estimate = audit.accuracy().unwrap();
    let error = audit.standard_error().unwrap();
    assert!(
        (estimate - total.accuracy()).abs() <= 3.0 * error,
        "audited {estimate:.3} ± {error:.3} vs {:.3} on all answers",
        total.accuracy()
    );
    assert!(text.contains("audited accuracy"), "{text}");

    for series in [
        "reviewloop_calibration_total{agreed=\"true\",bucket=\"0.",
        "reviewloop_model_agreement_total{agreed=\"true\",reason=\"sampled\",route=\"/invocations\"}",
        "reviewloop_review_threshold{route=\"/invocations\"}",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}
