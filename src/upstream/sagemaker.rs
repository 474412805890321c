//! SageMaker endpoints as the upstream: a request shaped for a model container
//! (`POST /invocations`) becomes an InvokeEndpoint call through the AWS SDK, signed with the
//! SDK's default credential chain, and SageMaker's answer or error becomes the HTTP response
//! the client would have had from the container. With `upstream.response_stream`, the payload
//! parts of InvokeEndpointWithResponseStream reach the client as server-sent events while they
//! arrive.
//!
//! Only the configured endpoint is reachable: `POST /endpoints/{name}/invocations` is accepted
//! for that name alone (404 otherwise). The proxy's AWS credentials must not let a client reach
//! any endpoint the role may invoke, and the review settings were written for this endpoint's
//! output.
//!
//! The SDK does not retry: the client sees SageMaker's throttling and unavailability as 429 and
//! 503 and keeps its own retry policy, instead of the proxy multiplying its attempts.

mod sse;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sagemakerruntime::Client;
use aws_sdk_sagemakerruntime::config::Region;
use aws_sdk_sagemakerruntime::config::http::HttpResponse;
use aws_sdk_sagemakerruntime::config::retry::RetryConfig;
use aws_sdk_sagemakerruntime::config::timeout::TimeoutConfig;
use aws_sdk_sagemakerruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sagemakerruntime::operation::RequestId;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamError;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::types::ResponseStream;
use aws_sdk_sagemakerruntime::types::error::ResponseStreamError;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tracing::warn;

use self::sse::{Framing, SseFramer};
use super::UpstreamConfig;
use super::{Body, BoxError, UpstreamError, UpstreamInitError, full_body};

/// SageMaker's request body limit: 6 MiB (the service model's `BodyBlob` maximum).
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

const X_CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";
const X_TARGET_MODEL: &str = "x-amzn-sagemaker-target-model";
const X_TARGET_VARIANT: &str = "x-amzn-sagemaker-target-variant";
const X_TARGET_CONTAINER: &str = "x-amzn-sagemaker-target-container-hostname";
const X_INFERENCE_ID: &str = "x-amzn-sagemaker-inference-id";
const X_INFERENCE_COMPONENT: &str = "x-amzn-sagemaker-inference-component";
const X_ENABLE_EXPLANATIONS: &str = "x-amzn-sagemaker-enable-explanations";
const X_SESSION_ID: &str = "x-amzn-sagemaker-session-id";
const X_NEW_SESSION_ID: &str = "x-amzn-sagemaker-new-session-id";
const X_CLOSED_SESSION_ID: &str = "x-amzn-sagemaker-closed-session-id";
const X_INVOKED_VARIANT: &str = "x-amzn-invoked-production-variant";
/// The model's own content type when the response is re-framed as server-sent events.
const X_STREAM_CONTENT_TYPE: &str = "x-amzn-sagemaker-content-type";
const X_AMZN_REQUEST_ID: &str = "x-amzn-requestid";
const X_REQUEST_ID: &str = "x-request-id";

/// A SageMaker endpoint reached through the AWS SDK. (No `Debug`: it holds the credentials
/// provider.)
pub struct SagemakerUpstream {
    client: Client,
    endpoint_name: String,
    response_stream: bool,
}

impl SagemakerUpstream {
    /// Credentials and region from the SDK's default chain (environment, profile, web identity,
    /// container and instance roles); `upstream.region` and `upstream.endpoint_url` override.
    pub async fn new(config: &UpstreamConfig) -> Result<SagemakerUpstream, UpstreamInitError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        SagemakerUpstream::with_sdk_config(config, &sdk)
    }

    /// Uses an already loaded SDK configuration (credentials, HTTP client) with the endpoint,
    /// region override, URL override and timeout of `config`.
    pub fn with_sdk_config(
        config: &UpstreamConfig,
        sdk: &SdkConfig,
    ) -> Result<SagemakerUpstream, UpstreamInitError> {
        let endpoint_name = config.endpoint_name.clone().unwrap_or_default();
        check_endpoint_name(&endpoint_name).map_err(|message| {
            UpstreamInitError(format!("endpoint_name {endpoint_name:?} {message}"))
        })?;
        let mut builder = aws_sdk_sagemakerruntime::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            // The proxy bounds the time to the response head as well; this bound also holds
            // for any other caller. For a response stream it ends at the stream's head.
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(config.timeout)
                    .build(),
            );
        if let Some(region) = &config.region {
            builder = builder.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let service = builder.build();
        if service.region().is_none() {
            return Err(UpstreamInitError(
                "no AWS region: set upstream.region or AWS_REGION".into(),
            ));
        }
        Ok(SagemakerUpstream {
            client: Client::from_conf(service),
            endpoint_name,
            response_stream: config.response_stream,
        })
    }

    pub async fn call(&self, request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let (parts, body) = request.into_parts();
        match target(&parts.method, parts.uri.path(), &self.endpoint_name) {
            Target::Ping => Ok(Response::new(full_body(Bytes::new()))),
            Target::Refused(error) => Err(error),
            Target::Invoke => {
                let fields = InvokeFields::from_headers(&parts.headers, self.response_stream)
                    .map_err(|message| {
                        rejected(StatusCode::BAD_REQUEST, "invalid_request", message)
                    })?;
                let body = read_body(&parts.headers, body).await?;
                if self.response_stream {
                    self.invoke_streaming(fields, body).await
                } else {
                    self.invoke(fields, body).await
                }
            }
        }
    }

    async fn invoke(&self, f: InvokeFields, body: Bytes) -> Result<Response<Body>, UpstreamError> {
        let mut output = self
            .client
            .invoke_endpoint()
            .endpoint_name(&self.endpoint_name)
            .body(Blob::from_maybe_shared(body))
            .set_content_type(f.content_type)
            .set_accept(f.accept)
            .set_custom_attributes(f.custom_attributes)
            .set_target_model(f.target_model)
            .set_target_variant(f.target_variant)
            .set_target_container_hostname(f.target_container_hostname)
            .set_inference_id(f.inference_id)
            .set_enable_explanations(f.enable_explanations)
            .set_inference_component_name(f.inference_component)
            .set_session_id(f.session_id)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, classify_invoke))?;
        let body = output.body.take().map(Blob::into_bytes).unwrap_or_default();
        let mut response = Response::new(full_body(body.clone()));
        let headers = response.headers_mut();
        // The proxy reads the whole body before answering when it knows the length.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        set(headers, CONTENT_TYPE.as_str(), output.content_type());
        set(
            headers,
            X_INVOKED_VARIANT,
            output.invoked_production_variant(),
        );
        set(headers, X_CUSTOM_ATTRIBUTES, output.custom_attributes());
        set(headers, X_NEW_SESSION_ID, output.new_session_id());
        set(headers, X_CLOSED_SESSION_ID, output.closed_session_id());
        set(headers, X_AMZN_REQUEST_ID, output.request_id());
        Ok(response)
    }

    async fn invoke_streaming(
        &self,
        f: InvokeFields,
        body: Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        let output = self
            .client
            .invoke_endpoint_with_response_stream()
            .endpoint_name(&self.endpoint_name)
            .body(Blob::from_maybe_shared(body))
            .set_content_type(f.content_type)
            .set_accept(f.accept)
            .set_custom_attributes(f.custom_attributes)
            .set_target_variant(f.target_variant)
            .set_target_container_hostname(f.target_container_hostname)
            .set_inference_id(f.inference_id)
            .set_inference_component_name(f.inference_component)
            .set_session_id(f.session_id)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, classify_streaming))?;
        let framing = Framing::for_content_type(output.content_type());
        let mut head = HeaderMap::new();
        head.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        head.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        set(&mut head, X_STREAM_CONTENT_TYPE, output.content_type());
        set(
            &mut head,
            X_INVOKED_VARIANT,
            output.invoked_production_variant(),
        );
        set(&mut head, X_CUSTOM_ATTRIBUTES, output.custom_attributes());
        set(&mut head, X_AMZN_REQUEST_ID, output.request_id());
        let events = event_stream(output.body, SseFramer::new(framing));
        let mut response = Response::new(StreamBody::new(events).boxed_unsync());
        *response.headers_mut() = head;
        Ok(response)
    }
}

/// What a request path asks for.
#[derive(Debug)]
enum Target {
    Ping,
    Invoke,
    Refused(UpstreamError),
}

fn target(method: &Method, path: &str, endpoint_name: &str) -> Target {
    let invoke = |method: &Method| {
        if method == Method::POST {
            Target::Invoke
        } else {
            Target::Refused(rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} takes POST"),
            ))
        }
    };
    if path == "/ping" {
        return if method == Method::GET || method == Method::HEAD {
            Target::Ping
        } else {
            Target::Refused(rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "/ping takes GET".into(),
            ))
        };
    }
    if path == "/invocations" {
        return invoke(method);
    }
    if let Some(name) = path
        .strip_prefix("/endpoints/")
        .and_then(|rest| rest.strip_suffix("/invocations"))
        .filter(|name| !name.contains('/'))
    {
        return if name == endpoint_name {
            invoke(method)
        } else {
            Target::Refused(rejected(
                StatusCode::NOT_FOUND,
                "endpoint_not_served",
                format!("this proxy forwards to endpoint {endpoint_name:?} only"),
            ))
        };
    }
    Target::Refused(rejected(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such path; SageMaker invocations are POST /invocations or \
             POST /endpoints/{endpoint_name}/invocations"
        ),
    ))
}

/// The InvokeEndpoint fields a client sets through headers, checked against the limits of
/// SageMaker's service model so that a bad value is a clear 400 before any call.
#[derive(Debug, Default, PartialEq)]
struct InvokeFields {
    content_type: Option<String>,
    accept: Option<String>,
    custom_attributes: Option<String>,
    target_model: Option<String>,
    target_variant: Option<String>,
    target_container_hostname: Option<String>,
    inference_id: Option<String>,
    enable_explanations: Option<String>,
    inference_component: Option<String>,
    session_id: Option<String>,
}

/// A header's documented constraint (SageMaker runtime service model, 2017-05-13).
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// US-ASCII of at most this many characters.
    Ascii(usize),
    /// Printable ASCII that starts with a non-space, 1 to this many characters.
    Printable(usize),
    /// Letters and digits with inner hyphens, 1 to this many characters.
    Name(usize),
    /// Any text of 1 to this many characters.
    Text(usize),
    /// `NEW_SESSION` or a session id (a name of up to 256 characters).
    Session,
}

impl Limit {
    fn check(self, value: &str) -> Result<(), String> {
        let chars = value.chars().count();
        match self {
            Limit::Ascii(max) if !value.is_ascii() => Err(format!("must be US-ASCII (max {max})")),
            Limit::Ascii(max) if chars > max => Err(format!("is {chars} characters, max {max}")),
            Limit::Ascii(_) => Ok(()),
            Limit::Printable(max) if chars == 0 || chars > max => {
                Err(format!("is {chars} characters, must be 1 to {max}"))
            }
            Limit::Printable(_)
                if value.starts_with(|c: char| c.is_ascii_whitespace())
                    || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
            {
                Err("must be printable ASCII and start with a non-space".into())
            }
            Limit::Printable(_) => Ok(()),
            Limit::Name(max) if is_resource_name(value, max) => Ok(()),
            Limit::Name(max) => Err(format!(
                "must be 1 to {max} letters, digits and inner hyphens"
            )),
            Limit::Text(max) if chars == 0 || chars > max => {
                Err(format!("is {chars} characters, must be 1 to {max}"))
            }
            Limit::Text(_) => Ok(()),
            Limit::Session if value == "NEW_SESSION" || is_resource_name(value, 256) => Ok(()),
            Limit::Session => {
                Err("must be NEW_SESSION or 1 to 256 letters, digits and inner hyphens".into())
            }
        }
    }
}

/// Whether `name` can name a SageMaker endpoint (checked by the config and by the client).
pub(crate) fn check_endpoint_name(name: &str) -> Result<(), String> {
    if is_resource_name(name, 63) {
        Ok(())
    } else {
        Err("must be 1-63 letters, digits and inner hyphens (a SageMaker endpoint name)".into())
    }
}

/// `^[a-zA-Z0-9](-*[a-zA-Z0-9])*$` of at most `max` characters: endpoint, variant, container
/// and inference component names.
fn is_resource_name(value: &str, max: usize) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

impl InvokeFields {
    /// Reads and checks the headers; the error names the header and what is wrong with it.
    fn from_headers(headers: &HeaderMap, streaming: bool) -> Result<InvokeFields, String> {
        let get = |name: &str, limit: Limit| -> Result<Option<String>, String> {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            let value = value
                .to_str()
                .map_err(|_| format!("header {name} must be US-ASCII"))?;
            limit
                .check(value)
                .map_err(|problem| format!("header {name} {problem}"))?;
            Ok(Some(value.to_owned()))
        };
        let fields = InvokeFields {
            content_type: get(CONTENT_TYPE.as_str(), Limit::Ascii(1024))?,
            accept: get(http::header::ACCEPT.as_str(), Limit::Ascii(1024))?,
            custom_attributes: get(X_CUSTOM_ATTRIBUTES, Limit::Ascii(1024))?,
            target_model: get(X_TARGET_MODEL, Limit::Printable(1024))?,
            target_variant: get(X_TARGET_VARIANT, Limit::Name(63))?,
            target_container_hostname: get(X_TARGET_CONTAINER, Limit::Name(63))?,
            // Without the client's own inference id, the proxy's request id becomes it, so that
            // SageMaker's data capture and the review records share one id.
            inference_id: match get(X_INFERENCE_ID, Limit::Printable(64))? {
                Some(id) => Some(id),
                None => get(X_REQUEST_ID, Limit::Printable(64)).ok().flatten(),
            },
            enable_explanations: get(X_ENABLE_EXPLANATIONS, Limit::Text(64))?,
            inference_component: get(X_INFERENCE_COMPONENT, Limit::Name(63))?,
            session_id: get(X_SESSION_ID, Limit::Session)?,
        };
        if streaming {
            for (name, value) in [
                (X_TARGET_MODEL, &fields.target_model),
                (X_ENABLE_EXPLANATIONS, &fields.enable_explanations),
            ] {
                if value.is_some() {
                    return Err(format!(
                        "header {name} is not supported by InvokeEndpointWithResponseStream \
                         (upstream.response_stream = true)"
                    ));
                }
            }
        }
        Ok(fields)
    }
}

/// Reads the request body, refusing more than SageMaker accepts.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, UpstreamError> {
    let too_large = || {
        rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds SageMaker's limit of {MAX_BODY_BYTES} bytes (6 MiB)"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // Read frame by frame rather than through `http_body_util::Limited`, whose generic error
    // conversion makes this future lose `Send` (a rustc higher-ranked lifetime limitation).
    let mut body = body;
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            rejected(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

fn rejected(status: StatusCode, error_type: &'static str, message: String) -> UpstreamError {
    UpstreamError::Rejected {
        status,
        error_type,
        message,
        original_status: None,
    }
}

fn set(headers: &mut HeaderMap, name: &str, value: Option<&str>) {
    let Some(value) = value else { return };
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => warn!(
            header = name,
            "SageMaker returned a header value HTTP cannot carry; dropped"
        ),
    }
}

/// SageMaker's modeled errors of InvokeEndpoint, as a client can act on them.
fn classify_invoke(error: &InvokeEndpointError) -> Option<UpstreamError> {
    use InvokeEndpointError as E;
    Some(match error {
        E::ModelError(e) => model_error(
            e.original_status_code(),
            e.original_message().or(e.message()),
        ),
        E::ModelNotReadyException(e) => service(429, "model_not_ready", e.message()),
        E::ValidationError(e) => service(400, "validation_error", e.message()),
        E::ServiceUnavailable(e) => service(503, "service_unavailable", e.message()),
        E::InternalFailure(e) => service(502, "internal_failure", e.message()),
        E::InternalDependencyException(e) => service(502, "internal_dependency", e.message()),
        _ => return None,
    })
}

/// SageMaker's modeled errors of InvokeEndpointWithResponseStream, before the stream starts.
fn classify_streaming(error: &InvokeEndpointWithResponseStreamError) -> Option<UpstreamError> {
    use InvokeEndpointWithResponseStreamError as E;
    Some(match error {
        E::ModelError(e) => model_error(
            e.original_status_code(),
            e.original_message().or(e.message()),
        ),
        E::ModelStreamError(e) if e.error_code() == Some("ModelInvocationTimeExceeded") => {
            UpstreamError::Timeout
        }
        E::ModelStreamError(e) => service(502, "model_stream_error", e.message()),
        E::InternalStreamFailure(e) => service(502, "internal_stream_failure", e.message()),
        E::ValidationError(e) => service(400, "validation_error", e.message()),
        E::ServiceUnavailable(e) => service(503, "service_unavailable", e.message()),
        E::InternalFailure(e) => service(502, "internal_failure", e.message()),
        _ => return None,
    })
}

/// The model container answered 4xx/5xx: 424 (SageMaker's own status for it), with the
/// container's status and message.
fn model_error(original_status: Option<i32>, message: Option<&str>) -> UpstreamError {
    UpstreamError::Rejected {
        status: StatusCode::FAILED_DEPENDENCY,
        error_type: "model_error",
        message: message
            .unwrap_or("the model container returned an error")
            .to_owned(),
        original_status: original_status.and_then(|s| u16::try_from(s).ok()),
    }
}

fn service(status: u16, error_type: &'static str, message: Option<&str>) -> UpstreamError {
    let status = StatusCode::from_u16(status).expect("a valid status");
    let message = message.map_or_else(|| format!("SageMaker: {error_type}"), str::to_owned);
    rejected(status, error_type, message)
}

/// Error codes AWS services use for throttling (the SDK's retry classifier knows the same).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
];

/// Classifies an SDK failure once, at the edge: modeled errors by `classify`, throttling by
/// code, timeouts, unreachable, and everything else as a failed upstream.
fn map_sdk_error<E>(
    error: SdkError<E, HttpResponse>,
    classify: impl FnOnce(&E) -> Option<UpstreamError>,
) -> UpstreamError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &error {
        SdkError::TimeoutError(_) => return UpstreamError::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            return UpstreamError::Timeout;
        }
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            return UpstreamError::Unreachable(described(&error));
        }
        SdkError::ServiceError(context) => {
            if let Some(mapped) = classify(context.err()) {
                return mapped;
            }
            let code = context.err().code();
            if code.is_some_and(|code| THROTTLING_CODES.contains(&code))
                || context.raw().status().as_u16() == 429
            {
                return service(429, "throttled", context.err().message());
            }
            // Access denied, unknown endpoint, bad signature…: the operator's problem, not
            // something the client can fix; the details go to the log only.
            warn!(
                code = code.unwrap_or("none"),
                status = context.raw().status().as_u16(),
                message = context.err().message().unwrap_or(""),
                "SageMaker refused the call"
            );
            return rejected(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "SageMaker refused the call; the proxy's log has the details".into(),
            );
        }
        _ => {}
    }
    // Credentials that cannot be loaded, a response that cannot be parsed, …
    UpstreamError::Failed(described(&error))
}

/// The error with its chain of causes as one message (the SDK's Display shows the top only).
fn described<E: std::error::Error>(error: &E) -> BoxError {
    DisplayErrorContext(error).to_string().into()
}

type Receiver = aws_sdk_sagemakerruntime::primitives::event_stream::EventReceiver<
    ResponseStream,
    ResponseStreamError,
>;

/// Where the server-sent event body is in its life.
enum StreamState {
    Open(Box<(Receiver, SseFramer)>),
    /// The error event was sent; the body now ends with this error.
    Failing(BoxError),
    Done,
}

/// The payload parts as server-sent events. A failure after the head was sent becomes an
/// `error` event, then a body error, so the client sees both a reason and a broken stream.
fn event_stream(
    receiver: Receiver,
    framer: SseFramer,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static {
    futures_util::stream::unfold(
        StreamState::Open(Box::new((receiver, framer))),
        |state| async move {
            let (mut receiver, mut framer) = match state {
                StreamState::Open(open) => *open,
                StreamState::Failing(error) => return Some((Err(error), StreamState::Done)),
                StreamState::Done => return None,
            };
            loop {
                match receiver.recv().await {
                    Ok(Some(ResponseStream::PayloadPart(part))) => {
                        let bytes = part.bytes.map(Blob::into_bytes).unwrap_or_default();
                        let out = framer.push(&bytes);
                        if !out.is_empty() {
                            let next = StreamState::Open(Box::new((receiver, framer)));
                            return Some((Ok(Frame::data(out)), next));
                        }
                    }
                    // A kind of event this SDK does not know carries nothing for the client.
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let out = framer.finish();
                        return (!out.is_empty())
                            .then(|| (Ok(Frame::data(out)), StreamState::Done));
                    }
                    Err(error) => {
                        let (error_type, message) = stream_failure(&error);
                        warn!(error = %DisplayErrorContext(&error), "SageMaker response stream failed");
                        let mut out = framer.finish().to_vec();
                        out.extend_from_slice(&sse::error_event(error_type, &message));
                        let failing =
                            StreamState::Failing(format!("{error_type}: {message}").into());
                        return Some((Ok(Frame::data(Bytes::from(out))), failing));
                    }
                }
            }
        },
    )
}

/// The `error` event's type and message for a failure in the middle of a response stream.
fn stream_failure<R>(error: &SdkError<ResponseStreamError, R>) -> (&'static str, String) {
    match error {
        SdkError::ServiceError(context) => match context.err() {
            ResponseStreamError::ModelStreamError(e) => (
                "model_stream_error",
                match (e.error_code(), e.message()) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (code, message) => code.or(message).unwrap_or("the model stream broke").into(),
                },
            ),
            ResponseStreamError::InternalStreamFailure(e) => (
                "internal_stream_failure",
                e.message().unwrap_or("SageMaker's stream failed").into(),
            ),
            other => (
                "upstream_failed",
                other
                    .message()
                    .unwrap_or("SageMaker's stream failed")
                    .into(),
            ),
        },
        _ => (
            "upstream_failed",
            "the SageMaker response stream broke".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sagemakerruntime::error::ErrorMetadata;
    use aws_sdk_sagemakerruntime::types::error::{
        InternalDependencyException, InternalFailure, InternalStreamFailure, ModelError,
        ModelNotReadyException, ModelStreamError, ServiceUnavailable, ValidationError,
    };
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;

    fn raw(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn invoke_error(error: InvokeEndpointError, status: u16) -> UpstreamError {
        map_sdk_error(SdkError::service_error(error, raw(status)), classify_invoke)
    }

    fn summary(error: &UpstreamError) -> (u16, &'static str, String, Option<u16>) {
        (
            error.status().as_u16(),
            error.error_type(),
            error.client_message(),
            error.original_status(),
        )
    }

    #[test]
    fn model_error_is_424_with_the_containers_status_and_message() {
        let error = ModelError::builder()
            .message("Received server error (500) from primary with message \"boom\"")
            .original_status_code(500)
            .original_message("boom")
            .log_stream_arn("arn:aws:logs:us-east-1:123456789012:log-group:/secret")
            .build();
        let mapped = invoke_error(InvokeEndpointError::ModelError(error), 424);
        assert_eq!(
            summary(&mapped),
            (424, "model_error", "boom".into(), Some(500))
        );
        assert!(
            !mapped.client_message().contains("arn:"),
            "no account details"
        );
    }

    #[test]
    fn modeled_errors_map_to_the_documented_statuses() {
        use InvokeEndpointError as E;
        let cases = [
            (
                E::ModelNotReadyException(
                    ModelNotReadyException::builder().message("loading").build(),
                ),
                429,
                (429, "model_not_ready"),
            ),
            (
                E::ValidationError(ValidationError::builder().message("bad").build()),
                400,
                (400, "validation_error"),
            ),
            (
                E::ServiceUnavailable(ServiceUnavailable::builder().message("later").build()),
                503,
                (503, "service_unavailable"),
            ),
            (
                E::InternalFailure(InternalFailure::builder().message("oops").build()),
                500,
                (502, "internal_failure"),
            ),
            (
                E::InternalDependencyException(
                    InternalDependencyException::builder()
                        .message("dep")
                        .build(),
                ),
                530,
                (502, "internal_dependency"),
            ),
        ];
        for (error, raw_status, (status, error_type)) in cases {
            let mapped = invoke_error(error, raw_status);
            let message = ["loading", "bad", "later", "oops", "dep"];
            assert_eq!(
                (mapped.status().as_u16(), mapped.error_type()),
                (status, error_type)
            );
            assert!(
                message.contains(&mapped.client_message().as_str()),
                "{mapped:?}"
            );
            assert_eq!(mapped.original_status(), None);
        }
    }

    #[test]
    fn throttling_is_429_by_code_or_status() {
        let by_code = InvokeEndpointError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build(),
        );
        let mapped = invoke_error(by_code, 400);
        assert_eq!(
            summary(&mapped),
            (429, "throttled", "Rate exceeded".into(), None)
        );
        let by_status = InvokeEndpointError::generic(ErrorMetadata::builder().build());
        assert_eq!(invoke_error(by_status, 429).status(), 429);
    }

    #[test]
    fn other_service_errors_are_502_without_details() {
        let denied = InvokeEndpointError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("User arn:aws:iam::123456789012:role/x is not authorized")
                .build(),
        );
        let mapped = invoke_error(denied, 403);
        assert_eq!(mapped.status(), 502);
        assert_eq!(mapped.error_type(), "upstream_failed");
        assert!(!mapped.client_message().contains("123456789012"));
    }

    #[test]
    fn timeouts_are_504_and_connection_failures_502() {
        let timeout: SdkError<InvokeEndpointError, HttpResponse> =
            SdkError::timeout_error("operation timed out");
        assert!(matches!(
            map_sdk_error(timeout, classify_invoke),
            UpstreamError::Timeout
        ));
        let connect_timeout: SdkError<InvokeEndpointError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into()));
        assert_eq!(
            map_sdk_error(connect_timeout, classify_invoke).status(),
            504
        );
        let refused: SdkError<InvokeEndpointError, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()),
        );
        let mapped = map_sdk_error(refused, classify_invoke);
        assert!(
            matches!(mapped, UpstreamError::Unreachable(_)),
            "{mapped:?}"
        );
        assert_eq!(mapped.status(), 502);
        let no_credentials: SdkError<InvokeEndpointError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other("no credentials".into(), None));
        let mapped = map_sdk_error(no_credentials, classify_invoke);
        assert!(matches!(mapped, UpstreamError::Failed(_)), "{mapped:?}");
        assert_eq!(mapped.status(), 502);
    }

    #[test]
    fn streaming_errors_before_the_head() {
        use InvokeEndpointWithResponseStreamError as E;
        let map =
            |error: E| map_sdk_error(SdkError::service_error(error, raw(400)), classify_streaming);
        let invocation_timeout = E::ModelStreamError(
            ModelStreamError::builder()
                .error_code("ModelInvocationTimeExceeded")
                .message("too slow")
                .build(),
        );
        assert!(matches!(map(invocation_timeout), UpstreamError::Timeout));
        let broken = E::ModelStreamError(
            ModelStreamError::builder()
                .error_code("StreamBroken")
                .message("reset")
                .build(),
        );
        assert_eq!(map(broken).error_type(), "model_stream_error");
        let internal =
            E::InternalStreamFailure(InternalStreamFailure::builder().message("x").build());
        assert_eq!(summary(&map(internal)).0, 502);
        let model = E::ModelError(ModelError::builder().original_status_code(400).build());
        assert_eq!(summary(&map(model)).3, Some(400));
    }

    #[test]
    fn mid_stream_failures_name_their_cause() {
        let error: SdkError<ResponseStreamError, ()> = SdkError::service_error(
            ResponseStreamError::ModelStreamError(
                ModelStreamError::builder()
                    .error_code("StreamBroken")
                    .message("reset")
                    .build(),
            ),
            (),
        );
        assert_eq!(
            stream_failure(&error),
            ("model_stream_error", "StreamBroken: reset".into())
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse::<HeaderName>().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn headers_map_to_invoke_endpoint_fields() {
        let fields = InvokeFields::from_headers(
            &headers(&[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                (X_CUSTOM_ATTRIBUTES, "trace=1"),
                (X_TARGET_MODEL, "model-a.tar.gz"),
                (X_TARGET_VARIANT, "blue"),
                (X_TARGET_CONTAINER, "c-1"),
                (X_INFERENCE_ID, "req 42"),
                (X_ENABLE_EXPLANATIONS, "`true`"),
                (X_INFERENCE_COMPONENT, "ic-1"),
                (X_SESSION_ID, "NEW_SESSION"),
                (X_REQUEST_ID, "ignored-when-inference-id-is-set"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            fields,
            InvokeFields {
                content_type: Some("application/json".into()),
                accept: Some("application/json".into()),
                custom_attributes: Some("trace=1".into()),
                target_model: Some("model-a.tar.gz".into()),
                target_variant: Some("blue".into()),
                target_container_hostname: Some("c-1".into()),
                inference_id: Some("req 42".into()),
                enable_explanations: Some("`true`".into()),
                inference_component: Some("ic-1".into()),
                session_id: Some("NEW_SESSION".into()),
            }
        );
    }

    #[test]
    fn request_id_becomes_the_inference_id_when_it_fits() {
        let id = "0190f5a2-7c1e-7d3b-8000-000000000001";
        let fields = InvokeFields::from_headers(&headers(&[(X_REQUEST_ID, id)]), false).unwrap();
        assert_eq!(fields.inference_id.as_deref(), Some(id));
        let long = "x".repeat(65);
        let fields = InvokeFields::from_headers(&headers(&[(X_REQUEST_ID, &long)]), false).unwrap();
        assert_eq!(
            fields.inference_id, None,
            "a request id SageMaker would refuse is not sent"
        );
    }

    #[test]
    fn documented_limits_are_enforced_with_the_header_named() {
        let long = |n: usize| "a".repeat(n);
        let cases: Vec<(&str, String)> = vec![
            (X_CUSTOM_ATTRIBUTES, long(1025)),
            ("content-type", long(1025)),
            ("accept", long(1025)),
            (X_TARGET_MODEL, long(1025)),
            (X_TARGET_MODEL, " leading-space".into()),
            (X_TARGET_VARIANT, long(64)),
            (X_TARGET_VARIANT, "-blue".into()),
            (X_TARGET_VARIANT, "blue_green".into()),
            (X_TARGET_CONTAINER, long(64)),
            (X_INFERENCE_ID, long(65)),
            (X_INFERENCE_ID, "".into()),
            (X_ENABLE_EXPLANATIONS, long(65)),
            (X_INFERENCE_COMPONENT, "ends-".into()),
            (X_SESSION_ID, long(257)),
        ];
        for (name, value) in cases {
            let error = InvokeFields::from_headers(&headers(&[(name, &value)]), false)
                .expect_err(&format!("{name}: {value:?} must be refused"));
            assert!(error.contains(name), "{error}");
        }
        for (name, value) in [
            (X_CUSTOM_ATTRIBUTES, long(1024)),
            (X_TARGET_MODEL, long(1024)),
            (X_TARGET_VARIANT, long(63)),
            (X_INFERENCE_ID, long(64)),
            (X_ENABLE_EXPLANATIONS, long(64)),
        ] {
            assert!(InvokeFields::from_headers(&headers(&[(name, &value)]), false).is_ok());
        }
        let not_ascii = HeaderMap::from_iter([(
            HeaderName::from_static(X_CUSTOM_ATTRIBUTES),
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        )]);
        assert!(InvokeFields::from_headers(&not_ascii, false).is_err());
    }

    #[test]
    fn streaming_refuses_fields_it_does_not_have() {
        let h = headers(&[(X_TARGET_MODEL, "m.tar.gz")]);
        assert!(InvokeFields::from_headers(&h, false).is_ok());
        let error = InvokeFields::from_headers(&h, true).unwrap_err();
        assert!(
            error.contains("InvokeEndpointWithResponseStream"),
            "{error}"
        );
    }

    #[test]
    fn paths_map_to_ping_invoke_or_a_refusal() {
        let status = |method: Method, path: &str| match target(&method, path, "my-endpoint") {
            Target::Ping => 200,
            Target::Invoke => 0,
            Target::Refused(e) => e.status().as_u16(),
        };
        assert_eq!(status(Method::GET, "/ping"), 200);
        assert_eq!(status(Method::POST, "/invocations"), 0);
        assert_eq!(
            status(Method::POST, "/endpoints/my-endpoint/invocations"),
            0
        );
        assert_eq!(status(Method::POST, "/endpoints/other/invocations"), 404);
        assert_eq!(status(Method::POST, "/endpoints/a/b/invocations"), 404);
        assert_eq!(status(Method::GET, "/invocations"), 405);
        assert_eq!(status(Method::POST, "/ping"), 405);
        assert_eq!(status(Method::POST, "/v1/chat/completions"), 404);
    }

    #[test]
    fn init_refuses_a_bad_endpoint_name_and_a_missing_region() {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let config = |name: &str, region: Option<&str>| UpstreamConfig {
            kind: crate::upstream::UpstreamKind::Sagemaker,
            endpoint_name: Some(name.into()),
            region: region.map(str::to_owned),
            ..UpstreamConfig::default()
        };
        let error = |c| {
            SagemakerUpstream::with_sdk_config(&c, &sdk)
                .err()
                .unwrap()
                .0
        };
        assert!(error(config("my_endpoint", Some("eu-west-1"))).contains("endpoint_name"));
        assert!(error(config("my-endpoint", None)).contains("region"));
        assert!(
            SagemakerUpstream::with_sdk_config(&config("my-endpoint", Some("eu-west-1")), &sdk)
                .is_ok()
        );
    }

    #[test]
    fn resource_names_follow_sagemakers_pattern() {
        for good in ["a", "my-endpoint", "a--b", "A1"] {
            assert!(is_resource_name(good, 63), "{good}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_resource_name(bad, 63), "{bad}");
        }
    }
}
