//! The hyper service of each HTTP connection: the router, with the connection's peer
//! address and [`SocketCtl`] added to each request, and the request counted as in
//! progress (exempt from the read deadlines) until its response body is written.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, Response, StatusCode},
};
use bytes::Bytes;
use hyper::body::Incoming;

use super::SocketCtl;

/// The hyper service of one connection: the router, with the peer address and the
/// socket's [`SocketCtl`] in each request, each request counted as in progress until
/// its response body is written.
pub(super) struct Service {
    /// The node's routes.
    pub(super) app: Router,
    /// The TCP peer (`ConnectInfo`).
    pub(super) peer: SocketAddr,
    /// The socket's shared state.
    pub(super) ctl: Arc<SocketCtl>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.ctl.request_started();
        let busy = Busy(self.ctl.clone());
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(self.ctl.clone());
        // The router is always ready (no back-pressure), as `axum::serve` assumes too.
        let routed = tower_service::Service::call(&mut self.app.clone(), req.map(Body::new));
        Box::pin(async move {
            let res = match routed.await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                busy.0.upgraded.store(true, Relaxed);
            }
            Ok(res.map(|inner| Tracked { inner, _busy: busy }))
        })
    }
}

/// Marks a request in progress until dropped (with its response body).
struct Busy(Arc<SocketCtl>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that keeps its request counted as in progress until written.
pub(super) struct Tracked {
    /// The router's body.
    inner: Body,
    /// The request's mark, released with the body.
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
