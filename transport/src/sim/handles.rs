//! The handles a simulated domain hands out through [`Platform`](crate::platform::Platform):
//! its own pages, shares, mappings, transfer slots and event-channel ports.
//! Each undoes itself on drop (freeing, ending, unmapping, reclaiming,
//! closing); the explicit methods report what a drop can only log.

use std::any::Any;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::domain::{io_err, reply_error, Inner, SimDomain};
use super::wire::{NotifySpec, Reply, Request};
use crate::grant::Reclaim;
use crate::platform::{
    DomId, EventChannel, ForeignMapping, GrantRef, LocalPages, PlatformError, Port, Result,
    SharedPages, TransferSlot, UnmapNotify,
};
use crate::shm::{Region, PAGE_SIZE};

// ------------------------------------------------------------------ pages

/// Own pages of a simulated domain.
#[derive(Debug)]
pub struct SimPages {
    pub(super) dom: Arc<Inner>,
    pub(super) frames: Vec<u64>,
    pub(super) region: Option<Region>,
}

impl SimPages {
    /// The machine frames (for tests and reports).
    pub fn frames(&self) -> &[u64] {
        &self.frames
    }
}

impl LocalPages for SimPages {
    fn memory(&self) -> &Region {
        self.region.as_ref().expect("mapped until dropped")
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for SimPages {
    fn drop(&mut self) {
        self.region.take();
        if !self.frames.is_empty() {
            let frames = std::mem::take(&mut self.frames);
            if let Err(e) = self.dom.expect_ok(&Request::FreePages { frames }) {
                tracing::warn!(error = %e, "freeing pages failed");
            }
        }
    }
}

// ----------------------------------------------------------------- shares

/// What a share holds, without a handle on the domain (so the deferred list
/// does not keep the domain alive).
#[derive(Debug, Default)]
pub(super) struct ShareState {
    pub(super) refs: Vec<GrantRef>,
    pub(super) ended: Vec<bool>,
    pub(super) frames: Vec<u64>,
    pub(super) notifies: Vec<u64>,
    pub(super) region: Option<Region>,
}

impl ShareState {
    /// Ends what is not ended yet; when all is, fires the notifications and
    /// frees the pages.
    pub(super) fn try_end(&mut self, dom: &Inner) -> Result<()> {
        let mut first_err = None;
        for (r, ended) in self.refs.iter().zip(self.ended.iter_mut()) {
            if *ended {
                continue;
            }
            match dom.table.end_access(*r) {
                Ok(()) => {
                    *ended = true;
                    dom.table.release(*r)?;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        for id in std::mem::take(&mut self.notifies) {
            dom.expect_ok(&Request::FireNotify { id })?;
        }
        self.region.take();
        if !self.frames.is_empty() {
            dom.expect_ok(&Request::FreePages {
                frames: std::mem::take(&mut self.frames),
            })?;
        }
        Ok(())
    }
}

/// Pages of a simulated domain granted to a peer.
#[derive(Debug)]
pub struct SimShare {
    pub(super) dom: Arc<Inner>,
    pub(super) peer: DomId,
    pub(super) state: ShareState,
}

impl SharedPages for SimShare {
    fn peer(&self) -> DomId {
        self.peer
    }
    fn refs(&self) -> &[GrantRef] {
        &self.state.refs
    }
    fn memory(&self) -> &Region {
        self.state.region.as_ref().expect("mapped until ended")
    }
    fn set_unmap_notify(&mut self, n: UnmapNotify) -> Result<()> {
        let id = add_notify(&self.dom, 0, &self.state.frames, n)?;
        self.state.notifies.push(id);
        Ok(())
    }
    fn end(mut self: Box<Self>) -> Result<(), (Box<dyn SharedPages>, PlatformError)> {
        match self.state.try_end(&self.dom) {
            Ok(()) => Ok(()),
            Err(e) => Err((self, e)),
        }
    }
}

impl Drop for SimShare {
    fn drop(&mut self) {
        if self.state.refs.is_empty() && self.state.frames.is_empty() {
            return;
        }
        if let Err(e) = self.state.try_end(&self.dom) {
            tracing::debug!(error = %e, "share still mapped at drop; ending it later");
            let state = std::mem::take(&mut self.state);
            Inner::defer(&self.dom, state);
        }
    }
}

pub(super) fn add_notify(dom: &Inner, mapping: u64, frames: &[u64], n: UnmapNotify) -> Result<u64> {
    let (frame, offset) = match n.clear_byte {
        Some(off) => {
            let page = off / PAGE_SIZE;
            let frame = *frames.get(page).ok_or_else(|| {
                PlatformError::Protocol(format!(
                    "unmap notification byte {off} is outside the {} pages",
                    frames.len()
                ))
            })?;
            (frame, (off % PAGE_SIZE) as u16)
        }
        None => (frames[0], 0),
    };
    let req = Request::AddNotify(NotifySpec {
        mapping,
        frame,
        offset,
        clear: n.clear_byte.is_some(),
        port: n.event.unwrap_or(0),
        event: n.event.is_some(),
    });
    match dom.call(&req)?.0 {
        Reply::NotifyId { id } => Ok(id),
        other => Err(reply_error(other)),
    }
}

// --------------------------------------------------------------- mappings

/// A peer's grants mapped into a simulated domain.
#[derive(Debug)]
pub struct SimMapping {
    pub(super) dom: Arc<Inner>,
    pub(super) peer: DomId,
    pub(super) refs: Vec<GrantRef>,
    pub(super) handle: u64,
    pub(super) frames: Vec<u64>,
    pub(super) region: Option<Region>,
}

impl SimMapping {
    /// The host's handle for this mapping.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    fn do_unmap(&mut self) -> Result<()> {
        if self.region.take().is_none() {
            return Ok(());
        }
        self.dom.expect_ok(&Request::Unmap {
            handle: self.handle,
        })
    }
}

impl ForeignMapping for SimMapping {
    fn peer(&self) -> DomId {
        self.peer
    }
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
    fn memory(&self) -> &Region {
        self.region.as_ref().expect("mapped until unmapped")
    }
    fn set_unmap_notify(&mut self, n: UnmapNotify) -> Result<()> {
        add_notify(&self.dom, self.handle, &self.frames, n).map(|_| ())
    }
    fn unmap(mut self: Box<Self>) -> Result<()> {
        self.do_unmap()
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmap() {
            tracing::warn!(error = %e, "unmap at drop failed");
        }
    }
}

// ------------------------------------------------------------ transfers

/// An accept_transfer slot of a simulated domain.
#[derive(Debug)]
pub struct SimSlot {
    pub(super) dom: SimDomain,
    pub(super) peer: DomId,
    pub(super) gref: Option<GrantRef>,
}

impl SimSlot {
    fn page(&self, frame: u32) -> Result<Box<dyn LocalPages>> {
        Ok(Box::new(self.dom.local_pages(vec![u64::from(frame)])?))
    }

    fn do_reclaim(&mut self) -> Result<Option<Box<dyn LocalPages>>> {
        let Some(gref) = self.gref.take() else {
            return Ok(None);
        };
        let table = &self.dom.inner.table;
        let got = table.reclaim_transfer(gref)?;
        table.release(gref)?;
        match got {
            Reclaim::NotFilled => Ok(None),
            Reclaim::Filled(frame) => self.page(frame).map(Some),
        }
    }
}

impl TransferSlot for SimSlot {
    fn peer(&self) -> DomId {
        self.peer
    }
    fn gref(&self) -> GrantRef {
        self.gref.expect("slot is armed until reclaimed")
    }
    fn take(&mut self) -> Result<Option<Box<dyn LocalPages>>> {
        let gref = self.gref();
        let table = &self.dom.inner.table;
        let Some(frame) = table.take_completed(gref)? else {
            return Ok(None);
        };
        table.offer_transfer(gref, self.peer)?;
        self.page(frame).map(Some)
    }
    fn reclaim(mut self: Box<Self>) -> Result<Option<Box<dyn LocalPages>>> {
        self.do_reclaim()
    }
}

impl Drop for SimSlot {
    fn drop(&mut self) {
        if let Err(e) = self.do_reclaim() {
            tracing::warn!(error = %e, "reclaiming a transfer slot at drop failed");
        }
    }
}

// --------------------------------------------------------- event channels

/// An event-channel port of a simulated domain: an eventfd we read and the
/// peer's eventfd we write.
#[derive(Debug)]
pub struct SimChannel {
    pub(super) dom: Arc<Inner>,
    pub(super) port: Port,
    pub(super) remote: DomId,
    pub(super) recv: OwnedFd,
    pub(super) send: Arc<OwnedFd>,
    pub(super) afd: OnceLock<AsyncFd<OwnedFd>>,
    pub(super) closed: bool,
}

impl SimChannel {
    fn afd(&self) -> std::io::Result<&AsyncFd<OwnedFd>> {
        if let Some(a) = self.afd.get() {
            return Ok(a);
        }
        let a = crate::shm::register_async_fd(self.recv.try_clone()?, Interest::READABLE)?;
        let _ = self.afd.set(a);
        Ok(self.afd.get().expect("just set"))
    }

    fn do_close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        self.dom
            .ports
            .lock()
            .expect("ports lock")
            .remove(&self.port);
        self.dom.expect_ok(&Request::ClosePort { port: self.port })
    }
}

impl EventChannel for SimChannel {
    fn local_port(&self) -> Port {
        self.port
    }
    fn remote_domid(&self) -> DomId {
        self.remote
    }
    fn notify(&self) -> Result<()> {
        super::hv::signal(&self.send);
        Ok(())
    }
    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let afd = match self.afd() {
            Ok(a) => a,
            Err(e) => {
                return Poll::Ready(Err(io_err(format!("event channel port {}", self.port))(e)))
            }
        };
        loop {
            let mut guard = match ready!(afd.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => {
                    return Poll::Ready(Err(io_err(format!("event channel port {}", self.port))(e)))
                }
            };
            let mut buf = [0u8; 8];
            match rustix::io::read(afd.get_ref(), &mut buf) {
                Ok(_) => {
                    // The read reset the counter to 0: the fd is not readable
                    // now, so forget the readiness instead of finding that
                    // out with one more read next time. (A notification that
                    // arrived after this guard was taken is not lost: tokio
                    // only clears the readiness this guard observed.)
                    guard.clear_ready();
                    return Poll::Ready(Ok(()));
                }
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(e) => {
                    return Poll::Ready(Err(io_err(format!("event channel port {}", self.port))(
                        e.into(),
                    )))
                }
            }
        }
    }
    fn close(mut self: Box<Self>) -> Result<()> {
        self.do_close()
    }
}

impl Drop for SimChannel {
    fn drop(&mut self) {
        if let Err(e) = self.do_close() {
            tracing::debug!(error = %e, port = self.port, "closing a port at drop failed");
        }
    }
}
