//! The embedded xenstored: the sans-IO [`Store`] served over Unix sockets,
//! one socket per domain (`<dir>/<domid>.sock`), so that the socket a client
//! connects to says which domain it speaks for; dom0's is privileged.
//! [`XsClient`](super::XsClient) connects to the path it is given; Debian's
//! `xenstore-*` tools find it in `XENSTORED_PATH`.
//!
//! ```text
//!   socket <dir>/1.sock --accept--> connection (domid 1)
//!     reader task: read_msg --> Store::handle (under the store lock) --+
//!        ^ waits while a receiver of its events is full               | reply, events
//!     writer task: <-- queue (per connection, coalescing) <------------+
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
//! * a socket exists exactly while its domain is introduced (dom0's
//!   always): [`Xenstored::introduce_domain`] (or INTRODUCE) creates it,
//!   [`Xenstored::release_domain`] (or RELEASE) closes every connection of
//!   the domain and removes the socket, so a dead domain cannot speak and a
//!   domain never introduced has no socket;
//! * an unprivileged domain may have [`MAX_CONNECTIONS_PER_DOMAIN`]
//!   connections open; one more is answered `ENOSPC` (an error message with
//!   request id 0) and closed. Dom0's connections are not limited;
//! * a connection counts (against that limit, and for closing with its
//!   domain) until both its tasks have ended: once its reader has ended
//!   (EOF, error, oversized header), an unprivileged connection's writer
//!   gives up on a write that makes no headway for [`UNPRIVILEGED_STALL`];
//! * back-pressure, and who pays for a slow reader: see [`QUEUE_CAPACITY`];
//! * [`Xenstored::shutdown`] (or drop) stops the thread, closes every
//!   connection and removes the sockets.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use super::codec::read_msg;
use super::outq::{OutQueue, Pushed};
use super::store::{ConnId, Quotas, Store};
use super::XsMsg;
use crate::abi::xs_wire::{XsErrno, XsType};

/// Messages (replies and events) a connection may have queued before the
/// writers of its events wait.
///
/// The bound and who pays for a slow reader R (as C xenstored, which holds
/// the request of the writer until its events are delivered):
/// * repeated events coalesce: an event identical to one still queued for R
///   is not queued again (special `@` events excepted), so a node written
///   100,000 times while R is busy costs R one queued event;
/// * when a request of connection W leaves R with `QUEUE_CAPACITY` messages
///   or more, W's next request is not read until R is below
///   `QUEUE_CAPACITY` again: the writer is throttled, R loses nothing. A
///   throttled W that hangs up (shuts down its write half or closes) is
///   noticed while it waits, and its connection ends at once (what it sent
///   and was not read yet is not handled). A
///   request's own events are always queued, so R's queue is bounded by
///   `QUEUE_CAPACITY` plus one request's events per connection writing to
///   it (a write fires at most one event per watch of R);
/// * a privileged connection is never dropped for being slow: its writers
///   wait for it, however long (dom0 is trusted; a stopped `xenstore-watch`
///   in dom0 holds up the writers of what it watches until it reads again,
///   as in C xenstored);
/// * dom0 and the host never wait for an unprivileged R: their events are
///   queued, and an R that lets its queue pass [`UNPRIVILEGED_QUEUE_MAX`]
///   is dropped (it can only hurt itself);
/// * an unprivileged writer waiting for an unprivileged R waits while R
///   makes progress; an R that writes nothing for [`UNPRIVILEGED_STALL`]
///   while a writer waits is dropped (C xenstored drops an unprivileged
///   connection whose watch event is not taken within 20 s).
pub const QUEUE_CAPACITY: usize = 1024;

/// Bytes (headers and payloads) a connection may have queued before the
/// writers of its events wait: the rules of [`QUEUE_CAPACITY`] apply to
/// whichever bound is reached first, so that big messages cannot pin what
/// the count alone allows (1024 events of 4 KB, on each of a guest's 64
/// connections). A queue holds at most about `QUEUE_BYTES`, plus one
/// request's events per connection writing to it, plus the replies the
/// `outstanding` limit allows.
pub const QUEUE_BYTES: usize = 256 * 1024;

/// An unprivileged connection with more queued messages than this is
/// dropped (only writers that never wait for it, dom0 and the host, can
/// take it there).
pub const UNPRIVILEGED_QUEUE_MAX: usize = 2 * QUEUE_CAPACITY;

/// An unprivileged connection with more queued bytes than this is dropped
/// (as [`UNPRIVILEGED_QUEUE_MAX`]).
pub const UNPRIVILEGED_QUEUE_MAX_BYTES: usize = 2 * QUEUE_BYTES;

/// How long an unprivileged connection may leave a waiting writer without
/// writing anything before it is dropped.
pub const UNPRIVILEGED_STALL: Duration = Duration::from_secs(20);

/// [`UNPRIVILEGED_STALL`], shortened for the unit tests.
const fn stall_limit() -> Duration {
    if cfg!(test) {
        Duration::from_secs(1)
    } else {
        UNPRIVILEGED_STALL
    }
}

/// Connections an unprivileged domain may have open at once (C
/// xenstored's domains have one ring each; this bounds a guest's file
/// descriptors in the host). Dom0's are not limited.
pub const MAX_CONNECTIONS_PER_DOMAIN: usize = 64;

/// How long a stopping server lets connections flush what is queued.
const FLUSH_AT_STOP: Duration = Duration::from_secs(1);

/// Replies a privileged connection may have queued before the server
/// stops reading its requests (unprivileged ones use the `outstanding`
/// quota).
const PRIV_OUTSTANDING: usize = QUEUE_CAPACITY / 2;

/// How often a throttled connection with unread requests is checked for
/// a hang-up (one without unread requests is noticed at once).
const HANG_UP_CHECK: Duration = Duration::from_millis(50);

/// Bytes a writer task gathers into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// Counters of a running [`Xenstored`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenstoredStats {
    /// Connections open now.
    pub connections: usize,
    /// Requests handled.
    pub requests: u64,
    /// Watch events queued.
    pub events: u64,
    /// Watch events not queued because an identical one was queued still.
    pub coalesced: u64,
    /// Times a connection's requests waited for a receiver of its events
    /// to make room.
    pub throttled: u64,
    /// Unprivileged connections dropped for not reading (see
    /// [`QUEUE_CAPACITY`]).
    pub dropped: u64,
    /// Connections refused (over [`MAX_CONNECTIONS_PER_DOMAIN`], or their
    /// domain released meanwhile).
    pub refused: u64,
}

#[derive(Debug)]
struct ConnEntry {
    domid: u16,
    out: Arc<OutQueue>,
    /// The reader task, until it ends; the entry stays until the writer
    /// ends too (it may still hold the socket and queued messages).
    reader: Option<AbortHandle>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    events: AtomicU64,
    coalesced: AtomicU64,
    throttled: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    store: Mutex<Store>,
    /// Lock order: `store`, then `conns`, then `listeners`.
    conns: Mutex<HashMap<ConnId, ConnEntry>>,
    listeners: Mutex<HashMap<u16, (PathBuf, AbortHandle)>>,
    next_conn: AtomicU64,
    rt: tokio::runtime::Handle,
    counters: Counters,
    stopping: AtomicBool,
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

/// A receiver a writer must wait for.
struct Wait {
    conn: ConnId,
    out: Arc<OutQueue>,
    unprivileged: bool,
}

impl Xenstored {
    /// Starts a xenstored whose sockets live in `dir` (created if
    /// missing), with `quotas` for unprivileged domains. It runs on its own
    /// thread until [`Xenstored::shutdown`] or drop. Dom0 is introduced
    /// and its socket created from the start.
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
            stopping: AtomicBool::new(false),
        });
        inner.listen(0)?;
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

    /// The socket of domain `domid` (`<dir>/<domid>.sock`). It exists while
    /// the domain is introduced (dom0's always); connections to it speak
    /// for `domid`. An error once the server has stopped.
    pub fn socket_path(&self, domid: u16) -> io::Result<PathBuf> {
        if lock(&self.stop).is_none() {
            return Err(io::Error::other("xenstored has stopped"));
        }
        Ok(self.inner.path_of(domid))
    }

    /// Introduces `domid`: creates its `/local/domain/<domid>` nodes if
    /// missing, fires `@introduceDomain` (once; nothing for a domain
    /// introduced already) and opens its socket.
    pub fn introduce_domain(&self, domid: u16) {
        {
            let mut store = lock(&self.inner.store);
            let events = store.introduce(domid);
            self.inner.deliver_unthrottled(&mut store, events);
        }
        if let Err(e) = self.inner.listen(domid) {
            tracing::error!(domid, error = %e, "xenstored: cannot open the domain's socket");
        }
    }

    /// Releases `domid`: its connections are closed and its socket removed,
    /// the nodes it owns are removed, and `@releaseDomain` fires. Dom0 is
    /// never released.
    pub fn release_domain(&self, domid: u16) {
        if domid == 0 {
            return;
        }
        let mut store = lock(&self.inner.store);
        let events = store.release(domid);
        self.inner.close_domain(&mut store, domid);
        self.inner.deliver_unthrottled(&mut store, events);
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
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        XenstoredStats {
            connections: lock(&self.inner.conns).len(),
            requests: n(&c.requests),
            events: n(&c.events),
            coalesced: n(&c.coalesced),
            throttled: n(&c.throttled),
            dropped: n(&c.dropped),
            refused: n(&c.refused),
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
        self.inner.stopping.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(());
        if thread.join().is_err() {
            tracing::error!("the xenstored thread panicked");
        }
        for (_, (path, task)) in lock(&self.inner.listeners).drain() {
            task.abort();
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
    fn path_of(&self, domid: u16) -> PathBuf {
        self.dir.join(format!("{domid}.sock"))
    }

    /// Opens the socket of `domid` unless it is open, or the domain is not
    /// introduced (released meanwhile: checked under the store lock, so
    /// that a release on another thread cannot come between the check and
    /// the socket).
    fn listen(self: &Arc<Self>, domid: u16) -> io::Result<()> {
        let store = lock(&self.store);
        if !store.is_introduced(domid) {
            tracing::debug!(
                domid,
                "xenstored: no socket for a domain released meanwhile"
            );
            return Ok(());
        }
        let mut listeners = lock(&self.listeners);
        if listeners.contains_key(&domid) {
            return Ok(());
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(io::Error::other("xenstored has stopped"));
        }
        let path = self.path_of(domid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let std_listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        std_listener.set_nonblocking(true)?;
        let inner = self.clone();
        let task = self.rt.spawn(
            async move {
                match UnixListener::from_std(std_listener) {
                    Ok(l) => accept_loop(inner, domid, l).await,
                    Err(e) => tracing::error!(error = %e, "cannot register the listener"),
                }
            }
            .instrument(tracing::info_span!("xenstored", domid)),
        );
        listeners.insert(domid, (path, task.abort_handle()));
        Ok(())
    }

    /// Closes every connection of `domid` and removes its socket (the
    /// domain was released).
    fn close_domain(&self, store: &mut Store, domid: u16) {
        let mut conns = lock(&self.conns);
        let ids: Vec<ConnId> = conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        // The socket first: once a client sees its connection end, the
        // domain's socket is gone.
        if let Some((path, task)) = lock(&self.listeners).remove(&domid) {
            task.abort();
            let _ = std::fs::remove_file(path);
        }
        for id in ids {
            self.kill(store, &mut conns, id);
        }
        tracing::debug!(domid, "xenstored: domain released, its connections closed");
    }

    /// Queues `msg` for `conn`; the receiver and whether its queue is now
    /// full (see [`QUEUE_BYTES`]), if it is open.
    fn push<'a>(
        &self,
        conns: &'a HashMap<ConnId, ConnEntry>,
        conn: ConnId,
        msg: XsMsg,
    ) -> Option<(&'a ConnEntry, bool)> {
        let c = conns.get(&conn)?;
        let event = msg.ty == XsType::WatchEvent.raw();
        match c.out.push(msg) {
            Pushed::Queued(n, bytes) => {
                if event {
                    self.counters.events.fetch_add(1, Ordering::Relaxed);
                }
                Some((c, n >= QUEUE_CAPACITY || bytes >= QUEUE_BYTES))
            }
            Pushed::Coalesced => {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                None
            }
            Pushed::Closed => None,
        }
    }

    /// Queues events and answers the receivers now full, each once.
    fn deliver(
        &self,
        conns: &HashMap<ConnId, ConnEntry>,
        events: Vec<super::Event>,
    ) -> Vec<(ConnId, Arc<OutQueue>, u16)> {
        let mut full: Vec<(ConnId, Arc<OutQueue>, u16)> = Vec::new();
        for ev in events {
            let conn = ev.conn;
            if let Some((c, is_full)) = self.push(conns, conn, ev.to_msg()) {
                if is_full && !full.iter().any(|f| f.0 == conn) {
                    full.push((conn, c.out.clone(), c.domid));
                }
            }
        }
        full
    }

    /// Queues events of a writer that never waits (dom0 for unprivileged
    /// receivers, or the host): an unprivileged receiver past
    /// [`UNPRIVILEGED_QUEUE_MAX`] is dropped.
    fn deliver_unthrottled(&self, store: &mut Store, events: Vec<super::Event>) {
        let mut conns = lock(&self.conns);
        let full = self.deliver(&conns, events);
        self.drop_overfull(store, &mut conns, full.iter().map(|f| (f.0, f.2)));
    }

    fn drop_overfull(
        &self,
        store: &mut Store,
        conns: &mut HashMap<ConnId, ConnEntry>,
        full: impl Iterator<Item = (ConnId, u16)>,
    ) {
        for (id, domid) in full {
            let over = conns.get(&id).is_some_and(|c| {
                c.out
                    .over(UNPRIVILEGED_QUEUE_MAX, UNPRIVILEGED_QUEUE_MAX_BYTES)
            });
            if domid != 0 && over {
                tracing::warn!(
                    conn = %id,
                    domid,
                    "xenstored: dropping an unprivileged connection that does not read its messages (over {UNPRIVILEGED_QUEUE_MAX} or {UNPRIVILEGED_QUEUE_MAX_BYTES} bytes queued)"
                );
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.kill(store, conns, id);
            }
        }
    }

    /// Forgets a connection and stops its tasks.
    fn kill(&self, store: &mut Store, conns: &mut HashMap<ConnId, ConnEntry>, conn: ConnId) {
        if let Some(c) = conns.remove(&conn) {
            c.out.close();
            if let Some(r) = c.reader {
                r.abort();
            }
            if let Some(w) = c.writer {
                w.abort();
            }
        }
        store.disconnect(conn);
    }

    /// Drops `conn` if it is still open (an unprivileged receiver stalled).
    fn kill_stalled(&self, conn: ConnId) {
        let mut store = lock(&self.store);
        let mut conns = lock(&self.conns);
        if conns.contains_key(&conn) {
            tracing::warn!(
                %conn,
                "xenstored: dropping an unprivileged connection that wrote nothing for {:?} while a writer waited",
                stall_limit()
            );
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.kill(&mut store, &mut conns, conn);
        }
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
            c.out.close();
            writers.extend(c.writer);
            store.disconnect(id);
        }
        writers
    }

    /// Handles one request of `conn`; answers the receivers the connection
    /// must wait for before its next request.
    /// Nothing happens if the connection was closed meanwhile (its domain
    /// released, or dropped for being slow, on another thread while this
    /// one waited for the store lock).
    fn request(self: &Arc<Self>, conn: ConnId, domid: u16, msg: &XsMsg) -> Vec<Wait> {
        let mut store = lock(&self.store);
        if !lock(&self.conns).contains_key(&conn) {
            return Vec::new();
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let out = store.handle(conn, domid, msg);
        tracing::trace!(%conn, request = ?msg, reply = ?out.reply, "xenstored");
        let released = match (msg.kind(), out.reply.error_name()) {
            (Some(XsType::Release), None) => first_domid(msg),
            _ => None,
        };
        let introduced = match (msg.kind(), out.reply.error_name()) {
            (Some(XsType::Introduce), None) => first_domid(msg),
            _ => None,
        };
        let mut conns = lock(&self.conns);
        // The reply is always queued: replies are bounded by the
        // `outstanding` limit on reading.
        let _ = self.push(&conns, conn, out.reply);
        let full = self.deliver(&conns, out.events);
        let privileged = domid == 0;
        let mut waits = Vec::new();
        let mut overfull = Vec::new();
        for (id, q, rdomid) in full {
            let unprivileged = rdomid != 0;
            if privileged && unprivileged && id != conn {
                overfull.push((id, rdomid));
            } else {
                waits.push(Wait {
                    conn: id,
                    out: q,
                    unprivileged,
                });
            }
        }
        self.drop_overfull(&mut store, &mut conns, overfull.into_iter());
        if let Some(d) = released {
            drop(conns);
            self.close_domain(&mut store, d);
        }
        drop(store);
        if let Some(d) = introduced {
            if let Err(e) = self.listen(d) {
                tracing::error!(domid = d, error = %e, "xenstored: cannot open the domain's socket");
            }
        }
        waits
    }

    /// Waits until `w` has room (see [`QUEUE_CAPACITY`]).
    async fn wait_room(&self, w: Wait) {
        self.counters.throttled.fetch_add(1, Ordering::Relaxed);
        if !w.unprivileged {
            w.out.room(QUEUE_CAPACITY, QUEUE_BYTES).await;
            return;
        }
        loop {
            let before = w.out.sent();
            let room = w.out.room(QUEUE_CAPACITY, QUEUE_BYTES);
            match tokio::time::timeout(stall_limit(), room).await {
                Ok(()) => return,
                Err(_) if w.out.sent() == before => {
                    self.kill_stalled(w.conn);
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// The connection's reader ended (EOF or error): its watches and
    /// transactions go; its writer finishes what is queued (with a
    /// deadline if unprivileged, see [`writer`]), then closes. The entry
    /// stays until the writer ends, so that the connection still counts
    /// against [`MAX_CONNECTIONS_PER_DOMAIN`] and is closed with its domain.
    fn reader_done(&self, conn: ConnId) {
        let mut store = lock(&self.store);
        if let Some(c) = lock(&self.conns).get_mut(&conn) {
            c.reader = None;
            c.out.close();
        }
        store.disconnect(conn);
    }

    /// The connection's writer ended (its queue closed and flushed, or a
    /// write failed or timed out): drop everything.
    fn writer_done(&self, conn: ConnId) {
        let mut store = lock(&self.store);
        let mut conns = lock(&self.conns);
        self.kill(&mut store, &mut conns, conn);
    }

    /// Replies a new connection of `domid` may have queued before its
    /// requests are not read: the domain's own `outstanding` quota (SET_QUOTA
    /// `<domid> outstanding` changes it), at most [`PRIV_OUTSTANDING`].
    fn outstanding_limit(&self, domid: u16) -> usize {
        let q = lock(&self.store).quotas_for(domid).outstanding as usize;
        if domid == 0 || q == 0 {
            PRIV_OUTSTANDING
        } else {
            q.min(PRIV_OUTSTANDING)
        }
    }

    /// Registers a new connection of `domid` unless refused: its domain is
    /// not introduced (released meanwhile), or it has too many.
    fn admit(&self, id: ConnId, domid: u16, out: Arc<OutQueue>) -> Result<(), XsErrno> {
        let store = lock(&self.store);
        if !store.is_introduced(domid) {
            return Err(XsErrno::Enoent);
        }
        let mut conns = lock(&self.conns);
        if domid != 0
            && conns.values().filter(|c| c.domid == domid).count() >= MAX_CONNECTIONS_PER_DOMAIN
        {
            return Err(XsErrno::Enospc);
        }
        conns.insert(
            id,
            ConnEntry {
                domid,
                out,
                reader: None,
                writer: None,
            },
        );
        Ok(())
    }
}

/// The domid a (successful) INTRODUCE or RELEASE names.
fn first_domid(msg: &XsMsg) -> Option<u16> {
    let first = *msg.parts().first()?;
    std::str::from_utf8(first).ok()?.parse().ok()
}

/// Answers a refused connection with an error message (request id 0) and
/// closes it.
fn refuse(stream: UnixStream, domid: u16, errno: XsErrno) {
    match errno {
        XsErrno::Enospc => tracing::warn!(
            domid,
            "xenstored: refusing a connection: domain {domid} has {MAX_CONNECTIONS_PER_DOMAIN} open"
        ),
        _ => tracing::debug!(
            domid,
            "xenstored: refusing a connection of a released domain"
        ),
    }
    // A fresh socket's buffer takes these few bytes at once.
    let _ = stream.try_write(&XsMsg::error(0, 0, errno).to_bytes());
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
        let out = Arc::new(OutQueue::default());
        // Registered before its tasks run, so that nothing is lost.
        if let Err(errno) = inner.admit(id, domid, out.clone()) {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream, domid, errno);
            continue;
        }
        let (rd, wr) = stream.into_split();
        let sem = Arc::new(Semaphore::new(inner.outstanding_limit(domid)));
        let span = tracing::info_span!("xenstored-conn", %id, domid);
        let r = tokio::spawn(
            reader(inner.clone(), id, domid, rd, sem.clone()).instrument(span.clone()),
        );
        let w = tokio::spawn(writer(inner.clone(), id, domid, wr, out, sem).instrument(span));
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

/// Reads the next request once an `outstanding` permit is free; `None`
/// when the connection ends (EOF, error, oversized header).
async fn read_next(sem: &Semaphore, rd: &mut OwnedReadHalf) -> Option<XsMsg> {
    sem.acquire().await.ok()?.forget();
    match read_msg(rd).await {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(error = %e, "xenstored: closing a connection that sent an oversized message");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "xenstored: connection read failed");
            None
        }
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
    let mut next = read_next(&sem, &mut rd).await;
    while let Some(msg) = next {
        let waits = inner.request(id, domid, &msg);
        if !waits.is_empty() {
            // The writer is throttled: its next request waits for the
            // receivers its events filled, unless it hangs up meanwhile.
            let rooms = async {
                for w in waits {
                    inner.wait_room(w).await;
                }
            };
            tokio::select! {
                () = rooms => {}
                () = hung_up(&rd) => {
                    tracing::debug!("xenstored: a throttled connection hung up");
                    break;
                }
            }
        }
        next = read_next(&sem, &mut rd).await;
    }
}

/// Resolves once the client has shut down its write half or closed the
/// connection (or the socket failed), without reading what it sent.
async fn hung_up(rd: &OwnedReadHalf) {
    let stream: &UnixStream = rd.as_ref();
    loop {
        match stream.ready(Interest::READABLE).await {
            Ok(r) if r.is_read_closed() => return,
            // Requests are waiting, to be read later in order. Their
            // readiness must not be cleared (the reader would never be
            // woken for them), so look again after a while.
            Ok(_) => tokio::time::sleep(HANG_UP_CHECK).await,
            Err(_) => return,
        }
    }
}

/// Writes `buf`. Once the reader of an unprivileged connection has ended
/// (its queue is closed), a write that makes no headway for
/// [`UNPRIVILEGED_STALL`] fails: a guest that hung up its write half (or
/// sent an oversized header) and reads nothing cannot keep the writer, its
/// socket and its queue forever.
async fn write_batch(
    wr: &mut OwnedWriteHalf,
    buf: &[u8],
    out: &OutQueue,
    unprivileged: bool,
) -> io::Result<()> {
    let write = wr.write_all(buf);
    tokio::pin!(write);
    loop {
        match tokio::time::timeout(stall_limit(), &mut write).await {
            Ok(r) => return r,
            Err(_) if unprivileged && out.is_closed() => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client reads nothing and its reader has ended",
                ))
            }
            Err(_) => {}
        }
    }
}

async fn writer(
    inner: Arc<Inner>,
    id: ConnId,
    domid: u16,
    mut wr: OwnedWriteHalf,
    out: Arc<OutQueue>,
    sem: Arc<Semaphore>,
) {
    let mut buf = Vec::new();
    while let Some(batch) = out.take(WRITE_BATCH).await {
        buf.clear();
        let mut replies = 0;
        for m in &batch {
            if m.ty != XsType::WatchEvent.raw() {
                replies += 1;
            }
            buf.extend_from_slice(&m.to_bytes());
        }
        if let Err(e) = write_batch(&mut wr, &buf, &out, domid != 0).await {
            tracing::debug!(error = %e, "xenstored: connection write failed");
            sem.close();
            inner.writer_done(id);
            return;
        }
        sem.add_permits(replies);
        out.wrote(batch.len());
    }
    sem.close();
    let _ = wr.shutdown().await;
    inner.writer_done(id);
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
