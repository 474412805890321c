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
//!
//! The client is here; [`request`] maps the client's request onto the call, [`response`] maps
//! the answer back, and [`errors`] classifies what went wrong.

mod errors;
mod request;
mod response;
mod sse;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sagemakerruntime::Client;
use aws_sdk_sagemakerruntime::config::Region;
use aws_sdk_sagemakerruntime::config::retry::RetryConfig;
use aws_sdk_sagemakerruntime::config::timeout::TimeoutConfig;
use aws_sdk_sagemakerruntime::primitives::Blob;
use bytes::Bytes;
use http::{Request, Response, StatusCode};

use self::errors::{classify_invoke, classify_streaming, map_sdk_error, rejected};
use self::request::{InvokeFields, Target, is_resource_name, read_body, target};
use super::UpstreamConfig;
use super::{Body, UpstreamError, UpstreamInitError, full_body};

/// Whether `name` can name a SageMaker endpoint (checked by the config and by the client).
pub(crate) fn check_endpoint_name(name: &str) -> Result<(), String> {
    if is_resource_name(name, 63) {
        Ok(())
    } else {
        Err("must be 1-63 letters, digits and inner hyphens (a SageMaker endpoint name)".into())
    }
}

/// Sets the fields InvokeEndpoint and InvokeEndpointWithResponseStream both have (a macro:
/// the two SDK builders share no trait).
macro_rules! shared_fields {
    ($call:expr, $endpoint_name:expr, $fields:expr, $body:expr) => {
        $call
            .endpoint_name(&$endpoint_name)
            .body(Blob::from_maybe_shared($body))
            .set_content_type($fields.content_type)
            .set_accept($fields.accept)
            .set_custom_attributes($fields.custom_attributes)
            .set_target_variant($fields.target_variant)
            .set_target_container_hostname($fields.target_container_hostname)
            .set_inference_id($fields.inference_id)
            .set_inference_component_name($fields.inference_component)
            .set_session_id($fields.session_id)
    };
}

/// A SageMaker endpoint reached through the AWS SDK. (No `Debug`: it holds the credentials
/// provider.) A clone shares the SDK client, its credentials cache and connection pool.
#[derive(Clone)]
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
        let call = self.client.invoke_endpoint();
        let output = shared_fields!(call, self.endpoint_name, f, body)
            .set_target_model(f.target_model)
            .set_enable_explanations(f.enable_explanations)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, classify_invoke))?;
        Ok(response::buffered(output))
    }

    async fn invoke_streaming(
        &self,
        f: InvokeFields,
        body: Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        let call = self.client.invoke_endpoint_with_response_stream();
        let output = shared_fields!(call, self.endpoint_name, f, body)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, classify_streaming))?;
        Ok(response::streamed(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
