//! What a device author sees: [`BackendConn`] and [`FrontendConn`], the
//! one connection the daemon hands a device each time the two ends meet,
//! and [`DeviceError`]. The device never touches XenStore: it reads the
//! keys the daemon read, maps or shares its rings through the conn's
//! helpers, calls `ready()`, and serves until `stopped()`.
//!
//! ```text
//!   backend device                         frontend device
//!   conn.map_ring() / connect_stream()     conn.share_ring() / offer_stream()
//!   conn.ready().await  -> Connected       conn.ready().await -> keys published,
//!                                            Initialised ... Connected
//!   serve until conn.stopped()             serve until conn.stopped()
//! ```
//!
//! Cancellation: the daemon cancels [`BackendConn::stopped`] (and the same
//! on the frontend) when the connection must end, waits a grace period for
//! the device's future to return, then drops it. Dropping releases every
//! ring, mapping, grant and port the device took through its conn.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::paths::DeviceId;
use super::state::{parse_port_key, parse_u32_key};
use super::XenbusError;
use crate::platform::{DomId, GrantRef, Platform, Port};
use crate::ring::{AsyncRingError, RingClient, RingEntry, RingServer, Tagged};
use crate::stream::{SetupError, StreamError, VchanAddress, VchanServer, VchanStream};

/// The ABI our rings use, as frontends name it in the `protocol` key.
pub const NATIVE_PROTOCOL: &str = if cfg!(target_arch = "x86") {
    "x86_32-abi"
} else if cfg!(target_arch = "aarch64") || cfg!(target_arch = "arm") {
    "arm-abi"
} else {
    "x86_64-abi"
};

/// The most ring pages a frontend may offer (`ring-page-order` up to 4).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// How a device's connection ended, when it was not asked to.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The other end went away (its process or domain died, or it closed
    /// its rings). Not an error of the device: the daemon waits for the
    /// peer to come back.
    #[error("the peer went away: {0}")]
    PeerGone(String),
    /// The device cannot work with what it was given; the message goes to
    /// the device's error node and the device closes.
    #[error("{0}")]
    Failed(String),
    /// The daemon stopped the connection (`ready()` or a wait returned
    /// because of it).
    #[error("the connection was stopped by the daemon")]
    Stopped,
}

impl DeviceError {
    /// A [`DeviceError::Failed`] from anything printable.
    pub fn failed(msg: impl std::fmt::Display) -> DeviceError {
        DeviceError::Failed(msg.to_string())
    }
}

impl From<AsyncRingError> for DeviceError {
    fn from(e: AsyncRingError) -> Self {
        match e {
            AsyncRingError::PeerGone { .. } | AsyncRingError::PeerClosed { .. } => {
                DeviceError::PeerGone(e.to_string())
            }
            AsyncRingError::Closed { .. } => DeviceError::Stopped,
            other => DeviceError::Failed(other.to_string()),
        }
    }
}

impl From<StreamError> for DeviceError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::PeerDied { .. } | StreamError::Closed { .. } => {
                DeviceError::PeerGone(e.to_string())
            }
            other => DeviceError::Failed(other.to_string()),
        }
    }
}

impl From<SetupError> for DeviceError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Stream { source, .. } => source.into(),
            other => DeviceError::Failed(other.to_string()),
        }
    }
}

impl From<std::io::Error> for DeviceError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof | K::ConnectionAborted => {
                DeviceError::PeerGone(e.to_string())
            }
            _ => DeviceError::Failed(e.to_string()),
        }
    }
}

/// A device as the daemon found it: who it is and the keys of this end's
/// directory (what the toolstack wrote, e.g. a chan backend's `target`).
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The device.
    pub id: DeviceId,
    /// This end's keys (direct children of its directory) at start.
    pub params: BTreeMap<String, String>,
}

impl DeviceInfo {
    /// A key of this end's directory, or a [`DeviceError::Failed`] naming
    /// it.
    pub fn param(&self, key: &str) -> Result<&str, DeviceError> {
        self.params
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| DeviceError::Failed(format!("device {}: missing key {key}", self.id)))
    }
}

/// What a conn tells its device task.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// The device is ready; `keys` to publish (frontend), and the sender
    /// that `ready()` waits on.
    Ready {
        keys: Vec<(String, String)>,
        activated: oneshot::Sender<()>,
    },
}

/// What both conns share.
#[derive(Debug)]
struct Core {
    info: DeviceInfo,
    peer_keys: BTreeMap<String, String>,
    peer_dir: String,
    platform: Arc<dyn Platform>,
    events: mpsc::UnboundedSender<ConnEvent>,
    stop: CancellationToken,
    ready_sent: bool,
}

impl Core {
    /// A key error as the device's failure (naming the device).
    fn failed(&self, e: XenbusError) -> DeviceError {
        DeviceError::Failed(format!("device {}: {e}", self.info.id))
    }

    fn peer_key(&self, key: &str) -> Result<&str, DeviceError> {
        self.peer_keys.get(key).map(String::as_str).ok_or_else(|| {
            self.failed(XenbusError::BadKey {
                path: self.peer_dir.clone(),
                key: key.to_string(),
                value: None,
                why: "the peer did not write it".into(),
            })
        })
    }

    fn peer_u32(&self, key: &str) -> Result<u32, DeviceError> {
        parse_u32_key(&self.peer_keys, &self.peer_dir, key).map_err(|e| self.failed(e))
    }

    fn peer_port(&self, key: &str) -> Result<Port, DeviceError> {
        parse_port_key(&self.peer_keys, &self.peer_dir, key).map_err(|e| self.failed(e))
    }

    async fn ready(&mut self, keys: Vec<(String, String)>) -> Result<(), DeviceError> {
        if self.ready_sent {
            return Err(DeviceError::failed(format!(
                "device {}: ready() called twice",
                self.info.id
            )));
        }
        self.ready_sent = true;
        let (tx, rx) = oneshot::channel();
        self.events
            .send(ConnEvent::Ready {
                keys,
                activated: tx,
            })
            .map_err(|_| DeviceError::Stopped)?;
        tokio::select! {
            r = rx => r.map_err(|_| DeviceError::Stopped),
            _ = self.stop.cancelled() => Err(DeviceError::Stopped),
        }
    }
}

macro_rules! common_conn_methods {
    () => {
        /// The device.
        pub fn id(&self) -> &DeviceId {
            &self.core.info.id
        }

        /// This end's keys, as the device started.
        pub fn info(&self) -> &DeviceInfo {
            &self.core.info
        }

        /// The platform (grants, mappings, event channels).
        pub fn platform(&self) -> &Arc<dyn Platform> {
            &self.core.platform
        }

        /// The other end's keys, read when this connection started.
        pub fn peer_keys(&self) -> &BTreeMap<String, String> {
            &self.core.peer_keys
        }

        /// A key of the other end, or [`DeviceError::Failed`] naming it.
        pub fn peer_key(&self, key: &str) -> Result<&str, DeviceError> {
            self.core.peer_key(key)
        }

        /// A decimal u32 key of the other end, or [`DeviceError::Failed`]
        /// naming the key and the bad value.
        pub fn peer_u32(&self, key: &str) -> Result<u32, DeviceError> {
            self.core.peer_u32(key)
        }

        /// A token cancelled when the daemon wants this connection to end.
        pub fn stop_token(&self) -> CancellationToken {
            self.core.stop.clone()
        }

        /// Resolves when the daemon wants this connection to end.
        ///
        /// Cancellation safe.
        pub async fn stopped(&self) {
            self.core.stop.cancelled().await
        }
    };
}

/// The backend's side of one connection.
#[derive(Debug)]
pub struct BackendConn {
    core: Core,
}

impl BackendConn {
    common_conn_methods!();

    /// The frontend's domain.
    pub fn frontend(&self) -> DomId {
        self.core.info.id.frontend
    }

    /// Refuses a `protocol` key naming another ABI than ours (a missing key
    /// means native, as in Linux's backends).
    pub fn check_protocol(&self) -> Result<(), DeviceError> {
        match self.core.peer_keys.get("protocol") {
            None => Ok(()),
            Some(p) if p == NATIVE_PROTOCOL => Ok(()),
            Some(p) => Err(DeviceError::Failed(format!(
                "device {}: unknown protocol {p:?} (this backend speaks {NATIVE_PROTOCOL})",
                self.core.info.id
            ))),
        }
    }

    /// The ring's grant references: `ring-ref`, or `ring-page-order` and
    /// `ring-ref0`.. `ring-ref<2^order - 1>`.
    pub fn ring_refs(&self) -> Result<Vec<GrantRef>, DeviceError> {
        if !self.core.peer_keys.contains_key("ring-page-order") {
            return Ok(vec![self.core.peer_u32("ring-ref")?]);
        }
        let order = self.core.peer_u32("ring-page-order")?;
        if order > MAX_RING_PAGE_ORDER {
            return Err(DeviceError::Failed(format!(
                "device {}: ring-page-order {order} is above the maximum {MAX_RING_PAGE_ORDER}",
                self.core.info.id
            )));
        }
        (0..1u32 << order)
            .map(|i| self.core.peer_u32(&format!("ring-ref{i}")))
            .collect()
    }

    /// The frontend's `event-channel` port.
    pub fn event_channel(&self) -> Result<Port, DeviceError> {
        self.core.peer_port("event-channel")
    }

    /// Maps the frontend's request/response ring (`protocol`, `ring-ref*`,
    /// `event-channel`) and binds its event channel.
    pub fn map_ring<Req: RingEntry + Send + 'static, Rsp: RingEntry + Send + 'static>(
        &self,
    ) -> Result<RingServer<Req, Rsp>, DeviceError> {
        self.check_protocol()?;
        let ep = crate::ring::RingEndpoint {
            domid: self.frontend(),
            port: self.event_channel()?,
            refs: self.ring_refs()?,
        };
        RingServer::connect(self.core.platform.as_ref(), &ep).map_err(|e| {
            DeviceError::Failed(format!("device {}: mapping the ring: {e}", self.id()))
        })
    }

    /// Connects to the vchan byte stream the frontend offered (`ring-ref`
    /// of its control page, `event-channel`).
    pub fn connect_stream(&self) -> Result<VchanStream, DeviceError> {
        let addr = self.vchan_address();
        let rr = self.core.peer_u32("ring-ref")?;
        let port = self.event_channel()?;
        crate::stream::connect_direct(self.core.platform.as_ref(), addr, rr, port).map_err(|e| {
            DeviceError::Failed(format!("device {}: connecting the stream: {e}", self.id()))
        })
    }

    fn vchan_address(&self) -> VchanAddress {
        VchanAddress {
            server: self.frontend(),
            client: self.core.info.id.backend,
            port: self.core.info.id.devid,
        }
    }

    /// Tells the daemon the rings are mapped; it switches to Connected and
    /// then this returns.
    ///
    /// Cancellation safe; [`DeviceError::Stopped`] if the daemon stopped
    /// the connection first.
    pub async fn ready(&mut self) -> Result<(), DeviceError> {
        self.core.ready(Vec::new()).await
    }
}

/// A vchan the frontend offered, waiting for the backend to connect.
#[derive(Debug)]
pub struct PendingStream {
    server: VchanServer,
}

impl PendingStream {
    /// Waits for the backend to connect (it has once `ready()` returned).
    ///
    /// Cancellation: dropping the future releases the grants and the port.
    pub async fn accept(self) -> Result<VchanStream, DeviceError> {
        Ok(self.server.accept_direct().await?)
    }
}

/// The frontend's side of one connection.
#[derive(Debug)]
pub struct FrontendConn {
    core: Core,
    keys: Vec<(String, String)>,
}

impl FrontendConn {
    common_conn_methods!();

    /// The backend's domain.
    pub fn backend(&self) -> DomId {
        self.core.info.id.backend
    }

    /// Adds a key to publish in our directory when `ready()` is called.
    pub fn set_key(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.keys.push((key.into(), value.into()));
    }

    /// Shares a ring of `pages` pages (a power of two up to
    /// 2^[`MAX_RING_PAGE_ORDER`]) with the backend and sets `ring-ref` (one
    /// page) or `ring-page-order` and `ring-ref<i>`, `event-channel` and
    /// `protocol`.
    pub fn share_ring<
        Req: RingEntry + Tagged + Send + 'static,
        Rsp: RingEntry + Tagged + Send + 'static,
    >(
        &mut self,
        pages: usize,
    ) -> Result<RingClient<Req, Rsp>, DeviceError> {
        if !pages.is_power_of_two() || pages > 1 << MAX_RING_PAGE_ORDER {
            return Err(DeviceError::Failed(format!(
                "device {}: a ring of {pages} pages (must be a power of two up to {})",
                self.id(),
                1 << MAX_RING_PAGE_ORDER
            )));
        }
        let (client, ep) = RingClient::share(self.core.platform.as_ref(), self.backend(), pages)
            .map_err(|e| {
                DeviceError::Failed(format!("device {}: sharing the ring: {e}", self.id()))
            })?;
        if pages == 1 {
            self.set_key("ring-ref", ep.refs[0].to_string());
        } else {
            self.set_key("ring-page-order", pages.trailing_zeros().to_string());
            for (i, r) in ep.refs.iter().enumerate() {
                self.set_key(format!("ring-ref{i}"), r.to_string());
            }
        }
        self.set_key("event-channel", ep.port.to_string());
        self.set_key("protocol", NATIVE_PROTOCOL);
        Ok(client)
    }

    /// Offers a vchan byte stream (this end serves: it grants the pages)
    /// with rings of `2^left_order` bytes (backend to frontend) and
    /// `2^right_order` (frontend to backend), and sets `ring-ref` and
    /// `event-channel`.
    pub fn offer_stream(
        &mut self,
        left_order: u16,
        right_order: u16,
    ) -> Result<PendingStream, DeviceError> {
        let addr = VchanAddress {
            server: self.core.info.id.frontend,
            client: self.backend(),
            port: self.core.info.id.devid,
        };
        let server =
            VchanServer::create(self.core.platform.as_ref(), addr, left_order, right_order)
                .map_err(|e| {
                    DeviceError::Failed(format!("device {}: offering the stream: {e}", self.id()))
                })?;
        let (rr, port) = server.offer();
        self.set_key("ring-ref", rr.to_string());
        self.set_key("event-channel", port.to_string());
        Ok(PendingStream { server })
    }

    /// Hands the keys to the daemon, which publishes them and switches to
    /// Initialised; returns once the backend is Connected (and we are).
    ///
    /// Cancellation safe; [`DeviceError::Stopped`] if the daemon stopped
    /// the connection first.
    pub async fn ready(&mut self) -> Result<(), DeviceError> {
        let keys = std::mem::take(&mut self.keys);
        self.core.ready(keys).await
    }
}

/// Everything the daemon's device task gives a new conn.
#[derive(Debug)]
pub(crate) struct ConnParts {
    pub info: DeviceInfo,
    pub peer_keys: BTreeMap<String, String>,
    pub peer_dir: String,
    pub platform: Arc<dyn Platform>,
    pub events: mpsc::UnboundedSender<ConnEvent>,
    pub stop: CancellationToken,
}

impl ConnParts {
    fn core(self) -> Core {
        Core {
            info: self.info,
            peer_keys: self.peer_keys,
            peer_dir: self.peer_dir,
            platform: self.platform,
            events: self.events,
            stop: self.stop,
            ready_sent: false,
        }
    }

    pub fn backend(self) -> BackendConn {
        BackendConn { core: self.core() }
    }

    pub fn frontend(self) -> FrontendConn {
        FrontendConn {
            core: self.core(),
            keys: Vec::new(),
        }
    }
}
