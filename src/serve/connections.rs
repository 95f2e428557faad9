//! The ingest server's connections: how many may be open at once and which one gives its slot
//! up when there are too many, how long a client may take to send a request's head, how long a
//! connection may stay idle, and the graceful stop.
//!
//! - **The cap**: at most `max_connections` connections hold a slot ([`super::slots`]). A
//!   connection that arrives when every slot is taken takes the slot of the oldest connection
//!   with no request in flight (the oldest still waiting for its first request head, else the
//!   one idle the longest), which is closed; only when every slot holds a request in flight is
//!   the newcomer closed instead. A few hundred clients that send nothing or trickle their
//!   headers therefore cannot keep real senders out, and the process never runs out of file
//!   descriptors, so `/healthz` keeps answering.
//! - **The head deadline**: a connection with no request in flight must complete a request's
//!   head within the header timeout counted from its accept, or from the end of its last
//!   answer on a kept-alive connection, whether it sends nothing or a byte at a time. It is
//!   kept here, from the connection's phase, rather than by hyper's header timer, which starts
//!   only once the first bytes have chosen HTTP/1 and does not apply to HTTP/2.
//! - **Idle**: a connection passing no bytes either way for the idle timeout is closed once its
//!   request in progress, if any, is answered (a request whose sender stalls, or whose answer
//!   is not read).
//!
//! The default cap follows the process's limit of open files ([`default_max_connections`]).

use super::Shared;
use super::metrics::Metrics;
use super::slots::{Full, InFlight, Phase, Slot, Slots};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Response, StatusCode, header};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

/// Limits on the ingest server's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once. Over it, a newcomer takes the slot of the oldest connection
    /// with no request in flight; it is closed only when every connection has one. Default:
    /// [`default_max_connections`].
    pub max_connections: usize,
    /// How long a connection with no request in flight may take to complete a request's head,
    /// counted from its accept (or, on a kept-alive connection, from the end of its last
    /// answer).
    pub header_timeout: Duration,
    /// How long a connection may pass no bytes either way.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: default_max_connections(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The most connections the default cap allows, whatever the limit of open files: about
/// 75 MB of memory when they are all open and idle.
const MOST_CONNECTIONS: usize = 15_000;

/// The default cap on open connections: half the process's limit of open files
/// (`RLIMIT_NOFILE`, the soft limit `ulimit -n` shows), at most 15 000. The other half is left
/// to what else holds a file: the queue's database, the connections to Zendesk and NATS, the
/// mappings being watched, and connections accepted then closed over the cap.
pub(crate) fn default_max_connections() -> usize {
    cap_for(rustix::process::getrlimit(rustix::process::Resource::Nofile).current)
}

/// The default cap for a limit of `open_files` (`None`: unlimited).
fn cap_for(open_files: Option<u64>) -> usize {
    open_files.map_or(MOST_CONNECTIONS, |limit| {
        usize::try_from(limit / 2)
            .unwrap_or(MOST_CONNECTIONS)
            .clamp(1, MOST_CONNECTIONS)
    })
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
    let slots = Slots::new(limits.max_connections);
    // Each connection's task holds a sender; once they are all gone, every connection is closed.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
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
        let slot = match slots.admit() {
            Ok((slot, evicted)) => {
                if evicted {
                    Metrics::add(&shared.metrics.connections_evicted, 1);
                }
                slot
            }
            Err(Full) => {
                Metrics::add(&shared.metrics.connections_refused, 1);
                drop(stream);
                continue;
            }
        };
        let router = router.clone();
        let stop = stop.clone();
        let shared = shared.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let open = &shared.metrics.connections_open;
            open.fetch_add(1, Ordering::Relaxed);
            connection(stream, router, limits, slot, &shared, stop).await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_closed.recv().await;
}

/// One connection, HTTP/1.1 or HTTP/2, until it closes, misses its head deadline, is evicted,
/// goes idle too long or the server stops.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    slot: Slot,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let slot = Arc::new(slot);
    let mut phase = slot.phase();
    let requests = slot.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        // Decided before the request runs: once started, the connection is not evicted.
        let in_flight = requests.start_request();
        let router = router.clone();
        async move {
            let Some(in_flight) = in_flight else {
                return Ok::<_, Infallible>(evicted());
            };
            let response = router.oneshot(request.map(Body::new)).await?;
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: Some(in_flight),
            }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // The head deadline is kept below, for both protocols and from the accept; hyper's own
    // (30 s unless set) would only close some connections later.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut check = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(10)));
    let mut closing = false;
    loop {
        let head_due = match *phase.borrow_and_update() {
            Phase::Evicted => return,
            Phase::Busy => None,
            Phase::Waiting { since } | Phase::Idle { since } => Some(since + limits.header_timeout),
        };
        let head_due = async move {
            match head_due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = phase.changed() => {
                if changed.is_err() {
                    // Its slot is gone: it was evicted.
                    return;
                }
            }
            () = head_due => {
                // Unless a request's head completed just now, the connection closes.
                if slot.expire() {
                    Metrics::add(&shared.metrics.connections_timed_out, 1);
                    return;
                }
            }
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

/// The answer to a request whose connection was evicted as its head completed (the connection
/// closes; the sender may send it again).
fn evicted() -> Response<Tracked> {
    let mut response = Response::new(Tracked {
        body: Body::empty(),
        _in_flight: None,
    });
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An answer's body, holding its request in flight until it is sent (or dropped).
struct Tracked {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_half_the_open_files_at_most_15000() {
        assert_eq!(cap_for(Some(1024)), 512);
        assert_eq!(cap_for(Some(65_536)), 15_000);
        assert_eq!(cap_for(Some(1_048_576)), 15_000);
        assert_eq!(cap_for(None), 15_000, "unlimited");
        assert_eq!(cap_for(Some(1)), 1);
        let here = default_max_connections();
        assert!((1..=15_000).contains(&here), "{here}");
    }
}
