//! Setting up a vchan through the [`Platform`] traits and XenStore, in
//! libxenvchan's order of operations, so that either end can talk to a
//! libxenvchan program on real Xen.
//!
//! ```text
//!   server (domain S)                              client (domain C)
//!   -----------------                              -----------------
//!   alloc_unbound_port(C)            -> port P
//!   share_pages(C, 1) control page   -> ring-ref R
//!     unmap notify: clear srv_live, event on P
//!   share ring pages (orders >= 12), left then right
//!   lay out the page (cli_live = 2, srv_live = 1)
//!   XenStore, /local/domain/S/data/vchan/C/<port>/
//!     dir perms: owner S, others none, C read
//!     one transaction: ring-ref = R, event-channel = P
//!     the same perms on both keys              wait_for(ring-ref), read both
//!                                              bind_interdomain(S, P)
//!                                              map R (read-write)
//!                                                unmap notify: clear cli_live,
//!                                                event on our port
//!                                              read the layout once, check it
//!                                              map left pages rw, right ro
//!                                              srv_notify = WRITE, cli_live = 1
//!   accept(): wait for cli_live != 2 <-------- one event
//!   remove the XenStore directory
//! ```
//!
//! The server's directory is removed once a client has connected (libxenvchan
//! removes it at close; a vchan takes one client, so nothing is lost, and
//! nothing is left behind if the server dies later).

use super::control::{ControlPage, PeerState, RingLayout, Side};
use super::{
    format_value, parse_event_channel, parse_ring_ref, RingSetup, StreamError, Vchan, VchanAddress,
    VchanStream, EVENT_CHANNEL_KEY, RING_REF_KEY,
};
use crate::platform::{Access, EventChannel, GrantRef, Platform, PlatformError, Port, UnmapNotify};
use crate::shm::PAGE_SIZE;
use crate::xenstore::codec::XsErrno;
use crate::xenstore::{Perm, PermAccess, XsClient, XsError};

/// Why setting up a vchan failed. Set-up errors leave nothing behind except
/// where a variant says so.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A grant, mapping or event-channel operation failed.
    #[error("vchan {addr}: {what}: {source}")]
    Platform {
        /// The vchan.
        addr: VchanAddress,
        /// The step.
        what: &'static str,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// A XenStore operation failed.
    #[error("vchan {addr}: {what}: {source}")]
    Xenstore {
        /// The vchan.
        addr: VchanAddress,
        /// The step.
        what: &'static str,
        /// The XenStore error.
        #[source]
        source: XsError,
    },
    /// The control page, its layout or a XenStore value is not acceptable.
    #[error("vchan {addr}: {source}")]
    Stream {
        /// The vchan.
        addr: VchanAddress,
        /// What is wrong.
        #[source]
        source: StreamError,
    },
    /// The address does not name this domain at the right end.
    #[error("vchan {addr}: this domain is {domid}, not the {end} the address names")]
    WrongDomain {
        /// The vchan.
        addr: VchanAddress,
        /// Our domain.
        domid: u16,
        /// `"server"` or `"client"`.
        end: &'static str,
    },
}

/// A server end advertised in XenStore, waiting for its client.
#[derive(Debug)]
pub struct VchanServer {
    addr: VchanAddress,
    /// The XenStore directory it is advertised in.
    dir: String,
    vchan: Vchan,
    chan: Box<dyn EventChannel>,
    ring_ref: GrantRef,
}

impl VchanServer {
    /// Sets up a server end for `addr.client` with a left (client to
    /// server) ring of `2^left_order` bytes and a right (server to client)
    /// ring of `2^right_order` (10..=20 each; 10 and 11 live in the control
    /// page, so they cannot both be the same one of those), and advertises
    /// it in XenStore under `addr` (see the module docs). `addr.server` must
    /// be this domain.
    ///
    /// Cancellation: dropping the future releases the grants and the port;
    /// XenStore nodes already written stay.
    pub async fn listen(
        platform: &dyn Platform,
        xs: &XsClient,
        addr: VchanAddress,
        left_order: u16,
        right_order: u16,
    ) -> Result<VchanServer, SetupError> {
        VchanServer::listen_at(platform, xs, addr, &addr.dir(), left_order, right_order).await
    }

    /// [`VchanServer::listen`] in the XenStore directory `dir` instead of
    /// the one `addr` names: libxenvchan's own programs take any path
    /// (`libxenvchan_server_init(..., xs_path, ...)`, e.g.
    /// `vchan-socket-proxy DOMID PATH`), and write `ring-ref` and
    /// `event-channel` under it.
    ///
    /// Cancellation: as [`VchanServer::listen`].
    pub async fn listen_at(
        platform: &dyn Platform,
        xs: &XsClient,
        addr: VchanAddress,
        dir: &str,
        left_order: u16,
        right_order: u16,
    ) -> Result<VchanServer, SetupError> {
        let mut server = VchanServer::create(platform, addr, left_order, right_order)?;
        server.dir = dir.to_string();
        let (ring_ref, port) = server.offer();
        advertise(xs, addr, dir, ring_ref, port).await?;
        tracing::debug!(%addr, ring_ref, port, left_order, right_order, "vchan server listening");
        Ok(server)
    }

    /// [`VchanServer::listen`] without XenStore: sets the server end up and
    /// leaves telling the client [`VchanServer::offer`] to the caller (then
    /// use [`VchanServer::accept_direct`] and [`connect_direct`]).
    pub fn create(
        platform: &dyn Platform,
        addr: VchanAddress,
        left_order: u16,
        right_order: u16,
    ) -> Result<VchanServer, SetupError> {
        check_end(platform, addr, "server")?;
        let pf = |what| move |source| SetupError::Platform { addr, what, source };
        let chan = platform
            .alloc_unbound_port(addr.client)
            .map_err(pf("allocating the event channel"))?;
        let mut control = platform
            .share_pages(addr.client, 1, Access::ReadWrite)
            .map_err(pf("sharing the control page"))?;
        control
            .set_unmap_notify(UnmapNotify {
                clear_byte: Some(Side::Server.live_offset()),
                event: Some(chan.local_port()),
            })
            .map_err(pf("setting the control page's unmap notification"))?;
        let ring_ref = control.refs()[0];
        let mut rings = Vec::with_capacity(2);
        for order in [left_order, right_order] {
            if order < 12 {
                rings.push(RingSetup::in_page(order));
                continue;
            }
            let pages = 1usize << order.min(20).saturating_sub(12);
            let share = platform
                .share_pages(addr.client, pages, Access::ReadWrite)
                .map_err(pf("sharing the ring pages"))?;
            let refs = share.refs().to_vec();
            rings.push(RingSetup::pages(order, refs, share));
        }
        let right = rings.pop().expect("two rings");
        let left = rings.pop().expect("two rings");
        let vchan = Vchan::server_init(control, left, right)
            .map_err(|source| SetupError::Stream { addr, source })?;
        Ok(VchanServer {
            addr,
            dir: addr.dir(),
            vchan,
            chan,
            ring_ref,
        })
    }

    /// What the client needs: the control page's grant reference and our
    /// event-channel port (the `ring-ref` and `event-channel` values).
    pub fn offer(&self) -> (GrantRef, Port) {
        (self.ring_ref, self.chan.local_port())
    }

    /// The address it is advertised under.
    pub fn addr(&self) -> VchanAddress {
        self.addr
    }

    /// Waits until the client has connected (its live byte left 2), removes
    /// the XenStore directory and returns the stream. A client that
    /// connects, writes and closes at once is fine: its data is there.
    ///
    /// Cancellation: dropping the future releases the grants and the port
    /// but leaves the XenStore directory (bound the wait with
    /// `tokio::time::timeout` and remove it with [`XsClient::rm`] if that
    /// matters).
    pub async fn accept(self, xs: &XsClient) -> Result<VchanStream, SetupError> {
        let addr = self.addr;
        let dir = self.dir.clone();
        let stream = self.accept_direct().await?;
        xs.rm(&dir).await.map_err(|source| SetupError::Xenstore {
            addr,
            what: "removing the advertisement",
            source,
        })?;
        Ok(stream)
    }

    /// [`VchanServer::accept`] without XenStore: waits until the client has
    /// connected and returns the stream.
    ///
    /// Cancellation: dropping the future releases the grants and the port.
    pub async fn accept_direct(self) -> Result<VchanStream, SetupError> {
        let addr = self.addr;
        loop {
            match self.vchan.peer_state() {
                Ok(PeerState::NotYetConnected) => {}
                Ok(_) => break,
                Err(source) => return Err(SetupError::Stream { addr, source }),
            }
            self.chan
                .wait()
                .await
                .map_err(|source| SetupError::Platform {
                    addr,
                    what: "waiting for the client",
                    source,
                })?;
        }
        Ok(VchanStream::new(self.vchan, self.chan))
    }
}

/// Writes `ring-ref` and `event-channel` in one transaction, readable by
/// the client only (as libxenvchan: owner us with no default access, the
/// client may read).
async fn advertise(
    xs: &XsClient,
    addr: VchanAddress,
    dir: &str,
    ring_ref: u32,
    port: u32,
) -> Result<(), SetupError> {
    let xe = |what| move |source| SetupError::Xenstore { addr, what, source };
    let perms = [
        Perm::new(addr.server, PermAccess::None),
        Perm::new(addr.client, PermAccess::Read),
    ];
    xs.mkdir(dir).await.map_err(xe("creating the directory"))?;
    // New nodes copy their parent's permissions, so the keys are readable
    // by the client from the moment they appear.
    xs.set_perms(dir, &perms)
        .await
        .map_err(xe("setting the directory's permissions"))?;
    let (rr_path, ev_path) = (
        format!("{dir}/{RING_REF_KEY}"),
        format!("{dir}/{EVENT_CHANNEL_KEY}"),
    );
    let (rr, ev) = (format_value(ring_ref), format_value(port));
    xs.transaction(async |t| {
        t.write(&rr_path, &rr).await?;
        t.write(&ev_path, &ev).await
    })
    .await
    .map_err(xe("writing ring-ref and event-channel"))?;
    for p in [&rr_path, &ev_path] {
        xs.set_perms(p, &perms)
            .await
            .map_err(xe("setting the keys' permissions"))?;
    }
    Ok(())
}

/// Connects to the server advertised under `addr` (waiting for the
/// advertisement to appear), as libxenvchan's client does (see the module
/// docs). `addr.client` must be this domain.
///
/// Cancellation safe: dropping the future releases whatever was mapped or
/// bound so far (the server then sees nothing, or a client that closed).
pub async fn connect(
    platform: &dyn Platform,
    xs: &XsClient,
    addr: VchanAddress,
) -> Result<VchanStream, SetupError> {
    connect_at(platform, xs, addr, &addr.dir()).await
}

/// [`connect`] to a server advertised in the XenStore directory `dir`
/// instead of the one `addr` names (a libxenvchan server started with its
/// own path, e.g. `vchan-socket-proxy -m server DOMID PATH -`).
///
/// Cancellation safe, as [`connect`].
pub async fn connect_at(
    platform: &dyn Platform,
    xs: &XsClient,
    addr: VchanAddress,
    dir: &str,
) -> Result<VchanStream, SetupError> {
    check_end(platform, addr, "client")?;
    let xe = |what| move |source| SetupError::Xenstore { addr, what, source };
    let st = |source| SetupError::Stream { addr, source };
    let rr = wait_readable(xs, &format!("{dir}/{RING_REF_KEY}"))
        .await
        .map_err(xe("waiting for ring-ref"))?;
    let ring_ref = parse_ring_ref(&rr).map_err(st)?;
    let ev = xs
        .read(&format!("{dir}/{EVENT_CHANNEL_KEY}"))
        .await
        .map_err(xe("reading event-channel"))?;
    let port = parse_event_channel(&ev).map_err(st)?;
    connect_direct(platform, addr, ring_ref, port)
}

/// Waits until `path` exists and we may read it, and returns its value.
/// Until the server has created its directory and set its permissions, a
/// read answers EACCES (its parent is not ours to read) rather than ENOENT:
/// both mean "not yet". Set up with a watch, so nothing is polled.
async fn wait_readable(xs: &XsClient, path: &str) -> Result<String, XsError> {
    use futures::StreamExt;
    let mut w = xs.watch(path).await?;
    loop {
        match xs.read_opt(path).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.errno() == Some(XsErrno::Eacces) => {}
            Err(e) => return Err(e),
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

/// [`connect`] without XenStore: connects to the server's control page
/// `ring_ref` and event-channel port `port` (its [`VchanServer::offer`]).
pub fn connect_direct(
    platform: &dyn Platform,
    addr: VchanAddress,
    ring_ref: GrantRef,
    port: Port,
) -> Result<VchanStream, SetupError> {
    check_end(platform, addr, "client")?;
    let pf = |what| move |source| SetupError::Platform { addr, what, source };
    let st = |source| SetupError::Stream { addr, source };
    let chan = platform
        .bind_interdomain(addr.server, port)
        .map_err(pf("binding the event channel"))?;
    let mut control = platform
        .map_grants(addr.server, &[ring_ref], Access::ReadWrite)
        .map_err(pf("mapping the control page"))?;
    control
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(Side::Client.live_offset()),
            event: Some(chan.local_port()),
        })
        .map_err(pf("setting the control page's unmap notification"))?;
    let layout = ControlPage::new(control.memory())
        .and_then(|c| c.read_layout())
        .map_err(st)?;
    // We write the left ring and only read the right one.
    let map_ring = |ring: &RingLayout, access| -> Result<RingSetup, SetupError> {
        if ring.grants.is_empty() {
            return Ok(RingSetup::in_page(ring.order));
        }
        debug_assert_eq!(ring.grants.len() * PAGE_SIZE, ring.size());
        let m = platform
            .map_grants(addr.server, &ring.grants, access)
            .map_err(pf("mapping the ring pages"))?;
        Ok(RingSetup::new(ring.clone(), Some(Box::new(m))))
    };
    let left = map_ring(&layout.left, Access::ReadWrite)?;
    let right = map_ring(&layout.right, Access::ReadOnly)?;
    let vchan = Vchan::client_attach(control, left, right).map_err(st)?;
    chan.notify().map_err(pf("waking the server"))?;
    tracing::debug!(%addr, ring_ref, port, "vchan client connected");
    Ok(VchanStream::new(vchan, chan))
}

/// Refuses to set up `end` ("server" or "client") of `addr` from a domain
/// that is not that end.
fn check_end(
    platform: &dyn Platform,
    addr: VchanAddress,
    end: &'static str,
) -> Result<(), SetupError> {
    let want = if end == "server" {
        addr.server
    } else {
        addr.client
    };
    if platform.domid() != want {
        return Err(SetupError::WrongDomain {
            addr,
            domid: platform.domid(),
            end,
        });
    }
    Ok(())
}
