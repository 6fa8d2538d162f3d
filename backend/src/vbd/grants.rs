//! The frontend's data pages as the backend sees them. With
//! `feature-persistent` negotiated, each page is mapped once (read-write)
//! and kept in a bounded cache keyed by grant reference, as Linux's blkback
//! does; a reference met when the cache is full is mapped for the one
//! request and unmapped after it. Without it, a request's pages are mapped
//! in one batch with the access the operation needs and unmapped when it
//! is answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use xenring::platform::{Access, DomId, ForeignMapping, GrantRef, Platform, PlatformError};
use xenring::shm::Region;

/// The most pages a connection keeps mapped.
pub const PERSISTENT_CACHE_PAGES: usize = 8192;

type Mapping = Arc<Box<dyn ForeignMapping>>;

/// One page of a request: a mapping and the page's offset in it.
#[derive(Debug, Clone)]
pub struct Page {
    map: Mapping,
    offset: usize,
}

impl Page {
    /// Copies `buf.len()` bytes out of the page from byte `at`.
    pub fn read(&self, at: usize, buf: &mut [u8]) {
        self.region().read(self.offset + at, buf)
    }

    /// Copies `data` into the page at byte `at`.
    pub fn write(&self, at: usize, data: &[u8]) {
        self.region().write(self.offset + at, data)
    }

    fn region(&self) -> &Region {
        self.map.memory()
    }
}

/// Counters of a connection's grant handling.
#[derive(Debug, Default)]
pub struct GrantStats {
    /// Pages found in the persistent cache.
    pub hits: AtomicU64,
    /// Map calls made (one per batch or per newly cached page).
    pub maps: AtomicU64,
}

/// The grant side of one connection.
#[derive(Debug)]
pub struct Grants {
    platform: Arc<dyn Platform>,
    peer: DomId,
    persistent: bool,
    cache: Mutex<HashMap<GrantRef, Mapping>>,
    /// Counters.
    pub stats: GrantStats,
}

impl Grants {
    /// Grants of frontend `peer`; `persistent` if both ends offered it.
    pub fn new(platform: Arc<dyn Platform>, peer: DomId, persistent: bool) -> Grants {
        Grants {
            platform,
            peer,
            persistent,
            cache: Mutex::new(HashMap::new()),
            stats: GrantStats::default(),
        }
    }

    /// Maps `refs` for one request; `write_pages`: the backend writes into
    /// them (a disk read).
    pub fn pages(&self, refs: &[GrantRef], write_pages: bool) -> Result<Vec<Page>, PlatformError> {
        if !self.persistent {
            let access = if write_pages {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            };
            self.stats.maps.fetch_add(1, Ordering::Relaxed);
            let map: Mapping = Arc::new(self.platform.map_grants(self.peer, refs, access)?);
            return Ok((0..refs.len())
                .map(|i| Page {
                    map: map.clone(),
                    offset: i * 4096,
                })
                .collect());
        }
        let mut out = Vec::with_capacity(refs.len());
        for &r in refs {
            let cached = self.lock().get(&r).cloned();
            let map = match cached {
                Some(m) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    m
                }
                None => {
                    self.stats.maps.fetch_add(1, Ordering::Relaxed);
                    let m: Mapping = Arc::new(self.platform.map_grants(
                        self.peer,
                        &[r],
                        Access::ReadWrite,
                    )?);
                    let mut c = self.lock();
                    if c.len() < PERSISTENT_CACHE_PAGES {
                        c.entry(r).or_insert(m).clone()
                    } else {
                        m
                    }
                }
            };
            out.push(Page { map, offset: 0 });
        }
        Ok(out)
    }

    /// Copies pages `refs` out (indirect descriptors: read once).
    pub fn copy_out(&self, refs: &[GrantRef]) -> Result<Vec<u8>, PlatformError> {
        let pages = self.pages(refs, false)?;
        let mut buf = vec![0u8; refs.len() * 4096];
        for (p, chunk) in pages.iter().zip(buf.chunks_mut(4096)) {
            p.read(0, chunk);
        }
        Ok(buf)
    }

    /// Pages mapped in the cache.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GrantRef, Mapping>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
