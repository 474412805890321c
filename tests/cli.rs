//! The `reviewloop` binary as an operator runs it: config checking, graceful shutdown, and the
//! console command.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};

fn reviewloop() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reviewloop"));
    // The tests' own environment must not leak overrides into the process under test.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REVIEWLOOP__")) {
        command.env_remove(key);
    }
    command
}

fn config_path(name: &str) -> String {
    format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_documented_config_file_passes_check_config() {
    let output = reviewloop()
        .args(["check-config", &config_path("reviewloop.toml")])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let effective = String::from_utf8(output.stdout).unwrap();
    assert!(
        effective.contains("review_topic = \"reviewloop.review\""),
        "{effective}"
    );
}

#[test]
fn a_config_with_three_mistakes_reports_all_three_and_exits_64() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[server]\nmax_in_flight = -3\n[review]\nsample_percent = 250.0\n[kafka]\ndelivery = \"whenever\"\n"
    )
    .unwrap();
    let output = reviewloop()
        .args(["check-config", file.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for key in [
        "server.max_in_flight = -3",
        "review.sample_percent = 250",
        "kafka.delivery = \"whenever\"",
    ] {
        assert!(stderr.contains(key), "{key} not reported in:\n{stderr}");
    }
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn an_environment_override_takes_effect() {
    let output = reviewloop()
        .args(["check-config", &config_path("reviewloop.toml")])
        .env("REVIEWLOOP__KAFKA__BROKERS", "k9.internal:9092")
        .env("REVIEWLOOP__REVIEW__CONFIDENCE_BELOW", "0.55")
        .output()
        .unwrap();
    assert!(output.status.success());
    let effective = String::from_utf8(output.stdout).unwrap();
    assert!(
        effective.contains("brokers = \"k9.internal:9092\""),
        "{effective}"
    );
    assert!(effective.contains("confidence_below = 0.55"), "{effective}");
}

#[test]
fn proxy_with_a_bad_config_exits_64() {
    let output = reviewloop()
        .args(["proxy"])
        .env("REVIEWLOOP__SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.listen"));
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (upstream_gate, upstream_arrived) = (gate.clone(), arrived.clone());
    let upstream = spawn_upstream(move |_| {
        let (gate, arrived) = (upstream_gate.clone(), upstream_arrived.clone());
        async move {
            arrived.notify_one();
            gate.acquire().await.unwrap().forget();
            json_response(r#"[{"label":"ok","score":0.99}]"#)
        }
    })
    .await;

    let mut child = reviewloop()
        .args(["proxy"])
        .env("REVIEWLOOP__SERVER__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__UPSTREAM__URL", format!("http://{upstream}"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("proxy listening")
                && let Some(addr) = line.split("address=").nth(1)
            {
                let _ = addr_tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("proxy starts");
    let url = format!("http://{addr}/invocations");

    let in_flight = tokio::spawn(send(post(&url, "application/json", "{}")));
    arrived.notified().await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // New connections are refused once the signal is handled.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "the proxy still accepts connections after SIGTERM");

    gate.add_permits(1);
    let (parts, body) = in_flight.await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, r#"[{"label":"ok","score":0.99}]"#);
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn console_refuses_the_embedded_broker_and_a_bad_console_section() {
    let output = reviewloop()
        .args(["console"])
        .env("REVIEWLOOP__KAFKA__BROKERS", "embedded")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("embedded") && stderr.contains("demo --serve"),
        "{stderr}"
    );

    let output = reviewloop()
        .args(["console"])
        .env("REVIEWLOOP__CONSOLE__AUTH", "none")
        .env("REVIEWLOOP__CONSOLE__LISTEN", "0.0.0.0:8090")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("console.auth = \"none\""), "{stderr}");
}

#[tokio::test]
async fn console_serves_once_its_queue_is_read_and_exits_0_on_sigterm() {
    let broker =
        reviewloop::kafka::EmbeddedBroker::start(&["reviewloop.review", "reviewloop.completed"], 3)
            .unwrap();
    let mut child = reviewloop()
        .args(["console"])
        .env("REVIEWLOOP__KAFKA__BROKERS", broker.bootstrap_servers())
        .env("REVIEWLOOP__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__CONSOLE__AUTH", "none")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("console listening")
                && let Some(rest) = line.split("address=").nth(1)
            {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = addr_tx.send(addr.to_owned());
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("console starts");
    let get = |path: &str| {
        Request::get(format!("http://{addr}{path}"))
            .body(full_body(""))
            .unwrap()
    };
    let mut ready = false;
    for _ in 0..400 {
        if send(get("/readyz")).await.0.status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "the console never read its topics");
    let (parts, body) = send(get("/signin")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("Sign in to review"));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn the_redaction_key_comes_from_the_environment_and_is_never_shown() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[redact]\npatterns = [\"email\"]\npattern_action = \"hash\"\nhash_key_env = \"REVIEWLOOP_TEST_REDACT_KEY\"\n"
    )
    .unwrap();
    let key = "a secret key of thirty-two bytes";
    let output = reviewloop()
        .args(["check-config", file.path().to_str().unwrap()])
        .env("REVIEWLOOP_TEST_REDACT_KEY", key)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("hash_key_env = \"REVIEWLOOP_TEST_REDACT_KEY\""),
        "{stdout}"
    );
    assert!(!stdout.contains(key) && !stderr.contains(key));

    let output = reviewloop()
        .args(["check-config", file.path().to_str().unwrap()])
        .env_remove("REVIEWLOOP_TEST_REDACT_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("redact.hash_key_env = \"REVIEWLOOP_TEST_REDACT_KEY\""),
        "{stderr}"
    );
}
