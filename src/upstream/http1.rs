//! An HTTP/1.1 model server as the upstream, reached through a pool of keep-alive connections
//! that belongs to one serving thread ([`HttpUpstream::for_thread`]): the connection's task
//! runs on the thread that made it, so a request and its upstream exchange stay on one thread.
//!
//! The request target and `Host` are worked out once from `upstream.url`; a request whose
//! target is already in origin form (an HTTP/1.1 client's) goes out with its URI untouched when
//! the URL has no base path. A pooled connection that turns out to be closed before the request
//! was written hands the request back, and it goes to a new connection (as hyper's pooling
//! client does).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::{BaseUrl, Body, BoxError, UpstreamError, UpstreamInitError};

/// Model servers commonly close idle connections after 60–75 s: a pooled connection idle for
/// longer than this is closed here first, so a request never races the server's close.
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// Where the model server is and what each request to it carries, worked out once.
#[derive(Debug)]
struct Target {
    /// `host:port` to resolve and connect to.
    address: String,
    /// The `Host` header: the URL's host, and its port unless it is 80.
    host: HeaderValue,
    /// The URL's path without its trailing `/`; empty for none.
    base_path: String,
    connect_timeout: Duration,
}

impl Target {
    /// Points `request` at the model server: origin-form target under the base path,
    /// HTTP/1.1, `Host` of the upstream.
    fn prepare(&self, request: &mut Request<Body>) -> Result<(), UpstreamError> {
        let uri = request.uri_mut();
        let origin_form = uri.scheme().is_none() && uri.authority().is_none();
        if !(origin_form && self.base_path.is_empty() && uri.path_and_query().is_some()) {
            let original = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            let path_and_query = if self.base_path.is_empty() {
                PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(original.as_bytes()))
            } else {
                let mut joined = BytesMut::with_capacity(self.base_path.len() + original.len());
                joined.extend_from_slice(self.base_path.as_bytes());
                joined.extend_from_slice(original.as_bytes());
                PathAndQuery::from_maybe_shared(joined.freeze())
            };
            *uri = Uri::from(path_and_query.map_err(|e| UpstreamError::Failed(Box::new(e)))?);
        }
        *request.version_mut() = http::Version::HTTP_11;
        request.headers_mut().insert(HOST, self.host.clone());
        Ok(())
    }
}

/// A connection waiting in the pool since `since`.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// One thread's idle upstream connections, most recently used last. The lock is only ever
/// taken by the thread that owns the pool in the thread-per-core model (uncontended); it is
/// there because hyper's service futures must be `Send`.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    /// The most recently used connection that is still open and not idle for too long.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().expect("not poisoned");
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Puts `sender` back, and closes the connections idle for longer than [`IDLE_TIMEOUT`]
    /// (the oldest are first: each was pushed with the time it came back).
    fn give_back(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let since = Instant::now();
        let mut idle = self.idle.lock().expect("not poisoned");
        let expired = idle.partition_point(|i| since.duration_since(i.since) >= IDLE_TIMEOUT);
        idle.drain(..expired);
        idle.push(Idle { sender, since });
    }
}

/// An HTTP/1.1 model server reached through keep-alive connections.
pub struct HttpUpstream {
    target: Arc<Target>,
    pool: Arc<Pool>,
}

impl HttpUpstream {
    pub fn new(url: &str, connect_timeout: Duration) -> Result<HttpUpstream, UpstreamInitError> {
        let BaseUrl {
            authority,
            base_path,
            ..
        } = BaseUrl::parse(url).map_err(|e| UpstreamInitError(format!("url {url:?} {e}")))?;
        let target = Target {
            address: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            host: host_header(&authority)
                .map_err(|e| UpstreamInitError(format!("url {url:?}: {e}")))?,
            base_path,
            connect_timeout,
        };
        Ok(HttpUpstream {
            target: Arc::new(target),
            pool: Arc::default(),
        })
    }

    /// The same model server with a pool of its own, for another serving thread.
    pub fn for_thread(&self) -> HttpUpstream {
        HttpUpstream {
            target: self.target.clone(),
            pool: Arc::default(),
        }
    }

    pub(super) async fn call(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        self.target.prepare(&mut request)?;
        while let Some(mut sender) = self.pool.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.pooled(response, sender)),
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: try another connection.
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Failed(Box::new(e.into_error()))),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(self.pooled(response, sender)),
            Err(e) => Err(UpstreamError::Failed(Box::new(e))),
        }
    }

    /// A new connection, its task spawned on the calling thread's runtime.
    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let unreachable = |e: BoxError| UpstreamError::Unreachable(e);
        let target = &self.target;
        let stream = tokio::time::timeout(target.connect_timeout, async {
            let mut last = None;
            for address in tokio::net::lookup_host(target.address.as_str()).await? {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved")
            }))
        })
        .await
        .map_err(|e| unreachable(Box::new(e)))?
        .map_err(|e| unreachable(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The response with a body that puts `sender` back in the pool once it has been read to
    /// its end (a body dropped before its end leaves the connection to close).
    fn pooled(&self, response: Response<Incoming>, sender: SendRequest<Body>) -> Response<Body> {
        let pool = self.pool.clone();
        response.map(|body| {
            PooledBody {
                body,
                connection: Some((sender, pool)),
            }
            .map_err(BoxError::from)
            .boxed_unsync()
        })
    }
}

/// `Host` as hyper's pooling client writes it: the port only when it is not the default.
fn host_header(authority: &Authority) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    match authority.port_u16() {
        Some(port) if port != 80 => HeaderValue::from_str(authority.as_str()),
        _ => HeaderValue::from_str(authority.host()),
    }
}

/// A response body that returns its connection to the pool at its end.
struct PooledBody {
    body: Incoming,
    connection: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl PooledBody {
    fn release_if_ended(&mut self) {
        if http_body::Body::is_end_stream(&self.body)
            && let Some((sender, pool)) = self.connection.take()
        {
            pool.give_back(sender);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some((sender, pool)) = this.connection.take() {
                    pool.give_back(sender);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.release_if_ended(),
            Poll::Ready(Some(Err(_))) => this.connection = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body may never be polled.
        self.release_if_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::full_body;

    fn prepared(url: &str, request: Request<Body>) -> Request<Body> {
        let upstream = HttpUpstream::new(url, Duration::from_secs(1)).unwrap();
        let mut request = request;
        upstream.target.prepare(&mut request).unwrap();
        request
    }

    fn request(uri: &str) -> Request<Body> {
        Request::post(uri)
            .header(HOST, "client.example")
            .body(full_body(""))
            .unwrap()
    }

    #[test]
    fn the_target_keeps_the_path_and_query_under_the_base_path_and_names_the_upstream_host() {
        let plain = prepared("http://model:8081", request("/invocations?x=1"));
        assert_eq!(plain.uri(), "/invocations?x=1");
        assert_eq!(plain.headers()[HOST], "model:8081");
        assert_eq!(plain.version(), http::Version::HTTP_11);

        let based = prepared("http://model/v1/", request("/predict?q=a%20b"));
        assert_eq!(based.uri(), "/v1/predict?q=a%20b");
        assert_eq!(based.headers()[HOST], "model", "port 80 is not written");

        // An h2c client's request carries scheme and authority: only the path goes upstream.
        let absolute = prepared("http://127.0.0.1:9000", request("http://proxy:8080/p"));
        assert_eq!(absolute.uri(), "/p");
        assert_eq!(absolute.headers()[HOST], "127.0.0.1:9000");

        let v6 = HttpUpstream::new("http://[::1]:9000", Duration::from_secs(1)).unwrap();
        assert!(v6.target.address.parse::<std::net::SocketAddr>().is_ok());
        let v6 = prepared("http://[::1]:9000", request("/p"));
        assert_eq!(v6.headers()[HOST], "[::1]:9000");
    }
}
