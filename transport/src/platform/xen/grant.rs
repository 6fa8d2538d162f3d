//! Pages on real Xen: shares (gntalloc), foreign mappings (gntdev), own
//! pages (anonymous memory), and grant copy (gntdev).

use std::any::Any;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::sys::{foreign, CopySegment, Device, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use crate::platform::{
    Access, CopyPtr, DomId, ForeignMapping, GnttabStatus, GrantCopy, GrantRef, LocalPages,
    PlatformError, Result, SharedPages, UnmapNotify,
};
use crate::shm::{Protection, Region, PAGE_SIZE};

fn protection(access: Access) -> Protection {
    if access.writable() {
        Protection::ReadWrite
    } else {
        Protection::ReadOnly
    }
}

// ------------------------------------------------------------------ shares

/// Pages of this domain granted to a peer through `/dev/xen/gntalloc`.
#[derive(Debug)]
pub struct XenShare {
    pub(super) dev: Arc<Device>,
    pub(super) peer: DomId,
    pub(super) index: u64,
    pub(super) refs: Vec<GrantRef>,
    pub(super) region: Option<Region>,
}

impl XenShare {
    /// `ALLOC_GREF` + mmap; on an mmap failure the references are freed.
    pub(super) fn create(
        dev: Arc<Device>,
        peer: DomId,
        count: usize,
        access: Access,
    ) -> Result<XenShare> {
        if count == 0 {
            return Err(PlatformError::InvalidArgument(
                "sharing 0 pages: at least one page is needed".into(),
            ));
        }
        let (index, refs) = dev.gntalloc_alloc(peer, count, access.writable())?;
        // Our own view is always writable: we fill the pages.
        match Region::map_fd(dev.as_fd(), index, count * PAGE_SIZE, Protection::ReadWrite) {
            Ok(region) => Ok(XenShare {
                dev,
                peer,
                index,
                refs,
                region: Some(region),
            }),
            Err(e) => {
                let _ = dev.gntalloc_dealloc(index, count);
                Err(PlatformError::Io {
                    what: format!(
                        "{} mmap of {count} granted pages (index {index:#x})",
                        dev.path()
                    ),
                    error: std::io::Error::other(e),
                })
            }
        }
    }

    fn do_end(&mut self) -> Result<()> {
        if self.region.take().is_some() {
            // munmap first (the drop of the region), then DEALLOC: the
            // kernel frees each grant once both are done, and defers the
            // revocation itself while the peer still maps a page.
            return self.dev.gntalloc_dealloc(self.index, self.refs.len());
        }
        Ok(())
    }
}

impl SharedPages for XenShare {
    fn peer(&self) -> DomId {
        self.peer
    }
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
    fn memory(&self) -> &Region {
        self.region.as_ref().expect("mapped until ended")
    }
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        check_notify(notify, self.refs.len())?;
        self.dev.set_unmap_notify(self.index, notify)
    }
    fn end(mut self: Box<Self>) -> Result<(), (Box<dyn SharedPages>, PlatformError)> {
        // gntalloc never refuses: a grant the peer still maps is revoked by
        // the kernel once the peer unmaps it.
        match self.do_end() {
            Ok(()) => Ok(()),
            Err(e) => Err((self, e)),
        }
    }
}

impl Drop for XenShare {
    fn drop(&mut self) {
        if let Err(e) = self.do_end() {
            tracing::warn!(error = %e, "ending a share at drop failed");
        }
    }
}

fn check_notify(notify: UnmapNotify, pages: usize) -> Result<()> {
    if let Some(b) = notify.clear_byte {
        if b >= pages * PAGE_SIZE {
            return Err(PlatformError::InvalidArgument(format!(
                "unmap notification byte {b} outside {pages} pages"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- mappings

/// A peer's grants mapped through `/dev/xen/gntdev`.
#[derive(Debug)]
pub struct XenMapping {
    pub(super) dev: Arc<Device>,
    pub(super) peer: DomId,
    pub(super) index: u64,
    pub(super) refs: Vec<GrantRef>,
    pub(super) region: Option<Region>,
    pub(super) access: Access,
}

impl XenMapping {
    /// `MAP_GRANT_REF` + mmap (the hypervisor maps at mmap). All or
    /// nothing; when a batch is refused, each reference is tried alone to
    /// name the one that was refused.
    pub(super) fn create(
        dev: Arc<Device>,
        peer: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<XenMapping> {
        if refs.is_empty() {
            return Err(PlatformError::InvalidArgument(
                "mapping no grant references".into(),
            ));
        }
        match Self::try_map(&dev, peer, refs, access) {
            Ok(m) => Ok(m),
            Err(e) if refs.len() > 1 => {
                // Probe each reference alone (a success is unmapped at
                // once): the first refusal names the culprit.
                for r in refs {
                    drop(Self::try_map(&dev, peer, &[*r], access)?);
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn try_map(
        dev: &Arc<Device>,
        peer: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<XenMapping> {
        let index = dev.gntdev_map(peer, refs)?;
        match Region::map_fd(
            dev.as_fd(),
            index,
            refs.len() * PAGE_SIZE,
            protection(access),
        ) {
            Ok(region) => Ok(XenMapping {
                dev: dev.clone(),
                peer,
                index,
                refs: refs.to_vec(),
                region: Some(region),
                access,
            }),
            Err(e) => {
                let _ = dev.gntdev_unmap(index, refs.len());
                Err(PlatformError::Io {
                    what: format!(
                        "{} mmap after IOCTL_GNTDEV_MAP_GRANT_REF (domid {peer}, refs {refs:?}, \
                         {}): the hypervisor refused the mapping",
                        dev.path(),
                        if access.writable() {
                            "read-write"
                        } else {
                            "read-only"
                        }
                    ),
                    error: std::io::Error::other(e),
                })
            }
        }
    }

    fn do_unmap(&mut self) -> Result<()> {
        if self.region.take().is_some() {
            return self.dev.gntdev_unmap(self.index, self.refs.len());
        }
        Ok(())
    }
}

impl ForeignMapping for XenMapping {
    fn peer(&self) -> DomId {
        self.peer
    }
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
    fn memory(&self) -> &Region {
        self.region.as_ref().expect("mapped until unmapped")
    }
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        check_notify(notify, self.refs.len())?;
        if notify.clear_byte.is_some() && !self.access.writable() {
            return Err(PlatformError::InvalidArgument(
                "an unmap notification that clears a byte needs a writable mapping".into(),
            ));
        }
        self.dev.set_unmap_notify(self.index, notify)
    }
    fn unmap(mut self: Box<Self>) -> Result<()> {
        self.do_unmap()
    }
}

impl Drop for XenMapping {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmap() {
            tracing::warn!(error = %e, "unmapping at drop failed");
        }
    }
}

// --------------------------------------------------------------- own pages

/// Pages of this domain's own (anonymous) memory.
#[derive(Debug)]
pub struct XenPages {
    pub(super) region: Region,
}

impl LocalPages for XenPages {
    fn memory(&self) -> &Region {
        &self.region
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

// -------------------------------------------------------------------- copy

/// One side of a segment: its union value and whether it is a grant.
fn side(p: &CopyPtr<'_>, len: u16) -> std::result::Result<(u64, bool), GnttabStatus> {
    match *p {
        CopyPtr::Grant {
            domid,
            gref,
            offset,
        } => {
            if offset as usize + len as usize > PAGE_SIZE {
                return Err(GnttabStatus::BadCopyArg);
            }
            Ok((foreign(gref, offset, domid), true))
        }
        CopyPtr::Local { pages, offset } => {
            let own = pages
                .as_any()
                .downcast_ref::<XenPages>()
                .ok_or(GnttabStatus::BadPage)?;
            let region = &own.region;
            if offset >= region.len() || offset % PAGE_SIZE + len as usize > PAGE_SIZE {
                return Err(GnttabStatus::BadCopyArg);
            }
            Ok((region.as_ptr() as u64 + offset as u64, false))
        }
    }
}

/// `GRANT_COPY` of `ops`: arguments the kernel would refuse (a side that
/// crosses its page, a local side that is not our own pages) get their
/// status here and are not submitted.
pub(super) fn grant_copy(dev: &Device, ops: &mut [GrantCopy<'_>]) -> Result<()> {
    let mut segs = Vec::with_capacity(ops.len());
    let mut idx = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter_mut().enumerate() {
        match (side(&op.source, op.len), side(&op.dest, op.len)) {
            (Ok((src, sg)), Ok((dst, dg))) => {
                let mut flags = 0;
                if sg {
                    flags |= GNTCOPY_SOURCE_GREF;
                }
                if dg {
                    flags |= GNTCOPY_DEST_GREF;
                }
                segs.push(CopySegment {
                    source: src,
                    dest: dst,
                    len: op.len,
                    flags,
                    status: 0,
                    pad: 0,
                });
                idx.push(i);
            }
            (Err(s), _) | (_, Err(s)) => op.status = s,
        }
    }
    if segs.is_empty() {
        return Ok(());
    }
    dev.gntdev_copy(&mut segs)?;
    for (seg, i) in segs.iter().zip(idx) {
        ops[i].status = GnttabStatus::from_raw(seg.status).unwrap_or(GnttabStatus::GeneralError);
    }
    Ok(())
}
