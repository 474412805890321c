//! SageMaker endpoints as the upstream, against moto's server mode (a real emulator of the
//! SageMaker runtime API on loopback, started by `scripts/moto-server`, which installs
//! `moto[server]` into the project venv when missing) and, for what moto cannot do (modeled
//! errors, timeouts, response streams), against an in-test server that answers in SageMaker's
//! wire format, decoded by the real SDK. No test talks to AWS; credentials are dummies.

mod common;
mod kafka_support;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sagemakerruntime::config::{Credentials, SharedCredentialsProvider};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reviewloop::config::{UpstreamConfig, UpstreamKind};
use reviewloop::upstream::{Body, BoxError, SagemakerUpstream, Upstream, UpstreamError, full_body};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const ENDPOINT: &str = "reviewloop-test";
const REGION: &str = "eu-west-1";

/// moto's server mode on a free loopback port; stopped when dropped (and, should the test
/// process die, when its standard input closes).
struct Moto {
    endpoint: String,
    _child: tokio::process::Child,
}

impl Moto {
    async fn start() -> Moto {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/moto-server");
        let log = tempfile::NamedTempFile::new().expect("temp file");
        let mut child = tokio::process::Command::new(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("temp file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped");
        // The first run installs moto into the venv: allow for a slow package index.
        let first_line = tokio::time::timeout(
            Duration::from_secs(300),
            BufReader::new(stdout).lines().next_line(),
        )
        .await;
        let reason = match first_line {
            Ok(Ok(Some(line))) => match line.strip_prefix("MOTO_ENDPOINT=") {
                Some(endpoint) => {
                    return Moto {
                        endpoint: endpoint.to_owned(),
                        _child: child,
                    };
                }
                None => format!("unexpected first line {line:?}"),
            },
            Ok(Ok(None)) => format!("it exited: {:?}", child.wait().await),
            Ok(Err(e)) => format!("reading its output failed: {e}"),
            Err(_) => "no MOTO_ENDPOINT line within 300 s".into(),
        };
        let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
        panic!(
            "moto (scripts/moto-server) did not start: {reason}\n--- its stderr ---\n{stderr}\n\
             (it needs python3 with venv and PyPI access, or moto[server] in $REVIEWLOOP_VENV)"
        );
    }

    /// Queues canned InvokeEndpoint results: each new distinct request takes the next one.
    async fn queue_results(&self, results: Value) {
        let url = format!(
            "{}/moto-api/static/sagemaker/endpoint-results",
            self.endpoint
        );
        let body = json!({ "region": REGION, "results": results });
        let request = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        let response = client.request(request).await.expect("moto's API answers");
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "moto refused the results"
        );
    }
}

/// Dummy credentials: the SDK signs, the emulator accepts any key.
fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "tests",
        )))
        .behavior_version(BehaviorVersion::latest())
        .build()
}

fn upstream_config(endpoint_url: &str) -> UpstreamConfig {
    UpstreamConfig {
        kind: UpstreamKind::Sagemaker,
        endpoint_name: Some(ENDPOINT.into()),
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint_url.into()),
        timeout: Duration::from_secs(10),
        ..UpstreamConfig::default()
    }
}

fn sagemaker(config: &UpstreamConfig) -> SagemakerUpstream {
    SagemakerUpstream::with_sdk_config(config, &sdk_config()).expect("valid config")
}

fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(full_body(body)).unwrap()
}

fn post(path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Body> {
    request(Method::POST, path, headers, body)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn call(
    upstream: &SagemakerUpstream,
    request: Request<Body>,
) -> Result<Answer, UpstreamError> {
    let response = upstream.call(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A loopback address where nothing listens.
async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn canned_result_comes_back_byte_identical_with_type_variant_and_attributes() {
    let moto = Moto::start().await;
    let canned = r#"{"predictions":[{"label":"chat","score":0.93}],"note":"café ✓"}"#;
    moto.queue_results(json!([{
        "Body": canned,
        "ContentType": "application/json; charset=utf-8",
        "InvokedProductionVariant": "variant-blue",
        "CustomAttributes": "trace=7,model=v3",
    }]))
    .await;
    let upstream = sagemaker(&upstream_config(&moto.endpoint));

    // moto routes a request to its SageMaker runtime only by the SigV4 credential scope, so
    // the canned answer coming back shows the SDK signed the InvokeEndpoint call.
    let answer = call(
        &upstream,
        post(
            "/invocations",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            r#"{"inputs":"a photo"}"#,
        ),
    )
    .await
    .expect("InvokeEndpoint succeeds");

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, canned.as_bytes());
    assert_eq!(
        answer.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        answer.header("content-length"),
        Some(canned.len().to_string().as_str())
    );
    assert_eq!(
        answer.header("x-amzn-invoked-production-variant"),
        Some("variant-blue")
    );
    assert_eq!(
        answer.header("x-amzn-sagemaker-custom-attributes"),
        Some("trace=7,model=v3")
    );
}

#[tokio::test]
async fn sagemaker_headers_reach_invoke_endpoint() {
    let moto = Moto::start().await;
    // moto hands out the next queued result per distinct request (its SageMaker headers,
    // Accept and body) and repeats it for the same request: which result comes back shows
    // which headers reached it.
    let result = |body: &str| json!({"Body": body, "ContentType": "text/plain"});
    moto.queue_results(json!([result("first"), result("second"), result("third")]))
        .await;
    let upstream = sagemaker(&upstream_config(&moto.endpoint));
    let invoke = |path: String, target_model: &'static str| {
        let upstream = &upstream;
        async move {
            let headers = [
                ("content-type", "text/csv"),
                ("x-amzn-sagemaker-target-model", target_model),
                ("x-amzn-sagemaker-custom-attributes", "a=1"),
            ];
            let answer = call(upstream, post(&path, &headers, "1,2,3"))
                .await
                .unwrap();
            String::from_utf8(answer.body.to_vec()).unwrap()
        }
    };
    assert_eq!(
        invoke("/invocations".into(), "model-a.tar.gz").await,
        "first"
    );
    assert_eq!(
        invoke("/invocations".into(), "model-b.tar.gz").await,
        "second"
    );
    assert_eq!(
        invoke("/invocations".into(), "model-a.tar.gz").await,
        "first",
        "same request, same result"
    );

    // Another endpoint's name is refused before any call: the queue is untouched.
    let refused = call(
        &upstream,
        post("/endpoints/someone-else/invocations", &[], "1,2,3"),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(
        (refused.status(), refused.error_type()),
        (StatusCode::NOT_FOUND, "endpoint_not_served")
    );
    let path = format!("/endpoints/{ENDPOINT}/invocations");
    assert_eq!(invoke(path, "model-c.tar.gz").await, "third");
}

#[tokio::test]
async fn bodies_up_to_six_mib_pass_and_larger_ones_are_413() {
    let moto = Moto::start().await;
    moto.queue_results(json!([{"Body": "ok", "ContentType": "text/plain"}]))
        .await;
    let upstream = sagemaker(&upstream_config(&moto.endpoint));
    const LIMIT: usize = 6 * 1024 * 1024;

    let at_limit = call(&upstream, post("/invocations", &[], vec![b'a'; LIMIT]))
        .await
        .unwrap();
    assert_eq!(
        (at_limit.status, &at_limit.body[..]),
        (StatusCode::OK, &b"ok"[..])
    );

    let declared = post(
        "/invocations",
        &[("content-length", &(LIMIT + 1).to_string())],
        vec![b'a'; LIMIT + 1],
    );
    let refused = call(&upstream, declared).await.err().expect("too large");
    assert_eq!(
        (refused.status(), refused.error_type()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert!(
        refused.client_message().contains("6 MiB"),
        "{}",
        refused.client_message()
    );

    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks = futures_util::stream::iter(
        (0..7).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'a'; 1024 * 1024])))),
    );
    let chunked = Request::post("/invocations")
        .body(StreamBody::new(chunks).boxed_unsync())
        .unwrap();
    let refused = call(&upstream, chunked).await.err().expect("too large");
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn ping_answers_locally_and_bad_requests_never_reach_sagemaker() {
    // Nothing listens at the endpoint: any call that reached it would be a 502.
    let upstream = sagemaker(&upstream_config(&closed_port_url().await));

    let ping = call(&upstream, request(Method::GET, "/ping", &[], ""))
        .await
        .unwrap();
    assert_eq!(ping.status, StatusCode::OK);

    let not_found = call(&upstream, post("/v2/models/m/infer", &[], "{}"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (not_found.status(), not_found.error_type()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let long_id = "i".repeat(65);
    let bad = call(
        &upstream,
        post(
            "/invocations",
            &[("x-amzn-sagemaker-inference-id", &long_id)],
            "{}",
        ),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (bad.status(), bad.error_type()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(
        bad.client_message()
            .contains("x-amzn-sagemaker-inference-id"),
        "{}",
        bad.client_message()
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_502() {
    let upstream = sagemaker(&upstream_config(&closed_port_url().await));
    let error = call(&upstream, post("/invocations", &[], "{}"))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, UpstreamError::Unreachable(_)), "{error:?}");
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn emulator_without_response_streams_gives_502() {
    // moto does not implement InvokeEndpointWithResponseStream: it answers 404, an error
    // SageMaker's model does not have, which a client cannot act on.
    let moto = Moto::start().await;
    let config = UpstreamConfig {
        response_stream: true,
        ..upstream_config(&moto.endpoint)
    };
    let error = call(&sagemaker(&config), post("/invocations", &[], "{}"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (error.status(), error.error_type()),
        (StatusCode::BAD_GATEWAY, "upstream_failed")
    );
}

/// The production constructor: credentials and region from the SDK's default chain. They
/// come from the environment of a second run of this same test in a child process, so the
/// test process's own environment is never changed.
#[tokio::test]
async fn default_credential_chain_signs_for_the_emulator() {
    const CHILD: &str = "REVIEWLOOP_TEST_DEFAULT_CHAIN_ENDPOINT";
    if let Ok(endpoint) = std::env::var(CHILD) {
        let config = UpstreamConfig {
            region: None, // from AWS_REGION
            ..upstream_config(&endpoint)
        };
        let upstream = Upstream::from_config(&config)
            .await
            .expect("sagemaker upstream");
        let response = upstream
            .call(post("/invocations", &[], "x"))
            .await
            .expect("signed call");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"from the default chain");
        return;
    }
    let moto = Moto::start().await;
    moto.queue_results(json!([{"Body": "from the default chain", "ContentType": "text/plain"}]))
        .await;
    let empty = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "default_credential_chain_signs_for_the_emulator",
            "--test-threads=1",
        ])
        .env(CHILD, &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_CONFIG_FILE", empty.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            empty.path().join("credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- SageMaker's wire format from an in-test server, for what moto cannot produce ----

type Handler = Arc<
    dyn Fn(http::request::Parts) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// An HTTP server on loopback answering as SageMaker's runtime would; records request heads.
async fn fake_runtime(handler: Handler) -> (String, Arc<Mutex<Vec<http::request::Parts>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            let seen = seen.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let _ = body.collect().await;
                        seen.lock().unwrap().push(parts.clone());
                        Ok::<_, std::convert::Infallible>(handler(parts).await)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, recorded)
}

fn error_answer(status: u16, error_type: &str, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header(
            "x-amzn-errortype",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.sagemaker/"),
        )
        .body(full_body(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn sagemaker_errors_reach_the_client_as_documented_statuses() {
    let model_error = json!({
        "message": "Received server error (500) from primary with message \"boom\". See https://…",
        "OriginalStatusCode": 500,
        "OriginalMessage": "boom",
        "LogStreamArn": "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/sagemaker/Endpoints/x",
    });
    // (SageMaker's status, error type, body) ⇒ (client status, error_type, original status)
    let cases = [
        (
            (424, "ModelError", model_error),
            (424, "model_error", Some(500)),
        ),
        (
            (429, "ModelNotReadyException", json!({"message": "loading"})),
            (429, "model_not_ready", None),
        ),
        (
            (
                400,
                "ThrottlingException",
                json!({"message": "Rate exceeded"}),
            ),
            (429, "throttled", None),
        ),
        (
            (400, "ValidationError", json!({"message": "bad input"})),
            (400, "validation_error", None),
        ),
        (
            (503, "ServiceUnavailable", json!({"message": "later"})),
            (503, "service_unavailable", None),
        ),
        (
            (500, "InternalFailure", json!({"message": "oops"})),
            (502, "internal_failure", None),
        ),
        (
            (403, "AccessDeniedException", json!({"message": "no"})),
            (502, "upstream_failed", None),
        ),
    ];
    for ((status, error_type, body), expected) in cases {
        let handler: Handler = Arc::new(move |_| {
            let answer = error_answer(status, error_type, body.clone());
            Box::pin(async move { answer })
        });
        let (url, seen) = fake_runtime(handler).await;
        let error = call(
            &sagemaker(&upstream_config(&url)),
            post("/invocations", &[], "{}"),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{error_type} must fail"));
        assert_eq!(
            (
                error.status().as_u16(),
                error.error_type(),
                error.original_status()
            ),
            expected,
            "{error_type}"
        );
        if error_type == "ModelError" {
            assert_eq!(error.client_message(), "boom");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            1,
            "no retries: the client keeps its own retry policy"
        );
        assert_eq!(
            seen[0].uri.path(),
            format!("/endpoints/{ENDPOINT}/invocations")
        );
        let authorization = seen[0].headers["authorization"].to_str().unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=testing/"),
            "{authorization}"
        );
    }
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_504() {
    let handler: Handler = Arc::new(|_| Box::pin(std::future::pending()));
    let (url, _) = fake_runtime(handler).await;
    let config = UpstreamConfig {
        timeout: Duration::from_millis(300),
        ..upstream_config(&url)
    };
    let error = call(&sagemaker(&config), post("/invocations", &[], "{}"))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
    assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
}

fn event_frame(headers: &[(&'static str, &'static str)], payload: &[u8]) -> Bytes {
    let headers = headers
        .iter()
        .map(|(name, value)| Header::new(*name, HeaderValue::String((*value).into())))
        .collect();
    let mut out = Vec::new();
    write_message_to(
        &Message::new_from_parts(headers, Bytes::copy_from_slice(payload)),
        &mut out,
    )
    .unwrap();
    Bytes::from(out)
}

fn payload_part(bytes: &[u8]) -> Bytes {
    event_frame(
        &[
            (":message-type", "event"),
            (":event-type", "PayloadPart"),
            (":content-type", "application/octet-stream"),
        ],
        bytes,
    )
}

/// A streaming endpoint whose event frames the test sends one by one.
async fn streaming_runtime(
    model_content_type: &'static str,
) -> (String, oneshot::Receiver<mpsc::Sender<Bytes>>) {
    let (give_sender, sender) = oneshot::channel();
    let give_sender = Arc::new(Mutex::new(Some(give_sender)));
    let handler: Handler = Arc::new(move |parts| {
        assert_eq!(
            parts.uri.path(),
            format!("/endpoints/{ENDPOINT}/invocations-response-stream")
        );
        let (frames, rx) = mpsc::channel::<Bytes>(4);
        give_sender
            .lock()
            .unwrap()
            .take()
            .expect("one call")
            .send(frames)
            .unwrap();
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|frame| (Ok::<_, BoxError>(Frame::data(frame)), rx))
        });
        let response = Response::builder()
            .header("content-type", "application/vnd.amazon.eventstream")
            .header("x-amzn-sagemaker-content-type", model_content_type)
            .header("x-amzn-invoked-production-variant", "variant-llm")
            .body(StreamBody::new(body).boxed_unsync())
            .unwrap();
        Box::pin(async move { response })
    });
    let (url, _) = fake_runtime(handler).await;
    (url, sender)
}

/// The next data frame; a stream that holds its data back fails here instead of hanging.
async fn next_data(body: &mut Body) -> Option<Result<Bytes, BoxError>> {
    tokio::time::timeout(Duration::from_secs(10), next_data_frame(body))
        .await
        .expect("a frame within 10 s: the body must pass each event on as it arrives")
}

async fn next_data_frame(body: &mut Body) -> Option<Result<Bytes, BoxError>> {
    loop {
        match body.frame().await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue,
            },
            Err(e) => return Some(Err(e)),
        }
    }
}

#[tokio::test]
async fn response_stream_reaches_the_client_as_events_while_it_arrives() {
    let (url, frames) = streaming_runtime("application/jsonlines").await;
    let config = UpstreamConfig {
        response_stream: true,
        ..upstream_config(&url)
    };
    let upstream = sagemaker(&config);
    let call = tokio::spawn(async move {
        upstream
            .call(post("/invocations", &[], r#"{"inputs":"Hi"}"#))
            .await
    });
    let frames = frames.await.unwrap();
    // The first line and half of the second: only the whole line can go out.
    frames
        .send(payload_part(b"{\"token\":{\"text\":\"Hel\"}}\n{\"token\":"))
        .await
        .unwrap();
    let response = call.await.unwrap().expect("stream opens");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.headers()["x-amzn-sagemaker-content-type"],
        "application/jsonlines"
    );
    assert_eq!(
        response.headers()["x-amzn-invoked-production-variant"],
        "variant-llm"
    );
    let mut body = response.into_body();
    // Nothing more has been sent: this event proves the body is streamed, not buffered.
    let first = next_data(&mut body).await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: {\"token\":{\"text\":\"Hel\"}}\n\n");

    frames
        .send(payload_part(b"{\"text\":\"lo\"}}\n"))
        .await
        .unwrap();
    drop(frames); // end of stream
    let second = next_data(&mut body).await.unwrap().unwrap();
    assert_eq!(&second[..], b"data: {\"token\":{\"text\":\"lo\"}}\n\n");
    assert!(
        next_data(&mut body).await.is_none(),
        "the stream ends with SageMaker's"
    );
}

#[tokio::test]
async fn a_stream_failing_midway_sends_an_error_event_then_breaks() {
    let (url, frames) = streaming_runtime("text/event-stream").await;
    let config = UpstreamConfig {
        response_stream: true,
        ..upstream_config(&url)
    };
    let upstream = sagemaker(&config);
    let call = tokio::spawn(async move { upstream.call(post("/invocations", &[], "{}")).await });
    let frames = frames.await.unwrap();
    frames
        .send(payload_part(b"data: {\"text\":\"Hel\"}\n\n"))
        .await
        .unwrap();
    frames
        .send(event_frame(
            &[
                (":message-type", "exception"),
                (":exception-type", "ModelStreamError"),
                (":content-type", "application/json"),
            ],
            br#"{"Message":"connection reset by the model","ErrorCode":"StreamBroken"}"#,
        ))
        .await
        .unwrap();
    let mut body = call.await.unwrap().expect("stream opens").into_body();
    let first = next_data(&mut body).await.unwrap().unwrap();
    assert_eq!(
        &first[..],
        b"data: {\"text\":\"Hel\"}\n\n",
        "SSE from the model passes unchanged"
    );
    let error_event = next_data(&mut body).await.unwrap().unwrap();
    let text = std::str::from_utf8(&error_event).unwrap();
    assert!(text.starts_with("event: error\ndata: "), "{text}");
    assert!(
        text.contains("model_stream_error") && text.contains("StreamBroken"),
        "{text}"
    );
    assert!(
        matches!(next_data(&mut body).await, Some(Err(_))),
        "the body ends in an error"
    );
}

// ---- Through the proxy: the same data plane as for HTTP upstreams ----

/// The proxy (`proxy::serve`, in-process on loopback) in front of a SageMaker upstream.
async fn proxy_in_front_of(upstream: UpstreamConfig) -> common::TestProxy {
    let mut config = common::config_for("127.0.0.1:9".parse().unwrap());
    config.upstream = upstream;
    let sagemaker = Upstream::Sagemaker(sagemaker(&config.upstream));
    let hook = Arc::new(common::RecordingHook::default());
    common::spawn_proxy_on(config, sagemaker, hook.clone(), hook).await
}

async fn send(proxy: &common::TestProxy, request: Request<Body>) -> Answer {
    let (mut parts, body) = request.into_parts();
    parts.uri = proxy.url(parts.uri.path()).parse().unwrap();
    let response = common::client()
        .request(Request::from_parts(parts, body))
        .await
        .expect("the proxy answers");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

#[tokio::test]
async fn through_the_proxy_the_canned_result_is_byte_identical_and_recorded_with_its_model() {
    let moto = Moto::start().await;
    let canned = r#"[{"label":"cat","score":0.4}]"#;
    moto.queue_results(json!([{
        "Body": canned,
        "ContentType": "application/json",
        "InvokedProductionVariant": "variant-blue",
        "CustomAttributes": "trace=7",
    }]))
    .await;
    let proxy = proxy_in_front_of(upstream_config(&moto.endpoint)).await;

    let answer = send(
        &proxy,
        post(
            "/invocations",
            &[
                ("content-type", "application/json"),
                ("x-amzn-sagemaker-inference-id", "inference-42"),
                ("x-amzn-sagemaker-target-model", "cats.tar.gz"),
            ],
            r#"{"inputs":"a photo"}"#,
        ),
    )
    .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, canned.as_bytes());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.header("x-amzn-invoked-production-variant"),
        Some("variant-blue")
    );
    assert_eq!(
        answer.header("x-amzn-sagemaker-custom-attributes"),
        Some("trace=7")
    );
    assert_eq!(
        answer.header("x-reviewloop-id"),
        Some("inference-42"),
        "the id honours Inference-Id"
    );

    let exchanges = proxy.hook.taken();
    assert_eq!(exchanges.len(), 1);
    let exchange = &exchanges[0];
    assert_eq!(exchange.id, "inference-42");
    assert_eq!(exchange.model.variant.as_deref(), Some("variant-blue"));
    assert_eq!(exchange.model.target_model.as_deref(), Some("cats.tar.gz"));
    assert_eq!(&exchange.request.body[..], br#"{"inputs":"a photo"}"#);
    assert_eq!(&exchange.response.body[..], canned.as_bytes());
}

#[tokio::test]
async fn through_the_proxy_errors_are_json_with_the_documented_status() {
    let model_error = json!({
        "message": "Received client error (400) from primary",
        "OriginalStatusCode": 400,
        "OriginalMessage": "bad tensor shape",
    });
    let handler: Handler = Arc::new(move |_| {
        let answer = error_answer(424, "ModelError", model_error.clone());
        Box::pin(async move { answer })
    });
    let (url, _) = fake_runtime(handler).await;
    let proxy = proxy_in_front_of(upstream_config(&url)).await;

    let answer = send(
        &proxy,
        post("/invocations", &[("x-request-id", "req-1")], "{}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FAILED_DEPENDENCY);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body,
        json!({"error": "model_error", "message": "bad tensor shape", "id": "req-1", "original_status": 400})
    );

    let too_large = send(
        &proxy,
        post("/invocations", &[], vec![b'a'; 6 * 1024 * 1024 + 1]),
    )
    .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = serde_json::from_slice(&too_large.body).unwrap();
    assert_eq!(body["error"], "payload_too_large");

    let ping = send(&proxy, request(Method::GET, "/ping", &[], "")).await;
    assert_eq!(ping.status, StatusCode::OK);
}

#[tokio::test]
async fn through_the_proxy_a_response_stream_arrives_event_by_event() {
    let (url, frames) = streaming_runtime("application/jsonlines").await;
    let proxy = proxy_in_front_of(UpstreamConfig {
        response_stream: true,
        ..upstream_config(&url)
    })
    .await;
    let request = Request::post(proxy.url("/invocations"))
        .body(full_body(r#"{"inputs":"Hi"}"#))
        .unwrap();
    let call = tokio::spawn(common::client().request(request));
    let frames = frames.await.unwrap();
    frames
        .send(payload_part(b"{\"token\":\"Hel\"}\n"))
        .await
        .unwrap();
    let response = call.await.unwrap().expect("the proxy answers");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().map_err(BoxError::from).boxed_unsync();
    let first = next_data(&mut body).await.unwrap().unwrap();
    assert_eq!(
        &first[..],
        b"data: {\"token\":\"Hel\"}\n\n",
        "sent before the stream ends"
    );
    frames
        .send(payload_part(b"{\"token\":\"lo\"}\n"))
        .await
        .unwrap();
    drop(frames);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: {\"token\":\"lo\"}\n\n");

    // The decision on a stream is made at its end, with the whole stream as the response.
    let exchange = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(exchange) = proxy.hook.taken().pop() {
                return exchange;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the streamed exchange reaches the review hook");
    assert_eq!(exchange.model.variant.as_deref(), Some("variant-llm"));
    assert_eq!(
        &exchange.response.body[..],
        b"data: {\"token\":\"Hel\"}\n\ndata: {\"token\":\"lo\"}\n\n"
    );
}

#[tokio::test]
async fn a_low_confidence_sagemaker_result_is_diverted_with_its_variant() {
    let moto = Moto::start().await;
    let canned = r#"[{"label":"cat","score":0.4}]"#;
    moto.queue_results(json!([{
        "Body": canned,
        "ContentType": "application/json",
        "InvokedProductionVariant": "variant-blue",
    }]))
    .await;
    let mut config = common::config_for("127.0.0.1:9".parse().unwrap());
    config.upstream = upstream_config(&moto.endpoint);
    config.review.sample_percent = 0.0; // only the confidence decides
    let upstream = Upstream::Sagemaker(sagemaker(&config.upstream));
    let app = common::spawn_app_on(config, upstream).await;

    let (parts, body) = common::send(
        Request::post(app.url("/invocations"))
            .header("content-type", "application/json")
            .header("x-amzn-sagemaker-target-model", "cats.tar.gz")
            .body(full_body(r#"{"inputs":"a photo"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, canned.as_bytes());
    assert_eq!(parts.headers["x-reviewloop-review"], "low_confidence");
    let id = parts.headers["x-reviewloop-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let messages = kafka_support::consume(
        &app.bootstrap,
        &app.config.kafka.review_topic,
        1,
        Duration::from_secs(30),
    );
    assert_eq!(messages.len(), 1);
    let payload = rdkafka::Message::payload(&messages[0]).unwrap();
    let record: Value = serde_json::from_slice(payload).unwrap();
    let validator = kafka_support::schema("review");
    assert!(
        kafka_support::schema_errors(&validator, &record).is_empty(),
        "{record}"
    );
    assert_eq!(record["id"], id);
    assert_eq!(record["reasons"], json!(["low_confidence"]));
    assert_eq!(record["confidence"], 0.4);
    assert_eq!(
        record["model"],
        json!({"target_model": "cats.tar.gz", "variant": "variant-blue"})
    );
    assert_eq!(
        record["response"]["body"],
        serde_json::from_str::<Value>(canned).unwrap()
    );
    assert_eq!(record["request"]["body"], json!({"inputs": "a photo"}));
}
