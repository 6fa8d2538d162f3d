//! The `vif` frontend: the network split driver's frontend end, exposed
//! as a TAP device in this daemon's network namespace (where a guest would
//! have its `eth0`).
//!
//! ```text
//!   TAP xnet<devid> --read--> tx ring (grants of our tx pages) --> backend
//!   TAP xnet<devid> <-write-- receive pool <-- rx ring responses <-- backend
//! ```
//!
//! Frontend keys (the toolstack writes them): `tap` (name, default
//! `xnet<devid>`), `mtu` (default 1500, at most 4082: a frame fits in one
//! page), `rx-mode` (`transfer` or `copy`; default: transfer when the
//! backend offers `feature-rx-flip` and this platform can accept
//! transfers, else copy), `mac` (the TAP's address). Published: `tx-ring-ref`, `rx-ring-ref`,
//! `event-channel-tx`, `event-channel-rx` (split channels: the backend
//! must offer `feature-split-event-channels`), `request-rx-copy`,
//! `feature-rx-notify`.
//!
//! Transmit: each frame read from the TAP device is copied into one of
//! 256 pages granted read-only to the backend and sent as one tx request;
//! the page is reused when the response comes back. Receive: every slot
//! of a [`RxPool`] is posted as an rx request; a response's data is taken
//! out of the pool (a transferred page, or bytes copied out of a granted
//! page), checked (length, flags) and written to the TAP device, and the
//! slot is posted again. A bad response is counted and dropped.
//!
//! The TAP device is opened once per device and kept across reconnections
//! (a backend restart does not take the interface or its addresses away).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tun_rs::{AsyncDevice, DeviceBuilder, Layer};
use xenring::abi::netif::{
    check_tap_name, keys, parse_mtu, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, ETH_HLEN, NETIF_RSP_OKAY, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA,
};
use xenring::platform::{Access, GrantRef, SharedPages};
use xenring::ring::{AsyncRingError, RingClient};
use xenring::rxpool::{RxMode, RxPool, RxPoolError, RxPoolStats};
use xenring::shm::PAGE_SIZE;
use xenring::xenbus::device::{DeviceError, DeviceInfo, FrontendConn};
use xenring::xenbus::paths::DeviceId;

use crate::device::FrontendDevice;

type TxReq = NetifTxRequest<[u8; 12]>;
type TxRsp = NetifTxResponse<[u8; 4]>;
type RxReq = NetifRxRequest<[u8; 8]>;
type RxRsp = NetifRxResponse<[u8; 8]>;

/// Slots of a one-page netif ring (and so tx buffers and receive slots).
pub const RING_SLOTS: u16 = 256;
pub use xenring::abi::netif::{DEFAULT_MTU, MAX_MTU};

/// Counters of every connection so far.
#[derive(Debug, Default)]
pub struct VifStats {
    /// Connections made.
    pub connections: AtomicU64,
    /// Frames read from the TAP device and sent to the backend.
    pub to_back_packets: AtomicU64,
    /// Their bytes.
    pub to_back_bytes: AtomicU64,
    /// Frames received from the backend and written to the TAP device.
    pub to_tap_packets: AtomicU64,
    /// Their bytes.
    pub to_tap_bytes: AtomicU64,
    /// Responses from the backend dropped as malformed (a fill that does
    /// not hold, bad length or flags).
    pub bad_frames: AtomicU64,
    /// Frames dropped otherwise (too long to send, refused by the backend
    /// or the TAP device).
    pub dropped: AtomicU64,
    /// The receive pool as the last connection ended, before its slots
    /// were withdrawn.
    pub last_pool: Mutex<Option<RxPoolStats>>,
    /// Pages found in slots by the reclaim rule when pools closed.
    pub late_pages: AtomicU64,
}

impl VifStats {
    /// One line: counters, then the last receive pool's.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pool = match *self.last_pool.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(p) => format!(
                "pool slots {} armed {} pages-out {} filled {} bad-fills {}",
                p.slots, p.armed, p.pages_out, p.filled, p.bad_fills
            ),
            None => "pool none".into(),
        };
        format!(
            "connections {}, to backend {} packets {} bytes, to tap {} packets {} bytes, \
             bad frames {}, dropped {}, late pages {}, {pool}",
            g(&self.connections),
            g(&self.to_back_packets),
            g(&self.to_back_bytes),
            g(&self.to_tap_packets),
            g(&self.to_tap_bytes),
            g(&self.bad_frames),
            g(&self.dropped),
            g(&self.late_pages),
        )
    }
}

/// The vif frontend device.
#[derive(Default)]
pub struct VifFrontend {
    taps: Mutex<HashMap<DeviceId, Arc<AsyncDevice>>>,
    stats: Arc<VifStats>,
}

impl std::fmt::Debug for VifFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VifFrontend").finish_non_exhaustive()
    }
}

/// What the frontend's keys ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifConfig {
    /// TAP interface name.
    pub tap: String,
    /// Its MTU.
    pub mtu: u16,
    /// The receive mode asked for (`rx-mode`), if any.
    pub rx_mode: Option<RxMode>,
    /// The TAP's MAC address (`mac`, default `00:16:3e:00:<domid>:<devid>`
    /// in Xen's range), kept across reconnections.
    pub mac: [u8; 6],
}

impl VifConfig {
    /// From the device's `tap`, `mtu` and `rx-mode` keys; a clear error
    /// names a bad value.
    pub fn from_params(info: &DeviceInfo) -> Result<VifConfig, DeviceError> {
        let id = &info.id;
        let bad = |m: String| DeviceError::Failed(format!("device {id}: {m}"));
        let tap = info
            .params
            .get("tap")
            .cloned()
            .unwrap_or_else(|| format!("xnet{}", id.devid));
        check_tap_name(&tap).map_err(bad)?;
        let mtu = parse_mtu(info.params.get("mtu").map(String::as_str)).map_err(bad)?;
        let rx_mode = match info.params.get("rx-mode") {
            None => None,
            Some(v) => Some(v.parse::<RxMode>().map_err(bad)?),
        };
        let mac = match info.params.get("mac") {
            None => [0x00, 0x16, 0x3e, 0x00, id.frontend as u8, id.devid as u8],
            Some(v) => parse_mac(v)
                .filter(|m| m[0] & 1 == 0)
                .ok_or_else(|| bad(format!("bad mac {v:?} (six hex bytes, unicast)")))?,
        };
        Ok(VifConfig {
            tap,
            mtu,
            rx_mode,
            mac,
        })
    }

    fn max_frame(&self) -> usize {
        usize::from(self.mtu) + ETH_HLEN
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

impl VifFrontend {
    /// A vif frontend with zeroed counters.
    pub fn new() -> VifFrontend {
        VifFrontend::default()
    }

    /// Counters of every connection so far.
    pub fn stats(&self) -> Arc<VifStats> {
        self.stats.clone()
    }

    fn tap(&self, id: &DeviceId, cfg: &VifConfig) -> Result<Arc<AsyncDevice>, DeviceError> {
        let mut map = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(id) {
            return Ok(t.clone());
        }
        let dev = DeviceBuilder::new()
            .name(cfg.tap.clone())
            .layer(Layer::L2)
            .mac_addr(cfg.mac)
            .mtu(cfg.mtu)
            .packet_information(false)
            .offload(false)
            .enable(true)
            .build_async()
            .map_err(|e| {
                DeviceError::failed(format!(
                    "device {id}: opening TAP device {} (mtu {}): {e} \
                     (needs /dev/net/tun and CAP_NET_ADMIN)",
                    cfg.tap, cfg.mtu
                ))
            })?;
        let t = Arc::new(dev);
        map.insert(id.clone(), t.clone());
        Ok(t)
    }
}

/// Which receive mode to use, from what we asked for and what the backend
/// offers.
fn choose_mode(
    asked: Option<RxMode>,
    peer: &std::collections::BTreeMap<String, String>,
    we_can_transfer: bool,
) -> Result<RxMode, String> {
    let on = |k: &str| peer.get(k).map(String::as_str) == Some("1");
    let flip = on(keys::FEATURE_RX_FLIP);
    let copy = on(keys::FEATURE_RX_COPY);
    match asked {
        Some(RxMode::Transfer) if !flip => {
            Err("rx-mode transfer asked, but the backend does not offer feature-rx-flip".into())
        }
        Some(RxMode::Transfer) if !we_can_transfer => {
            Err("rx-mode transfer asked, but this platform cannot accept page transfers".into())
        }
        Some(RxMode::Copy) if !copy => {
            Err("rx-mode copy asked, but the backend does not offer feature-rx-copy".into())
        }
        Some(m) => Ok(m),
        None if flip && we_can_transfer => Ok(RxMode::Transfer),
        None if copy => Ok(RxMode::Copy),
        None => Err(
            "the backend offers neither a receive mode this platform can use \
             (feature-rx-copy, feature-rx-flip)"
                .into(),
        ),
    }
}

impl FrontendDevice for VifFrontend {
    fn kind(&self) -> &str {
        "vif"
    }

    fn connect(&self, conn: FrontendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let stats = self.stats.clone();
        let setup = VifConfig::from_params(conn.info())
            .and_then(|cfg| Ok((self.tap(conn.id(), &cfg)?, cfg)));
        Box::pin(async move {
            let (tap, cfg) = setup?;
            let mut conn = conn;
            let id = conn.id().clone();
            let fail = |m: String| DeviceError::Failed(format!("device {id}: {m}"));
            let platform = conn.platform().clone();
            let be = conn.backend();
            if conn
                .peer_keys()
                .get(keys::FEATURE_SPLIT_EVENT_CHANNELS)
                .map(String::as_str)
                != Some("1")
            {
                return Err(fail(
                    "the backend does not offer feature-split-event-channels (this frontend \
                     gives each ring its own event channel)"
                        .into(),
                ));
            }
            let can = xenring::rxpool::transfer_supported(platform.as_ref());
            let mode = choose_mode(cfg.rx_mode, conn.peer_keys(), can).map_err(fail)?;
            let (tx, tx_ep) = RingClient::<TxReq, TxRsp>::share(platform.as_ref(), be, 1)
                .map_err(|e| fail(format!("sharing the tx ring: {e}")))?;
            let (rx, rx_ep) = RingClient::<RxReq, RxRsp>::share(platform.as_ref(), be, 1)
                .map_err(|e| fail(format!("sharing the rx ring: {e}")))?;
            let pool = RxPool::new(platform.as_ref(), be, RING_SLOTS, mode)
                .map_err(|e| fail(e.to_string()))?;
            let bufs = platform
                .share_pages(be, usize::from(RING_SLOTS), Access::ReadOnly)
                .map_err(|e| fail(format!("sharing the tx pages: {e}")))?;
            conn.set_key(keys::TX_RING_REF, tx_ep.refs[0].to_string());
            conn.set_key(keys::RX_RING_REF, rx_ep.refs[0].to_string());
            conn.set_key(keys::EVENT_CHANNEL_TX, tx_ep.port.to_string());
            conn.set_key(keys::EVENT_CHANNEL_RX, rx_ep.port.to_string());
            conn.set_key(
                keys::REQUEST_RX_COPY,
                if mode == RxMode::Copy { "1" } else { "0" },
            );
            conn.set_key(keys::FEATURE_RX_NOTIFY, "1");
            conn.ready().await?;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            tracing::info!(device = %id, %mode, tap = %cfg.tap, mtu = cfg.mtu, "vif connected");
            let pool = Arc::new(Mutex::new(pool));
            let txl = tx_loop(
                tx.clone(),
                bufs,
                tap.clone(),
                cfg.max_frame(),
                stats.clone(),
            );
            let rxl = rx_loop(
                rx.clone(),
                pool.clone(),
                tap,
                cfg.max_frame(),
                stats.clone(),
            );
            let r = tokio::select! {
                r = txl => r,
                r = rxl => r,
                _ = conn.stopped() => Ok(()),
            };
            let pool = Arc::try_unwrap(pool)
                .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
                .map_err(|_| fail("the receive pool is still in use".into()))?;
            *stats.last_pool.lock().unwrap_or_else(|p| p.into_inner()) = Some(pool.stats());
            tx.close().await;
            rx.close().await;
            match pool.close() {
                Ok(late) => {
                    stats
                        .late_pages
                        .fetch_add(late.len() as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "closing the receive pool"),
            }
            r.map_err(|e| match e {
                DeviceError::Failed(m) => fail(m),
                other => other,
            })
        })
    }

    fn removed(&self, id: &DeviceId) {
        self.taps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = (u16, Result<T, AsyncRingError>)> + Send>>;

/// TAP to backend.
async fn tx_loop(
    tx: RingClient<TxReq, TxRsp>,
    bufs: Box<dyn SharedPages>,
    tap: Arc<AsyncDevice>,
    max_frame: usize,
    stats: Arc<VifStats>,
) -> Result<(), DeviceError> {
    let mut free: Vec<u16> = (0..RING_SLOTS).rev().collect();
    let mut inflight: FuturesUnordered<Pending<TxRsp>> = FuturesUnordered::new();
    let mut frame = vec![0u8; 65536];
    loop {
        tokio::select! {
            biased;
            Some((idx, r)) = inflight.next(), if !inflight.is_empty() => {
                free.push(idx);
                if r?.status() != NETIF_RSP_OKAY {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            n = tap.recv(&mut frame), if !free.is_empty() => {
                let n = n?;
                if !(ETH_HLEN..=max_frame).contains(&n) {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let idx = free.pop().expect("guarded");
                let gref: GrantRef = bufs.refs()[usize::from(idx)];
                bufs.memory().write(usize::from(idx) * PAGE_SIZE, &frame[..n]);
                let mut req = TxReq::new_unchecked([0u8; 12]);
                req.set_gref(gref);
                req.set_offset(0);
                req.set_flags(0);
                req.set_size(n as u16);
                stats.to_back_packets.fetch_add(1, Ordering::Relaxed);
                stats.to_back_bytes.fetch_add(n as u64, Ordering::Relaxed);
                let c = tx.clone();
                inflight.push(Box::pin(async move { (idx, c.call(req).await) }));
            }
        }
    }
}

fn post(rx: &RingClient<RxReq, RxRsp>, id: u16, gref: GrantRef) -> Pending<RxRsp> {
    let c = rx.clone();
    let mut req = RxReq::new_unchecked([0u8; 8]);
    req.set_gref(gref);
    Box::pin(async move { (id, c.call(req).await) })
}

/// Backend to TAP.
async fn rx_loop(
    rx: RingClient<RxReq, RxRsp>,
    pool: Arc<Mutex<RxPool>>,
    tap: Arc<AsyncDevice>,
    max_frame: usize,
    stats: Arc<VifStats>,
) -> Result<(), DeviceError> {
    let lock = || pool.lock().unwrap_or_else(|p| p.into_inner());
    let pool_err = |e: RxPoolError| DeviceError::failed(e.to_string());
    let mut inflight: FuturesUnordered<Pending<RxRsp>> = FuturesUnordered::new();
    for id in 0..RING_SLOTS {
        let gref = lock().gref(id).map_err(pool_err)?;
        inflight.push(post(&rx, id, gref));
    }
    let mut frame = vec![0u8; PAGE_SIZE];
    while let Some((id, r)) = inflight.next().await {
        let rsp = r?;
        let status = rsp.status();
        let page = if status <= 0 {
            // The backend could not fill it: nothing to deliver.
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            lock().discard(id).map_err(pool_err)?;
            None
        } else if rsp.flags() & (NETRXF_MORE_DATA | NETRXF_EXTRA_INFO) != 0 {
            // Neither was negotiated (no feature-sg, no GSO).
            stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            lock().discard(id).map_err(pool_err)?;
            None
        } else {
            let got = lock().complete(id, rsp.offset(), status as u16);
            match got {
                Ok(p) if (ETH_HLEN..=max_frame).contains(&p.len()) => Some(p),
                Ok(_) | Err(RxPoolError::BadFill { .. }) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(e) => return Err(pool_err(e)),
            }
        };
        if let Some(p) = page {
            let len = p.len();
            p.read(&mut frame[..len]);
            drop(p);
            match tap.send(&frame[..len]).await {
                Ok(_) => {
                    stats.to_tap_packets.fetch_add(1, Ordering::Relaxed);
                    stats.to_tap_bytes.fetch_add(len as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the TAP device refused a frame");
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let gref = lock().gref(id).map_err(pool_err)?;
        inflight.push(post(&rx, id, gref));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_receive_mode_follows_what_was_asked_and_offered() {
        let keys = |flip: &str, copy: &str| -> BTreeMap<String, String> {
            [
                (keys::FEATURE_RX_FLIP.to_string(), flip.to_string()),
                (keys::FEATURE_RX_COPY.to_string(), copy.to_string()),
            ]
            .into()
        };
        assert_eq!(
            choose_mode(None, &keys("1", "1"), true),
            Ok(RxMode::Transfer)
        );
        assert_eq!(choose_mode(None, &keys("1", "1"), false), Ok(RxMode::Copy));
        assert_eq!(choose_mode(None, &keys("0", "1"), true), Ok(RxMode::Copy));
        assert_eq!(
            choose_mode(Some(RxMode::Copy), &keys("1", "1"), true),
            Ok(RxMode::Copy)
        );
        assert!(choose_mode(Some(RxMode::Transfer), &keys("0", "1"), true)
            .unwrap_err()
            .contains("feature-rx-flip"));
        assert!(choose_mode(Some(RxMode::Transfer), &keys("1", "1"), false)
            .unwrap_err()
            .contains("cannot accept"));
        assert!(choose_mode(None, &keys("0", "0"), true)
            .unwrap_err()
            .contains("neither"));
    }

    #[test]
    fn params_are_checked() {
        let info = |kv: &[(&str, &str)]| DeviceInfo {
            id: DeviceId {
                kind: "vif".into(),
                frontend: 1,
                backend: 0,
                devid: 2,
            },
            params: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let c = VifConfig::from_params(&info(&[])).unwrap();
        assert_eq!((c.tap.as_str(), c.mtu, c.rx_mode), ("xnet2", 1500, None));
        assert_eq!(c.mac, [0x00, 0x16, 0x3e, 0x00, 1, 2]);
        let c = VifConfig::from_params(&info(&[("mac", "02:00:00:00:00:0a")])).unwrap();
        assert_eq!(c.mac, [2, 0, 0, 0, 0, 10]);
        let c = VifConfig::from_params(&info(&[("rx-mode", "copy"), ("mtu", "4082")])).unwrap();
        assert_eq!((c.mtu, c.rx_mode), (4082, Some(RxMode::Copy)));
        for (k, v, says) in [
            ("rx-mode", "flop", "transfer or copy"),
            ("mtu", "9000", "bad mtu"),
            ("tap", "", "bad tap name"),
            ("mac", "01:00:00:00:00:00", "bad mac"),
            ("mac", "02:00:00:00:00", "bad mac"),
        ] {
            let e = VifConfig::from_params(&info(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{k}={v}: {e}");
        }
    }
}
