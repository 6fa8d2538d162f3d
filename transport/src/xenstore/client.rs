//! The hardened XenStore client every other part of xenring uses.
//!
//! It talks to the socket it is given ([`XsClient::connect`]): nothing in
//! the library reads a process-wide variable (binaries read
//! `XENSTORED_PATH` once at start-up and pass the path). It speaks on the
//! project's own connection ([`XsConn`]), and implements xenstore-rs's
//! traits (`AsyncXs`, `AsyncWatch`: see `rs_traits`), so code written
//! against xenstore-rs takes it as it is. (xenstore-rs's own connection,
//! `XsTokio::new()`, finds its socket only in `XENSTORED_PATH`, and its
//! wire types are private to it.) So:
//!
//! * a payload over 4096 bytes is refused here, before it is sent
//!   ([`XsError::Invalid`]);
//! * every call has a timeout, and the connection's EOF is noticed at once:
//!   every waiting call fails, nothing hangs;
//! * watches never block the connection: a watch's events go to its own
//!   bounded queue, and when a consumer lags its events coalesce into one
//!   event for the watched path;
//! * when the connection dies, or a call gets no answer in time while it
//!   lives (a server that stopped answering), a supervisor task reconnects
//!   to the same path (the call is retried once on the new connection) and
//!   sets every watch again; a connection that dies young (a server that
//!   accepts, then refuses with an unsolicited error and closes) makes the
//!   next attempt wait, with a pause doubling up to a second until a
//!   connection lives;
//! * a connection the server refuses is a connect error naming the errno.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::codec::{XsErrno, XsMsg, XsType};
use super::conn::XsConn;
use super::error::{absent_as_none, check_path, check_payload, XsError};
use super::perm::Perm;
use super::watch::{WatchReg, XsWatch};

/// The variable through which Xen's tools (and xenring's binaries, once at
/// start-up) name the xenstored socket. The library never reads it.
pub const ENV_XENSTORED_PATH: &str = "XENSTORED_PATH";
/// dom0's xenstored socket (what Xen's tools use when `XENSTORED_PATH` is
/// not set).
pub const DEFAULT_XENSTORED_PATH: &str = "/run/xenstored/socket";

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest wait for any one reply.
    pub timeout: Duration,
    /// Events a watch queues for a slow consumer before coalescing.
    pub watch_queue: usize,
    /// Most attempts of a transaction that keeps conflicting (with a
    /// random pause between them that grows with each conflict, scaled by
    /// how long an attempt took, up to a second).
    pub transaction_attempts: u32,
    /// Most transactions this client has open at once; more wait for one
    /// to end. Below C xenstored's default quota of 10 per domain, so that
    /// many tasks sharing one client (a daemon's devices) wait instead of
    /// getting ENOSPC.
    pub max_transactions: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            watch_queue: 64,
            transaction_attempts: 32,
            max_transactions: 8,
        }
    }
}

#[derive(Clone)]
struct Conn {
    raw: Arc<XsConn>,
    generation: u64,
}

pub(super) struct Inner {
    path: PathBuf,
    pub(super) opts: ClientOptions,
    conn: Mutex<Conn>,
    reconnected: tokio::sync::watch::Sender<u64>,
    /// The generation on which a call got no answer (the supervisor
    /// replaces the connection).
    suspect: tokio::sync::watch::Sender<u64>,
    pub(super) watches: Mutex<HashMap<u64, WatchReg>>,
    next_watch: AtomicU64,
    /// One permit per transaction that may be open.
    pub(super) txn_slots: Arc<tokio::sync::Semaphore>,
}

/// A XenStore client. Clones share one pair of connections.
#[derive(Clone)]
pub struct XsClient {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for XsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XsClient")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Opens the connection. A connect refused with `EAGAIN` (the server's
/// listen backlog is full: seen with oxenstored when a few clients connect
/// at the same moment) is retried with a short backoff until `timeout`.
async fn open(path: &Path, timeout: Duration) -> Result<XsConn, XsError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(2);
    loop {
        match open_once(path, timeout).await {
            Err(XsError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Opens the connection and checks that the server answers on it (a
/// server may accept a connection only to refuse it: an error message
/// with request id 0, then close; that becomes a connect error naming the
/// errno).
async fn open_once(path: &Path, timeout: Duration) -> Result<XsConn, XsError> {
    let connect_err = |source| XsError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let raw = match tokio::time::timeout(timeout, XsConn::connect(path, None)).await {
        Ok(r) => r.map_err(connect_err)?,
        Err(_) => return Err(connect_err(std::io::ErrorKind::TimedOut.into())),
    };
    // Any domain may ask this; any reply (an error too) is an answer.
    let probe =
        XsMsg::with_strings(XsType::GetDomainPath, 0, 0, &[b"0"], true).expect("a small request");
    match tokio::time::timeout(timeout, raw.request(probe)).await {
        Ok(Ok(_)) => Ok(raw),
        Ok(Err(e)) => {
            // The refusal, if any, is read before the end of the stream.
            let _ = tokio::time::timeout(timeout, raw.closed()).await;
            let e = match raw.refused() {
                Some(errno) => std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("xenstored refused the connection: {}", errno.as_str()),
                ),
                None => e,
            };
            Err(connect_err(e))
        }
        Err(_) => Err(connect_err(std::io::ErrorKind::TimedOut.into())),
    }
}

/// A value or name the server sent, as text (a trailing NUL dropped); text
/// that is not UTF-8 is an error naming the request.
fn text(op: &'static str, path: &str, mut bytes: Vec<u8>) -> Result<String, XsError> {
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8(bytes).map_err(|e| XsError::Invalid {
        op,
        path: path.to_string(),
        why: format!("server sent text that is not UTF-8: {e}"),
    })
}

/// Whether an error means the connection (not the request) failed.
fn connection_failed(e: &XsError) -> bool {
    matches!(e, XsError::Io { .. } | XsError::Timeout { .. })
}

impl XsClient {
    /// Connects to the xenstored socket at `path` with default options
    /// (dom0's is [`DEFAULT_XENSTORED_PATH`]; a simulated domain's is
    /// `SimDomain::xenstore_path`). Reconnects go to the same path.
    pub async fn connect(path: impl AsRef<Path>) -> Result<XsClient, XsError> {
        XsClient::connect_with(path, ClientOptions::default()).await
    }

    /// Connects to `path` with `opts`.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        opts: ClientOptions,
    ) -> Result<XsClient, XsError> {
        let path = path.as_ref().to_path_buf();
        let raw = open(&path, opts.timeout).await?;
        let raw = Arc::new(raw);
        let (reconnected, _) = tokio::sync::watch::channel(0);
        let (suspect, _) = tokio::sync::watch::channel(u64::MAX);
        let inner = Arc::new(Inner {
            path,
            txn_slots: Arc::new(tokio::sync::Semaphore::new(opts.max_transactions.max(1))),
            opts,
            conn: Mutex::new(Conn {
                raw: raw.clone(),
                generation: 0,
            }),
            reconnected,
            suspect,
            watches: Mutex::new(HashMap::new()),
            next_watch: AtomicU64::new(1),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), raw));
        Ok(XsClient { inner })
    }

    /// The socket in use.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// How many times the client has reconnected.
    pub fn reconnects(&self) -> u64 {
        self.conn().generation
    }

    fn conn(&self) -> Conn {
        self.inner.conn.lock().expect("conn lock").clone()
    }

    /// Waits (up to the timeout) for a connection newer than `generation`.
    async fn await_reconnect(&self, generation: u64) -> bool {
        let mut rx = self.inner.reconnected.subscribe();
        tokio::time::timeout(self.inner.opts.timeout, rx.wait_for(|g| *g > generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Runs `f` on the current connection with the timeout; if the
    /// connection failed (an I/O error or no reply in time), has the
    /// supervisor reconnect, waits for it and runs `f` once more.
    async fn call<T, F, Fut>(&self, op: &'static str, path: &str, f: F) -> Result<T, XsError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, XsError>>,
    {
        let mut retried = false;
        loop {
            let c = self.conn();
            let generation = c.generation;
            let raw_closed = c.raw.is_closed();
            let r = match tokio::time::timeout(self.inner.opts.timeout, f(c)).await {
                Ok(r) => r,
                Err(_) => Err(XsError::Timeout {
                    op,
                    path: path.to_string(),
                    timeout: self.inner.opts.timeout,
                }),
            };
            match r {
                Err(e) if connection_failed(&e) && !retried => {
                    let dead = raw_closed
                        || self.conn().raw.is_closed()
                        || self.conn().generation != generation;
                    if !dead {
                        // The connection lives but the server stopped
                        // answering: replace it.
                        tracing::debug!(op, path, error = %e, "xenstore call failed; reconnecting");
                        self.inner.suspect.send_replace(generation);
                    }
                    retried = true;
                    if self.conn().generation == generation
                        && !self.await_reconnect(generation).await
                    {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Reads a node's value.
    pub async fn read(&self, path: &str) -> Result<String, XsError> {
        check_path("read", path)?;
        let m = Self::build("read", path, XsType::Read, 0, &[path.as_bytes()], true)?;
        let reply = self.raw("read", path, m).await?;
        text("read", path, reply.payload)
    }

    /// Reads a node's value; `None` if it does not exist.
    pub async fn read_opt(&self, path: &str) -> Result<Option<String>, XsError> {
        absent_as_none(self.read(path).await)
    }

    /// Writes a node's value (creating it and missing parents).
    pub async fn write(&self, path: &str, value: &str) -> Result<(), XsError> {
        check_path("write", path)?;
        check_payload("write", path, path.len() + 1 + value.len())?;
        let m = Self::build(
            "write",
            path,
            XsType::Write,
            0,
            &[path.as_bytes(), value.as_bytes()],
            false,
        )?;
        self.raw("write", path, m).await.map(|_| ())
    }

    /// Lists a node's children.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        check_path("directory", path)?;
        let m = Self::build(
            "directory",
            path,
            XsType::Directory,
            0,
            &[path.as_bytes()],
            true,
        )?;
        let reply = self.raw("directory", path, m).await?;
        reply
            .parts()
            .into_iter()
            .map(|p| text("directory", path, p.to_vec()))
            .collect()
    }

    /// Removes a node and everything below it.
    pub async fn rm(&self, path: &str) -> Result<(), XsError> {
        check_path("rm", path)?;
        let m = Self::build("rm", path, XsType::Rm, 0, &[path.as_bytes()], true)?;
        self.raw("rm", path, m).await.map(|_| ())
    }

    /// Sends a request; an error reply becomes [`XsError::Server`], a
    /// reply of another type than the request's [`XsError::Invalid`].
    pub(super) async fn raw(
        &self,
        op: &'static str,
        path: &str,
        msg: XsMsg,
    ) -> Result<XsMsg, XsError> {
        self.call(op, path, |c| {
            let msg = msg.clone();
            async move {
                let ty = msg.ty;
                let reply = c.raw.request(msg).await.map_err(|source| XsError::Io {
                    op,
                    path: path.to_string(),
                    source,
                })?;
                match reply.error_name() {
                    Some(errno) => Err(XsError::Server {
                        op,
                        path: path.to_string(),
                        errno,
                    }),
                    None if reply.ty != ty => Err(XsError::Invalid {
                        op,
                        path: path.to_string(),
                        why: format!(
                            "server answered a request of type {ty} with type {}",
                            reply.ty
                        ),
                    }),
                    None => Ok(reply),
                }
            }
        })
        .await
    }

    pub(super) fn build(
        op: &'static str,
        path: &str,
        ty: XsType,
        tx: u32,
        parts: &[&[u8]],
        trailing_nul: bool,
    ) -> Result<XsMsg, XsError> {
        XsMsg::with_strings(ty, 0, tx, parts, trailing_nul).map_err(|e| XsError::Invalid {
            op,
            path: path.to_string(),
            why: e.to_string(),
        })
    }

    /// Creates a node (and missing parents) with an empty value; an existing
    /// node is left as it is.
    pub async fn mkdir(&self, path: &str) -> Result<(), XsError> {
        check_path("mkdir", path)?;
        let m = Self::build("mkdir", path, XsType::Mkdir, 0, &[path.as_bytes()], true)?;
        self.raw("mkdir", path, m).await.map(|_| ())
    }

    /// A node's permissions.
    pub async fn get_perms(&self, path: &str) -> Result<Vec<Perm>, XsError> {
        check_path("get-perms", path)?;
        let m = Self::build(
            "get-perms",
            path,
            XsType::GetPerms,
            0,
            &[path.as_bytes()],
            true,
        )?;
        let reply = self.raw("get-perms", path, m).await?;
        reply
            .parts()
            .iter()
            .map(|p| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| XsError::Invalid {
                        op: "get-perms",
                        path: path.to_string(),
                        why: format!(
                            "server sent a bad permission {:?}",
                            String::from_utf8_lossy(p)
                        ),
                    })
            })
            .collect()
    }

    /// Sets a node's permissions (the first entry is the owner and the
    /// default).
    pub async fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        check_path("set-perms", path)?;
        if perms.is_empty() {
            return Err(XsError::Invalid {
                op: "set-perms",
                path: path.to_string(),
                why: "at least the owner's entry is needed".into(),
            });
        }
        let texts: Vec<String> = perms.iter().map(|p| p.to_string()).collect();
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(texts.iter().map(|t| t.as_bytes()));
        check_payload("set-perms", path, parts.iter().map(|p| p.len() + 1).sum())?;
        let m = Self::build("set-perms", path, XsType::SetPerms, 0, &parts, true)?;
        self.raw("set-perms", path, m).await.map(|_| ())
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    pub async fn get_domain_path(&self, domid: u16) -> Result<String, XsError> {
        let arg = domid.to_string();
        let m = Self::build(
            "get-domain-path",
            &arg,
            XsType::GetDomainPath,
            0,
            &[arg.as_bytes()],
            true,
        )?;
        let reply = self.raw("get-domain-path", &arg, m).await?;
        let first = reply.parts().first().copied().unwrap_or_default();
        Ok(String::from_utf8_lossy(first).into_owned())
    }

    /// Whether domain `domid` is introduced to XenStore (as far as XenStore
    /// knows, the domain exists). A backend daemon asks after
    /// `@releaseDomain` fires, to tell whether its frontend's domain died.
    /// Privileged: an unprivileged domain gets `EACCES`.
    pub async fn is_domain_introduced(&self, domid: u16) -> Result<bool, XsError> {
        let arg = domid.to_string();
        let m = Self::build(
            "is-domain-introduced",
            &arg,
            XsType::IsDomainIntroduced,
            0,
            &[arg.as_bytes()],
            true,
        )?;
        let reply = self.raw("is-domain-introduced", &arg, m).await?;
        match reply.parts().first().copied() {
            Some(b"T") => Ok(true),
            Some(b"F") => Ok(false),
            other => Err(XsError::Invalid {
                op: "is-domain-introduced",
                path: arg,
                why: format!(
                    "server answered {:?}, not T or F",
                    String::from_utf8_lossy(other.unwrap_or_default())
                ),
            }),
        }
    }

    /// Watches `path` and everything below it. The stream yields the path of
    /// each changed node; it starts with one event for `path` itself, and
    /// after a reconnect it yields one more (the state may have changed
    /// while the connection was down). Re-read what you care about on each
    /// event: watches may fire spuriously, and a lagging consumer sees
    /// events coalesced.
    pub async fn watch(&self, path: &str) -> Result<XsWatch, XsError> {
        check_path("watch", path)?;
        let id = self.inner.next_watch.fetch_add(1, Ordering::Relaxed);
        let token = format!("xenring-{id}");
        check_payload("watch", path, path.len() + 1 + token.len() + 1)?;
        let (tx, rx) = tokio::sync::mpsc::channel(self.inner.opts.watch_queue.max(1));
        // Registered first, so that a reconnect meanwhile sets it too.
        self.inner.watches.lock().expect("watches lock").insert(
            id,
            WatchReg {
                path: path.to_string(),
                token: token.clone(),
                out: tx.clone(),
            },
        );
        let watch = XsWatch::new(rx, id, Arc::downgrade(&self.inner));
        let msg = Self::build(
            "watch",
            path,
            XsType::Watch,
            0,
            &[path.as_bytes(), token.as_bytes()],
            true,
        )?;
        self.call("watch", path, |c| {
            let msg = msg.clone();
            let tx = tx.clone();
            let token = token.clone();
            async move { arm(&c.raw, path, &token, tx, msg).await }
        })
        .await?;
        Ok(watch)
    }

    /// Waits until `path`'s value (`None`: absent) satisfies `pred`, and
    /// returns it. Set up with a watch, so nothing is polled; bound it with
    /// `tokio::time::timeout` if needed.
    ///
    /// Cancellation safe.
    pub async fn wait_for(
        &self,
        path: &str,
        mut pred: impl FnMut(Option<&str>) -> bool,
    ) -> Result<Option<String>, XsError> {
        use futures::StreamExt;
        let mut w = self.watch(path).await?;
        loop {
            let v = self.read_opt(path).await?;
            if pred(v.as_deref()) {
                return Ok(v);
            }
            if w.next().await.is_none() {
                return Err(XsError::Io {
                    op: "wait-for",
                    path: path.to_string(),
                    source: std::io::ErrorKind::ConnectionAborted.into(),
                });
            }
        }
    }
}

/// Sets a watch on `raw`: routes its token to `out`, then sends the WATCH
/// (an `EEXIST` means it is set already: the supervisor was quicker).
async fn arm(
    raw: &XsConn,
    path: &str,
    token: &str,
    out: tokio::sync::mpsc::Sender<String>,
    msg: XsMsg,
) -> Result<(), XsError> {
    raw.add_watch_sink(token.as_bytes(), path, out);
    let reply = raw.request(msg).await.map_err(|source| XsError::Io {
        op: "watch",
        path: path.to_string(),
        source,
    })?;
    match reply.error_name() {
        None | Some(XsErrno::Eexist) => Ok(()),
        Some(errno) => {
            raw.remove_watch_sink(token.as_bytes());
            Err(XsError::Server {
                op: "watch",
                path: path.to_string(),
                errno,
            })
        }
    }
}

impl Inner {
    /// Removes a watch from the server (in the background: called from a
    /// drop).
    pub(super) fn unwatch(&self, reg: WatchReg) {
        let raw = self.conn.lock().expect("conn lock").raw.clone();
        raw.remove_watch_sink(reg.token.as_bytes());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(msg) = XsMsg::with_strings(
            XsType::Unwatch,
            0,
            0,
            &[reg.path.as_bytes(), reg.token.as_bytes()],
            true,
        ) else {
            return;
        };
        let timeout = self.opts.timeout;
        rt.spawn(async move {
            let _ = tokio::time::timeout(timeout, raw.request(msg)).await;
        });
    }
}

/// The first pause between reconnects (the first attempt after a
/// connection that lived is immediate).
const RECONNECT_MIN: Duration = Duration::from_millis(10);
/// The longest pause between reconnects.
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// A connection that lived this long (or answered a request) resets the
/// pause.
const RECONNECT_STABLE: Duration = Duration::from_secs(2);

/// Reconnects when the connection dies or a call gets no answer on it, and
/// sets the watches again.
async fn supervise(inner: Weak<Inner>, mut raw: Arc<XsConn>) {
    let mut generation = 0;
    // Kept across reconnects: a server that accepts and then closes (or
    // refuses) at once is retried with a growing pause, not in a loop.
    let mut backoff = RECONNECT_MIN;
    let mut since = tokio::time::Instant::now();
    loop {
        let Some(mut suspect) = inner.upgrade().map(|i| i.suspect.subscribe()) else {
            return;
        };
        tokio::select! {
            _ = raw.closed() => {}
            _ = suspect.wait_for(|g| *g == generation) => {}
        }
        drop(suspect);
        let Some(path) = inner.upgrade().map(|i| i.path.clone()) else {
            return;
        };
        // The probe in `open` is the first reply of every connection.
        if since.elapsed() >= RECONNECT_STABLE || raw.answered() > 1 {
            backoff = RECONNECT_MIN;
        }
        match raw.refused() {
            Some(errno) => tracing::warn!(
                path = %path.display(),
                %errno,
                "xenstored refused the connection; reconnecting in {backoff:?}"
            ),
            None => tracing::warn!(
                path = %path.display(),
                "xenstore connection lost; reconnecting"
            ),
        }
        let new_raw = loop {
            if backoff > RECONNECT_MIN {
                tokio::time::sleep(backoff).await;
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
            let Some(timeout) = inner.upgrade().map(|i| i.opts.timeout) else {
                return;
            };
            match open(&path, timeout).await {
                Ok(conn) => break conn,
                Err(e) => tracing::debug!(error = %e, "xenstore reconnect failed"),
            }
        };
        since = tokio::time::Instant::now();
        let Some(inner_arc) = inner.upgrade() else {
            return;
        };
        raw = Arc::new(new_raw);
        generation = {
            let mut c = inner_arc.conn.lock().expect("conn lock");
            c.generation += 1;
            c.raw = raw.clone();
            c.generation
        };
        // Set every watch again on the new connection.
        let regs: Vec<(u64, String, String, tokio::sync::mpsc::Sender<String>)> = inner_arc
            .watches
            .lock()
            .expect("watches lock")
            .iter()
            .map(|(id, r)| (*id, r.path.clone(), r.token.clone(), r.out.clone()))
            .collect();
        for (id, wpath, token, out) in regs {
            let Ok(msg) = XsMsg::with_strings(
                XsType::Watch,
                0,
                0,
                &[wpath.as_bytes(), token.as_bytes()],
                true,
            ) else {
                continue;
            };
            let armed =
                tokio::time::timeout(inner_arc.opts.timeout, arm(&raw, &wpath, &token, out, msg))
                    .await;
            match armed {
                Ok(Ok(())) => {
                    // Dropped while it was being set (its UNWATCH may have
                    // gone first): remove it again.
                    let gone = !inner_arc
                        .watches
                        .lock()
                        .expect("watches lock")
                        .contains_key(&id);
                    if gone {
                        inner_arc.unwatch(WatchReg {
                            path: wpath,
                            token,
                            out: tokio::sync::mpsc::channel(1).0,
                        });
                    }
                }
                Ok(Err(e @ XsError::Server { .. })) => {
                    tracing::error!(path = %wpath, error = %e, "cannot set a watch again after reconnecting")
                }
                Ok(Err(_)) | Err(_) => {
                    // The new connection failed too: start over.
                    tracing::warn!(path = %wpath, "no answer while setting a watch again");
                    inner_arc.suspect.send_replace(generation);
                }
            }
        }
        tracing::info!(generation, "xenstore reconnected");
        let _ = inner_arc.reconnected.send(generation);
    }
}
