//! The project's own XenStore connection, on the xs_wire codec: requests
//! multiplexed by `req_id` over one socket, for the operations xenstore-rs
//! lacks (mkdir, permissions, transactions, domain paths, introduce) and as a
//! liveness sentinel for the client.
//!
//! One reader task matches replies to waiting requests and forwards watch
//! events; writes happen under a lock from the caller's task. When the
//! server goes away, every waiting request fails at once and [`XsConn::closed`]
//! resolves: nothing hangs.
//!
//! Watch events whose token was registered with [`XsConn::add_watch_sink`]
//! go to that watch's bounded queue and never block the reader: when the
//! queue is full the event is dropped and remembered, and as soon as there
//! is room one event for the watched path itself is queued ("something at
//! or below here changed"), so a lagging consumer loses detail, never a
//! wakeup. Other events go to the `events` channel given at connect.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{read_msg, XsErrno, XsMsg, XsType};

type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<XsMsg>>>>>;
type Sinks = Arc<Mutex<HashMap<Vec<u8>, WatchSink>>>;

/// Where the events of one watch go.
#[derive(Debug, Clone)]
struct WatchSink {
    /// The watched path, sent when events were dropped.
    path: String,
    out: mpsc::Sender<String>,
    /// Events were dropped; a task is waiting for room to say so.
    lagged: Arc<std::sync::atomic::AtomicBool>,
}

impl WatchSink {
    fn deliver(&self, changed: String) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.lagged.load(SeqCst) {
            return;
        }
        match self.out.try_send(changed) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, SeqCst);
                let sink = self.clone();
                tokio::spawn(async move {
                    let permit = sink.out.reserve().await;
                    // Cleared before the send: an event delivered once
                    // the consumer has taken this one must not be
                    // dropped for a lag already reported. (Cleared after
                    // the send, an event coming in between was lost.)
                    sink.lagged.store(false, SeqCst);
                    if let Ok(p) = permit {
                        p.send(sink.path.clone());
                    }
                });
            }
        }
    }
}

/// A multiplexed xs_wire connection.
#[derive(Debug)]
pub struct XsConn {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU32,
    closed: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
    sinks: Sinks,
    /// Replies received (for the client's reconnect backoff).
    answered: Arc<AtomicU64>,
    /// The error the server sent unasked (request id 0) before closing:
    /// it refused the connection (C xenstored and the embedded one do so
    /// with `ENOSPC` when a domain has too many).
    refused: Arc<Mutex<Option<XsErrno>>>,
}

impl XsConn {
    /// Connects to the xenstored socket at `path`. Watch events (if any are
    /// set on this connection) go to `events`; without it they are dropped.
    pub async fn connect(
        path: &Path,
        events: Option<mpsc::Sender<XsMsg>>,
    ) -> std::io::Result<XsConn> {
        let stream = UnixStream::connect(path).await?;
        let (mut rd, wr) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (closed_tx, closed) = watch::channel(false);
        let p = pending.clone();
        let sinks: Sinks = Arc::default();
        let s = sinks.clone();
        let answered = Arc::new(AtomicU64::new(0));
        let refused: Arc<Mutex<Option<XsErrno>>> = Arc::default();
        let (n, r) = (answered.clone(), refused.clone());
        let reader = tokio::spawn(async move {
            loop {
                match read_msg(&mut rd).await {
                    Ok(Some(msg)) if msg.kind() == Some(XsType::WatchEvent) => {
                        let parts = msg.parts();
                        let sink = match parts.get(1) {
                            Some(token) => s.lock().expect("sinks lock").get(*token).cloned(),
                            None => None,
                        };
                        if let Some(sink) = sink {
                            sink.deliver(String::from_utf8_lossy(parts[0]).into_owned());
                        } else if let Some(ev) = &events {
                            // A full event queue drops the event rather than
                            // stall the replies behind it.
                            let _ = ev.try_send(msg);
                        }
                    }
                    Ok(Some(msg)) => {
                        let waiter = p
                            .lock()
                            .expect("pending lock")
                            .as_mut()
                            .and_then(|m| m.remove(&msg.req_id));
                        match (waiter, msg.error_name()) {
                            (Some(w), _) => {
                                n.fetch_add(1, Ordering::Relaxed);
                                let _ = w.send(msg);
                            }
                            (None, Some(errno)) if msg.req_id == 0 => {
                                tracing::debug!(%errno, "xenstored refused the connection");
                                *r.lock().expect("refused lock") = Some(errno);
                            }
                            (None, _) => tracing::warn!(?msg, "xenstore reply to no request"),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "xenstore connection read failed");
                        break;
                    }
                }
            }
            // Fail everyone still waiting, and refuse new requests.
            p.lock().expect("pending lock").take();
            let _ = closed_tx.send(true);
        });
        Ok(XsConn {
            path: path.to_path_buf(),
            writer: tokio::sync::Mutex::new(wr),
            pending,
            next_id: AtomicU32::new(1),
            closed,
            reader,
            sinks,
            answered,
            refused,
        })
    }

    /// Sends the events of the watch with `token` to `out` (see the module
    /// documentation); `path` is the watched path. Set it before sending
    /// the WATCH, so that its first event is not missed.
    pub fn add_watch_sink(&self, token: &[u8], path: &str, out: mpsc::Sender<String>) {
        self.sinks.lock().expect("sinks lock").insert(
            token.to_vec(),
            WatchSink {
                path: path.to_string(),
                out,
                lagged: Arc::default(),
            },
        );
    }

    /// Stops routing the events of the watch with `token`.
    pub fn remove_watch_sink(&self, token: &[u8]) {
        self.sinks.lock().expect("sinks lock").remove(token);
    }

    /// The socket this connection talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replies received so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The error with which the server refused this connection (an error
    /// message it sent unasked, with request id 0), if it did.
    pub fn refused(&self) -> Option<XsErrno> {
        *self.refused.lock().expect("refused lock")
    }

    /// True once the server has gone away.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when the server goes away.
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|closed| *closed).await;
    }

    /// Sends `msg` (its `req_id` is replaced by a fresh one) and waits for the
    /// reply, which may be an error reply. Fails with `ConnectionAborted` if
    /// the server goes away first.
    ///
    /// Cancellation safe: a dropped call leaves no waiter behind (its reply is
    /// discarded when it comes).
    pub async fn request(&self, mut msg: XsMsg) -> std::io::Result<XsMsg> {
        let gone = || match self.refused() {
            Some(errno) => std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("xenstored refused the connection: {}", errno.as_str()),
            ),
            None => std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "xenstored closed the connection",
            ),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg.req_id = id;
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(m) => m.insert(id, tx),
            None => return Err(gone()),
        };
        struct Forget<'a>(&'a Pending, u32);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                if let Some(m) = self.0.lock().expect("pending lock").as_mut() {
                    m.remove(&self.1);
                }
            }
        }
        let _forget = Forget(&self.pending, id);
        {
            let mut w = self.writer.lock().await;
            w.write_all(&msg.to_bytes()).await?;
        }
        rx.await.map_err(|_| gone())
    }
}

impl Drop for XsConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
