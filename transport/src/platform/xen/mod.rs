//! The `xen` platform: real Xen from user space through Linux's
//! `/dev/xen/{gntalloc,gntdev,evtchn}` (raw ioctls, no Xen C library).
//!
//! | trait | device and ioctl |
//! |---|---|
//! | [`Platform::share_pages`] | gntalloc `IOCTL_GNTALLOC_ALLOC_GREF` + mmap (our view is always writable) |
//! | [`SharedPages::end`] | munmap + `IOCTL_GNTALLOC_DEALLOC_GREF`; never refused: while the peer still maps a page the kernel defers the revocation |
//! | [`Platform::map_grants`] | gntdev `IOCTL_GNTDEV_MAP_GRANT_REF` (one batch) + mmap, where the hypervisor maps; a refused batch is retried one reference at a time to name the refused one |
//! | [`ForeignMapping::unmap`] | munmap + `IOCTL_GNTDEV_UNMAP_GRANT_REF` |
//! | `set_unmap_notify` | `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY` / `IOCTL_GNTDEV_SET_UNMAP_NOTIFY` |
//! | [`Platform::grant_copy`] | `IOCTL_GNTDEV_GRANT_COPY`; the local side is an address in [`Platform::alloc_pages`] memory |
//! | [`Platform::alloc_pages`] | anonymous memory |
//! | [`Platform::offer_transfer_slot`], [`Platform::transfer_page`] | [`PlatformError::Unsupported`]: gntalloc cannot create accept-transfer grants (receive pools use copy mode) |
//! | [`Platform::alloc_unbound_port`], [`Platform::bind_interdomain`] | evtchn `IOCTL_EVTCHN_BIND_UNBOUND_PORT` / `IOCTL_EVTCHN_BIND_INTERDOMAIN`, one descriptor per port (see `evtchn.rs`) |
//! | notify / wait | `IOCTL_EVTCHN_NOTIFY`; read pending ports + write them back (unmask) through tokio's `AsyncFd`; `EFBIG` (overflow) is recovered with `IOCTL_EVTCHN_RESET` |
//!
//! One gntalloc and one gntdev descriptor serve the whole platform (opened
//! when first needed, so a frontend-only guest needs no gntdev); each
//! share or mapping keeps the descriptor alive. Errors name the device and
//! the ioctl. This module and [`crate::shm`] are the only ones with
//! `unsafe`, all of it in `sys.rs`'s ioctl wrappers.
//!
//! The domain's own id is not visible through these devices: the caller
//! passes it, usually read from XenStore ([`own_domid`]).
//!
//! XenStore is not part of the platform: in dom0 the daemons use xenstored's
//! socket, in a guest `/dev/xen/xenbus` through
//! [`crate::xenstore::xenbus_dev`].
#![allow(unsafe_code)]

mod evtchn;
mod grant;
pub mod scenarios;
mod sys;

use std::sync::{Arc, Mutex};

pub use evtchn::XenChannel;
pub use grant::{XenMapping, XenPages, XenShare};

use crate::platform::{
    Access, DomId, EventChannel, ForeignMapping, GrantCopy, GrantRef, LocalPages, Platform,
    PlatformError, Port, Result, SharedPages, TransferSlot,
};
use crate::shm::{Region, PAGE_SIZE};
use crate::xenstore::{XsClient, XsError};
use sys::{Device, GNTALLOC, GNTDEV};

/// This domain on real Xen.
#[derive(Debug)]
pub struct XenPlatform {
    domid: DomId,
    gntalloc: Mutex<Option<Arc<Device>>>,
    gntdev: Mutex<Option<Arc<Device>>>,
}

impl XenPlatform {
    /// The platform for domain `domid` (this domain's id: see
    /// [`own_domid`]). Checks that `/dev/xen/evtchn` opens; the grant
    /// devices are opened when first used.
    pub fn open(domid: DomId) -> Result<XenPlatform> {
        drop(Device::open(sys::EVTCHN, true)?);
        Ok(XenPlatform {
            domid,
            gntalloc: Mutex::new(None),
            gntdev: Mutex::new(None),
        })
    }

    fn device(slot: &Mutex<Option<Arc<Device>>>, path: &'static str) -> Result<Arc<Device>> {
        let mut s = slot.lock().expect("device lock");
        if let Some(d) = s.as_ref() {
            return Ok(d.clone());
        }
        let d = Arc::new(Device::open(path, false)?);
        *s = Some(d.clone());
        Ok(d)
    }

    fn gntalloc(&self) -> Result<Arc<Device>> {
        Self::device(&self.gntalloc, GNTALLOC)
    }

    fn gntdev(&self) -> Result<Arc<Device>> {
        Self::device(&self.gntdev, GNTDEV)
    }
}

impl Platform for XenPlatform {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn name(&self) -> &'static str {
        "xen"
    }

    fn share_pages(
        &self,
        peer: DomId,
        count: usize,
        access: Access,
    ) -> Result<Box<dyn SharedPages>> {
        Ok(Box::new(XenShare::create(
            self.gntalloc()?,
            peer,
            count,
            access,
        )?))
    }

    fn map_grants(
        &self,
        peer: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<Box<dyn ForeignMapping>> {
        Ok(Box::new(XenMapping::create(
            self.gntdev()?,
            peer,
            refs,
            access,
        )?))
    }

    fn alloc_pages(&self, count: usize) -> Result<Box<dyn LocalPages>> {
        if count == 0 {
            return Err(PlatformError::InvalidArgument(
                "allocating 0 pages: at least one page is needed".into(),
            ));
        }
        Ok(Box::new(XenPages {
            region: Region::anonymous(count * PAGE_SIZE)?,
        }))
    }

    fn grant_copy(&self, ops: &mut [GrantCopy<'_>]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        grant::grant_copy(&*self.gntdev()?, ops)
    }

    fn offer_transfer_slot(&self, _peer: DomId) -> Result<Box<dyn TransferSlot>> {
        Err(PlatformError::Unsupported(
            "an accept-transfer slot (gntalloc creates only permit-access grants; use copy mode)",
        ))
    }

    fn transfer_page(
        &self,
        _page: Box<dyn LocalPages>,
        _peer: DomId,
        _gref: GrantRef,
    ) -> Result<()> {
        Err(PlatformError::Unsupported(
            "page transfer (Linux has no user-space transfer; use copy mode)",
        ))
    }

    fn alloc_unbound_port(&self, remote: DomId) -> Result<Box<dyn EventChannel>> {
        Ok(Box::new(XenChannel::unbound(remote)?))
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Box<dyn EventChannel>> {
        Ok(Box::new(XenChannel::interdomain(remote, remote_port)?))
    }
}

/// This domain's id, from XenStore: the `domid` key of the domain's home
/// (`/local/domain/<id>/domid`, read by the relative path `domid`, which
/// XenStore resolves against the connection's own domain).
pub async fn own_domid(xs: &XsClient) -> std::result::Result<DomId, XsError> {
    let v = xs.read("domid").await?;
    v.trim().parse::<DomId>().map_err(|_| XsError::Invalid {
        op: "read",
        path: "domid".into(),
        why: format!("{v:?} is not a domain id"),
    })
}
