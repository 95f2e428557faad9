//! The ingest server's connections: how many may be open at once, how long a client may take to
//! send a request's headers, how long a connection may stay idle, and the graceful stop.
//!
//! A connection over the cap is closed as soon as it is accepted, so idle or abusive clients can
//! never use up the process' file descriptors and `/healthz` keeps answering. Headers must
//! arrive within the header timeout (hyper's, which also bounds the wait for the next request
//! of a keep-alive connection); a connection with no bytes either way for the idle timeout is
//! closed once its request in progress, if any, is answered.

use super::Shared;
use super::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

/// Limits on the ingest server's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they arrive. The default stays well under
    /// the usual limit of 1024 open files, which the database and Zendesk connections share.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (or, between requests, to start
    /// the next one).
    pub header_timeout: Duration,
    /// How long a connection may pass no bytes either way.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets each connection finish the
/// request it is answering and waits for all of them to close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: pause
                // so as not to spin, then go on.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Metrics::add(&shared.metrics.connections_refused, 1);
            drop(stream);
            continue;
        };
        let router = router.clone();
        let stop = stop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let open = &shared.metrics.connections_open;
            open.fetch_add(1, Ordering::Relaxed);
            connection(stream, router, limits, stop).await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// One connection, HTTP/1.1 or HTTP/2, until it closes, times out or the server stops.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = TowerToHyperService::new(
        router.map_request(|request: Request<Incoming>| request.map(Body::new)),
    );
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut check = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(10)));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = check.tick() => {
                if activity.idle_for() >= limits.idle_timeout {
                    if closing {
                        // Still nothing after being asked to close: drop it.
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    activity.touch();
                }
            }
        }
    }
}

/// When a connection last passed bytes.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// A stream that notes when bytes pass.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn noted<T>(&self, poll: Poll<std::io::Result<T>>, moved: bool) -> Poll<std::io::Result<T>> {
        if moved && matches!(poll, Poll::Ready(Ok(_))) {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.noted(poll, moved)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.noted(poll, moved)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
