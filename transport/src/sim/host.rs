//! The simulated host as a service: a control socket where processes join
//! domains (or connect as administrators), one thread per connection, the
//! [`Hypervisor`](super::hv) behind one lock, and the host's XenStore (an
//! embedded [`Xenstored`] with its sockets in `xenstore/` beside the control
//! socket): a domain is introduced (and its XenStore socket opened) when it
//! is created, and released (its XenStore connections closed and its socket
//! removed) in every path that destroys it (destroy request, the last
//! session of an implicit domain ending, shutdown). A domid nobody created
//! has no XenStore socket.
//!
//! Domains and sessions: a domain is made persistent by `CreateDomain`
//! ([`SimHost::create_domain`], `xenring-sim create`), or implicitly by the
//! first process that joins it. Each joined connection is a *session* of
//! its domain (one process's `/dev/xen` fds); a domain may have several.
//! When a session's connection closes (its process died, or dropped its
//! [`SimDomain`](super::SimDomain)), the host releases what that session
//! held: it fires its unmap notifications, drops its mappings, closes its
//! ports, frees its pages and revokes its grants (those a peer still maps
//! stay valid until unmapped). An implicit domain is destroyed with its
//! last session; a persistent one lives until destroyed. Destroying a
//! domain ends all its sessions and cuts their connections: a cut session
//! finds a last message in its socket saying that its domain was destroyed
//! (or that the host stopped), which its next call reports.
//!
//! Lock order: `hv`, then `conns`.
//!
//! The host runs inside any process: [`SimHost::start`] binds the socket and
//! spawns the threads; the `xenring-sim run` daemon is a thin wrapper.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::net::{
    accept_with, bind, listen, shutdown, socket_with, AddressFamily, Shutdown, SocketAddrUnix,
    SocketFlags, SocketType,
};

use super::dir::{make_private_dir, make_private_subdir, SOCKET_MODE};
use super::hv::{Caller, HostConfig, Hypervisor, Left};
use super::report::HostReport;
use super::wire::{borrow_all, recv_packet, send_farewell, send_packet, Reply, Request};
use crate::platform::libc_errno::{EINVAL, EPERM, ESRCH};
use crate::xenstore::Xenstored;

#[derive(Debug)]
struct Shared {
    hv: Mutex<Hypervisor>,
    stopping: AtomicBool,
    /// Open connections (dups) and the session each is, to cut them on
    /// destroy and shutdown.
    conns: Mutex<HashMap<u64, (Option<u64>, OwnedFd)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The host's XenStore: a domain is introduced when it is created and
    /// released when it is destroyed.
    xenstored: Xenstored,
}

/// A running simulated Xen host.
#[derive(Debug)]
pub struct SimHost {
    shared: Arc<Shared>,
    path: PathBuf,
    listener: OwnedFd,
    accept: Option<JoinHandle<()>>,
    /// Held while the host runs (`<socket>.lock`): one host per socket.
    _lock: crate::instance::InstanceLock,
}

/// Environment variable naming the control socket, for domain processes.
pub const ENV_SOCKET: &str = "XENRING_SIM_SOCKET";
/// Environment variable naming a domain process's domid.
pub const ENV_DOMID: &str = "XENRING_DOMID";

/// Where the control socket is unless told otherwise:
/// `$XDG_RUNTIME_DIR/xenring-sim/control.sock`, else
/// `/tmp/xenring-sim-<uid>/control.sock`. [`SimHost::start`] makes the
/// folder with mode 0700 and refuses one that exists but is not the
/// user's own private directory.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("xenring-sim").join("control.sock"),
        None => std::env::temp_dir()
            .join(format!(
                "xenring-sim-{}",
                rustix::process::getuid().as_raw()
            ))
            .join("control.sock"),
    }
}

impl SimHost {
    /// Starts a host whose control socket is `socket` (an existing stale
    /// socket file there is replaced), with its xenstored's sockets in the
    /// directory `xenstore/` beside it. Refused (`AddrInUse`, "... is
    /// already served by pid N") while another host serves that socket:
    /// the host holds the lock `<socket>.lock` while it runs.
    ///
    /// The socket's folder must be the user's: it is created with mode
    /// 0700, and an existing one that is not a real directory of this
    /// user's that nobody else may write is refused (`PermissionDenied`),
    /// since whoever can reach the sockets can join as dom0. The control
    /// socket is mode 0600, `xenstore/` mode 0700.
    pub fn start(socket: impl AsRef<Path>, cfg: HostConfig) -> io::Result<SimHost> {
        let path = socket.as_ref().to_path_buf();
        make_private_dir(path.parent().unwrap_or(Path::new("")))?;
        // One host per control socket: a second one would take the socket
        // from under the first one's processes.
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = crate::instance::InstanceLock::acquire(&lock_path).map_err(|e| match e {
            crate::instance::InstanceLockError::Held { .. } => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("the simulated host at {} is {e}", path.display()),
            ),
            crate::instance::InstanceLockError::Io { error, .. } => error,
        })?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        bind(&listener, &SocketAddrUnix::new(&path)?)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        listen(&listener, 128)?;
        let xs_dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.join("xenstore"),
            _ => PathBuf::from("xenstore"),
        };
        make_private_subdir(&xs_dir)?;
        let xenstored = Xenstored::start(&xs_dir, cfg.xenstore_quotas)?;
        let shared = Arc::new(Shared {
            hv: Mutex::new(Hypervisor::new(cfg)?),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            xenstored,
        });
        let l = listener.try_clone()?;
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("sim-accept".into())
            .spawn(move || accept_loop(l, s))?;
        tracing::info!(socket = %path.display(), "simulated host listening");
        Ok(SimHost {
            shared,
            path,
            listener,
            accept: Some(accept),
            _lock: lock,
        })
    }

    /// The control socket's path.
    pub fn control_path(&self) -> &Path {
        &self.path
    }

    /// The xenstored socket of domain `domid` (connections to it speak for
    /// that domain; dom0's is privileged): the path for
    /// [`XsClient::connect`](crate::xenstore::XsClient::connect), or
    /// `XENSTORED_PATH` for other programs.
    pub fn xenstore_path(&self, domid: u16) -> io::Result<PathBuf> {
        self.shared.xenstored.socket_path(domid)
    }

    /// What every domain holds now, and what XenStore holds of destroyed
    /// domains.
    pub fn report(&self) -> HostReport {
        report(&self.shared)
    }

    /// Creates a persistent domain `domid`, with no session: processes join
    /// it later (and may leave and join again); it lives until destroyed.
    /// Refused with "domain N already exists" if it does.
    pub fn create_domain(&self, domid: u16) -> Result<(), String> {
        create(&self.shared, domid).map_err(message)
    }

    /// Destroys a domain: ends all its sessions (releasing what they hold)
    /// and cuts their connections.
    pub fn destroy_domain(&self, domid: u16) -> Result<(), String> {
        destroy(&self.shared, domid).map_err(message)
    }

    /// Stops accepting, cuts every connection, destroys every domain and
    /// waits for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = shutdown(&self.listener, Shutdown::Both);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, (_, fd)) in self.shared.conns.lock().expect("conns lock").iter() {
            let _ = shutdown(fd, Shutdown::Read);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
        // Implicit domains went with their sessions; persistent ones go now.
        {
            let mut hv = self.shared.hv.lock().expect("hv lock");
            for domid in hv.running() {
                if hv.destroy(domid).is_ok() {
                    self.shared.xenstored.release_domain(domid);
                }
            }
        }
        self.shared.xenstored.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.stop();
    }
}

fn message(r: Reply) -> String {
    match r {
        Reply::Errno { message, .. } | Reply::Status { message, .. } => message,
        other => format!("{other:?}"),
    }
}

fn report(shared: &Shared) -> HostReport {
    // Under the hv lock, so that no domain is destroyed between the two.
    let hv = shared.hv.lock().expect("hv lock");
    let mut r = hv.report();
    r.xenstore = shared.xenstored.leftovers();
    r
}

fn create(shared: &Shared, domid: u16) -> Result<(), Reply> {
    let mut hv = shared.hv.lock().expect("hv lock");
    hv.create_domain(domid)?;
    shared.xenstored.introduce_domain(domid);
    Ok(())
}

fn destroy(shared: &Shared, domid: u16) -> Result<(), Reply> {
    let mut hv = shared.hv.lock().expect("hv lock");
    let sessions = hv.destroy(domid)?;
    shared.xenstored.release_domain(domid);
    // Cut the sessions' connections: their threads see end of file, send
    // the farewell and close. (Under the hv lock, so that a session that
    // joins meanwhile is tagged already and not cut by mistake.)
    for (s, fd) in shared.conns.lock().expect("conns lock").values() {
        if s.is_some_and(|s| sessions.contains(&s)) {
            let _ = shutdown(fd, Shutdown::Read);
        }
    }
    Ok(())
}

fn accept_loop(listener: OwnedFd, shared: Arc<Shared>) {
    let mut next = 0u64;
    loop {
        let conn = match accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                if !shared.stopping.load(Ordering::SeqCst) {
                    tracing::error!(error = %e, "accept on the control socket failed");
                }
                return;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        next += 1;
        let id = next;
        match conn.try_clone() {
            Ok(dup) => {
                shared
                    .conns
                    .lock()
                    .expect("conns lock")
                    .insert(id, (None, dup));
            }
            Err(e) => {
                tracing::error!(error = %e, "dup of a connection failed");
                continue;
            }
        }
        let s = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("sim-conn-{id}"))
            .spawn(move || serve(id, conn, s));
        match t {
            Ok(t) => {
                let mut threads = shared.threads.lock().expect("threads lock");
                // Forget the threads of connections that are over.
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => tracing::error!(error = %e, "cannot spawn a connection thread"),
        }
    }
}

enum Role {
    None,
    Admin,
    Domain(Caller),
}

fn serve(id: u64, conn: OwnedFd, shared: Arc<Shared>) {
    let mut role = Role::None;
    loop {
        let packet = match recv_packet(conn.as_fd()) {
            Ok(Some((p, _fds))) => p,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(conn = id, error = %e, "control connection error");
                break;
            }
        };
        let (reply, fds) = match Request::decode(&packet) {
            Ok(req) => handle(&shared, id, &mut role, req),
            Err(e) => (
                Reply::Errno {
                    errno: EINVAL,
                    message: format!("malformed control message: {e}"),
                },
                Vec::new(),
            ),
        };
        if let Err(e) = send_packet(conn.as_fd(), &reply.encode(), &borrow_all(&fds)) {
            tracing::debug!(conn = id, error = %e, "reply failed");
            break;
        }
    }
    shared.conns.lock().expect("conns lock").remove(&id);
    let mut farewell = None;
    if let Role::Domain(c) = role {
        let mut hv = shared.hv.lock().expect("hv lock");
        match hv.leave(c.domid, c.session) {
            Left::Destroyed => shared.xenstored.release_domain(c.domid),
            Left::Stays => {}
            // Cut by a destroy: say so to the session's next call.
            Left::Gone => farewell = Some(format!("domain {} has been destroyed", c.domid)),
        }
    }
    if shared.stopping.load(Ordering::SeqCst) {
        farewell = Some("the simulated host has stopped".into());
    }
    if let Some(message) = farewell {
        let last = Reply::Errno {
            errno: ESRCH,
            message,
        };
        // The peer may be gone already: nothing to tell then.
        let _ = send_farewell(conn.as_fd(), &last.encode());
    }
}

fn perm(message: String) -> (Reply, Vec<OwnedFd>) {
    (
        Reply::Errno {
            errno: EPERM,
            message,
        },
        Vec::new(),
    )
}

fn errno_answer(r: Result<(), Reply>) -> (Reply, Vec<OwnedFd>) {
    (r.err().unwrap_or(Reply::Ok), Vec::new())
}

fn join(shared: &Shared, id: u64, role: &mut Role, domid: u16) -> (Reply, Vec<OwnedFd>) {
    let mut hv = shared.hv.lock().expect("hv lock");
    let j = match hv.join(domid) {
        Ok(j) => j,
        Err(r) => return (r, Vec::new()),
    };
    if j.created {
        shared.xenstored.introduce_domain(domid);
    }
    *role = Role::Domain(Caller {
        domid,
        session: j.session,
    });
    if let Some(c) = shared.conns.lock().expect("conns lock").get_mut(&id) {
        c.0 = Some(j.session);
    }
    (
        Reply::Joined {
            gnttab_entries: j.gnttab_entries,
            machine_frames: j.machine_frames,
            refs_lo: j.refs.0,
            refs_hi: j.refs.1,
        },
        vec![j.mem_fd, j.gnttab_fd],
    )
}

fn xenstore_path(shared: &Shared, domid: u16) -> (Reply, Vec<OwnedFd>) {
    let reply = match shared.xenstored.socket_path(domid) {
        Ok(p) => match p.into_os_string().into_string() {
            Ok(path) => Reply::Path { path },
            Err(p) => Reply::Errno {
                errno: EINVAL,
                message: format!("xenstore socket path {p:?} is not UTF-8"),
            },
        },
        Err(e) => Reply::Errno {
            errno: e.raw_os_error().unwrap_or(EINVAL),
            message: format!("xenstore socket of domain {domid}: {e}"),
        },
    };
    (reply, Vec::new())
}

fn handle(shared: &Shared, id: u64, role: &mut Role, req: Request) -> (Reply, Vec<OwnedFd>) {
    let dom0 = matches!(role, Role::Admin) || matches!(role, Role::Domain(c) if c.domid == 0);
    let me = match (&*role, &req) {
        (_, Request::XenstorePath { domid }) => return xenstore_path(shared, *domid),
        (Role::None, Request::Join { domid }) => return join(shared, id, role, *domid),
        (Role::None, Request::Admin) => {
            *role = Role::Admin;
            return (Reply::Ok, Vec::new());
        }
        (Role::None, _) => return perm("join as a domain or as admin first".into()),
        (_, Request::Join { .. } | Request::Admin) => {
            return perm("this connection has joined already".into())
        }
        (_, Request::Report) => {
            return (Reply::Report(report(shared)), Vec::new());
        }
        (_, Request::Destroy { domid }) if dom0 => return errno_answer(destroy(shared, *domid)),
        (_, Request::CreateDomain { domid }) if dom0 => {
            return errno_answer(create(shared, *domid))
        }
        (Role::Admin, _) => return perm("an admin connection is not a domain".into()),
        (Role::Domain(c), Request::Destroy { domid }) => {
            return perm(format!(
                "domain {} may not destroy domain {domid}: only dom0 may",
                c.domid
            ));
        }
        (Role::Domain(c), Request::CreateDomain { domid }) => {
            return perm(format!(
                "domain {} may not create domain {domid}: only dom0 may",
                c.domid
            ));
        }
        (Role::Domain(c), _) => *c,
    };
    let mut hv = shared.hv.lock().expect("hv lock");
    if !hv.session_alive(me.domid, me.session) {
        return (
            Reply::Errno {
                errno: ESRCH,
                message: format!("domain {} has been destroyed", me.domid),
            },
            Vec::new(),
        );
    }
    let plain = |r: Reply| (r, Vec::new());
    match req {
        Request::AllocPages { count } => plain(hv.alloc_pages(me, count)),
        Request::FreePages { frames } => plain(hv.free_pages(me, &frames)),
        Request::Map {
            granter,
            writable,
            refs,
        } => plain(hv.map(me, granter, writable, &refs)),
        Request::Unmap { handle } => plain(hv.unmap(me, handle)),
        Request::Copy { ops } => plain(hv.copy(me, &ops)),
        Request::Transfer { frame, to, gref } => plain(hv.transfer(me, frame, to, gref)),
        Request::AllocUnbound { remote } => hv.alloc_unbound(me, remote).unwrap_or_else(plain),
        Request::BindInterdomain { remote, port } => {
            hv.bind_interdomain(me, remote, port).unwrap_or_else(plain)
        }
        Request::ClosePort { port } => plain(hv.close_port(me, port)),
        Request::AddNotify(n) => plain(hv.add_notify(me, n)),
        Request::FireNotify { id } => plain(hv.fire(me, id)),
        Request::GrantChunk => plain(hv.grant_chunk(me)),
        Request::Join { .. }
        | Request::Admin
        | Request::Report
        | Request::Destroy { .. }
        | Request::CreateDomain { .. }
        | Request::XenstorePath { .. } => {
            unreachable!("handled above")
        }
    }
}
