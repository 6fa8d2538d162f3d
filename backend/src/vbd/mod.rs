//! The `vbd` backend (blkback): serves a raw image file to a frontend over
//! Xen's blkif protocol (`public/io/blkif.h`).
//!
//! ```text
//!   toolstack: backend/vbd/<fe>/<devid>/{params = /path/img, mode = r|w}
//!   features():  sectors, sector-size, info (VDISK_READONLY), feature-*,
//!                max-ring-page-order, multi-queue-max-queues  -> InitWait
//!   frontend:    ring-ref* / event-channel (or queue-N/...), feature-persistent
//!   connect():   map every queue's ring -> ready() -> Connected
//!   per queue:   take request (copied once) -> check -> map pages
//!                -> disk I/O on the blocking pool -> answer (batched)
//! ```
//!
//! Guarantees: a request is validated once, on its private copy, before
//! any page is mapped or byte read ([`request`]); a bad one is answered
//! `BLKIF_RSP_ERROR` and logged, and the device goes on. An answer is
//! written only after the disk call returned, so an acknowledged write is
//! in the file even if this daemon is killed right after. Requests of a
//! queue run concurrently (as many as the ring holds); their answers are
//! pushed in batches (one notification for all that completed together).
//! The data they hold is bounded per device ([`inflight`]): 16 MiB.

pub mod grants;
pub mod image;
pub mod inflight;
pub mod lock;
pub mod request;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc;
use xenring::abi::blkif::{
    keys, BlkifResponse, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, VDISK_READONLY,
};
use xenring::abi::blkif_ext as ext;
use xenring::ring::{RingEndpoint, RingServer};
use xenring::xenbus::device::{BackendConn, DeviceError, DeviceInfo};
use xenring::xenbus::paths::DeviceId;

use self::grants::Grants;
use self::image::Image;
use self::inflight::{Inflight, MAX_INFLIGHT_BYTES};
use self::request::{check, data_bytes, parse_indirect_segments, Checked, Limits, Reject, Req};
use crate::device::BackendDevice;

/// Response type of the ring.
pub type Rsp = BlkifResponse<[u8; 16]>;

/// Most segments of one indirect request we accept (1 MiB of 4 KiB pages).
pub const MAX_INDIRECT_SEGMENTS: u16 = 256;
/// Largest ring page order accepted (16 pages, 512 requests).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Most queues accepted.
pub const MAX_QUEUES: u32 = 4;

/// Counters of every connection so far.
#[derive(Debug, Default)]
pub struct VbdStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Bytes read from images.
    pub read_bytes: AtomicU64,
    /// Bytes written to images.
    pub written_bytes: AtomicU64,
    /// Flushes (`fdatasync`).
    pub flushes: AtomicU64,
    /// Discards (holes punched).
    pub discards: AtomicU64,
    /// Pages found in the persistent-grant caches.
    pub grant_hits: AtomicU64,
    /// Grant map calls.
    pub grant_maps: AtomicU64,
    /// The most data bytes one device held at once for its requests in
    /// flight (at most [`MAX_INFLIGHT_BYTES`]).
    pub inflight_peak: Arc<AtomicU64>,
}

impl VbdStats {
    /// One line for logs and the daemon's summary.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "requests {} errors {} read {} B written {} B flushes {} discards {} \
             grant-hits {} grant-maps {} inflight-peak {} B",
            g(&self.requests),
            g(&self.errors),
            g(&self.read_bytes),
            g(&self.written_bytes),
            g(&self.flushes),
            g(&self.discards),
            g(&self.grant_hits),
            g(&self.grant_maps),
            g(&self.inflight_peak)
        )
    }
}

/// The vbd backend device.
#[derive(Debug, Default)]
pub struct VbdBackend {
    stats: Arc<VbdStats>,
    images: std::sync::Mutex<std::collections::HashMap<DeviceId, Image>>,
}

/// What the toolstack asked for: the image and its mode.
#[derive(Debug, Clone)]
struct Params {
    path: PathBuf,
    readonly: bool,
}

fn params_of(info: &DeviceInfo) -> Result<Params, DeviceError> {
    let raw = info.param("params")?;
    // xl may prefix the format (`aio:`, `file:`, `raw:`).
    let path = ["aio:", "file:", "raw:"]
        .iter()
        .find_map(|p| raw.strip_prefix(p))
        .unwrap_or(raw);
    if path.is_empty() {
        return Err(DeviceError::failed(format!(
            "device {}: empty params",
            info.id
        )));
    }
    let readonly = match info.params.get("mode").map(String::as_str) {
        None | Some("w") | Some("rw") => false,
        Some("r") | Some("ro") => true,
        Some(m) => {
            return Err(DeviceError::failed(format!(
                "device {}: mode {m:?} (r or w)",
                info.id
            )))
        }
    };
    Ok(Params {
        path: PathBuf::from(path),
        readonly,
    })
}

impl VbdBackend {
    /// The device's image: the one it opened (and locked) before, with
    /// its size taken again, or opened now. A device keeps its image open
    /// from its first `features()` until it is removed, so its own
    /// reconnections never meet its own lock.
    fn image(&self, info: &DeviceInfo) -> Result<Image, DeviceError> {
        let p = params_of(info)?;
        let fail = |e: std::io::Error| DeviceError::failed(format!("device {}: {e}", info.id));
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(img) = images.get(&info.id) {
            if img.path() == p.path && img.readonly() == p.readonly {
                return img.refreshed().map_err(fail);
            }
            // Other params: the old image (and its lock) goes first.
            images.remove(&info.id);
        }
        let img = Image::open(&p.path, p.readonly).map_err(fail)?;
        images.insert(info.id.clone(), img.clone());
        Ok(img)
    }

    /// A vbd backend with zeroed counters.
    pub fn new() -> VbdBackend {
        VbdBackend::default()
    }

    /// Counters of every connection so far.
    pub fn stats(&self) -> Arc<VbdStats> {
        self.stats.clone()
    }
}

impl BackendDevice for VbdBackend {
    fn kind(&self) -> &str {
        "vbd"
    }

    fn features(&self, info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        let img = self.image(info)?;
        let info_flags = if img.readonly() { VDISK_READONLY } else { 0 };
        let mut k: Vec<(String, String)> = vec![
            (keys::SECTORS.into(), img.sectors().to_string()),
            (ext::keys::SIZE_BYTES.into(), img.size().to_string()),
            (ext::keys::FEATURE_BLOCK_STATUS.into(), "1".into()),
            (keys::SECTOR_SIZE.into(), "512".into()),
            (keys::PHYSICAL_SECTOR_SIZE.into(), "4096".into()),
            (keys::INFO.into(), info_flags.to_string()),
            (keys::FEATURE_FLUSH_CACHE.into(), "1".into()),
            (keys::FEATURE_BARRIER.into(), "1".into()),
            (keys::FEATURE_PERSISTENT.into(), "1".into()),
            (
                keys::FEATURE_MAX_INDIRECT_SEGMENTS.into(),
                MAX_INDIRECT_SEGMENTS.to_string(),
            ),
            (
                keys::MAX_RING_PAGE_ORDER.into(),
                MAX_RING_PAGE_ORDER.to_string(),
            ),
            (keys::MULTI_QUEUE_MAX_QUEUES.into(), MAX_QUEUES.to_string()),
        ];
        if !img.readonly() {
            k.extend([
                (keys::FEATURE_DISCARD.into(), "1".into()),
                (keys::DISCARD_GRANULARITY.into(), "4096".into()),
                (keys::DISCARD_ALIGNMENT.into(), "0".into()),
                (keys::DISCARD_SECURE.into(), "0".into()),
                (ext::keys::FEATURE_WRITE_ZEROES.into(), "1".into()),
            ]);
        }
        Ok(k)
    }

    fn connect(&self, mut conn: BackendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let stats = self.stats.clone();
        let img = self.image(conn.info());
        Box::pin(async move {
            let img = img?;
            conn.check_protocol()?;
            let endpoints = queue_endpoints(&conn)?;
            let persistent = conn
                .peer_keys()
                .get(keys::FEATURE_PERSISTENT)
                .map(String::as_str)
                == Some("1");
            let mut servers = Vec::new();
            for (q, ep) in endpoints.iter().enumerate() {
                let s =
                    RingServer::<Req, Rsp>::connect(conn.platform().as_ref(), ep).map_err(|e| {
                        DeviceError::failed(format!("device {}: mapping queue {q}: {e}", conn.id()))
                    })?;
                servers.push(s);
            }
            conn.ready().await?;
            let ctx = Arc::new(Ctx {
                id: conn.id().clone(),
                limits: Limits {
                    sectors: img.sectors(),
                    max_indirect_segments: MAX_INDIRECT_SEGMENTS,
                    readonly: img.readonly(),
                    discard: !img.readonly(),
                    extensions: true,
                },
                img,
                grants: Grants::new(conn.platform().clone(), conn.frontend(), persistent),
                inflight: Inflight::new(MAX_INFLIGHT_BYTES, stats.inflight_peak.clone()),
                stats: stats.clone(),
            });
            tracing::info!(
                device = %ctx.id, queues = servers.len(), persistent,
                sectors = ctx.limits.sectors, readonly = ctx.limits.readonly,
                "vbd connected"
            );
            let stop = conn.stop_token();
            let tasks: Vec<_> = servers
                .into_iter()
                .map(|s| tokio::spawn(serve_queue(s, ctx.clone(), stop.clone())))
                .collect();
            let mut result = Ok(());
            for t in tasks {
                match t.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        stop.cancel();
                        result = Err(e);
                    }
                    Err(e) => result = Err(DeviceError::failed(format!("queue task: {e}"))),
                }
            }
            stats.grant_hits.fetch_add(
                ctx.grants.stats.hits.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            stats.grant_maps.fetch_add(
                ctx.grants.stats.maps.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            result
        })
    }

    fn removed(&self, id: &DeviceId) {
        // Closes the image (its locks go) once the last request let go.
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The rings the frontend offered: one (`ring-ref*`, `event-channel`) or
/// `multi-queue-num-queues` under `queue-N/`.
fn queue_endpoints(conn: &BackendConn) -> Result<Vec<RingEndpoint>, DeviceError> {
    let fail = |m: String| DeviceError::failed(format!("device {}: {m}", conn.id()));
    let Some(n) = conn.peer_keys().get(keys::MULTI_QUEUE_NUM_QUEUES) else {
        return Ok(vec![RingEndpoint {
            domid: conn.frontend(),
            port: conn.event_channel()?,
            refs: conn.ring_refs()?,
        }]);
    };
    let n: u32 = n
        .parse()
        .ok()
        .filter(|n| (1..=MAX_QUEUES).contains(n))
        .ok_or_else(|| fail(format!("multi-queue-num-queues {n:?} (1 to {MAX_QUEUES})")))?;
    (0..n)
        .map(|q| {
            let key = |k: &str| format!("queue-{q}/{k}");
            let refs = match conn.peer_keys().get(&key(keys::RING_PAGE_ORDER)) {
                None => vec![conn.peer_u32(&key("ring-ref"))?],
                Some(_) => {
                    let order = conn.peer_u32(&key(keys::RING_PAGE_ORDER))?;
                    if order > MAX_RING_PAGE_ORDER {
                        return Err(fail(format!("queue {q}: ring-page-order {order}")));
                    }
                    (0..1u32 << order)
                        .map(|i| conn.peer_u32(&key(&format!("ring-ref{i}"))))
                        .collect::<Result<_, _>>()?
                }
            };
            Ok(RingEndpoint {
                domid: conn.frontend(),
                port: conn.peer_u32(&key("event-channel"))?,
                refs,
            })
        })
        .collect()
}

/// What every request of a connection needs.
#[derive(Debug)]
struct Ctx {
    id: DeviceId,
    img: Image,
    limits: Limits,
    grants: Grants,
    inflight: Inflight,
    stats: Arc<VbdStats>,
}

async fn serve_queue(
    mut server: RingServer<Req, Rsp>,
    ctx: Arc<Ctx>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), DeviceError> {
    let responder = server.responder();
    let (tx, mut rx) = mpsc::unbounded_channel::<Rsp>();
    // Answers in batches: all that completed since the last push go out
    // with one push (and at most one notification).
    let answers = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(r) = rx.recv().await {
            batch.push(r);
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            if let Err(e) = responder.respond_all(batch.iter()) {
                return Err(DeviceError::from(e));
            }
            batch.clear();
        }
        Ok(())
    });
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = server.next() => match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(DeviceError::from(e)),
                Some(Ok(req)) => {
                    // Bounded data in flight: wait for answered requests
                    // to give their share back before serving this one
                    // (the ring's next requests wait meanwhile).
                    let reserved = tokio::select! {
                        _ = stop.cancelled() => break Ok(()),
                        r = ctx.inflight.reserve(data_bytes(&req)) => r,
                    };
                    let ctx = ctx.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let rsp = ctx.handle(req).await;
                        drop(reserved);
                        let _ = tx.send(rsp);
                    });
                }
            }
        }
    };
    drop(tx);
    if result.is_err() || stop.is_cancelled() {
        answers.abort();
    } else if let Ok(Err(e)) = answers.await {
        return Err(e);
    }
    result
}

/// Errors of one request, as the frontend sees them.
enum Failure {
    Reject(Reject),
    Io(String),
}

impl From<Reject> for Failure {
    fn from(r: Reject) -> Self {
        Failure::Reject(r)
    }
}

impl Ctx {
    /// Writes the allocation of `nr_sectors` from `sector` into page
    /// `gref` (at most `MAX_EXTENTS`, in whole sectors: a partly
    /// allocated sector counts as data).
    async fn block_status(&self, sector: u64, nr_sectors: u64, gref: u32) -> Result<(), Failure> {
        let io = |what: &str, e: &dyn std::fmt::Display| Failure::Io(format!("{what}: {e}"));
        let bytes = self
            .img
            .block_status(sector * 512, nr_sectors * 512, ext::MAX_EXTENTS)
            .await
            .map_err(|e| io("block status", &e))?;
        let mut extents: Vec<ext::Extent> = Vec::new();
        let (mut pos, mut done) = (0u64, 0u64);
        for (len, hole) in bytes {
            pos += len;
            let end = if hole { pos / 512 } else { pos.div_ceil(512) };
            if end <= done {
                continue;
            }
            let flags = if hole {
                ext::EXTENT_HOLE | ext::EXTENT_ZERO
            } else {
                0
            };
            match extents.last_mut() {
                Some(last) if last.flags == flags => last.sectors += end - done,
                _ => extents.push(ext::Extent {
                    sectors: end - done,
                    flags,
                }),
            }
            done = end;
        }
        let mut page = vec![0u8; 4096];
        ext::encode_extents(&mut page, &extents).map_err(|e| io("block status", &e))?;
        let pages = self
            .grants
            .pages(&[gref], true)
            .map_err(|e| io("mapping the status page", &e))?;
        pages[0].write(0, &page);
        Ok(())
    }

    async fn handle(&self, req: Req) -> Rsp {
        let (id, op) = (req.id(), req.operation());
        let status = match self.serve(&req).await {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(f) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                match f {
                    Failure::Reject(Reject::Unsupported(_)) => {
                        tracing::debug!(device = %self.id, id, op, "unsupported request");
                        BLKIF_RSP_EOPNOTSUPP
                    }
                    Failure::Reject(Reject::Invalid(why)) => {
                        tracing::warn!(device = %self.id, id, op, "bad request refused: {why}");
                        BLKIF_RSP_ERROR
                    }
                    Failure::Io(why) => {
                        tracing::warn!(device = %self.id, id, op, "request failed: {why}");
                        BLKIF_RSP_ERROR
                    }
                }
            }
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut rsp = Rsp::new_unchecked([0u8; 16]);
        rsp.set_id(id);
        rsp.set_operation(op);
        rsp.set_status(status);
        rsp
    }

    async fn serve(&self, req: &Req) -> Result<(), Failure> {
        let io = |what: &str, e: &dyn std::fmt::Display| Failure::Io(format!("{what}: {e}"));
        let (write, sector, segments, flush_after) = match check(req, &self.limits)? {
            Checked::Flush => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                return self.img.flush().await.map_err(|e| io("flush", &e));
            }
            Checked::Discard { sector, nr_sectors } => {
                self.stats.discards.fetch_add(1, Ordering::Relaxed);
                return self
                    .img
                    .discard(sector * 512, nr_sectors * 512)
                    .await
                    .map_err(|e| io("discard", &e));
            }
            Checked::WriteZeroes {
                sector,
                nr_sectors,
                unmap,
                fast,
            } => {
                self.stats.discards.fetch_add(1, Ordering::Relaxed);
                return match self
                    .img
                    .write_zeroes(sector * 512, nr_sectors * 512, unmap, fast)
                    .await
                {
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Err(Failure::Reject(
                        Reject::Unsupported(ext::BLKIF_OP_XENRING_WRITE_ZEROES),
                    )),
                    r => r.map_err(|e| io("write zeroes", &e)),
                };
            }
            Checked::BlockStatus {
                sector,
                nr_sectors,
                gref,
            } => return self.block_status(sector, nr_sectors, gref).await,
            Checked::Rw {
                write,
                sector,
                segments,
                flush_after,
            } => (write, sector, segments, flush_after),
            Checked::Indirect {
                write,
                sector,
                nr_segments,
                pages,
            } => {
                let copy = self
                    .grants
                    .copy_out(&pages)
                    .map_err(|e| io("mapping indirect pages", &e))?;
                let segs = parse_indirect_segments(&copy, nr_segments, sector, &self.limits)?;
                (write, sector, segs, false)
            }
        };
        let refs: Vec<_> = segments.iter().map(|s| s.gref).collect();
        let pages = self
            .grants
            .pages(&refs, !write)
            .map_err(|e| io("mapping data pages", &e))?;
        let total: usize = segments
            .iter()
            .map(|s| usize::from(s.last_sect - s.first_sect + 1) * 512)
            .sum();
        let offset = sector * 512;
        let _held = self.inflight.hold(total);
        if write {
            let mut buf = vec![0u8; total];
            let mut at = 0;
            for (s, p) in segments.iter().zip(&pages) {
                let len = usize::from(s.last_sect - s.first_sect + 1) * 512;
                p.read(usize::from(s.first_sect) * 512, &mut buf[at..at + len]);
                at += len;
            }
            drop(pages);
            self.img
                .write(offset, buf)
                .await
                .map_err(|e| io("write", &e))?;
            self.stats
                .written_bytes
                .fetch_add(total as u64, Ordering::Relaxed);
            if flush_after {
                self.img.flush().await.map_err(|e| io("flush", &e))?;
            }
        } else {
            let buf = self
                .img
                .read(offset, total)
                .await
                .map_err(|e| io("read", &e))?;
            let mut at = 0;
            for (s, p) in segments.iter().zip(&pages) {
                let len = usize::from(s.last_sect - s.first_sect + 1) * 512;
                p.write(usize::from(s.first_sect) * 512, &buf[at..at + len]);
                at += len;
            }
            self.stats
                .read_bytes
                .fetch_add(total as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}
