//! Request mapping: which path asks for what ([`target`]), the InvokeEndpoint fields a client
//! sets through `x-amzn-sagemaker-*` headers, checked against the service model's limits
//! ([`InvokeFields`]), and the request body within SageMaker's size limit ([`read_body`]).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use super::errors::rejected;
use crate::upstream::{Body, UpstreamError};

/// SageMaker's request body limit: 6 MiB (the service model's `BodyBlob` maximum).
const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

pub(super) const X_CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";
const X_TARGET_MODEL: &str = "x-amzn-sagemaker-target-model";
const X_TARGET_VARIANT: &str = "x-amzn-sagemaker-target-variant";
const X_TARGET_CONTAINER: &str = "x-amzn-sagemaker-target-container-hostname";
const X_INFERENCE_ID: &str = "x-amzn-sagemaker-inference-id";
const X_INFERENCE_COMPONENT: &str = "x-amzn-sagemaker-inference-component";
const X_ENABLE_EXPLANATIONS: &str = "x-amzn-sagemaker-enable-explanations";
const X_SESSION_ID: &str = "x-amzn-sagemaker-session-id";
const X_REQUEST_ID: &str = "x-request-id";

/// What a request path asks for.
#[derive(Debug)]
pub(super) enum Target {
    Ping,
    Invoke,
    Refused(UpstreamError),
}

pub(super) fn target(method: &Method, path: &str, endpoint_name: &str) -> Target {
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
pub(super) struct InvokeFields {
    pub(super) content_type: Option<String>,
    pub(super) accept: Option<String>,
    pub(super) custom_attributes: Option<String>,
    pub(super) target_model: Option<String>,
    pub(super) target_variant: Option<String>,
    pub(super) target_container_hostname: Option<String>,
    pub(super) inference_id: Option<String>,
    pub(super) enable_explanations: Option<String>,
    pub(super) inference_component: Option<String>,
    pub(super) session_id: Option<String>,
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

/// `^[a-zA-Z0-9](-*[a-zA-Z0-9])*$` of at most `max` characters: endpoint, variant, container
/// and inference component names.
pub(super) fn is_resource_name(value: &str, max: usize) -> bool {
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
    pub(super) fn from_headers(
        headers: &HeaderMap,
        streaming: bool,
    ) -> Result<InvokeFields, String> {
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
pub(super) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, UpstreamError> {
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
        discard(body).await;
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

/// How long a refused body is read and dropped before the answer goes out (nginx's
/// `lingering_timeout` is 5 s): closing a connection whose client is still sending resets it,
/// and the client would see a broken pipe instead of the 413.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads `body` to its end and drops it, for at most [`LINGER`].
async fn discard(mut body: Body) {
    let drained = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

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
    fn resource_names_follow_sagemakers_pattern() {
        for good in ["a", "my-endpoint", "a--b", "A1"] {
            assert!(is_resource_name(good, 63), "{good}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_resource_name(bad, 63), "{bad}");
        }
    }
}
