//! The `vbd` frontend (blkfront): connects to a `vbd` backend over blkif
//! and serves the disk over NBD on `<socket dir>/vbd-<devid>.sock` (and,
//! if the toolstack wrote the frontend key `nbd-tcp = 127.0.0.1:PORT`, on
//! that loopback TCP address too; the address bound is published as
//! `nbd-tcp-address`), so any NBD client (qemu-img, qemu-io, nbdinfo,
//! nbd-client) can use it.
//!
//! ```text
//!   NBD client --unix/tcp--> [export] --blkif rings (1..4 queues)--> backend --> image
//!                              |  data pages granted once per queue
//!                              `- persistent grants, indirect segments
//! ```
//!
//! The sockets are bound once per device and outlive connections to the
//! backend: when the backend restarts, NBD clients stay connected, their
//! requests wait, and requests that were on the dead rings are sent again
//! on the new ones (reads and writes are idempotent), so a request is
//! answered to the client only once the backend answered it. Unaligned
//! writes are read-modify-write, holding their sectors against every other
//! write of them until the write-back is answered (`order.rs`); a
//! zero-length write changes nothing and is answered at once.

pub mod disk;
mod order;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use xenring::abi::blkif::{keys, VDISK_READONLY};
use xenring::abi::blkif_ext as ext;
use xenring::platform::Access;
use xenring::ring::RingClient;
use xenring::xenbus::device::{DeviceError, FrontendConn, NATIVE_PROTOCOL};
use xenring::xenbus::paths::DeviceId;

use self::disk::{Disk, DiskError, Geometry, PagePool, Queue, Req, Rsp};
use self::order::SectorLocks;
use crate::device::FrontendDevice;
use crate::nbd::{self, proto, Errno, Export, ExportInfo, Extent, Zeroes};

/// Data pages granted per queue (8 MiB: seven 1 MiB requests in flight).
pub const POOL_PAGES: usize = 2048;
/// Data pages granted per queue on real Xen (1 MiB), where Linux's
/// gntalloc allows 1024 grants in all by default (its `limit` parameter).
pub const XEN_POOL_PAGES: usize = 256;
/// The fewest data pages per queue the frontend key `pool-pages` may ask
/// for (two requests of the direct maximum, 11 segments, in flight).
pub const MIN_POOL_PAGES: usize = 22;
/// Ring page order used when the backend allows it (4 pages, 128 slots).
pub const RING_PAGE_ORDER: u32 = 2;
/// Queues used when the backend allows them.
pub const QUEUES: u32 = 2;

/// Counters of every device so far.
#[derive(Debug, Default)]
pub struct VbdFrontStats {
    /// Connections to a backend.
    pub connections: AtomicU64,
    /// NBD clients accepted.
    pub clients: AtomicU64,
    /// Bytes read by NBD clients.
    pub read_bytes: AtomicU64,
    /// Bytes written by NBD clients.
    pub written_bytes: AtomicU64,
    /// Requests sent again after a backend restart.
    pub retries: AtomicU64,
}

impl VbdFrontStats {
    /// One line for logs and the daemon's summary.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections {} clients {} read {} B written {} B retries {}",
            g(&self.connections),
            g(&self.clients),
            g(&self.read_bytes),
            g(&self.written_bytes),
            g(&self.retries)
        )
    }
}

/// The vbd frontend device.
#[derive(Debug)]
pub struct VbdFrontend {
    dir: PathBuf,
    exports: Arc<Exports>,
    stats: Arc<VbdFrontStats>,
}

/// The disk NBD requests go to.
#[derive(Debug, Clone)]
enum Current {
    /// Not connected to a backend (yet, or again): requests wait.
    Waiting,
    /// Connected.
    Ready(Arc<Disk>),
    /// The device was removed: requests fail with `ESHUTDOWN`.
    Removed,
}

/// One device's export: lives from its first connection to its removal.
#[derive(Debug)]
struct Device {
    current: watch::Sender<Current>,
    /// Orders writes of the same sectors (all clients of the device).
    writes: SectorLocks,
    /// One permit per NBD client ([`MAX_CLIENTS`]).
    clients: Arc<tokio::sync::Semaphore>,
    accept: Vec<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
    tcp: Option<String>,
}

impl VbdFrontend {
    /// A vbd frontend with its sockets in `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<VbdFrontend> {
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the socket directory {}: {e}", dir.display()),
            )
        })?;
        Ok(VbdFrontend {
            dir: dir.to_path_buf(),
            exports: Arc::default(),
            stats: Arc::default(),
        })
    }

    /// The NBD socket of device `devid`.
    pub fn socket_path(&self, devid: u32) -> PathBuf {
        self.dir.join(format!("vbd-{devid}.sock"))
    }

    /// Counters of every device so far.
    pub fn stats(&self) -> Arc<VbdFrontStats> {
        self.stats.clone()
    }

    /// The device's export, bound (and its accept loops started) on first
    /// use.
    fn device(&self, conn: &FrontendConn) -> Result<Arc<Device>, DeviceError> {
        let id = conn.id();
        let mut map = self.exports.lock();
        if let Some(d) = map.get(id) {
            return Ok(d.clone());
        }
        let path = self.socket_path(id.devid);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DeviceError::failed(format!("device {id}: {what}: {e}"))
        };
        // Everything that can fail comes before the Unix socket is bound:
        // a device that fails setup leaves no socket file.
        let tcp = match conn.info().params.get("nbd-tcp") {
            None => None,
            Some(addr) => {
                let sa: std::net::SocketAddr = addr
                    .parse()
                    .map_err(|e| fail(&format!("nbd-tcp {addr:?}"), &e))?;
                if !sa.ip().is_loopback() {
                    return Err(fail("nbd-tcp", &format!("{sa} is not a loopback address")));
                }
                let l = std::net::TcpListener::bind(sa).map_err(|e| fail("binding nbd-tcp", &e))?;
                l.set_nonblocking(true).map_err(|e| fail("nbd-tcp", &e))?;
                Some(tokio::net::TcpListener::from_std(l).map_err(|e| fail("nbd-tcp", &e))?)
            }
        };
        // A socket file left by a previous daemon is stale: we own the name.
        let _ = std::fs::remove_file(&path);
        let unix = tokio::net::UnixListener::bind(&path)
            .map_err(|e| fail(&format!("binding {}", path.display()), &e))?;
        let (current, _) = watch::channel(Current::Waiting);
        let mut dev = Device {
            current,
            writes: SectorLocks::new(),
            clients: Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS)),
            accept: Vec::new(),
            socket: path,
            tcp: tcp
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string()),
        };
        // The accept loops hold a weak handle: the device's removal ends
        // them.
        let dev = Arc::new_cyclic(|weak: &std::sync::Weak<Device>| {
            let w = weak.clone();
            let stats = self.stats.clone();
            let idc = id.clone();
            dev.accept.push(tokio::spawn(async move {
                while let Ok((s, _)) = unix.accept().await {
                    let Some(d) = w.upgrade() else { break };
                    spawn_client(s, d, stats.clone(), idc.clone());
                }
            }));
            if let Some(l) = tcp {
                let w = weak.clone();
                let stats = self.stats.clone();
                let idc = id.clone();
                dev.accept.push(tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        let Some(d) = w.upgrade() else { break };
                        spawn_client(s, d, stats.clone(), idc.clone());
                    }
                }));
            }
            dev
        });
        map.insert(id.clone(), dev.clone());
        Ok(dev)
    }
}

/// NBD clients one device serves at once (all sockets together); one
/// more is closed at once (logged). With [`nbd::MAX_INFLIGHT_BYTES`] per
/// connection, the export holds at most 16 x 32 MiB of request data.
pub const MAX_CLIENTS: usize = 16;

fn spawn_client<S>(s: S, dev: Arc<Device>, stats: Arc<VbdFrontStats>, id: DeviceId)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let Ok(permit) = dev.clients.clone().try_acquire_owned() else {
        tracing::warn!(device = %id, max = MAX_CLIENTS, "nbd client refused: the device serves its most clients");
        return;
    };
    stats.clients.fetch_add(1, Ordering::Relaxed);
    let export: Arc<dyn Export> = Arc::new(VbdExport { dev, stats });
    tokio::spawn(async move {
        if let Err(e) = nbd::serve(s, export).await {
            tracing::info!(device = %id, "nbd client ended: {e}");
        }
        drop(permit);
    });
}

fn geometry(conn: &FrontendConn, pool_pages: usize) -> Result<Geometry, DeviceError> {
    let flag = |k: &str| conn.peer_keys().get(k).map(String::as_str) == Some("1");
    let sector_size = match conn.peer_keys().get(keys::SECTOR_SIZE) {
        None => 512,
        Some(_) => conn.peer_u32(keys::SECTOR_SIZE)?,
    };
    if sector_size != 512 {
        return Err(DeviceError::failed(format!(
            "device {}: sector-size {sector_size} (only 512 is supported)",
            conn.id()
        )));
    }
    let sectors: u64 = conn
        .peer_key(keys::SECTORS)?
        .parse()
        .map_err(|e| DeviceError::failed(format!("device {}: sectors: {e}", conn.id())))?;
    // The export's size in bytes must fit in 64 bits (NBD's size field,
    // and every byte offset computed from a sector number).
    if sectors.checked_mul(512).is_none() {
        return Err(DeviceError::failed(format!(
            "device {}: sectors {sectors}: more than 2^64 bytes of 512-byte sectors",
            conn.id()
        )));
    }
    // The exact size, when the last sector is partial: it must round up
    // to `sectors`.
    let size = match conn.peer_keys().get(ext::keys::SIZE_BYTES) {
        None => sectors * 512,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n.div_ceil(512) == sectors => n,
            _ => {
                return Err(DeviceError::failed(format!(
                    "device {}: {} {v:?} does not round up to sectors {sectors}",
                    conn.id(),
                    ext::keys::SIZE_BYTES
                )))
            }
        },
    };
    let info = match conn.peer_keys().get(keys::INFO) {
        None => 0,
        Some(_) => conn.peer_u32(keys::INFO)?,
    };
    let indirect = match conn.peer_keys().get(keys::FEATURE_MAX_INDIRECT_SEGMENTS) {
        None => 0,
        Some(_) => conn.peer_u32(keys::FEATURE_MAX_INDIRECT_SEGMENTS)?,
    };
    Ok(Geometry {
        sectors,
        size,
        readonly: info & VDISK_READONLY != 0,
        flush: flag(keys::FEATURE_FLUSH_CACHE),
        discard: flag(keys::FEATURE_DISCARD),
        // At most what one indirect page describes... and what our pool
        // can hold two of.
        indirect_segments: (indirect as usize).min(256).min(pool_pages / 2),
        write_zeroes: flag(ext::keys::FEATURE_WRITE_ZEROES),
        block_status: flag(ext::keys::FEATURE_BLOCK_STATUS),
    })
}

/// Data pages to grant per queue: the frontend key `pool-pages`, else the
/// platform's default.
fn pool_pages(conn: &FrontendConn) -> Result<usize, DeviceError> {
    match conn.info().params.get("pool-pages") {
        None if conn.platform().name() == "xen" => Ok(XEN_POOL_PAGES),
        None => Ok(POOL_PAGES),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (MIN_POOL_PAGES..=1 << 16).contains(&n) => Ok(n),
            _ => Err(DeviceError::failed(format!(
                "device {}: pool-pages {v:?}: expected a number of pages from \
                 {MIN_POOL_PAGES} to 65536",
                conn.id()
            ))),
        },
    }
}

impl FrontendDevice for VbdFrontend {
    fn kind(&self) -> &str {
        "vbd"
    }

    fn connect(&self, conn: FrontendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let dev = self.device(&conn);
        let stats = self.stats.clone();
        let exports = self.exports.clone();
        Box::pin(async move {
            let dev = dev?;
            let id = conn.id().clone();
            let result = serve_connection(conn, dev.clone(), stats).await;
            if let Err(DeviceError::Failed(_)) = &result {
                // A device that failed (its setup, or a backend's bad
                // keys) is in error until the toolstack acts: no socket.
                exports.close(&id, Some(&dev));
            }
            result
        })
    }

    fn removed(&self, id: &DeviceId) {
        self.exports.close(id, None);
    }
}

/// One connection of device `dev` to its backend, until it stops.
async fn serve_connection(
    mut conn: FrontendConn,
    dev: Arc<Device>,
    stats: Arc<VbdFrontStats>,
) -> Result<(), DeviceError> {
    let pool_pages = pool_pages(&conn)?;
    let geometry = geometry(&conn, pool_pages)?;
    let max_q = match conn.peer_keys().get(keys::MULTI_QUEUE_MAX_QUEUES) {
        None => 1,
        Some(_) => conn.peer_u32(keys::MULTI_QUEUE_MAX_QUEUES)?,
    };
    let nq = max_q.clamp(1, QUEUES);
    let max_order = match conn.peer_keys().get(keys::MAX_RING_PAGE_ORDER) {
        None => 0,
        Some(_) => conn.peer_u32(keys::MAX_RING_PAGE_ORDER)?,
    };
    let order = max_order.min(RING_PAGE_ORDER);
    let platform = conn.platform().clone();
    let backend = conn.backend();
    let fail = |what: String, e: &dyn std::fmt::Display| {
        DeviceError::failed(format!("device {}: {what}: {e}", conn.id()))
    };
    let mut queues = Vec::new();
    let mut keys_out: Vec<(String, String)> = Vec::new();
    for q in 0..nq {
        let (ring, ep) = RingClient::<Req, Rsp>::share(platform.as_ref(), backend, 1 << order)
            .map_err(|e| fail(format!("sharing ring {q}"), &e))?;
        let pages = platform
            .share_pages(backend, pool_pages, Access::ReadWrite)
            .map_err(|e| fail(format!("granting data pages of queue {q}"), &e))?;
        let prefix = if nq == 1 {
            String::new()
        } else {
            format!("queue-{q}/")
        };
        if order == 0 {
            keys_out.push((format!("{prefix}ring-ref"), ep.refs[0].to_string()));
        } else {
            keys_out.push((
                format!("{prefix}{}", keys::RING_PAGE_ORDER),
                order.to_string(),
            ));
            for (i, r) in ep.refs.iter().enumerate() {
                keys_out.push((format!("{prefix}ring-ref{i}"), r.to_string()));
            }
        }
        keys_out.push((format!("{prefix}event-channel"), ep.port.to_string()));
        queues.push(Queue {
            ring,
            pool: PagePool::new(pages),
        });
    }
    for (k, v) in keys_out {
        conn.set_key(k, v);
    }
    if nq > 1 {
        conn.set_key(keys::MULTI_QUEUE_NUM_QUEUES, nq.to_string());
    }
    conn.set_key("protocol", NATIVE_PROTOCOL);
    conn.set_key(keys::FEATURE_PERSISTENT, "1");
    if let Some(a) = &dev.tcp {
        conn.set_key("nbd-tcp-address", a.clone());
    }
    // Ring deaths: a response stream nobody feeds ends with the
    // error that closed its ring.
    let mut deaths: FuturesUnordered<_> = queues
        .iter()
        .map(|q| {
            let (_sink, mut stream) = q.ring.split();
            async move { stream.next().await }
        })
        .collect();
    conn.ready().await?;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let disk = Arc::new(Disk::new(queues, geometry));
    tracing::info!(
        device = %conn.id(), queues = nq, ring_pages = 1u32 << order, pool_pages,
        sectors = geometry.sectors, readonly = geometry.readonly,
        indirect = geometry.indirect_segments, "vbd connected"
    );
    dev.current.send_replace(Current::Ready(disk.clone()));
    let result = tokio::select! {
        _ = conn.stopped() => Ok(()),
        e = deaths.next() => Err(DeviceError::PeerGone(format!(
            "device {}: ring closed: {:?}", conn.id(), e.flatten().map(|r| r.err())
        ))),
    };
    dev.current.send_if_modified(|c| {
        // A removal that came first stays.
        let ready = matches!(c, Current::Ready(_));
        if ready {
            *c = Current::Waiting;
        }
        ready
    });
    drop(deaths);
    if let Ok(disk) = Arc::try_unwrap(disk) {
        for q in disk.into_queues() {
            q.ring.close().await;
            drop(q.pool.into_shared());
        }
    }
    result
}

/// The exports of every device, by id.
#[derive(Debug, Default)]
struct Exports(Mutex<HashMap<DeviceId, Arc<Device>>>);

impl Exports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Arc<Device>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends device `id`'s export (`only`: if it is still that one): its
    /// socket file goes, its accept loops end, and clients still connected
    /// get `ESHUTDOWN` from now on.
    fn close(&self, id: &DeviceId, only: Option<&Arc<Device>>) {
        let dev = {
            let mut map = self.lock();
            match (map.get(id), only) {
                (Some(d), Some(o)) if !Arc::ptr_eq(d, o) => None,
                _ => map.remove(id),
            }
        };
        if let Some(d) = dev {
            d.current.send_replace(Current::Removed);
            for t in &d.accept {
                t.abort();
            }
            let _ = std::fs::remove_file(&d.socket);
        }
    }
}

/// The NBD export of one device, for one client connection.
#[derive(Debug)]
struct VbdExport {
    dev: Arc<Device>,
    stats: Arc<VbdFrontStats>,
}

fn errno(e: &DiskError) -> Errno {
    match e {
        DiskError::Status(_) => proto::EIO,
        DiskError::Unsupported => proto::ENOTSUP,
        DiskError::Ring(_) => proto::ESHUTDOWN,
        DiskError::Invalid(_) => proto::EIO,
    }
}

impl VbdExport {
    /// Waits for a connected disk; `ESHUTDOWN` once the device is gone.
    async fn disk(&self) -> Result<Arc<Disk>, Errno> {
        let mut rx = self.dev.current.subscribe();
        let got = rx
            .wait_for(|c| !matches!(c, Current::Waiting))
            .await
            .map_err(|_| proto::ESHUTDOWN)?;
        match &*got {
            Current::Ready(d) => Ok(d.clone()),
            _ => Err(proto::ESHUTDOWN),
        }
    }

    /// Runs `f` on the current disk; when its ring dies under it, waits
    /// for the next connection and runs it again.
    async fn with_disk<T, F>(&self, f: F) -> Result<T, Errno>
    where
        F: Fn(Arc<Disk>) -> BoxFuture<'static, Result<T, DiskError>>,
    {
        loop {
            let disk = self.disk().await?;
            match f(disk.clone()).await {
                Ok(v) => return Ok(v),
                Err(DiskError::Ring(e)) => {
                    tracing::debug!("request lost with its ring ({e}); waiting for the backend");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let mut rx = self.dev.current.subscribe();
                    rx.wait_for(|c| !matches!(c, Current::Ready(x) if Arc::ptr_eq(x, &disk)))
                        .await
                        .map_err(|_| proto::ESHUTDOWN)?;
                }
                Err(e) => return Err(errno(&e)),
            }
        }
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let first = offset / 512;
        let end = (offset + len as u64).div_ceil(512);
        let n = ((end - first) * 512) as usize;
        let mut buf = self
            .with_disk(move |d| {
                Box::pin(async move {
                    let mut b = vec![0u8; n];
                    d.read(first, &mut b).await.map(|_| b)
                })
            })
            .await?;
        let skip = (offset - first * 512) as usize;
        if skip != 0 || buf.len() != len {
            buf.drain(..skip);
            buf.truncate(len);
        }
        Ok(buf)
    }

    /// Writes zeroes as data, 1 MiB at a time.
    async fn write_zeroes_slowly(&self, offset: u64, len: u64) -> Result<(), Errno> {
        const CHUNK: u64 = nbd::WORK_CHUNK as u64;
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(CHUNK);
            self.write_at(at, vec![0u8; n as usize]).await?;
            at += n;
        }
        Ok(())
    }

    async fn write_at(&self, offset: u64, data: Vec<u8>) -> Result<(), Errno> {
        if data.is_empty() {
            // Nothing to write: never a read-modify-write of a sector.
            return Ok(());
        }
        let first = offset / 512;
        let end = (offset + data.len() as u64).div_ceil(512);
        let aligned = offset % 512 == 0 && data.len() % 512 == 0;
        // Aligned writes share their sectors; a read-modify-write holds
        // them alone from its read until its write-back is answered.
        let _held = self.dev.writes.lock(first, end, !aligned).await;
        let data = Arc::new(data);
        if aligned {
            return self
                .with_disk(move |d| {
                    let data = data.clone();
                    Box::pin(async move { d.write(first, &data).await })
                })
                .await;
        }
        let mut buf = self
            .read_at(first * 512, ((end - first) * 512) as usize)
            .await?;
        let skip = (offset - first * 512) as usize;
        buf[skip..skip + data.len()].copy_from_slice(&data);
        let buf = Arc::new(buf);
        self.with_disk(move |d| {
            let buf = buf.clone();
            Box::pin(async move { d.write(first, &buf).await })
        })
        .await
    }
}

impl Export for VbdExport {
    fn info(&self) -> BoxFuture<'_, Result<ExportInfo, Errno>> {
        Box::pin(async move {
            let g = self.disk().await?.geometry;
            Ok(ExportInfo {
                size: g.size,
                readonly: g.readonly,
                flush: g.flush,
                trim: g.discard,
                fast_zero: g.write_zeroes,
            })
        })
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>, Errno>> {
        Box::pin(async move {
            let r = self.read_at(offset, len).await?;
            self.stats
                .read_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            Ok(r)
        })
    }

    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<(), Errno>> {
        Box::pin(async move {
            let n = data.len() as u64;
            self.write_at(offset, data).await?;
            self.stats.written_bytes.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Errno>> {
        Box::pin(self.with_disk(|d| Box::pin(async move { d.flush().await })))
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), Errno>> {
        Box::pin(async move {
            // Whole sectors inside the range only: trim is a hint.
            let first = offset.div_ceil(512);
            let end = (offset + len) / 512;
            if end <= first {
                return Ok(());
            }
            // Not in the middle of a read-modify-write of these sectors.
            let _held = self.dev.writes.lock(first, end, false).await;
            match self
                .with_disk(move |d| Box::pin(async move { d.discard(first, end - first).await }))
                .await
            {
                Err(proto::ENOTSUP) => Ok(()),
                r => r,
            }
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroes) -> BoxFuture<'_, Result<(), Errno>> {
        Box::pin(async move {
            let g = self.disk().await?.geometry;
            // Whole sectors inside the range (the partial last sector of
            // an odd-sized disk counts whole: the backend drops its tail)
            // go to the backend's write-zeroes; the edges are written.
            let first = offset.div_ceil(512);
            let end = if offset + len == g.size {
                g.sectors
            } else {
                (offset + len) / 512
            };
            if !g.write_zeroes || end <= first {
                if how.fast {
                    return Err(proto::ENOTSUP);
                }
                return self.write_zeroes_slowly(offset, len).await;
            }
            self.write_zeroes_slowly(offset, first * 512 - offset)
                .await?;
            {
                // Not in the middle of a read-modify-write of these sectors.
                let _held = self.dev.writes.lock(first, end, false).await;
                self.with_disk(move |d| {
                    Box::pin(async move {
                        d.write_zeroes(first, end - first, how.may_trim, how.fast)
                            .await
                    })
                })
                .await?;
            }
            let tail = (end * 512).min(offset + len);
            self.write_zeroes_slowly(tail, offset + len - tail).await
        })
    }

    fn block_status(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<Extent>, Errno>> {
        Box::pin(async move {
            let disk = self.disk().await?;
            let g = disk.geometry;
            let all_data = vec![Extent {
                length: len,
                flags: 0,
            }];
            if !g.block_status {
                return Ok(all_data);
            }
            let first = offset / 512;
            let end = (offset + u64::from(len)).div_ceil(512);
            let sectors = self
                .with_disk(move |d| {
                    Box::pin(async move { d.block_status(first, end - first).await })
                })
                .await?;
            // Sectors to bytes, cut to [offset, offset + len).
            let mut out = Vec::new();
            let mut at = first * 512;
            let stop = offset + u64::from(len);
            for e in sectors {
                let next = at + e.sectors * 512;
                let (a, b) = (at.max(offset), next.min(stop));
                if b > a {
                    let mut flags = 0;
                    if e.flags & ext::EXTENT_HOLE != 0 {
                        flags |= proto::STATE_HOLE;
                    }
                    if e.flags & ext::EXTENT_ZERO != 0 {
                        flags |= proto::STATE_ZERO;
                    }
                    out.push(Extent {
                        length: (b - a) as u32,
                        flags,
                    });
                }
                at = next;
                if at >= stop {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn cache(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<(), Errno>> {
        Box::pin(async move {
            // Reading pulls the range into the backend's page cache; the
            // data is dropped here (a piece at a time).
            const CHUNK: u64 = nbd::WORK_CHUNK as u64;
            let mut at = offset;
            let end = offset + u64::from(len);
            while at < end {
                let n = (end - at).min(CHUNK);
                self.read_at(at, n as usize).await?;
                at += n;
            }
            Ok(())
        })
    }
}
