//! Channels as socket connections, as Xen's `vchan-socket-proxy` does for
//! one connection: on one end [`serve_listener`] turns each connection
//! accepted on a Unix socket into a channel; on the other
//! [`serve_incoming`] connects each channel to a [`Target`] (a Unix
//! socket or a TCP address). Bytes are piped both ways and a half close
//! (`shutdown(SHUT_WR)`) on either side becomes EOF on the other.
//!
//! When the target refuses, the channel is reset with the reason (the
//! client sees its connection closed), a warning is logged and nothing
//! else is affected. Each connection runs in its own task; cancelling the
//! `shutdown` token stops accepting and resets the channels still open.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{ChanError, Channel, Incoming, MuxHandle};

/// Pause after a failed `accept` (e.g. out of file descriptors) before the
/// next one, so that a persistent failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where [`serve_incoming`] connects each channel: `unix:/path` or
/// `tcp:host:port` (an IPv6 host may be bracketed: `tcp:[::1]:22`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Unix stream socket.
    Unix(PathBuf),
    /// A TCP address; `host` is a name or an address, without brackets.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port, not 0.
        port: u16,
    },
}

/// A target string that is not `unix:/path` or `tcp:host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chan target {value:?}: {reason}")]
pub struct TargetError {
    /// The string given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        let err = |reason: String| TargetError {
            value: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("the socket path is empty".into()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(err("expected unix:/path or tcp:host:port".into()));
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(err("no port: expected tcp:host:port".into()));
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(err("the host is empty".into()));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(err(format!(
                    "port {port:?} is not a number from 1 to 65535"
                )))
            }
        };
        Ok(Target::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

enum Connected {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Target {
    async fn connect(&self) -> io::Result<Connected> {
        Ok(match self {
            Target::Unix(p) => Connected::Unix(UnixStream::connect(p).await?),
            Target::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Connected::Tcp(s)
            }
        })
    }
}

/// What a proxy did, returned when it stops.
#[derive(Debug, Clone, Default)]
pub struct ProxySummary {
    /// Connections (or channels) taken on.
    pub connections: u64,
    /// Of those, the ones that could not be set up: the channel open was
    /// refused or failed, or the target refused the connection.
    pub refused: u64,
    /// Of those, the ones whose piping ended with an error (a reset, an
    /// I/O error) or was cut by the shutdown.
    pub failed: u64,
    /// Bytes piped into channels (towards the multiplexer's peer), by
    /// every connection, also those that failed.
    pub bytes_to_peer: u64,
    /// Bytes piped out of channels, by every connection.
    pub bytes_from_peer: u64,
    /// Why the proxy stopped if the multiplexer ended before the shutdown
    /// token was cancelled ([`ChanError::Closed`] when it closed in order).
    pub ended_by: Option<ChanError>,
}

impl fmt::Display for ProxySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections ({} refused, {} failed), {} bytes to the peer, {} from it",
            self.connections, self.refused, self.failed, self.bytes_to_peer, self.bytes_from_peer
        )
    }
}

/// Bytes one connection moved, however it ended.
#[derive(Debug, Clone, Copy, Default)]
struct Moved {
    /// Written into the channel.
    to_peer: u64,
    /// Read out of the channel.
    from_peer: u64,
}

/// How one connection ended.
enum Outcome {
    Done(Moved),
    Refused,
    /// The piping ended with an error or was cut by the shutdown, after
    /// moving these bytes.
    Failed(Moved),
}

impl ProxySummary {
    fn add(&mut self, done: Result<Outcome, JoinError>) {
        let moved = match done {
            Ok(Outcome::Done(m)) => m,
            Ok(Outcome::Refused) => {
                self.refused += 1;
                Moved::default()
            }
            Ok(Outcome::Failed(m)) => {
                self.failed += 1;
                m
            }
            Err(e) => {
                tracing::error!("chan proxy: a connection task failed: {e}");
                self.failed += 1;
                Moved::default()
            }
        };
        self.bytes_to_peer += moved.to_peer;
        self.bytes_from_peer += moved.from_peer;
    }

    async fn drain(&mut self, tasks: &mut JoinSet<Outcome>) {
        while let Some(done) = tasks.join_next().await {
            self.add(done);
        }
    }
}

/// Accepts connections on `listener` and opens one channel through
/// `handle` for each, piping bytes both ways, until `shutdown` is
/// cancelled or the multiplexer ends. Returns when every connection task
/// has finished (on shutdown, their channels are reset).
pub async fn serve_listener(
    listener: UnixListener,
    handle: MuxHandle,
    shutdown: CancellationToken,
) -> ProxySummary {
    let mut summary = ProxySummary::default();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            end = handle.closed() => {
                summary.ended_by = Some(end.err().unwrap_or(ChanError::Closed));
                break;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => summary.add(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    summary.connections += 1;
                    tasks.spawn(serve_connection(stream, handle.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("chan proxy: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    summary.drain(&mut tasks).await;
    tracing::info!("chan proxy: listener stopped: {summary}");
    summary
}

async fn serve_connection(
    stream: UnixStream,
    handle: MuxHandle,
    shutdown: CancellationToken,
) -> Outcome {
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return Outcome::Failed(Moved::default()),
        opened = handle.open() => opened,
    };
    drop(handle);
    let ch = match opened {
        Ok(ch) => ch,
        Err(e) => {
            tracing::warn!("chan proxy: no channel for a connection: {e}");
            return Outcome::Refused;
        }
    };
    let span = tracing::debug_span!("chan_conn", channel = ch.id());
    pipe(ch, stream, "unix client", &shutdown)
        .instrument(span)
        .await
}

/// Accepts the channels the peer opens and connects each to `target`,
/// piping bytes both ways, until `shutdown` is cancelled or the
/// multiplexer ends. A channel whose target refuses is reset with the
/// reason. Returns when every connection task has finished.
pub async fn serve_incoming(
    mut incoming: Incoming,
    target: Target,
    shutdown: CancellationToken,
) -> ProxySummary {
    let target = Arc::new(target);
    let mut summary = ProxySummary::default();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => summary.add(done),
            ch = incoming.accept() => match ch {
                Some(ch) => {
                    summary.connections += 1;
                    let span = tracing::debug_span!("chan_conn", channel = ch.id());
                    let task = serve_channel(ch, target.clone(), shutdown.clone());
                    tasks.spawn(task.instrument(span));
                }
                None => {
                    summary.ended_by = Some(incoming.error().unwrap_or(ChanError::Closed));
                    break;
                }
            },
        }
    }
    drop(incoming);
    summary.drain(&mut tasks).await;
    tracing::info!("chan proxy: serving {target} stopped: {summary}");
    summary
}

async fn serve_channel(ch: Channel, target: Arc<Target>, shutdown: CancellationToken) -> Outcome {
    let connected = tokio::select! {
        _ = shutdown.cancelled() => {
            ch.reset("proxy shutting down");
            return Outcome::Failed(Moved::default());
        }
        connected = target.connect() => connected,
    };
    match connected {
        Ok(Connected::Unix(s)) => pipe(ch, s, "target", &shutdown).await,
        Ok(Connected::Tcp(s)) => pipe(ch, s, "target", &shutdown).await,
        Err(e) => {
            let reason = format!("connect to {target}: {e}");
            tracing::warn!(channel = ch.id(), "chan proxy: {reason}");
            ch.reset(&reason);
            Outcome::Refused
        }
    }
}

/// Copies both ways until both directions ended (each EOF is passed on as
/// a shutdown of the other side), an error, or the shutdown token. The
/// bytes are counted as they pass, so a connection that fails after
/// moving data reports it.
async fn pipe<S>(ch: Channel, mut s: S, what: &str, shutdown: &CancellationToken) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ch = Counted {
        ch,
        moved: Moved::default(),
    };
    let copied = tokio::select! {
        // A connection that has finished counts as finished, even if the
        // shutdown came at the same moment.
        biased;
        res = tokio::io::copy_bidirectional(&mut ch, &mut s) => Some(res),
        _ = shutdown.cancelled() => None,
    };
    let Counted { ch, moved } = ch;
    match copied {
        Some(Ok(_)) => {
            tracing::debug!(
                to_peer = moved.to_peer,
                from_peer = moved.from_peer,
                "chan proxy: connection done"
            );
            Outcome::Done(moved)
        }
        Some(Err(e)) => {
            tracing::debug!(
                to_peer = moved.to_peer,
                from_peer = moved.from_peer,
                "chan proxy: connection failed: {e}"
            );
            ch.reset(&format!("{what}: {e}"));
            Outcome::Failed(moved)
        }
        None => {
            ch.reset("proxy shutting down");
            Outcome::Failed(moved)
        }
    }
}

/// A channel that counts the bytes read from it and written to it.
struct Counted {
    ch: Channel,
    moved: Moved,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.ch).poll_read(cx, buf);
        self.moved.from_peer += (buf.filled().len() - before) as u64;
        res
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.ch).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            self.moved.to_peer += n as u64;
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ch).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ch).poll_shutdown(cx)
    }
}
