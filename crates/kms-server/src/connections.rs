//! The connections of a mutual-TLS listener: at most [`MAX_HANDSHAKES`] TLS handshakes at
//! once ([`MAX_HANDSHAKES_PER_ADDRESS`] from one address), each within 10 s; then at most
//! `max_connections` connections open and `max_connections_per_client` per client
//! certificate, each closed if it makes no request within 30 s, or none for the idle timeout.
//! So a peer without a certificate holds handshake places only, never a connection's. A connection refused before any request (the limit, a failed or
//! slow handshake) is a metric and, at most once every [`LOG_EVERY`], a log line: never an
//! audit record, so unauthenticated peers cannot make kmsd write to disk.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// The most log lines about refused connections: one per this period, with a count.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most TLS handshakes under way at once.
pub const MAX_HANDSHAKES: usize = 256;

/// The most TLS handshakes under way at once from one IP address.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;

/// How long a connection may stay open before its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The last-request time of a connection that has had none.
const NO_REQUEST: u64 = u64::MAX;

/// The connection limits of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The most connections open at once, handshakes included.
    pub max_connections: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// The most connections open at once with one client certificate.
    pub max_connections_per_client: usize,
}

impl ConnectionLimits {
    /// The default most connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    /// The default idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// The default most connections per client certificate.
    pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections_per_client: Self::DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// Refusals not logged yet, and when the last line was.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// The open connections of a listener, and the time of each one's last request.
pub struct Connections {
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    /// Handshakes under way per peer IP address.
    handshaking: Mutex<HashMap<IpAddr, usize>>,
    /// Per peer address: the last request, in milliseconds since `epoch`.
    activity: Mutex<HashMap<SocketAddr, Arc<AtomicU64>>>,
    /// Connections open per client certificate (its SHA-256).
    per_client: Mutex<HashMap<[u8; 32], usize>>,
    epoch: Instant,
    metrics: Option<Arc<Metrics>>,
    refusals: Mutex<RefusalLog>,
}

impl Connections {
    /// Connections under `limits`, refusals counted in `metrics`.
    pub fn new(limits: ConnectionLimits, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            handshaking: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            per_client: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            metrics,
            refusals: Mutex::new(RefusalLog::default()),
        })
    }

    /// Connections open now (past their handshake).
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.open.available_permits()
    }

    /// Notes a request on the connection from `peer`: its idle timeout starts again.
    pub fn touch(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let activity = self
            .activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .cloned();
        if let Some(activity) = activity {
            activity.store(self.millis(Instant::now()), Ordering::Relaxed);
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// When a connection opened at `opened` whose last request was at `last` (ms since the
    /// epoch, or [`NO_REQUEST`]) is idle.
    fn deadline(&self, opened: Instant, last: &AtomicU64) -> Instant {
        match last.load(Ordering::Relaxed) {
            NO_REQUEST => opened + FIRST_REQUEST_TIMEOUT.min(self.limits.idle_timeout),
            last => self.epoch + Duration::from_millis(last) + self.limits.idle_timeout,
        }
    }

    /// Takes a place for one more connection of the client certificate `client`, unless it
    /// has its limit open already.
    fn admit_client(&self, client: [u8; 32]) -> bool {
        let mut per_client = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = per_client.entry(client).or_default();
        if *open >= self.limits.max_connections_per_client {
            return false;
        }
        *open += 1;
        true
    }

    /// A place among the handshakes under way, for `peer`, unless there are too many (in all,
    /// or from its address).
    fn start_handshake(self: &Arc<Self>, peer: SocketAddr) -> Option<Handshake> {
        let permit = Arc::clone(&self.handshakes).try_acquire_owned().ok()?;
        let mut handshaking = self
            .handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let under_way = handshaking.entry(peer.ip()).or_default();
        if *under_way >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *under_way += 1;
        Some(Handshake {
            connections: Arc::clone(self),
            address: peer.ip(),
            _permit: permit,
        })
    }

    /// Gives back a place taken by [`Connections::admit_client`].
    fn release_client(&self, client: [u8; 32]) {
        let mut per_client = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = per_client.get_mut(&client) {
            *open -= 1;
            if *open == 0 {
                per_client.remove(&client);
            }
        }
    }

    /// Counts a refused connection and logs it, at most once every [`LOG_EVERY`].
    fn refused(&self, peer: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
        if let Some(metrics) = &self.metrics {
            metrics.record_refused_connection(reason);
        }
        debug!(%peer, reason, error = %detail, "connection refused");
        let now = Instant::now();
        let mut log = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            log.suppressed += 1;
            return;
        }
        warn!(%peer, reason, error = %detail, suppressed_since_last_line = log.suppressed,
            "connection refused before any request (see kms_refused_connections_total)");
        log.last = Some(now);
        log.suppressed = 0;
    }

    /// The connections of `listener`, each past its TLS handshake. Handshakes run
    /// concurrently, so a slow or silent client holds up no one.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        acceptor: TlsAcceptor,
    ) -> ReceiverStream<io::Result<Tracked>> {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        let connections = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                let Some(handshake) = connections.start_handshake(peer) else {
                    connections.refused(
                        peer,
                        "handshake_limit",
                        &format_args!(
                            "{MAX_HANDSHAKES} TLS handshakes are under way (or \
                             {MAX_HANDSHAKES_PER_ADDRESS} from this address), the limit"
                        ),
                    );
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let connections = Arc::clone(&connections);
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(handshake);
                    match accepted {
                        Ok(Ok(stream)) => {
                            let Ok(permit) = Arc::clone(&connections.open).try_acquire_owned()
                            else {
                                connections.refused(
                                    peer,
                                    "connection_limit",
                                    &format_args!(
                                        "{} connections are open, the limit",
                                        connections.limits.max_connections
                                    ),
                                );
                                return;
                            };
                            let client = client_of(&stream);
                            if !connections.admit_client(client) {
                                connections.refused(peer, "client_connection_limit", &format_args!(
                                    "this client certificate has {} connections open, the limit",
                                    connections.limits.max_connections_per_client
                                ));
                                return;
                            }
                            let tracked = Tracked::new(stream, peer, client, connections, permit);
                            let _ = tx.send(Ok(tracked)).await;
                        }
                        Ok(Err(e)) => connections.refused(peer, handshake_failure(&e), &e),
                        Err(_) => connections.refused(
                            peer,
                            "handshake_timeout",
                            &"the TLS handshake took too long",
                        ),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A place among the handshakes under way; given back when dropped.
struct Handshake {
    connections: Arc<Connections>,
    address: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut handshaking = self
            .connections
            .handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(under_way) = handshaking.get_mut(&self.address) {
            *under_way -= 1;
            if *under_way == 0 {
                handshaking.remove(&self.address);
            }
        }
    }
}

/// The SHA-256 of the client's certificate (the handshake required one).
fn client_of(stream: &TlsStream<TcpStream>) -> [u8; 32] {
    use sha2::Digest as _;
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map_or(&[][..], |c| c.as_ref());
    sha2::Sha256::digest(certificate).into()
}

/// The metric reason of a failed handshake.
fn handshake_failure(error: &io::Error) -> &'static str {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_client_certificate",
        _ => "handshake_failed",
    }
}

/// A connection past its handshake: closed (as at end of stream) once idle for the idle
/// timeout; gives back its place under the limit when dropped.
pub struct Tracked {
    inner: TlsStream<TcpStream>,
    peer: SocketAddr,
    client: [u8; 32],
    opened: Instant,
    activity: Arc<AtomicU64>,
    idle: Pin<Box<Sleep>>,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Tracked {
    fn new(
        inner: TlsStream<TcpStream>,
        peer: SocketAddr,
        client: [u8; 32],
        connections: Arc<Connections>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let opened = Instant::now();
        let activity = Arc::new(AtomicU64::new(NO_REQUEST));
        connections
            .activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Arc::clone(&activity));
        let idle = Box::pin(tokio::time::sleep_until(
            connections.deadline(opened, &activity).into(),
        ));
        Tracked {
            inner,
            peer,
            client,
            opened,
            activity,
            idle,
            connections,
            _permit: permit,
        }
    }

    /// Ready (at end of stream) once the connection has had no request for the idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.connections.deadline(self.opened, &self.activity);
            if Instant::now() >= deadline {
                debug!(peer = %self.peer, "closing an idle connection");
                return Poll::Ready(());
            }
            self.idle.as_mut().reset(deadline.into());
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.connections.release_client(self.client);
        let mut activity = self
            .connections
            .activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if activity
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            activity.remove(&self.peer);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Nothing filled: the end of the stream, so the server closes the connection.
            Poll::Pending => this.poll_idle(cx).map(Ok),
            ready @ Poll::Ready(_) => ready,
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for Tracked {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
