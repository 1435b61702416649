//! Connections: the accept loop and the bounds on each phase of a request that axum does not
//! set itself. A request head must arrive within `header_read` (hyper's timer, which also
//! closes a keep-alive connection left idle that long); a body within `body_read` of its head,
//! however slowly its bytes trickle (408 and close); at most `max_connections` are open, and
//! one more is accepted and closed at once, so a flood costs a file descriptor for a moment
//! instead of queueing without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::IntoResponse;
use hyper::body::{Body, Frame, SizeHint};

use crate::error::{Error, ErrorCode};
use crate::http::error::{Refusal, REQUEST_ID};
use crate::metrics::Metrics;

/// The bounds on a connection and its requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_read: Duration,
    pub(crate) body_read: Duration,
    pub(crate) max_connections: usize,
}

/// Accepts HTTP/1.1 connections until `shutdown` resolves, then lets each finish its request in
/// flight and waits for all of them (what `axum::serve` does, plus the bounds above).
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<crate::tls::Tls>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::Service as _;

    // Connections watch `stop` to begin a graceful shutdown, and each holds a `done` receiver:
    // when all are dropped, every connection has finished.
    let (stop, stop_rx) = tokio::sync::watch::channel(());
    let (done, done_rx) = tokio::sync::watch::channel(());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once (the client sees the connection end).
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let app = app.clone();
        let body_read = limits.body_read;
        let secure = tls.is_some();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(remote));
                if secure {
                    req.extensions_mut().insert(ArrivedOverTls);
                }
                let mut app = app.clone();
                async move {
                    if req.body().is_end_stream() {
                        return app.call(req).await;
                    }
                    let fired = Arc::new(AtomicBool::new(false));
                    let deadline = tokio::time::Instant::now() + body_read;
                    let req = req.map(|b| {
                        axum::body::Body::new(Deadline {
                            inner: b,
                            at: deadline,
                            sleep: None,
                            fired: fired.clone(),
                        })
                    });
                    let res = match app.call(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    if fired.load(Ordering::Relaxed) {
                        // Whatever the handler made of the failed read, the answer is 408, and
                        // the connection closes (its remaining bytes are not worth waiting for).
                        return Ok(timed_out(&res));
                    }
                    Ok(res)
                }
            });
        let stop_rx = stop_rx.clone();
        let done_rx = done_rx.clone();
        let header_read = limits.header_read;
        let acceptor = tls.as_ref().map(crate::tls::Tls::acceptor);
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(stream, service, header_read, stop_rx).await,
                Some(acceptor) => {
                    // The handshake is bounded like a request head, and runs here, not in the
                    // accept loop: a client that stalls it holds only its own slot.
                    match tokio::time::timeout(header_read, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, service, header_read, stop_rx).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
            drop(done_rx);
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop.send(());
    drop(done_rx);
    done.closed().await;
    Ok(())
}

/// Marks a request that arrived over this server's own TLS (cookies get `Secure`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArrivedOverTls;

/// One connection's requests, until it closes or a graceful stop has let its request in flight
/// finish.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    header_read: Duration,
    mut stop_rx: tokio::sync::watch::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = axum::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop_rx.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

/// The 408 that replaces a handler's answer when the body's deadline passed, under the
/// request's id.
fn timed_out(answered: &axum::response::Response) -> axum::response::Response {
    let id = answered.headers().get(REQUEST_ID_HEADER).cloned();
    let text = id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut res = REQUEST_ID.sync_scope(text.to_string(), || {
        Refusal(Error::new(
            ErrorCode::RequestTimeout,
            "the request body did not arrive in time",
        ))
        .into_response()
    });
    if let Some(v) = id {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    res
}

const REQUEST_ID_HEADER: &str = "x-request-id";

/// Errors of one connection that failed while being accepted (the listener is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// A request body that fails once its deadline passes (and says so in `fired`). The timer is
/// only set when the body is not already there, so a body that arrived with its head costs none.
struct Deadline<B> {
    inner: B,
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    fired: Arc<AtomicBool>,
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = this.at;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.fired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
