//! The domain side of the simulated host: [`SimDomain`] implements
//! [`Platform`] for a process (or a task in a test) that joined a domain of
//! the host: one session of that domain (a domain may have several).
//!
//! Granting is done here, in the domain's own grant table (shared memory the
//! host also maps), by the seed's rules; no host call is needed, except to
//! get one more chunk of references when the session's chunks are used up
//! (the sessions of a domain share its table, each in its own chunks).
//! Mapping, copying, transferring and port management are host calls over
//! the control socket. Notifications go straight to the peer's eventfd.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{
    connect, shutdown, socket_with, AddressFamily, Shutdown, SocketAddrUnix, SocketFlags,
    SocketType,
};

use super::handles::{ShareState, SimChannel, SimMapping, SimPages, SimShare, SimSlot};
use super::host::{ENV_DOMID, ENV_SOCKET};
use super::report::HostReport;
use super::wire::{recv_packet, send_packet, Reply, Request, WireCopy, WirePtr};
use crate::abi::grant::GnttabStatus;
use crate::grant::{GrantError, GrantTable};
use crate::platform::{
    Access, CopyPtr, DomId, EventChannel, ForeignMapping, GrantCopy, GrantRef, LocalPages,
    Platform, PlatformError, Port, Result, SharedPages, TransferSlot,
};
use crate::shm::{Protection, Region, PAGE_SIZE};

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) domid: DomId,
    conn: Mutex<OwnedFd>,
    pub(super) mem_fd: OwnedFd,
    /// The domain's grant table; this session hands out only the
    /// references of the chunks the host gave it.
    pub(super) table: GrantTable,
    /// Held while asking the host for one more chunk.
    refill: Mutex<()>,
    /// Set by [`SimDomain::disconnect`]: the session is over.
    severed: AtomicBool,
    /// Shares whose end was refused while the peer mapped them; retried
    /// at the next share and by a retry thread every [`RETRY_DEFERRED`]
    /// while any are left (as Linux retries a deferred
    /// `gnttab_end_foreign_access` from a timer).
    pub(super) deferred: Mutex<Vec<ShareState>>,
    /// Whether the retry thread is running.
    retrying: AtomicBool,
    /// Open ports and where their notifications go.
    pub(super) ports: Mutex<HashMap<Port, Arc<OwnedFd>>>,
}

/// How often deferred share ends are retried.
pub const RETRY_DEFERRED: std::time::Duration = std::time::Duration::from_millis(250);

/// A domain of the simulated host, as seen from inside it.
#[derive(Debug, Clone)]
pub struct SimDomain {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlatformError {
    let what = what.into();
    move |source| PlatformError::Io {
        what,
        error: source,
    }
}

pub(super) fn reply_error(r: Reply) -> PlatformError {
    match r {
        Reply::Status { status, message } => match GnttabStatus::from_raw(status) {
            Some(status) => PlatformError::Gnttab {
                what: message,
                status,
            },
            None => PlatformError::Protocol(format!("{message}: unknown status {status}")),
        },
        Reply::Errno { errno, message } => PlatformError::Errno {
            what: message,
            errno,
        },
        other => PlatformError::Protocol(format!("unexpected reply {other:?}")),
    }
}

fn host_gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the simulated host closed the connection (domain destroyed or host stopped)",
    )
}

/// The host's last message on a connection it cut (why: the domain was
/// destroyed, the host stopped), if there is one. Waits a little for it:
/// the host sends it right after cutting.
fn farewell(conn: &OwnedFd) -> Option<Reply> {
    let mut fds = [PollFd::new(conn, PollFlags::IN)];
    let second = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&second)).ok()?;
    let (bytes, _) = recv_packet(conn.as_fd()).ok()??;
    match Reply::decode(&bytes).ok()? {
        r @ Reply::Errno { .. } => Some(r),
        _ => None,
    }
}

pub(super) fn call_on(conn: &OwnedFd, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
    let what = || format!("simulated host request {req:?}");
    let gone = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => host_gone(),
        _ => e,
    };
    // A connection the host cut: its last message says why.
    let cut = |e: std::io::Error| match farewell(conn) {
        Some(r) => Ok((r, Vec::new())),
        None => Err(io_err(what())(gone(e))),
    };
    if let Err(e) = send_packet(conn.as_fd(), &req.encode(), &[]) {
        return cut(e);
    }
    let (bytes, fds) = match recv_packet(conn.as_fd()) {
        Ok(Some(p)) => p,
        Ok(None) => return Err(io_err(what())(host_gone())),
        Err(e) => return Err(io_err(what())(gone(e))),
    };
    let reply = Reply::decode(&bytes).map_err(io_err(what()))?;
    Ok((reply, fds))
}

pub(super) fn connect_to(socket: &Path) -> Result<OwnedFd> {
    let what = || format!("connect to the simulated host at {}", socket.display());
    super::dir::check_private_dir(socket.parent().unwrap_or(Path::new("")))
        .map_err(io_err(what()))?;
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_err(what())(e.into()))?;
    let addr = SocketAddrUnix::new(socket).map_err(|e| io_err(what())(e.into()))?;
    connect(&fd, &addr)
        .map_err(|e| io_err(format!("{}; is the sim host running?", what()))(e.into()))?;
    Ok(fd)
}

impl SimDomain {
    /// Joins domain `domid` of the host at `socket`, as a new session of
    /// it. A domain that does not exist is created, and destroyed when its
    /// last session ends; a persistent one (see [`SimDomain::create_domain`])
    /// outlives its sessions. A dying domain cannot be joined.
    pub fn connect(socket: impl AsRef<Path>, domid: DomId) -> Result<SimDomain> {
        let conn = connect_to(socket.as_ref())?;
        let (reply, mut fds) = call_on(&conn, &Request::Join { domid })?;
        let Reply::Joined {
            gnttab_entries,
            refs_lo,
            refs_hi,
            ..
        } = reply
        else {
            return Err(reply_error(reply));
        };
        if fds.len() != 2 {
            return Err(PlatformError::Protocol(format!(
                "join passed {} fds, expected 2",
                fds.len()
            )));
        }
        let gnttab_fd = fds.pop().expect("2 fds");
        let mem_fd = fds.pop().expect("2 fds");
        let region = Region::map_fd(
            gnttab_fd.as_fd(),
            0,
            gnttab_entries as usize * crate::grant::table::ENTRY_SIZE,
            Protection::ReadWrite,
        )?;
        let table = GrantTable::with_ranges(region);
        if refs_lo < refs_hi {
            table.add_range(refs_lo, refs_hi)?;
        }
        tracing::debug!(domid, refs_lo, refs_hi, "joined the simulated host");
        Ok(SimDomain {
            inner: Arc::new(Inner {
                domid,
                conn: Mutex::new(conn),
                mem_fd,
                table,
                refill: Mutex::new(()),
                severed: AtomicBool::new(false),
                deferred: Mutex::new(Vec::new()),
                retrying: AtomicBool::new(false),
                ports: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Joins the host named by `XENRING_SIM_SOCKET` as the domain named by
    /// `XENRING_DOMID` (what `xenring-sim exec` sets).
    pub fn from_env() -> Result<SimDomain> {
        let socket = std::env::var_os(ENV_SOCKET).ok_or_else(|| {
            PlatformError::Protocol(format!(
                "{ENV_SOCKET} is not set; run under `xenring-sim exec`"
            ))
        })?;
        let domid = std::env::var(ENV_DOMID)
            .ok()
            .and_then(|v| v.parse::<DomId>().ok())
            .ok_or_else(|| {
                PlatformError::Protocol(format!("{ENV_DOMID} is not set to a domain id"))
            })?;
        SimDomain::connect(socket, domid)
    }

    pub(super) fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        self.inner.call(req)
    }

    /// This domain's grant table (the session hands out references of its
    /// own chunks only: [`GrantTable::ranges`]).
    pub fn grant_table(&self) -> &GrantTable {
        &self.inner.table
    }

    /// The host's report (any domain may ask).
    pub fn host_report(&self) -> Result<HostReport> {
        match self.call(&Request::Report)?.0 {
            Reply::Report(r) => Ok(r),
            other => Err(reply_error(other)),
        }
    }

    /// Notifies by port number, as the evtchn device does: refused with
    /// `EINVAL` for a port this domain does not have open.
    pub fn notify_port(&self, port: Port) -> Result<()> {
        let send = self
            .inner
            .ports
            .lock()
            .expect("ports lock")
            .get(&port)
            .cloned();
        match send {
            Some(fd) => {
                super::hv::signal(&fd);
                Ok(())
            }
            None => Err(PlatformError::Errno {
                what: format!(
                    "notify on port {port} of domain {}: port is closed",
                    self.inner.domid
                ),
                errno: crate::platform::libc_errno::EINVAL,
            }),
        }
    }

    /// Unmaps a mapping handle directly (misuse tests: a second unmap of the
    /// same handle is refused with `GNTST_bad_handle`).
    pub fn unmap_handle(&self, handle: u64) -> Result<()> {
        self.inner.expect_ok(&Request::Unmap { handle })
    }

    /// Retries ending the shares whose end was refused earlier; returns how
    /// many are still waiting for the peer to unmap.
    pub fn retry_deferred(&self) -> usize {
        self.inner.retry_deferred()
    }

    /// Destroys domain `domid` and all its sessions (only dom0 may).
    pub fn destroy_domain(&self, domid: DomId) -> Result<()> {
        self.inner.expect_ok(&Request::Destroy { domid })
    }

    /// Creates a persistent domain `domid`, with no session (only dom0
    /// may): it lives until destroyed, whatever happens to the processes
    /// that join it. Refused (`EEXIST`, "domain N already exists") if it
    /// exists.
    pub fn create_domain(&self, domid: DomId) -> Result<()> {
        self.inner.expect_ok(&Request::CreateDomain { domid })
    }

    /// Ends this session as if its process had died: the connection is
    /// shut down, the host releases what the session holds (firing its
    /// unmap notifications), and every later host call through this handle
    /// or its pages, mappings, ports and slots fails, as does granting.
    /// For tests of process death inside one process.
    pub fn disconnect(&self) {
        self.inner.severed.store(true, Ordering::SeqCst);
        let conn = self.inner.conn.lock().expect("conn lock");
        let _ = shutdown(&*conn, Shutdown::Both);
    }

    /// Waits until the host ends this session, and says why: the host
    /// sends a last message when it destroys the domain ("domain N has
    /// been destroyed") or stops ("the simulated host has stopped"), and
    /// the connection simply closes when the host process dies. Anything
    /// readable on the connection while no call is under way is one of
    /// these (the host sends nothing unasked), so readiness is checked
    /// under the connection's lock, which every call holds from its request
    /// to its reply. Must be polled inside a tokio runtime.
    pub async fn ended(&self) -> PlatformError {
        let what = |e: std::io::Error| PlatformError::Io {
            what: format!(
                "watching domain {}'s connection to the simulated host",
                self.inner.domid
            ),
            error: e,
        };
        let dup = match self.inner.conn.lock().expect("conn lock").try_clone() {
            Ok(fd) => fd,
            Err(e) => return what(e),
        };
        let afd = match crate::shm::register_async_fd(dup, tokio::io::Interest::READABLE) {
            Ok(a) => a,
            Err(e) => return what(e),
        };
        loop {
            let mut ready = match afd.readable().await {
                Ok(r) => r,
                Err(e) => return what(e),
            };
            // A call holds the lock for a whole host round trip: wait for
            // it without blocking a runtime worker.
            let conn = loop {
                match self.inner.conn.try_lock() {
                    Ok(c) => break c,
                    Err(std::sync::TryLockError::WouldBlock) => {}
                    Err(std::sync::TryLockError::Poisoned(_)) => panic!("conn lock poisoned"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            };
            let mut fds = [PollFd::new(&*conn, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let unasked = matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0);
            if !unasked {
                // A call's reply made it readable, and the call took it.
                drop(conn);
                ready.clear_ready();
                continue;
            }
            let why = match farewell(&conn) {
                Some(r) => reply_error(r),
                None => PlatformError::Io {
                    what: format!(
                        "domain {}'s connection to the simulated host",
                        self.inner.domid
                    ),
                    error: std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the simulated host closed it without a word (was it killed?)",
                    ),
                },
            };
            drop(conn);
            tracing::debug!(domid = self.inner.domid, error = %why, "session ended by the host");
            return why;
        }
    }

    /// [`Platform::map_grants`], returning the concrete mapping (whose
    /// [`SimMapping::handle`] tests can use).
    pub fn map(&self, peer: DomId, refs: &[GrantRef], access: Access) -> Result<SimMapping> {
        let req = Request::Map {
            granter: peer,
            writable: access.writable(),
            refs: refs.to_vec(),
        };
        let (handle, frames) = match self.call(&req)?.0 {
            Reply::Mapped { handle, frames } => (handle, frames),
            other => return Err(reply_error(other)),
        };
        let prot = if access.writable() {
            Protection::ReadWrite
        } else {
            Protection::ReadOnly
        };
        let mut m = SimMapping {
            dom: self.inner.clone(),
            peer,
            refs: refs.to_vec(),
            handle,
            frames,
            region: None,
        };
        // `m` has no region yet, so dropping it does not unmap: do it here.
        let region = self.map_frames(&m.frames, prot);
        m.region = Some(region.inspect_err(|_| {
            let _ = self.inner.expect_ok(&Request::Unmap { handle });
        })?);
        Ok(m)
    }

    pub(super) fn map_frames(&self, frames: &[u64], prot: Protection) -> Result<Region> {
        Ok(Region::map_pages_of(
            self.inner.mem_fd.as_fd(),
            frames,
            prot,
        )?)
    }

    pub(super) fn alloc_frames(&self, count: usize) -> Result<Vec<u64>> {
        if count == 0 || count > u32::MAX as usize {
            return Err(PlatformError::InvalidArgument(format!(
                "{count} pages asked for: at least 1 and at most {} per call",
                u32::MAX
            )));
        }
        match self
            .call(&Request::AllocPages {
                count: count as u32,
            })?
            .0
        {
            Reply::Frames { frames } => Ok(frames),
            other => Err(reply_error(other)),
        }
    }

    pub(super) fn local_pages(&self, frames: Vec<u64>) -> Result<SimPages> {
        match self.map_frames(&frames, Protection::ReadWrite) {
            Ok(region) => Ok(SimPages {
                dom: self.inner.clone(),
                frames,
                region: Some(region),
            }),
            Err(e) => {
                let _ = self.inner.expect_ok(&Request::FreePages { frames });
                Err(e)
            }
        }
    }
}

impl Inner {
    /// A free grant reference of this session, asking the host for one more
    /// chunk of the domain's table when the session's are used up.
    pub(super) fn allocate_ref(&self) -> Result<GrantRef> {
        if self.severed.load(Ordering::SeqCst) {
            return Err(PlatformError::Protocol(format!(
                "session of domain {} is disconnected",
                self.domid
            )));
        }
        match self.table.allocate() {
            Err(GrantError::Full { .. }) => {}
            other => return Ok(other?),
        }
        let _one_refill = self.refill.lock().expect("refill lock");
        // Another thread may have refilled while we waited.
        if let Ok(r) = self.table.allocate() {
            return Ok(r);
        }
        let (lo, hi) = match self.call(&Request::GrantChunk)?.0 {
            Reply::Chunk { lo, hi } => (lo, hi),
            other => return Err(reply_error(other)),
        };
        tracing::debug!(
            domid = self.domid,
            lo,
            hi,
            "one more chunk of grant references"
        );
        self.table.add_range(lo, hi)?;
        Ok(self.table.allocate()?)
    }

    pub(super) fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let conn = self.conn.lock().expect("conn lock");
        call_on(&conn, req)
    }

    pub(super) fn expect_ok(&self, req: &Request) -> Result<()> {
        match self.call(req)?.0 {
            Reply::Ok => Ok(()),
            other => Err(reply_error(other)),
        }
    }

    /// Defers the end of a share its peer still maps, and makes sure the
    /// retry thread runs.
    pub(super) fn defer(self: &Arc<Self>, state: ShareState) {
        self.deferred.lock().expect("deferred lock").push(state);
        if self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("xenring-sim-deferred".into())
            .spawn(move || loop {
                std::thread::sleep(RETRY_DEFERRED);
                let Some(inner) = weak.upgrade() else { return };
                if inner.severed.load(Ordering::Acquire) {
                    inner.retrying.store(false, Ordering::Release);
                    return;
                }
                let left = inner.retry_deferred();
                if left == 0 {
                    inner.retrying.store(false, Ordering::Release);
                    // A share deferred between the retry and the store
                    // above found the flag set and spawned nothing.
                    if inner.deferred.lock().expect("deferred lock").is_empty()
                        || inner.retrying.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            self.retrying.store(false, Ordering::Release);
            tracing::warn!(error = %e, "cannot start the deferred-share retry thread");
        }
    }

    pub(super) fn retry_deferred(&self) -> usize {
        let mut list = std::mem::take(&mut *self.deferred.lock().expect("deferred lock"));
        list.retain_mut(|s| s.try_end(self).is_err());
        let n = list.len();
        self.deferred.lock().expect("deferred lock").extend(list);
        n
    }
}

// --------------------------------------------------------------- platform

impl SimDomain {
    fn channel(&self, remote: DomId, req: Request) -> Result<Box<dyn EventChannel>> {
        let (reply, mut fds) = self.call(&req)?;
        let Reply::Port { port } = reply else {
            return Err(reply_error(reply));
        };
        if fds.len() != 2 {
            return Err(PlatformError::Protocol(format!(
                "port reply passed {} fds, expected 2",
                fds.len()
            )));
        }
        let send = Arc::new(fds.pop().expect("2"));
        let recv = fds.pop().expect("2");
        self.inner
            .ports
            .lock()
            .expect("ports lock")
            .insert(port, send.clone());
        Ok(Box::new(SimChannel {
            dom: self.inner.clone(),
            port,
            remote,
            recv,
            send,
            afd: OnceLock::new(),
            closed: false,
        }))
    }

    fn local_ptr(&self, p: &CopyPtr<'_>, len: u16) -> std::result::Result<WirePtr, GnttabStatus> {
        match *p {
            CopyPtr::Grant {
                domid,
                gref,
                offset,
            } => Ok(WirePtr {
                is_gref: true,
                domid,
                value: u64::from(gref),
                offset,
            }),
            CopyPtr::Local { pages, offset } => {
                let sim = pages
                    .as_any()
                    .downcast_ref::<SimPages>()
                    .ok_or(GnttabStatus::BadPage)?;
                let frame = *sim
                    .frames
                    .get(offset / PAGE_SIZE)
                    .ok_or(GnttabStatus::BadCopyArg)?;
                let off = offset % PAGE_SIZE;
                if off + len as usize > PAGE_SIZE {
                    return Err(GnttabStatus::BadCopyArg);
                }
                Ok(WirePtr {
                    is_gref: false,
                    domid: self.inner.domid,
                    value: frame,
                    offset: off as u16,
                })
            }
        }
    }
}

impl Platform for SimDomain {
    fn domid(&self) -> DomId {
        self.inner.domid
    }

    fn ended(&self) -> futures::future::BoxFuture<'static, PlatformError> {
        let me = self.clone();
        Box::pin(async move { me.ended().await })
    }

    fn name(&self) -> &'static str {
        "sim"
    }

    fn share_pages(
        &self,
        peer: DomId,
        count: usize,
        access: Access,
    ) -> Result<Box<dyn SharedPages>> {
        if !self
            .inner
            .deferred
            .lock()
            .expect("deferred lock")
            .is_empty()
        {
            self.retry_deferred();
        }
        let frames = self.alloc_frames(count)?;
        let mut share = SimShare {
            dom: self.inner.clone(),
            peer,
            state: ShareState {
                refs: Vec::with_capacity(count),
                ended: Vec::with_capacity(count),
                frames: frames.clone(),
                notifies: Vec::new(),
                region: None,
            },
        };
        // On any error below, dropping `share` ends what was granted and
        // frees the frames.
        for f in &frames {
            let gref = self.inner.allocate_ref()?;
            share.state.refs.push(gref);
            share.state.ended.push(false);
            let frame = u32::try_from(*f)
                .map_err(|_| PlatformError::Protocol(format!("frame {f:#x} beyond 32 bits")))?;
            self.inner
                .table
                .grant_access(gref, peer, frame, access == Access::ReadOnly)?;
        }
        share.state.region = Some(self.map_frames(&frames, Protection::ReadWrite)?);
        Ok(Box::new(share))
    }

    fn map_grants(
        &self,
        peer: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<Box<dyn ForeignMapping>> {
        Ok(Box::new(self.map(peer, refs, access)?))
    }

    fn alloc_pages(&self, count: usize) -> Result<Box<dyn LocalPages>> {
        let frames = self.alloc_frames(count)?;
        Ok(Box::new(self.local_pages(frames)?))
    }

    fn grant_copy(&self, ops: &mut [GrantCopy<'_>]) -> Result<()> {
        let mut wire = Vec::with_capacity(ops.len());
        let mut idx = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter_mut().enumerate() {
            match (
                self.local_ptr(&op.source, op.len),
                self.local_ptr(&op.dest, op.len),
            ) {
                (Ok(src), Ok(dst)) => {
                    wire.push(WireCopy {
                        src,
                        dst,
                        len: op.len,
                    });
                    idx.push(i);
                }
                (Err(s), _) | (_, Err(s)) => op.status = s,
            }
        }
        if wire.is_empty() {
            return Ok(());
        }
        match self.call(&Request::Copy { ops: wire })?.0 {
            Reply::Statuses { statuses } if statuses.len() == idx.len() => {
                for (i, s) in idx.into_iter().zip(statuses) {
                    ops[i].status = GnttabStatus::from_raw(s).unwrap_or(GnttabStatus::GeneralError);
                }
                Ok(())
            }
            other => Err(reply_error(other)),
        }
    }

    fn offer_transfer_slot(&self, peer: DomId) -> Result<Box<dyn TransferSlot>> {
        let gref = self.inner.allocate_ref()?;
        self.inner.table.offer_transfer(gref, peer)?;
        Ok(Box::new(SimSlot {
            dom: self.clone(),
            peer,
            gref: Some(gref),
        }))
    }

    fn transfer_page(&self, page: Box<dyn LocalPages>, peer: DomId, gref: GrantRef) -> Result<()> {
        let mut page =
            page.into_any()
                .downcast::<SimPages>()
                .map_err(|_| PlatformError::Gnttab {
                    what: "transfer of a page that is not a simulated domain's page".into(),
                    status: GnttabStatus::BadPage,
                })?;
        if page.frames.len() != 1 {
            return Err(PlatformError::Gnttab {
                what: format!(
                    "transfer of {} pages at once: one page per transfer",
                    page.frames.len()
                ),
                status: GnttabStatus::BadPage,
            });
        }
        // Our mapping goes first: the page is not ours any more.
        page.region.take();
        let frame = page.frames.pop().expect("one frame");
        self.inner.expect_ok(&Request::Transfer {
            frame,
            to: peer,
            gref,
        })
    }

    fn alloc_unbound_port(&self, remote: DomId) -> Result<Box<dyn EventChannel>> {
        self.channel(remote, Request::AllocUnbound { remote })
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Box<dyn EventChannel>> {
        self.channel(
            remote,
            Request::BindInterdomain {
                remote,
                port: remote_port,
            },
        )
    }
}
