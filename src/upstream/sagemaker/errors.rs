//! Error mapping, classified once at the edge: SageMaker's modeled errors, throttling,
//! timeouts and unreachable endpoints become an [`UpstreamError`] the client can act on
//! (never with account details), and a failure in the middle of a response stream becomes
//! the type and message of an `error` event.

use aws_sdk_sagemakerruntime::config::http::HttpResponse;
use aws_sdk_sagemakerruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamError;
use aws_sdk_sagemakerruntime::types::error::ResponseStreamError;
use http::StatusCode;
use tracing::warn;

use crate::upstream::{BoxError, FAILED, UpstreamError};

pub(super) fn rejected(
    status: StatusCode,
    error_type: &'static str,
    message: String,
) -> UpstreamError {
    UpstreamError::Rejected {
        status,
        error_type,
        message,
        original_status: None,
    }
}

/// SageMaker's modeled errors of InvokeEndpoint, as a client can act on them.
pub(super) fn classify_invoke(error: &InvokeEndpointError) -> Option<UpstreamError> {
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
pub(super) fn classify_streaming(
    error: &InvokeEndpointWithResponseStreamError,
) -> Option<UpstreamError> {
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
pub(super) fn map_sdk_error<E>(
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
                FAILED,
                "SageMaker refused the call; the proxy's log has the details".into(),
            );
        }
        _ => {}
    }
    // Credentials that cannot be loaded, a response that cannot be parsed, …
    UpstreamError::Failed(described(&error))
}

/// The error with its chain of causes as one message (the SDK's Display shows the top only).
pub(super) fn described<E: std::error::Error>(error: &E) -> BoxError {
    DisplayErrorContext(error).to_string().into()
}

/// The `error` event's type and message for a failure in the middle of a response stream.
pub(super) fn stream_failure<R>(
    error: &SdkError<ResponseStreamError, R>,
) -> (&'static str, String) {
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
                FAILED,
                other
                    .message()
                    .unwrap_or("SageMaker's stream failed")
                    .into(),
            ),
        },
        _ => (FAILED, "the SageMaker response stream broke".into()),
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
}
