//! The `vif` backend: the network split driver's backend end, connected to
//! a TAP device in this daemon's network namespace (like Linux's
//! xen-netback with a `vif-bridge` script, without the bridge).
//!
//! ```text
//!   frontend TAP --tx ring--> [this backend] --write--> TAP vif<fe>.<devid>
//!   frontend TAP <--rx ring-- [this backend] <--read--- TAP vif<fe>.<devid>
//! ```
//!
//! Backend keys (the toolstack writes them): `tap` (the TAP device's name,
//! default `vif<fe>.<devid>`), `mtu` (default 1500, at most 4082 so that a
//! frame fits in one page). Published features: `feature-rx-copy`,
//! `feature-rx-flip` (when the platform can transfer pages),
//! `feature-split-event-channels`. The frontend publishes `tx-ring-ref`,
//! `rx-ring-ref`, `event-channel-tx`, `event-channel-rx`,
//! `request-rx-copy` and `feature-rx-notify`.
//!
//! Transmit (frontend to TAP): tx requests are taken in batches, grouped
//! into packets (`NETTXF_more_data` chains of at most
//! [`XEN_NETIF_NR_SLOTS_MIN`] slots), checked (slot offsets and sizes
//! inside a page, the frame between [`ETH_HLEN`] and the MTU plus
//! [`ETH_HLEN`], no extra-info: none was negotiated), copied out of the
//! frontend's pages by one batch of grant copies, and written to the TAP
//! device; every request is answered (`NETIF_RSP_ERROR` for a bad packet,
//! which is counted and dropped, `NETIF_RSP_NULL` for an extra-info slot).
//! A chain is never waited for beyond its 19th slot (one more than any
//! frame may use): a longer one, perhaps longer than the ring itself, is
//! refused and counted once, and its later slots are answered
//! `NETIF_RSP_ERROR` as they come; more than [`MAX_EXTRAS`] extra-info
//! slots in a row fail the device (the packet's data slots cannot be found).
//!
//! Receive (TAP to frontend): the frontend posts rx requests naming its
//! receive pool's slots ([`xenring::rxpool`]); each frame read from the TAP
//! device fills one posted slot, by page transfer or grant copy as the
//! frontend asked, and the response carries its length. Frames wait in the
//! TAP queue while no slot is posted.
//!
//! The TAP device is opened once per device and kept across reconnections
//! (addresses configured on it survive a frontend restart); it goes with
//! the device.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tun_rs::{AsyncDevice, DeviceBuilder, Layer};
use xenring::abi::netif::{
    check_tap_name, keys, parse_mtu, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, ETH_HLEN, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
    NETRXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_NR_SLOTS_MIN,
};
use xenring::platform::{CopyPtr, DomId, GnttabStatus, GrantCopy, LocalPages, Platform};
use xenring::ring::{RingEndpoint, RingServer};
use xenring::rxpool::{RxFiller, RxMode};
use xenring::shm::PAGE_SIZE;
use xenring::xenbus::device::{BackendConn, DeviceError, DeviceInfo};
use xenring::xenbus::paths::DeviceId;

use crate::device::BackendDevice;

type TxReq = NetifTxRequest<[u8; 12]>;
type TxRsp = NetifTxResponse<[u8; 4]>;
type RxReq = NetifRxRequest<[u8; 8]>;
type RxRsp = NetifRxResponse<[u8; 8]>;

pub use xenring::abi::netif::{DEFAULT_MTU, MAX_MTU};
/// Tx requests taken (and answered) per batch; also the staging pages of
/// the grant copies.
const TX_BATCH: usize = 64;
/// Extra-info slots one tx packet may carry (one of each type Xen defines).
pub const MAX_EXTRAS: usize = XEN_NETIF_EXTRA_TYPE_MAX as usize - 1;
/// Frames read from the TAP device per batch (and filled with one batch of
/// grant copies in copy mode).
const RX_BATCH: usize = 64;

/// Counters of every connection so far.
#[derive(Debug, Default)]
pub struct VifStats {
    /// Connections made.
    pub connections: AtomicU64,
    /// Frames from the frontend written to the TAP device.
    pub to_tap_packets: AtomicU64,
    /// Their bytes.
    pub to_tap_bytes: AtomicU64,
    /// Frames from the TAP device delivered to the frontend.
    pub to_front_packets: AtomicU64,
    /// Their bytes.
    pub to_front_bytes: AtomicU64,
    /// Frames from the frontend dropped as malformed (bad offsets, sizes,
    /// slot counts, extra-info, a failed copy).
    pub bad_frames: AtomicU64,
    /// Frames dropped otherwise (too long for a slot, a refused fill, the
    /// TAP device refusing a write).
    pub dropped: AtomicU64,
}

impl VifStats {
    /// One line: `connections 1, to tap 10 packets 980 bytes, ...`.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections {}, to tap {} packets {} bytes, to frontend {} packets {} bytes, \
             bad frames {}, dropped {}",
            g(&self.connections),
            g(&self.to_tap_packets),
            g(&self.to_tap_bytes),
            g(&self.to_front_packets),
            g(&self.to_front_bytes),
            g(&self.bad_frames),
            g(&self.dropped),
        )
    }
}

/// The vif backend device.
pub struct VifBackend {
    flip: bool,
    taps: Mutex<HashMap<DeviceId, Arc<AsyncDevice>>>,
    stats: Arc<VifStats>,
}

impl std::fmt::Debug for VifBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VifBackend")
            .field("flip", &self.flip)
            .finish_non_exhaustive()
    }
}

impl VifBackend {
    /// A vif backend; `flip` says whether to offer page transfer
    /// (`feature-rx-flip`): see [`xenring::rxpool::transfer_supported`].
    pub fn new(flip: bool) -> VifBackend {
        VifBackend {
            flip,
            taps: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        }
    }

    /// Counters of every connection so far.
    pub fn stats(&self) -> Arc<VifStats> {
        self.stats.clone()
    }

    fn tap(&self, id: &DeviceId, cfg: &TapConfig) -> Result<Arc<AsyncDevice>, DeviceError> {
        let mut map = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(id) {
            return Ok(t.clone());
        }
        let t =
            Arc::new(open_tap(cfg).map_err(|e| DeviceError::failed(format!("device {id}: {e}")))?);
        map.insert(id.clone(), t.clone());
        Ok(t)
    }
}

/// A TAP device's name and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// Its MTU.
    pub mtu: u16,
}

impl TapConfig {
    /// From a device's `tap` and `mtu` keys, with `default_name` when
    /// there is no `tap` key. A clear error names a bad value.
    pub fn from_params(info: &DeviceInfo, default_name: String) -> Result<TapConfig, String> {
        let name = info.params.get("tap").cloned().unwrap_or(default_name);
        let bad = |m: String| format!("device {}: {m}", info.id);
        check_tap_name(&name).map_err(bad)?;
        let mtu = parse_mtu(info.params.get("mtu").map(String::as_str)).map_err(bad)?;
        Ok(TapConfig { name, mtu })
    }

    /// The longest frame: MTU plus the Ethernet header.
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + ETH_HLEN
    }
}

/// The backend TAP's MAC address, as xen-netback gives its vifs: a
/// restarted backend's TAP has the same one, so neighbours' ARP entries
/// stay right.
pub const BACKEND_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// Opens (creates) the TAP device, up, without packet information or
/// offloads: each read or write is one Ethernet frame.
pub fn open_tap(cfg: &TapConfig) -> Result<AsyncDevice, String> {
    DeviceBuilder::new()
        .name(cfg.name.clone())
        .layer(Layer::L2)
        .mac_addr(BACKEND_MAC)
        .mtu(cfg.mtu)
        .packet_information(false)
        .offload(false)
        .enable(true)
        .build_async()
        .map_err(|e| {
            format!(
                "opening TAP device {} (mtu {}): {e} (needs /dev/net/tun and CAP_NET_ADMIN)",
                cfg.name, cfg.mtu
            )
        })
}

fn tap_config(info: &DeviceInfo) -> Result<TapConfig, DeviceError> {
    TapConfig::from_params(info, format!("vif{}.{}", info.id.frontend, info.id.devid))
        .map_err(DeviceError::Failed)
}

impl BackendDevice for VifBackend {
    fn kind(&self) -> &str {
        "vif"
    }

    fn features(&self, info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        tap_config(info)?;
        Ok(vec![
            (keys::FEATURE_RX_COPY.into(), "1".into()),
            (
                keys::FEATURE_RX_FLIP.into(),
                if self.flip { "1" } else { "0" }.into(),
            ),
            (keys::FEATURE_SPLIT_EVENT_CHANNELS.into(), "1".into()),
        ])
    }

    fn connect(&self, conn: BackendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let stats = self.stats.clone();
        let setup = (|| {
            let cfg = tap_config(conn.info())?;
            let tap = self.tap(conn.id(), &cfg)?;
            Ok::<_, DeviceError>((cfg, tap))
        })();
        let flip = self.flip;
        Box::pin(async move {
            let (cfg, tap) = setup?;
            let mut conn = conn;
            let id = conn.id().clone();
            let fail = |m: String| DeviceError::Failed(format!("device {id}: {m}"));
            conn.check_protocol()?;
            let mode = match conn
                .peer_keys()
                .get(keys::REQUEST_RX_COPY)
                .map(String::as_str)
            {
                Some("1") => RxMode::Copy,
                None | Some("0") if flip => RxMode::Transfer,
                None | Some("0") => {
                    return Err(fail(
                        "the frontend asks for page transfer (request-rx-copy 0 or absent) \
                         and this platform cannot transfer pages"
                            .into(),
                    ))
                }
                Some(v) => return Err(fail(format!("bad request-rx-copy {v:?} (0 or 1)"))),
            };
            if conn
                .peer_keys()
                .get(keys::FEATURE_RX_NOTIFY)
                .map(String::as_str)
                != Some("1")
            {
                return Err(fail(
                    "the frontend lacks feature-rx-notify (required, as in xen-netback)".into(),
                ));
            }
            let fe = conn.frontend();
            let platform = conn.platform().clone();
            let endpoint = |ring: &str, port: &str| -> Result<RingEndpoint, DeviceError> {
                Ok(RingEndpoint {
                    domid: fe,
                    port: conn.peer_u32(port)?,
                    refs: vec![conn.peer_u32(ring)?],
                })
            };
            let tx_ep = endpoint(keys::TX_RING_REF, keys::EVENT_CHANNEL_TX)?;
            let rx_ep = endpoint(keys::RX_RING_REF, keys::EVENT_CHANNEL_RX)?;
            let tx = RingServer::<TxReq, TxRsp>::connect(platform.as_ref(), &tx_ep)
                .map_err(|e| fail(format!("mapping the tx ring: {e}")))?;
            let rx = RingServer::<RxReq, RxRsp>::connect(platform.as_ref(), &rx_ep)
                .map_err(|e| fail(format!("mapping the rx ring: {e}")))?;
            let filler = RxFiller::new(platform.clone(), fe, mode, RX_BATCH)
                .map_err(|e| fail(e.to_string()))?;
            let staging = platform
                .alloc_pages(TX_BATCH + XEN_NETIF_NR_SLOTS_MIN)
                .map_err(|e| fail(format!("allocating tx staging pages: {e}")))?;
            conn.ready().await?;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            tracing::info!(device = %id, %mode, tap = %cfg.name, mtu = cfg.mtu, "vif connected");
            let txl = tx_loop(
                fe,
                tx,
                platform,
                staging,
                tap.clone(),
                cfg.clone(),
                stats.clone(),
            );
            let rxl = rx_loop(rx, filler, tap, stats);
            let r = tokio::select! {
                r = txl => r,
                r = rxl => r,
                _ = conn.stopped() => Ok(()),
            };
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

/// One packet's slots as the frontend described them.
#[derive(Debug)]
struct Packet {
    /// The requests (data slots), in order.
    slots: Vec<TxReq>,
    /// Ids of the extra-info slots that followed (answered with
    /// `NETIF_RSP_NULL`, the slot's id echoed).
    extras: Vec<u16>,
    /// Why it is refused, if it is.
    bad: Option<String>,
    /// Counted in `bad frames` when refused (false for the later slots of
    /// a chain refused for its length: that chain was counted once).
    counted: bool,
}

/// Checks one packet's slots, unless grouping already refused it.
fn check_packet(p: &Packet, max_frame: usize) -> Result<Vec<(usize, usize)>, String> {
    if let Some(why) = &p.bad {
        return Err(why.clone());
    }
    check_tx_slots(&p.slots, max_frame)
}

/// Checks the data slots of one transmitted packet, as copied out of the
/// tx ring: 1 to [`XEN_NETIF_NR_SLOTS_MIN`] slots; the frame's length is
/// the first slot's `size`, each later slot's `size` is its own data; the
/// frame is [`ETH_HLEN`] to `max_frame` bytes; every slot's data lies
/// inside its page. Returns each slot's (offset, length) in its page, or
/// why the packet is refused. Pure (public for the fuzz targets in
/// `transport/fuzz`).
pub fn check_tx_slots(
    slots: &[NetifTxRequest<[u8; 12]>],
    max_frame: usize,
) -> Result<Vec<(usize, usize)>, String> {
    let Some(first_slot) = slots.first() else {
        return Err("a packet of no slots".into());
    };
    if slots.len() > XEN_NETIF_NR_SLOTS_MIN {
        return Err(format!(
            "{} slots, at most {XEN_NETIF_NR_SLOTS_MIN}",
            slots.len()
        ));
    }
    let total = usize::from(first_slot.size());
    let rest: usize = slots[1..].iter().map(|s| usize::from(s.size())).sum();
    let first = total
        .checked_sub(rest)
        .ok_or_else(|| format!("frame size {total} is less than its later slots' {rest}"))?;
    if !(ETH_HLEN..=max_frame).contains(&total) {
        return Err(format!(
            "frame of {total} bytes (must be {ETH_HLEN} to {max_frame})"
        ));
    }
    let mut parts = Vec::with_capacity(slots.len());
    for (i, s) in slots.iter().enumerate() {
        let len = if i == 0 { first } else { usize::from(s.size()) };
        let off = usize::from(s.offset());
        if off + len > PAGE_SIZE {
            return Err(format!(
                "slot {i}: {len} bytes at offset {off} cross the page end"
            ));
        }
        parts.push((off, len));
    }
    Ok(parts)
}

/// Frontend to TAP.
async fn tx_loop(
    fe: DomId,
    mut tx: RingServer<TxReq, TxRsp>,
    platform: Arc<dyn Platform>,
    staging: Box<dyn LocalPages>,
    tap: Arc<AsyncDevice>,
    cfg: TapConfig,
    stats: Arc<VifStats>,
) -> Result<(), DeviceError> {
    let mut reqs: VecDeque<TxReq> = VecDeque::new();
    let mut frame = vec![0u8; PAGE_SIZE];
    let max_frame = cfg.max_frame();
    // Inside the rest of a chain refused for its length: each slot is
    // answered as it comes, until the one without NETTXF_more_data.
    let mut skipping = false;
    loop {
        // At least one request, then what else is there (up to a batch).
        match tx.next().await {
            None => return Ok(()),
            Some(r) => reqs.push_back(r?),
        }
        while reqs.len() < TX_BATCH {
            match tx.next().now_or_never() {
                Some(Some(r)) => reqs.push_back(r?),
                _ => break,
            }
        }
        // Group into packets; a chain cut by the batch end waits for the
        // rest of its slots.
        let mut packets: Vec<Packet> = Vec::new();
        while let Some(first) = reqs.pop_front() {
            let mut p = Packet {
                slots: vec![first],
                extras: Vec::new(),
                bad: None,
                counted: true,
            };
            let mut flags = first.flags();
            if skipping {
                skipping = flags & NETTXF_MORE_DATA != 0;
                p.bad = Some("the rest of a chain refused for its length".into());
                p.counted = false;
                packets.push(p);
                continue;
            }
            let mut extra_more = flags & NETTXF_EXTRA_INFO != 0;
            if extra_more {
                p.bad = Some("extra-info slots (none were negotiated)".into());
            }
            // Extra-info descriptors follow the first slot.
            while extra_more {
                if p.extras.len() >= MAX_EXTRAS {
                    // Where the packet's data slots resume is unknown: the
                    // ring cannot be followed any more.
                    return Err(DeviceError::failed(format!(
                        "a tx packet with more than {MAX_EXTRAS} extra-info slots"
                    )));
                }
                let e = next_req(&mut tx, &mut reqs).await?;
                p.extras.push(e.id());
                // The descriptor's flags byte is at offset 1.
                extra_more = e.as_bytes()[1] & XEN_NETIF_EXTRA_FLAG_MORE != 0;
            }
            while flags & NETTXF_MORE_DATA != 0 {
                if p.slots.len() > XEN_NETIF_NR_SLOTS_MIN {
                    // Longer than any frame may be (and maybe than the
                    // ring: waiting for its end could wait for ever).
                    // Refuse what came, answer the rest as it comes.
                    p.bad = Some(format!(
                        "a chain of more than {} slots",
                        XEN_NETIF_NR_SLOTS_MIN + 1
                    ));
                    skipping = true;
                    break;
                }
                let s = next_req(&mut tx, &mut reqs).await?;
                flags = s.flags();
                p.slots.push(s);
            }
            packets.push(p);
        }
        tx_packets(
            fe, &tx, &platform, &*staging, &tap, max_frame, &stats, &mut frame, packets,
        )
        .await?;
    }
}

async fn next_req(
    tx: &mut RingServer<TxReq, TxRsp>,
    reqs: &mut VecDeque<TxReq>,
) -> Result<TxReq, DeviceError> {
    if let Some(r) = reqs.pop_front() {
        return Ok(r);
    }
    match tx.next().await {
        Some(r) => Ok(r?),
        None => Err(DeviceError::PeerGone(
            "the frontend closed the tx ring in the middle of a packet".into(),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn tx_packets(
    fe: DomId,
    tx: &RingServer<TxReq, TxRsp>,
    platform: &Arc<dyn Platform>,
    staging: &dyn LocalPages,
    tap: &AsyncDevice,
    max_frame: usize,
    stats: &VifStats,
    frame: &mut [u8],
    packets: Vec<Packet>,
) -> Result<(), DeviceError> {
    let pages = staging.memory().len() / PAGE_SIZE;
    let mut responses: Vec<TxRsp> = Vec::new();
    // Copy in chunks of whole packets that fit in the staging pages (one
    // page per packet: a frame is at most a page).
    let mut i = 0;
    while i < packets.len() {
        let chunk_end = (i + pages).min(packets.len());
        let chunk = &packets[i..chunk_end];
        let mut ops: Vec<GrantCopy<'_>> = Vec::new();
        let mut plan: Vec<Result<(usize, usize), String>> = Vec::with_capacity(chunk.len());
        for (k, p) in chunk.iter().enumerate() {
            match check_packet(p, max_frame) {
                Err(why) => plan.push(Err(why)),
                Ok(parts) => {
                    let first_op = ops.len();
                    let mut at = 0;
                    for (s, (off, len)) in p.slots.iter().zip(parts) {
                        if len == 0 {
                            continue;
                        }
                        ops.push(GrantCopy {
                            source: CopyPtr::Grant {
                                domid: fe,
                                gref: s.gref(),
                                offset: off as u16,
                            },
                            dest: CopyPtr::Local {
                                pages: staging,
                                offset: k * PAGE_SIZE + at,
                            },
                            len: len as u16,
                            status: GnttabStatus::Okay,
                        });
                        at += len;
                    }
                    plan.push(Ok((first_op, ops.len())));
                }
            }
        }
        if !ops.is_empty() {
            platform
                .grant_copy(&mut ops)
                .map_err(|e| DeviceError::failed(format!("copying tx data: {e}")))?;
        }
        for (k, (p, step)) in chunk.iter().zip(plan).enumerate() {
            let status = match step {
                Err(why) => {
                    if p.counted {
                        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(why, "dropping a bad frame from the frontend");
                    NETIF_RSP_ERROR
                }
                Ok((a, b)) if ops[a..b].iter().any(|o| o.status != GnttabStatus::Okay) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    let st = ops[a..b]
                        .iter()
                        .find(|o| o.status != GnttabStatus::Okay)
                        .map(|o| o.status);
                    tracing::debug!(?st, "dropping a frame whose grant copy failed");
                    NETIF_RSP_ERROR
                }
                Ok(_) => {
                    let len = usize::from(p.slots[0].size());
                    staging.memory().read(k * PAGE_SIZE, &mut frame[..len]);
                    match tap.send(&frame[..len]).await {
                        Ok(_) => {
                            stats.to_tap_packets.fetch_add(1, Ordering::Relaxed);
                            stats.to_tap_bytes.fetch_add(len as u64, Ordering::Relaxed);
                            NETIF_RSP_OKAY
                        }
                        Err(e) => {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "the TAP device refused a frame");
                            xenring::abi::netif::NETIF_RSP_DROPPED
                        }
                    }
                }
            };
            // One response per slot: the data slots carry the packet's
            // status (xen-netback answers every slot), extra-info slots
            // NETIF_RSP_NULL.
            for (n, s) in p.slots.iter().enumerate() {
                let mut r = TxRsp::new_unchecked([0u8; 4]);
                r.set_id(s.id());
                r.set_status(status);
                responses.push(r);
                if n == 0 {
                    for &xid in &p.extras {
                        let mut r = TxRsp::new_unchecked([0u8; 4]);
                        r.set_id(xid);
                        r.set_status(NETIF_RSP_NULL);
                        responses.push(r);
                    }
                }
            }
        }
        i = chunk_end;
    }
    tx.respond_all(responses.iter())?;
    Ok(())
}

/// TAP to frontend.
async fn rx_loop(
    mut rx: RingServer<RxReq, RxRsp>,
    mut filler: RxFiller,
    tap: Arc<AsyncDevice>,
    stats: Arc<VifStats>,
) -> Result<(), DeviceError> {
    let mut posted: VecDeque<RxReq> = VecDeque::new();
    let mut bufs: Vec<Vec<u8>> = (0..filler.batch()).map(|_| vec![0u8; 65536]).collect();
    let mut lens: Vec<usize> = vec![0; filler.batch()];
    loop {
        while posted.is_empty() {
            match rx.next().await {
                None => return Ok(()),
                Some(r) => posted.push_back(r?),
            }
        }
        while let Some(Some(r)) = rx.next().now_or_never() {
            posted.push_back(r?);
        }
        // One frame (waiting for it), then what else is queued, up to one
        // per posted slot.
        let want = posted.len().min(bufs.len());
        let mut n = 0;
        lens[0] = tap.recv(&mut bufs[0]).await?;
        n += 1;
        while n < want {
            match tap.try_recv(&mut bufs[n]) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let mut fills = Vec::with_capacity(n);
        let mut reqs = Vec::with_capacity(n);
        for k in 0..n {
            let len = lens[k];
            if len == 0 || len > PAGE_SIZE {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let req = posted
                .pop_front()
                .expect("at most one frame per posted slot");
            fills.push((req.gref(), &bufs[k][..len]));
            reqs.push(req);
        }
        let results = filler
            .fill_batch(&fills)
            .map_err(|e| DeviceError::failed(format!("filling rx slots: {e}")))?;
        let mut rsps = Vec::with_capacity(reqs.len());
        for ((req, (_, data)), r) in reqs.iter().zip(&fills).zip(results) {
            let mut rsp = RxRsp::new_unchecked([0u8; 8]);
            rsp.set_id(req.id());
            rsp.set_offset(0);
            match r {
                Ok(()) => {
                    rsp.set_flags(NETRXF_DATA_VALIDATED);
                    rsp.set_status(data.len() as i16);
                    stats.to_front_packets.fetch_add(1, Ordering::Relaxed);
                    stats
                        .to_front_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "filling an rx slot failed");
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    rsp.set_status(NETIF_RSP_ERROR);
                }
            }
            rsps.push(rsp);
        }
        rx.respond_all(rsps.iter())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(gref: u32, offset: u16, flags: u16, size: u16) -> TxReq {
        let mut r = TxReq::new_unchecked([0u8; 12]);
        r.set_gref(gref);
        r.set_offset(offset);
        r.set_flags(flags);
        r.set_size(size);
        r
    }

    fn packet(slots: Vec<TxReq>) -> Packet {
        Packet {
            slots,
            extras: Vec::new(),
            bad: None,
            counted: true,
        }
    }

    #[test]
    fn packets_are_checked_once_copied_out() {
        // One slot.
        assert_eq!(
            check_packet(&packet(vec![req(1, 100, 0, 1514)]), 1514).unwrap(),
            vec![(100, 1514)]
        );
        // A chain: the first size is the frame's, the others their own.
        assert_eq!(
            check_packet(
                &packet(vec![req(1, 0, NETTXF_MORE_DATA, 1000), req(2, 8, 0, 400)]),
                1514
            )
            .unwrap(),
            vec![(0, 600), (8, 400)]
        );
        let bad = |p: Packet, max: usize| check_packet(&p, max).unwrap_err();
        assert!(bad(packet(vec![req(1, 0, 0, 1515)]), 1514).contains("must be 14 to 1514"));
        assert!(bad(packet(vec![req(1, 0, 0, 10)]), 1514).contains("must be 14"));
        assert!(bad(packet(vec![req(1, 4000, 0, 200)]), 1514).contains("cross the page end"));
        assert!(bad(
            packet(vec![req(1, 0, NETTXF_MORE_DATA, 100), req(2, 0, 0, 400)]),
            1514
        )
        .contains("less than its later slots"));
        let long: Vec<TxReq> = (0..19).map(|i| req(i, 0, NETTXF_MORE_DATA, 60)).collect();
        assert!(bad(packet(long), 4000).contains("19 slots"));
        let mut p = packet(vec![req(1, 0, 0, 100)]);
        p.bad = Some("extra-info slots".into());
        assert!(bad(p, 1514).contains("extra-info"));
        assert!(check_tx_slots(&[], 1514).unwrap_err().contains("no slots"));
    }

    #[test]
    fn tap_params_are_checked() {
        let info = |kv: &[(&str, &str)]| DeviceInfo {
            id: DeviceId {
                kind: "vif".into(),
                frontend: 3,
                backend: 0,
                devid: 1,
            },
            params: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let c = tap_config(&info(&[])).unwrap();
        assert_eq!((c.name.as_str(), c.mtu), ("vif3.1", 1500));
        let c = tap_config(&info(&[("tap", "xr0"), ("mtu", "4000")])).unwrap();
        assert_eq!((c.name.as_str(), c.mtu, c.max_frame()), ("xr0", 4000, 4014));
        for (k, v, says) in [
            ("mtu", "4083", "bad mtu"),
            ("mtu", "x", "bad mtu"),
            ("tap", "a/b", "bad tap name"),
            ("tap", "0123456789abcdef", "bad tap name"),
        ] {
            let e = tap_config(&info(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(says), "{k}={v}: {e}");
        }
    }
}
