//! A request's body watched for its end, so that a server whose request time runs out can
//! tell whose slowness it was: a body still arriving is the caller's (408), a whole request
//! whose work is late is the server's or what it waits on (504).

use hyper::body::Body as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A request's body that tells, through its flag, when the caller has sent all of it.
pub struct Watched {
    inner: hyper::body::Incoming,
    arrived: Arc<AtomicBool>,
}

impl Watched {
    /// The request with its body watched, and the flag (already set for a request with no
    /// body).
    pub fn wrap(
        request: hyper::Request<hyper::body::Incoming>,
    ) -> (Arc<AtomicBool>, hyper::Request<Watched>) {
        let (parts, inner) = request.into_parts();
        let arrived = Arc::new(AtomicBool::new(inner.is_end_stream()));
        let body = Watched {
            inner,
            arrived: arrived.clone(),
        };
        (arrived, hyper::Request::from_parts(parts, body))
    }
}

impl hyper::body::Body for Watched {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // The last frame read (a known length counts down to zero) or the end seen.
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.arrived.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
