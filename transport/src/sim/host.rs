//! The simulated host as a service: a control socket where processes join as
//! domains (or as administrators), one thread per connection, the
//! [`Hypervisor`](super::hv) behind one lock, and the host's XenStore (an
//! embedded [`Xenstored`] with its sockets in `xenstore/` beside the control
//! socket): a domain is introduced when it joins and released in every path
//! that destroys it (disconnect, destroy request, shutdown).
//!
//! A domain lives as long as its connection: when the process dies (or drops
//! its [`SimDomain`](super::SimDomain)), the connection closes and the host
//! destroys the domain, firing its unmap notifications and releasing its
//! grants, mappings, ports and memory.
//!
//! The host runs inside any process: [`SimHost::start`] binds the socket and
//! spawns the threads; the `xenring-sim run` daemon is a thin wrapper.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::net::{
    accept_with, bind, listen, shutdown, socket_with, AddressFamily, Shutdown, SocketAddrUnix,
    SocketFlags, SocketType,
};

use super::hv::{HostConfig, Hypervisor};
use super::report::HostReport;
use super::wire::{borrow_all, recv_packet, send_packet, Reply, Request};
use crate::platform::libc_errno::{EINVAL, EPERM};
use crate::xenstore::Xenstored;

#[derive(Debug)]
struct Shared {
    hv: Mutex<Hypervisor>,
    stopping: AtomicBool,
    /// Open connections (dups), to cut them on destroy and shutdown.
    conns: Mutex<HashMap<u64, (Option<u16>, OwnedFd)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The host's XenStore: a domain is introduced when it joins and
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
}

/// Environment variable naming the control socket, for domain processes.
pub const ENV_SOCKET: &str = "XENRING_SIM_SOCKET";
/// Environment variable naming a domain process's domid.
pub const ENV_DOMID: &str = "XENRING_DOMID";

/// Where the control socket is unless told otherwise:
/// `$XDG_RUNTIME_DIR/xenring-sim/control.sock`, else
/// `/tmp/xenring-sim-<uid>/control.sock`.
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
    /// directory `xenstore/` beside it.
    pub fn start(socket: impl AsRef<Path>, cfg: HostConfig) -> io::Result<SimHost> {
        let path = socket.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
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
        listen(&listener, 128)?;
        let xs_dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.join("xenstore"),
            _ => PathBuf::from("xenstore"),
        };
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
        })
    }

    /// The control socket's path.
    pub fn control_path(&self) -> &Path {
        &self.path
    }

    /// The xenstored socket of domain `domid` (connections to it speak for
    /// that domain; dom0's is privileged). Give it to clients as
    /// `XENSTORED_PATH`.
    pub fn xenstore_path(&self, domid: u16) -> io::Result<PathBuf> {
        self.shared.xenstored.socket_path(domid)
    }

    /// What every domain holds now.
    pub fn report(&self) -> HostReport {
        self.shared.hv.lock().expect("hv lock").report()
    }

    /// Destroys a domain as if its process had died, and cuts its
    /// connection.
    pub fn destroy_domain(&self, domid: u16) -> Result<(), String> {
        destroy(&self.shared, domid)
    }

    /// Stops accepting, cuts every connection (destroying their domains) and
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
            let _ = shutdown(fd, Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
        // Every domain is destroyed (and released) by now.
        self.shared.xenstored.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.stop();
    }
}

fn destroy(shared: &Shared, domid: u16) -> Result<(), String> {
    {
        let mut hv = shared.hv.lock().expect("hv lock");
        hv.destroy(domid).map_err(|r| match r {
            Reply::Errno { message, .. } | Reply::Status { message, .. } => message,
            other => format!("{other:?}"),
        })?;
        shared.xenstored.release_domain(domid);
    }
    for (d, fd) in shared.conns.lock().expect("conns lock").values() {
        if *d == Some(domid) {
            let _ = shutdown(fd, Shutdown::Both);
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
    Domain(u16),
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
    if let Role::Domain(domid) = role {
        let mut hv = shared.hv.lock().expect("hv lock");
        // Already destroyed by an administrator, or destroyed now: its
        // process is gone.
        match hv.destroy(domid) {
            Ok(()) => shared.xenstored.release_domain(domid),
            Err(r) => tracing::debug!(domid, ?r, "domain already gone at disconnect"),
        }
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

fn handle(shared: &Shared, id: u64, role: &mut Role, req: Request) -> (Reply, Vec<OwnedFd>) {
    let me = match (&*role, &req) {
        (_, Request::XenstorePath { domid }) => {
            return match shared.xenstored.socket_path(*domid) {
                Ok(p) => match p.into_os_string().into_string() {
                    Ok(path) => (Reply::Path { path }, Vec::new()),
                    Err(p) => (
                        Reply::Errno {
                            errno: EINVAL,
                            message: format!("xenstore socket path {p:?} is not UTF-8"),
                        },
                        Vec::new(),
                    ),
                },
                Err(e) => (
                    Reply::Errno {
                        errno: e.raw_os_error().unwrap_or(EINVAL),
                        message: format!("xenstore socket of domain {domid}: {e}"),
                    },
                    Vec::new(),
                ),
            };
        }
        (Role::None, Request::Join { domid }) => {
            let joined = {
                let mut hv = shared.hv.lock().expect("hv lock");
                let j = hv.join(*domid);
                if j.is_ok() {
                    shared.xenstored.introduce_domain(*domid);
                }
                j
            };
            return match joined {
                Ok(j) => {
                    *role = Role::Domain(*domid);
                    if let Some(c) = shared.conns.lock().expect("conns lock").get_mut(&id) {
                        c.0 = Some(*domid);
                    }
                    (
                        Reply::Joined {
                            gnttab_entries: j.gnttab_entries,
                            machine_frames: j.machine_frames,
                        },
                        vec![j.mem_fd, j.gnttab_fd],
                    )
                }
                Err(r) => (r, Vec::new()),
            };
        }
        (Role::None, Request::Admin) => {
            *role = Role::Admin;
            return (Reply::Ok, Vec::new());
        }
        (Role::None, _) => return perm("join as a domain or as admin first".into()),
        (_, Request::Join { .. } | Request::Admin) => {
            return perm("this connection has joined already".into())
        }
        (_, Request::Report) => {
            return (
                Reply::Report(shared.hv.lock().expect("hv lock").report()),
                Vec::new(),
            );
        }
        (Role::Admin, Request::Destroy { domid })
        | (Role::Domain(0), Request::Destroy { domid }) => {
            return match destroy(shared, *domid) {
                Ok(()) => (Reply::Ok, Vec::new()),
                Err(message) => (
                    Reply::Errno {
                        errno: crate::platform::libc_errno::ESRCH,
                        message,
                    },
                    Vec::new(),
                ),
            };
        }
        (Role::Admin, _) => return perm("an admin connection is not a domain".into()),
        (Role::Domain(d), Request::Destroy { domid }) => {
            return perm(format!(
                "domain {d} may not destroy domain {domid}: only dom0 may"
            ));
        }
        (Role::Domain(d), _) => *d,
    };
    let mut hv = shared.hv.lock().expect("hv lock");
    if !hv.is_running(me) {
        return perm(format!("domain {me} has been destroyed"));
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
        Request::Join { .. }
        | Request::Admin
        | Request::Report
        | Request::Destroy { .. }
        | Request::XenstorePath { .. } => {
            unreachable!("handled above")
        }
    }
}
