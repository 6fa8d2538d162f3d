//! One connection to a `vbd` backend: its rings (one per queue) and, per
//! queue, a pool of data pages granted once to the backend (persistent
//! grants: the backend maps each page once and keeps it). A transfer is
//! cut into blkif requests of at most [`Disk::max_pages`] pages (11 direct
//! segments, or up to the backend's `feature-max-indirect-segments` with
//! one indirect page of descriptors), which run concurrently; data is
//! copied between the caller's buffer and the pool pages.
//!
//! Offsets here are in 512-byte sectors; alignment to sectors is the
//! caller's business (the vbd export does read-modify-write).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tokio::sync::Semaphore;
use xenring::abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifResponse, BlkifSegment,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY, SEGS_PER_INDIRECT_FRAME,
};
use xenring::abi::blkif_ext as ext;
use xenring::platform::SharedPages;
use xenring::ring::{AsyncRingError, RingClient};

/// Request type on the ring.
pub type Req = BlkifRequest<[u8; 112]>;
/// Response type on the ring.
pub type Rsp = BlkifResponse<[u8; 16]>;

/// Why a disk operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiskError {
    /// The backend answered with an error status.
    #[error("the backend answered status {0}")]
    Status(i16),
    /// The ring is gone (backend died or the device stopped): retry on the
    /// next connection.
    #[error(transparent)]
    Ring(#[from] AsyncRingError),
    /// Not offered by the backend (or refused as not supported).
    #[error("not supported by the backend")]
    Unsupported,
    /// The backend answered something that breaks the protocol.
    #[error("bad answer from the backend: {0}")]
    Invalid(String),
}

/// Granted pages of one queue, handed out page by page.
#[derive(Debug)]
pub struct PagePool {
    shared: Box<dyn SharedPages>,
    free: Mutex<Vec<usize>>,
    sem: Arc<Semaphore>,
}

/// Pages taken from a pool; they go back on drop.
struct Taken<'a> {
    pool: &'a PagePool,
    pages: Vec<usize>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let n = self.pages.len();
        self.pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(self.pages.drain(..));
        self.pool.sem.add_permits(n);
    }
}

impl PagePool {
    /// A pool over `shared` (pages granted read-write to the backend).
    pub fn new(shared: Box<dyn SharedPages>) -> PagePool {
        let n = shared.refs().len();
        PagePool {
            shared,
            free: Mutex::new((0..n).rev().collect()),
            sem: Arc::new(Semaphore::new(n)),
        }
    }

    async fn take(&self, n: usize) -> Taken<'_> {
        let permit = self
            .sem
            .acquire_many(n as u32)
            .await
            .expect("the pool's semaphore is never closed");
        permit.forget();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let at = free.len() - n;
        Taken {
            pool: self,
            pages: free.split_off(at),
        }
    }

    fn gref(&self, page: usize) -> u32 {
        self.shared.refs()[page]
    }

    fn write(&self, page: usize, at: usize, data: &[u8]) {
        self.shared.memory().write(page * 4096 + at, data)
    }

    fn read(&self, page: usize, at: usize, buf: &mut [u8]) {
        self.shared.memory().read(page * 4096 + at, buf)
    }

    /// Ends the share (deferred while the backend still maps pages).
    pub fn into_shared(self) -> Box<dyn SharedPages> {
        self.shared
    }
}

/// One queue: a ring and its pool.
#[derive(Debug)]
pub struct Queue {
    /// The ring.
    pub ring: RingClient<Req, Rsp>,
    /// Its data pages.
    pub pool: PagePool,
}

/// What the backend offered, as this connection uses it.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Size in 512-byte sectors (checked: `sectors * 512` fits in a u64).
    pub sectors: u64,
    /// Size in bytes: `sectors * 512`, or less when the backend published
    /// `xenring-size-bytes` (the last sector is partial).
    pub size: u64,
    /// `VDISK_READONLY`.
    pub readonly: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `feature-max-indirect-segments` (0: none).
    pub indirect_segments: usize,
    /// `feature-xenring-write-zeroes`.
    pub write_zeroes: bool,
    /// `feature-xenring-block-status`.
    pub block_status: bool,
}

/// A connected disk.
#[derive(Debug)]
pub struct Disk {
    queues: Vec<Queue>,
    next: AtomicUsize,
    /// What the backend offered.
    pub geometry: Geometry,
}

impl Disk {
    /// A disk over `queues`.
    pub fn new(queues: Vec<Queue>, geometry: Geometry) -> Disk {
        Disk {
            queues,
            next: AtomicUsize::new(0),
            geometry,
        }
    }

    /// The queues (to watch or close them).
    pub fn into_queues(self) -> Vec<Queue> {
        self.queues
    }

    /// Pages per blkif request.
    pub fn max_pages(&self) -> usize {
        self.geometry
            .indirect_segments
            .max(BLKIF_MAX_SEGMENTS_PER_REQUEST)
    }

    fn queue(&self) -> &Queue {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        &self.queues[i]
    }

    async fn call(&self, q: &Queue, req: Req) -> Result<(), DiskError> {
        let rsp = q.ring.call(req).await?;
        match rsp.status() {
            BLKIF_RSP_OKAY => Ok(()),
            BLKIF_RSP_EOPNOTSUPP => Err(DiskError::Unsupported),
            s => Err(DiskError::Status(s)),
        }
    }

    /// Zeroes `count` sectors from `sector` (xenring extension):
    /// deallocating them if `unmap`; `fast`: `Unsupported` rather than
    /// slow.
    pub async fn write_zeroes(
        &self,
        sector: u64,
        count: u64,
        unmap: bool,
        fast: bool,
    ) -> Result<(), DiskError> {
        if !self.geometry.write_zeroes {
            return Err(DiskError::Unsupported);
        }
        let mut d = BlkifRequestDiscard::new_unchecked([0u8; 112]);
        d.set_operation(ext::BLKIF_OP_XENRING_WRITE_ZEROES);
        let mut flag = 0;
        if unmap {
            flag |= ext::ZERO_MAY_UNMAP;
        }
        if fast {
            flag |= ext::ZERO_FAST;
        }
        d.set_flag(flag);
        d.set_sector_number(sector);
        d.set_nr_sectors(count);
        let q = self.queue();
        self.call(q, Req::new_unchecked(d.into_inner())).await
    }

    /// The allocation of `count` sectors from `sector` (xenring
    /// extension): consecutive extents from `sector`, together at most
    /// `count` (maybe fewer; checked, the backend is not trusted).
    pub async fn block_status(
        &self,
        sector: u64,
        count: u64,
    ) -> Result<Vec<ext::Extent>, DiskError> {
        if !self.geometry.block_status {
            return Err(DiskError::Unsupported);
        }
        let q = self.queue();
        let taken = q.pool.take(1).await;
        let page = taken.pages[0];
        let mut r = ext::BlkifRequestStatus::new_unchecked([0u8; 112]);
        r.set_operation(ext::BLKIF_OP_XENRING_BLOCK_STATUS);
        r.set_sector_number(sector);
        r.set_nr_sectors(count);
        r.set_gref(q.pool.gref(page));
        self.call(q, Req::new_unchecked(r.into_inner())).await?;
        let mut buf = vec![0u8; 4096];
        q.pool.read(page, 0, &mut buf);
        drop(taken);
        ext::decode_extents(&buf, count).map_err(|e| DiskError::Invalid(e.to_string()))
    }

    /// Reads `buf.len()` bytes (a multiple of 512) from `sector`.
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let chunk = self.max_pages() * 4096;
        let parts = buf
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, b)| self.transfer(sector + (i * chunk / 512) as u64, Dir::Read(b)));
        all_ok(join_all(parts).await)
    }

    /// Writes `data` (a multiple of 512 bytes) at `sector`.
    pub async fn write(&self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        let chunk = self.max_pages() * 4096;
        let parts = data
            .chunks(chunk)
            .enumerate()
            .map(|(i, b)| self.transfer(sector + (i * chunk / 512) as u64, Dir::Write(b)));
        all_ok(join_all(parts).await)
    }

    /// Flushes the backend's disk cache.
    pub async fn flush(&self) -> Result<(), DiskError> {
        if !self.geometry.flush {
            return Err(DiskError::Unsupported);
        }
        let mut r = Req::new_unchecked([0u8; 112]);
        r.set_operation(BLKIF_OP_FLUSH_DISKCACHE);
        let q = self.queue();
        self.call(q, r).await
    }

    /// Discards `count` sectors from `sector`.
    pub async fn discard(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        if !self.geometry.discard {
            return Err(DiskError::Unsupported);
        }
        let mut d = BlkifRequestDiscard::new_unchecked([0u8; 112]);
        d.set_operation(BLKIF_OP_DISCARD);
        d.set_sector_number(sector);
        d.set_nr_sectors(count);
        let q = self.queue();
        self.call(q, Req::new_unchecked(d.into_inner())).await
    }

    /// One blkif request: at most `max_pages` pages of data.
    async fn transfer(&self, sector: u64, dir: Dir<'_>) -> Result<(), DiskError> {
        let len = dir.len();
        let npages = len.div_ceil(4096);
        let indirect = npages > BLKIF_MAX_SEGMENTS_PER_REQUEST;
        let nind = if indirect {
            npages.div_ceil(SEGS_PER_INDIRECT_FRAME)
        } else {
            0
        };
        let q = self.queue();
        let taken = q.pool.take(npages + nind).await;
        let (data_pages, ind_pages) = taken.pages.split_at(npages);
        let segs: Vec<BlkifSegment> = data_pages
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let bytes = (len - i * 4096).min(4096);
                BlkifSegment {
                    gref: q.pool.gref(p),
                    first_sect: 0,
                    last_sect: (bytes / 512 - 1) as u8,
                }
            })
            .collect();
        if let Dir::Write(d) = &dir {
            for (i, &p) in data_pages.iter().enumerate() {
                let s = &d[i * 4096..(len.min((i + 1) * 4096))];
                q.pool.write(p, 0, s);
            }
        }
        let op = if matches!(dir, Dir::Read(_)) {
            BLKIF_OP_READ
        } else {
            BLKIF_OP_WRITE
        };
        let req = if indirect {
            let mut page = vec![0u8; 4096];
            for (k, &ip) in ind_pages.iter().enumerate() {
                page.fill(0);
                for (j, s) in segs
                    .iter()
                    .skip(k * SEGS_PER_INDIRECT_FRAME)
                    .take(SEGS_PER_INDIRECT_FRAME)
                    .enumerate()
                {
                    s.write_to_indirect_page(&mut page, j)
                        .expect("index below SEGS_PER_INDIRECT_FRAME");
                }
                q.pool.write(ip, 0, &page);
            }
            let mut r = BlkifRequestIndirect::new_unchecked([0u8; 112]);
            r.set_operation(BLKIF_OP_INDIRECT);
            r.set_indirect_op(op);
            r.set_nr_segments(npages as u16);
            r.set_sector_number(sector);
            for (k, &ip) in ind_pages.iter().enumerate() {
                r.set_indirect_gref(k, q.pool.gref(ip))
                    .expect("at most 8 indirect pages");
            }
            Req::new_unchecked(r.into_inner())
        } else {
            let mut r = Req::new_unchecked([0u8; 112]);
            r.set_operation(op);
            r.set_nr_segments(npages as u8);
            r.set_sector_number(sector);
            for (i, s) in segs.iter().enumerate() {
                r.set_segment(i, *s).expect("at most 11 segments");
            }
            r
        };
        self.call(q, req).await?;
        if let Dir::Read(b) = dir {
            for (i, &p) in data_pages.iter().enumerate() {
                let end = len.min((i + 1) * 4096);
                q.pool.read(p, 0, &mut b[i * 4096..end]);
            }
        }
        drop(taken);
        Ok(())
    }
}

/// Every part is awaited (none is dropped while the backend may still use
/// its pages); the first error wins.
fn all_ok(results: Vec<Result<(), DiskError>>) -> Result<(), DiskError> {
    results.into_iter().collect()
}

enum Dir<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Dir<'_> {
    fn len(&self) -> usize {
        match self {
            Dir::Read(b) => b.len(),
            Dir::Write(b) => b.len(),
        }
    }
}
