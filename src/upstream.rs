//! Calling the model: an HTTP model server (keep-alive connections pooled per serving thread)
//! or a SageMaker endpoint. Both take and give plain `http` requests and responses, so the proxy's capture,
//! decision and Kafka path is the same code whatever the upstream.

mod config;
mod http1;
mod sagemaker;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub use self::config::{UpstreamConfig, UpstreamKind};
pub use self::http1::HttpUpstream;
pub use self::sagemaker::SagemakerUpstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body from bytes already in memory.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The `error_type` of the failures every upstream can have.
pub(crate) const UNREACHABLE: &str = "upstream_unreachable";
pub(crate) const TIMEOUT: &str = "upstream_timeout";
pub(crate) const FAILED: &str = "upstream_failed";
/// Every `error_type` any upstream reports, whatever its kind (SageMaker adds its own).
pub(crate) const ERROR_TYPES: [&str; 3] = [UNREACHABLE, TIMEOUT, FAILED];

/// Why the upstream gave no usable answer; the proxy turns this into the client's status.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, DNS failure, reset before a response: nothing reached the model.
    #[error("upstream unreachable: {0}")]
    Unreachable(#[source] BoxError),
    /// No response head within `upstream.timeout`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered something that is not a usable HTTP response.
    #[error("upstream failed: {0}")]
    Failed(#[source] BoxError),
    /// The upstream refused in a way the client can act on (SageMaker's error classes).
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        error_type: &'static str,
        message: String,
        /// The model container's own status, for SageMaker's ModelError.
        original_status: Option<u16>,
    },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Unreachable(_) | UpstreamError::Failed(_) => StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Rejected { status, .. } => *status,
        }
    }

    /// The bounded `error_type` label and the `error` field clients see.
    pub fn error_type(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) => UNREACHABLE,
            UpstreamError::Timeout => TIMEOUT,
            UpstreamError::Failed(_) => FAILED,
            UpstreamError::Rejected { error_type, .. } => error_type,
        }
    }

    /// What the client may read: no internal addresses or stack of causes.
    pub fn client_message(&self) -> String {
        match self {
            UpstreamError::Unreachable(_) => "the model server could not be reached".into(),
            UpstreamError::Timeout => "the model server did not answer in time".into(),
            UpstreamError::Failed(_) => "the model server sent an invalid response".into(),
            UpstreamError::Rejected { message, .. } => message.clone(),
        }
    }

    pub fn original_status(&self) -> Option<u16> {
        match self {
            UpstreamError::Rejected {
                original_status, ..
            } => *original_status,
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream: {0}")]
pub struct UpstreamInitError(pub String);

/// The model behind the proxy.
// Built once per process and never moved on the hot path: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Upstream {
    Http(HttpUpstream),
    Sagemaker(SagemakerUpstream),
}

impl Upstream {
    pub async fn from_config(config: &UpstreamConfig) -> Result<Upstream, UpstreamInitError> {
        match config.kind {
            UpstreamKind::Http => Ok(Upstream::Http(HttpUpstream::new(
                &config.url,
                config.timeout,
            )?)),
            UpstreamKind::Sagemaker => {
                Ok(Upstream::Sagemaker(SagemakerUpstream::new(config).await?))
            }
        }
    }

    /// The same upstream for another serving thread: an HTTP model server gets a connection
    /// pool of its own there; a SageMaker client is shared (the AWS SDK pools its own).
    pub fn for_thread(&self) -> Upstream {
        match self {
            Upstream::Http(http) => Upstream::Http(http.for_thread()),
            Upstream::Sagemaker(sagemaker) => Upstream::Sagemaker(sagemaker.clone()),
        }
    }

    /// Sends one request; the response head is back when this resolves, the body streams.
    pub async fn call(&self, request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        match self {
            Upstream::Http(http) => http.call(request).await,
            Upstream::Sagemaker(sagemaker) => sagemaker.call(request).await,
        }
    }
}

/// A model server's base URL: `http://host:port/optional/base/path`.
pub(crate) struct BaseUrl {
    authority: Authority,
    base_path: String,
}

impl BaseUrl {
    /// Parses an absolute `http://` URL; the error says what is wrong, for config problems.
    pub(crate) fn parse(url: &str) -> Result<BaseUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("is not a valid URL: {e}"))?;
        let parts = uri.into_parts();
        match parts.scheme.as_ref().map(Scheme::as_str) {
            Some("http") => {}
            Some(other) => return Err(format!("has scheme {other:?}; use http://")),
            None => return Err("must be an absolute http:// URL".into()),
        }
        let authority = parts.authority.ok_or("has no host")?;
        let base_path = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Ok(BaseUrl {
            authority,
            base_path,
        })
    }
}
