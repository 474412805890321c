//! Response mapping: SageMaker's answer becomes the response the client would have had from
//! the model container, whole ([`buffered`]) or, for a response stream, its payload parts as
//! server-sent events while they arrive ([`streamed`]).

use aws_sdk_sagemakerruntime::error::DisplayErrorContext;
use aws_sdk_sagemakerruntime::operation::RequestId;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointOutput;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamOutput;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::types::ResponseStream;
use aws_sdk_sagemakerruntime::types::error::ResponseStreamError;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tracing::warn;

use super::errors::stream_failure;
use super::request::X_CUSTOM_ATTRIBUTES;
use super::sse::{self, Framing, SseFramer};
use crate::upstream::{Body, BoxError, full_body};

const X_NEW_SESSION_ID: &str = "x-amzn-sagemaker-new-session-id";
const X_CLOSED_SESSION_ID: &str = "x-amzn-sagemaker-closed-session-id";
const X_INVOKED_VARIANT: &str = "x-amzn-invoked-production-variant";
/// The model's own content type when the response is re-framed as server-sent events.
const X_STREAM_CONTENT_TYPE: &str = "x-amzn-sagemaker-content-type";
const X_AMZN_REQUEST_ID: &str = "x-amzn-requestid";

/// InvokeEndpoint's answer: the model's body with its length and SageMaker's headers.
pub(super) fn buffered(mut output: InvokeEndpointOutput) -> Response<Body> {
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
    response
}

/// InvokeEndpointWithResponseStream's answer: a server-sent event stream of the payload parts.
pub(super) fn streamed(output: InvokeEndpointWithResponseStreamOutput) -> Response<Body> {
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
    response
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
