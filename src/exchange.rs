//! What the proxy saw of one request/response exchange, and the hook it hands it to.
//!
//! This is the seam between the data plane and the review pipeline: the proxy knows nothing of
//! confidence or Kafka, it only captures bodies and calls [`ExchangeHook::on_exchange`] once per
//! completed 2xx exchange.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;

use crate::decision::Force;
use crate::record::{ModelInfo, Reason};
use crate::route::Route;

/// A body as captured for inspection: at most `max_inspect_bytes`, decoded from its
/// `Content-Encoding` (the client still received the encoded bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Captured {
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The body was larger than the capture (or could not be decoded whole).
    pub truncated: bool,
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub id: String,
    pub route: Route,
    pub received_at: SystemTime,
    pub request: Captured,
    pub status: u16,
    pub response: Captured,
    pub force: Option<Force>,
    /// The request's W3C `traceparent`, when well formed.
    pub traceparent: Option<String>,
    pub model: ModelInfo,
}

/// The review decision as far as the proxy cares: empty when not diverted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub reasons: Vec<Reason>,
}

impl Verdict {
    pub fn diverted(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// The `x-reviewloop-review` header value: reasons comma-separated.
    pub fn header_value(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Receives every completed 2xx exchange. The returned future resolves once the exchange is
/// handled: in `sync` delivery that includes the broker's ack, so the proxy awaits it before
/// sending a buffered response; a streamed response's future is spawned and not awaited.
pub trait ExchangeHook: Send + Sync + 'static {
    fn on_exchange(&self, exchange: Exchange) -> BoxFuture<Verdict>;
}
