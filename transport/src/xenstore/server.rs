//! The embedded xenstored: the sans-IO [`Store`] served over Unix sockets,
//! one socket per domain (`<dir>/<domid>.sock`), so that the socket a client
//! connects to says which domain it speaks for; dom0's is privileged.
//! Clients such as Debian's `xenstore-*` tools and xenstore-rs connect
//! through `XENSTORED_PATH`.
//!
//! ```text
//!   socket <dir>/1.sock --accept--> connection (domid 1)
//!     reader task: read_msg --> Store::handle (under the store lock) --+
//!                                                                      | reply, events
//!     writer task: <-- bounded queue (per connection) <----------------+
//!                                 events for other connections go to their queues
//! ```
//!
//! Rules:
//! * one thread runs everything (a current-thread tokio runtime); the API
//!   methods may be called from any thread;
//! * requests of a connection are handled in order; a reply is queued
//!   before the events its request caused for the same connection;
//! * a header announcing more than 4096 bytes closes that connection (as C
//!   xenstored); any other bad input gets an error reply;
//! * a connection's replies not yet written are limited (the
//!   `outstanding` quota for domUs): past it the server stops reading that
//!   connection's requests, as C xenstored stops reading a domain's ring;
//! * events never wait: a connection whose queue is full (it does not read
//!   its watch events) is dropped and logged, so it can only hurt itself;
//! * [`Xenstored::shutdown`] (or drop) stops the thread, closes every
//!   connection and removes the sockets.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use super::codec::read_msg;
use super::store::{ConnId, Quotas, Store};
use super::XsMsg;
use crate::abi::xs_wire::XsType;

/// Messages (replies and events) a connection may have queued; one more
/// event drops the connection.
pub const QUEUE_CAPACITY: usize = 1024;

/// How long a stopping server lets connections flush what is queued.
const FLUSH_AT_STOP: Duration = Duration::from_secs(1);

/// Replies a privileged connection may have queued before the server
/// stops reading its requests (unprivileged ones use the `outstanding`
/// quota).
const PRIV_OUTSTANDING: usize = QUEUE_CAPACITY / 2;

/// Counters of a running [`Xenstored`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenstoredStats {
    /// Connections open now.
    pub connections: usize,
    /// Requests handled.
    pub requests: u64,
    /// Watch events queued.
    pub events: u64,
    /// Connections dropped because their queue was full.
    pub dropped: u64,
}

#[derive(Debug)]
struct ConnEntry {
    domid: u16,
    out: mpsc::Sender<XsMsg>,
    reader: Option<AbortHandle>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    events: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    store: Mutex<Store>,
    /// Lock order: `store`, then `conns`.
    conns: Mutex<HashMap<ConnId, ConnEntry>>,
    listeners: Mutex<HashMap<u16, (PathBuf, AbortHandle)>>,
    next_conn: AtomicU64,
    rt: tokio::runtime::Handle,
    counters: Counters,
}

/// A running embedded xenstored.
#[derive(Debug)]
pub struct Xenstored {
    inner: Arc<Inner>,
    stop: Mutex<Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave the store half-changed in
    // a way that matters more than stopping everything would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Xenstored {
    /// Starts a xenstored whose sockets live in `dir` (created if
    /// missing), with `quotas` for unprivileged domains. It runs on its own
    /// thread until [`Xenstored::shutdown`] or drop. Dom0 is introduced
    /// from the start; no socket exists until [`Xenstored::socket_path`]
    /// asks for one.
    pub fn start(dir: impl AsRef<Path>, quotas: Quotas) -> io::Result<Xenstored> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("xenstored directory {}: {e}", dir.display()),
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = Arc::new(Inner {
            dir,
            store: Mutex::new(Store::new(quotas)),
            conns: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            rt: rt.handle().clone(),
            counters: Counters::default(),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let closing = inner.clone();
        let thread = std::thread::Builder::new()
            .name("xenstored".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                    // Let writers send what is queued, briefly.
                    let writers = closing.close_all();
                    let flush = async {
                        for w in writers {
                            let _ = w.await;
                        }
                    };
                    let _ = tokio::time::timeout(FLUSH_AT_STOP, flush).await;
                });
                drop(closing);
                // Dropping the runtime drops every task left.
                drop(rt);
            })?;
        tracing::info!(dir = %inner.dir.display(), "xenstored started");
        Ok(Xenstored {
            inner,
            stop: Mutex::new(Some((stop_tx, thread))),
        })
    }

    /// The directory holding the sockets.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The socket of domain `domid` (`<dir>/<domid>.sock`); its listener is
    /// created on the first call. Connections to it speak for `domid`.
    pub fn socket_path(&self, domid: u16) -> io::Result<PathBuf> {
        let mut listeners = lock(&self.inner.listeners);
        if let Some((p, _)) = listeners.get(&domid) {
            return Ok(p.clone());
        }
        if lock(&self.stop).is_none() {
            return Err(io::Error::other("xenstored has stopped"));
        }
        let path = self.inner.dir.join(format!("{domid}.sock"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let std_listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        std_listener.set_nonblocking(true)?;
        let inner = self.inner.clone();
        let task = self.inner.rt.spawn(
            async move {
                match UnixListener::from_std(std_listener) {
                    Ok(l) => accept_loop(inner, domid, l).await,
                    Err(e) => tracing::error!(error = %e, "cannot register the listener"),
                }
            }
            .instrument(tracing::info_span!("xenstored", domid)),
        );
        listeners.insert(domid, (path.clone(), task.abort_handle()));
        Ok(path)
    }

    /// Introduces `domid`: creates its `/local/domain/<domid>` nodes if
    /// missing and fires `@introduceDomain` (once; nothing for a domain
    /// introduced already).
    pub fn introduce_domain(&self, domid: u16) {
        let mut store = lock(&self.inner.store);
        let events = store.introduce(domid);
        self.inner.deliver(&mut store, events);
    }

    /// Releases `domid`: its connections lose their watches and
    /// transactions, the nodes it owns are removed, and `@releaseDomain`
    /// fires. Dom0 is never released.
    pub fn release_domain(&self, domid: u16) {
        let mut store = lock(&self.inner.store);
        let events = store.release(domid);
        self.inner.deliver(&mut store, events);
    }

    /// What is left of released domains ([`Store::leftovers`]).
    pub fn leftovers(&self) -> Vec<String> {
        lock(&self.inner.store).leftovers()
    }

    /// Whether `domid` is introduced.
    pub fn is_introduced(&self, domid: u16) -> bool {
        lock(&self.inner.store).is_introduced(domid)
    }

    /// The counters.
    pub fn stats(&self) -> XenstoredStats {
        let c = &self.inner.counters;
        XenstoredStats {
            connections: lock(&self.inner.conns).len(),
            requests: c.requests.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread, closes every connection and removes the sockets.
    pub fn shutdown(self) {
        self.stop();
    }

    /// What [`Xenstored::shutdown`] does; idempotent.
    pub(crate) fn stop(&self) {
        let Some((stop_tx, thread)) = lock(&self.stop).take() else {
            return;
        };
        let _ = stop_tx.send(());
        if thread.join().is_err() {
            tracing::error!("the xenstored thread panicked");
        }
        for (_, (path, _)) in lock(&self.inner.listeners).drain() {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(dir = %self.inner.dir.display(), "xenstored stopped");
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    /// Queues events (under the store lock, so that every connection sees
    /// events in the order the store produced them).
    fn deliver(&self, store: &mut Store, events: Vec<super::Event>) {
        let mut conns = lock(&self.conns);
        for ev in events {
            self.counters.events.fetch_add(1, Ordering::Relaxed);
            self.push(store, &mut conns, ev.conn, ev.to_msg());
        }
    }

    /// Queues `msg` for `conn`; drops the connection if its queue is full.
    fn push(
        &self,
        store: &mut Store,
        conns: &mut HashMap<ConnId, ConnEntry>,
        conn: ConnId,
        msg: XsMsg,
    ) {
        let Some(c) = conns.get(&conn) else { return };
        match c.out.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    %conn,
                    domid = c.domid,
                    "xenstored: dropping a connection that does not read its messages ({QUEUE_CAPACITY} queued)"
                );
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.kill(store, conns, conn);
            }
        }
    }

    /// Forgets a connection and stops its tasks.
    fn kill(&self, store: &mut Store, conns: &mut HashMap<ConnId, ConnEntry>, conn: ConnId) {
        if let Some(c) = conns.remove(&conn) {
            if let Some(r) = c.reader {
                r.abort();
            }
            if let Some(w) = c.writer {
                w.abort();
            }
        }
        store.disconnect(conn);
    }

    /// At stop: no more accepting or reading; the writers are returned to
    /// finish what is queued.
    fn close_all(&self) -> Vec<JoinHandle<()>> {
        for (_, task) in lock(&self.listeners).values() {
            task.abort();
        }
        let mut store = lock(&self.store);
        let mut conns = lock(&self.conns);
        let mut writers = Vec::new();
        for (id, c) in conns.drain() {
            if let Some(r) = c.reader {
                r.abort();
            }
            writers.extend(c.writer);
            store.disconnect(id);
        }
        writers
    }

    /// Handles one request of `conn`.
    fn request(&self, conn: ConnId, domid: u16, msg: &XsMsg) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut store = lock(&self.store);
        let out = store.handle(conn, domid, msg);
        tracing::trace!(%conn, request = ?msg, reply = ?out.reply, "xenstored");
        {
            let mut conns = lock(&self.conns);
            self.push(&mut store, &mut conns, conn, out.reply);
        }
        self.deliver(&mut store, out.events);
    }

    /// The connection's reader ended (EOF or error): forget it; its writer
    /// finishes what is queued, then closes.
    fn reader_done(&self, conn: ConnId) {
        let mut store = lock(&self.store);
        lock(&self.conns).remove(&conn);
        store.disconnect(conn);
    }

    /// The connection's writer failed: drop everything.
    fn writer_failed(&self, conn: ConnId) {
        let mut store = lock(&self.store);
        let mut conns = lock(&self.conns);
        self.kill(&mut store, &mut conns, conn);
    }
}

async fn accept_loop(inner: Arc<Inner>, domid: u16, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds and the like: wait instead of spinning.
                tracing::warn!(error = %e, "xenstored: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = ConnId(inner.next_conn.fetch_add(1, Ordering::Relaxed));
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let limit = {
            let q = lock(&inner.store).quotas().outstanding as usize;
            if domid == 0 || q == 0 {
                PRIV_OUTSTANDING
            } else {
                q.min(PRIV_OUTSTANDING)
            }
        };
        let sem = Arc::new(Semaphore::new(limit));
        // Registered before its tasks run, so that nothing is lost.
        lock(&inner.conns).insert(
            id,
            ConnEntry {
                domid,
                out: tx,
                reader: None,
                writer: None,
            },
        );
        let span = tracing::info_span!("xenstored-conn", %id, domid);
        let r = tokio::spawn(
            reader(inner.clone(), id, domid, rd, sem.clone()).instrument(span.clone()),
        );
        let w = tokio::spawn(writer(inner.clone(), id, wr, rx, sem).instrument(span));
        match lock(&inner.conns).get_mut(&id) {
            Some(c) => {
                c.reader = Some(r.abort_handle());
                c.writer = Some(w);
            }
            None => {
                r.abort();
                w.abort();
            }
        }
        tracing::debug!(%id, domid, "xenstored: connection accepted");
    }
}

async fn reader(
    inner: Arc<Inner>,
    id: ConnId,
    domid: u16,
    mut rd: OwnedReadHalf,
    sem: Arc<Semaphore>,
) {
    /// Cleans up however the task ends (EOF, error, abort, runtime stop).
    struct Done(Arc<Inner>, ConnId);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.reader_done(self.1);
        }
    }
    let _done = Done(inner.clone(), id);
    loop {
        match sem.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        let msg = match read_msg(&mut rd).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(error = %e, "xenstored: closing a connection that sent an oversized message");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "xenstored: connection read failed");
                break;
            }
        };
        inner.request(id, domid, &msg);
    }
}

async fn writer(
    inner: Arc<Inner>,
    id: ConnId,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<XsMsg>,
    sem: Arc<Semaphore>,
) {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut replies = 0;
        let mut next = Some(first);
        while let Some(m) = next {
            if m.ty != XsType::WatchEvent.raw() {
                replies += 1;
            }
            buf.extend_from_slice(&m.to_bytes());
            next = if buf.len() < 64 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = wr.write_all(&buf).await {
            tracing::debug!(error = %e, "xenstored: connection write failed");
            sem.close();
            inner.writer_failed(id);
            return;
        }
        sem.add_permits(replies);
    }
    sem.close();
    let _ = wr.shutdown().await;
}
