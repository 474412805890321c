//! A body wrapper that passes every frame on unchanged while copying data, up to a cap, for
//! inspection; at end of stream it hands the copy to a callback. It also carries the request's
//! in-flight guard, so a streamed response counts as in flight until its last byte.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::upstream::BoxError;

/// What was copied of a body.
#[derive(Debug, Clone, Default)]
pub struct Copy {
    pub bytes: Bytes,
    /// The body was larger than the cap; `bytes` holds only its start.
    pub overflowed: bool,
}

type OnEnd = Box<dyn FnOnce(Copy) + Send>;

pub struct TapBody<B> {
    inner: B,
    cap: usize,
    buffer: BytesMut,
    overflowed: bool,
    on_end: Option<OnEnd>,
    _guard: Option<Box<dyn Send>>,
}

impl<B> TapBody<B> {
    /// Copies up to `cap` bytes and calls `on_end` once the body has ended. A body dropped
    /// before its end (client gone) never calls it: an incomplete exchange is not reviewed.
    pub fn capture(inner: B, cap: usize, on_end: impl FnOnce(Copy) + Send + 'static) -> Self {
        TapBody {
            inner,
            cap,
            buffer: BytesMut::new(),
            overflowed: false,
            on_end: Some(Box::new(on_end)),
            _guard: None,
        }
    }

    /// Passes the body through untouched, copying nothing.
    pub fn passthrough(inner: B) -> Self {
        TapBody {
            inner,
            cap: 0,
            buffer: BytesMut::new(),
            overflowed: false,
            on_end: None,
            _guard: None,
        }
    }

    /// Keeps `guard` alive until the body is dropped.
    pub fn with_guard(mut self, guard: impl Send + 'static) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    fn copy(&mut self, data: &Bytes) {
        if self.on_end.is_none() || self.overflowed {
            return;
        }
        if self.buffer.len() + data.len() > self.cap {
            self.overflowed = true;
            // Nothing more will be inspected; give the memory back now.
            self.buffer = BytesMut::new();
        } else {
            self.buffer.extend_from_slice(data);
        }
    }

    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Copy {
                bytes: std::mem::take(&mut self.buffer).freeze(),
                overflowed: self.overflowed,
            });
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    this.copy(&data);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            // An upstream error mid-body: the exchange is incomplete, never reviewed.
            Poll::Ready(Some(Err(e))) => {
                this.on_end = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(parts: &[&'static str]) -> crate::upstream::Body {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect::<Vec<_>>();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    fn tapped(parts: &[&'static str], cap: usize) -> (Bytes, Option<Copy>) {
        let seen = Arc::new(Mutex::new(None));
        let slot = seen.clone();
        let body = TapBody::capture(chunks(parts), cap, move |copy| {
            *slot.lock().unwrap() = Some(copy);
        });
        let out = futures_executor_block_on(body.collect())
            .unwrap()
            .to_bytes();
        let copy = seen.lock().unwrap().take();
        (out, copy)
    }

    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn frames_pass_unchanged_and_are_copied() {
        let (out, copy) = tapped(&["data: 1\n\n", "data: 2\n\n"], 1024);
        assert_eq!(out, "data: 1\n\ndata: 2\n\n");
        let copy = copy.expect("called at end");
        assert_eq!(copy.bytes, out);
        assert!(!copy.overflowed);
    }

    #[test]
    fn over_the_cap_the_body_still_passes_but_the_copy_is_marked() {
        let (out, copy) = tapped(&["0123456789", "abcdef"], 12);
        assert_eq!(out, "0123456789abcdef");
        let copy = copy.expect("called at end");
        assert!(copy.overflowed);
        assert!(copy.bytes.is_empty());
    }

    #[test]
    fn a_body_dropped_early_is_never_reported() {
        let called = Arc::new(Mutex::new(false));
        let flag = called.clone();
        let body = TapBody::capture(chunks(&["a", "b"]), 10, move |_| {
            *flag.lock().unwrap() = true;
        });
        drop(body);
        assert!(!*called.lock().unwrap());
    }
}
