//! Event channels on real Xen: one `/dev/xen/evtchn` descriptor per port.
//!
//! Why one descriptor per port rather than one per process with a
//! dispatcher: the device reports pending ports per descriptor, so with one
//! port per descriptor a wakeup of the descriptor *is* the port's event and
//! no task has to route port numbers; closing the descriptor unbinds the
//! port even if the process dies mid-way; and the pending ring of a
//! descriptor holding one port (which stays masked from its event until we
//! unmask it) cannot overflow in practice. The cost is one descriptor per
//! port, which the daemons' port counts (a few per device) easily afford.
//!
//! ```text
//!   poll_event:  AsyncFd readable?
//!                  read() pending ports  -- each read port is now masked
//!                  write() them back     -- unmask: a notify that came
//!                                           meanwhile stays pending and
//!                                           fires again, so none is lost
//!                  EAGAIN: clear readiness; Ready(()) if a port was read
//!                  EFBIG (ring overflow): IOCTL_EVTCHN_RESET, unmask our
//!                  port, report one (coalesced) event
//! ```

use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::sys::{Device, EVTCHN};
use crate::platform::{DomId, EventChannel, PlatformError, Port, Result};
use crate::shm::register_async_fd;

/// One bound port on its own `/dev/xen/evtchn` descriptor.
#[derive(Debug)]
pub struct XenChannel {
    dev: Device,
    port: Port,
    remote: DomId,
    afd: OnceLock<AsyncFd<std::os::fd::OwnedFd>>,
    closed: bool,
}

impl XenChannel {
    /// `BIND_UNBOUND_PORT` for `remote`.
    pub(super) fn unbound(remote: DomId) -> Result<XenChannel> {
        let dev = Device::open(EVTCHN, true)?;
        let port = dev.evtchn_bind_unbound(remote)?;
        Ok(XenChannel::new(dev, port, remote))
    }

    /// `BIND_INTERDOMAIN` to `remote`'s `remote_port`.
    pub(super) fn interdomain(remote: DomId, remote_port: Port) -> Result<XenChannel> {
        let dev = Device::open(EVTCHN, true)?;
        let port = dev.evtchn_bind_interdomain(remote, remote_port)?;
        Ok(XenChannel::new(dev, port, remote))
    }

    fn new(dev: Device, port: Port, remote: DomId) -> XenChannel {
        XenChannel {
            dev,
            port,
            remote,
            afd: OnceLock::new(),
            closed: false,
        }
    }

    fn afd(&self) -> Result<&AsyncFd<std::os::fd::OwnedFd>> {
        if let Some(a) = self.afd.get() {
            return Ok(a);
        }
        let fd = self.dev.dup()?;
        let a = register_async_fd(fd, Interest::READABLE).map_err(|source| PlatformError::Io {
            what: format!("registering {EVTCHN} (port {}) with tokio", self.port),
            error: source,
        })?;
        // A racing poll may have set it first; either registration works.
        let _ = self.afd.set(a);
        Ok(self.afd.get().expect("just set"))
    }

    fn io(&self, what: &str) -> impl FnOnce(rustix::io::Errno) -> PlatformError {
        let what = format!("{EVTCHN} {what} (port {})", self.port);
        move |e| PlatformError::Io {
            what,
            error: e.into(),
        }
    }

    /// Unmasks `port` (writes its number back).
    fn unmask(&self, port: Port) -> Result<()> {
        rustix::io::write(&self.dev, &port.to_ne_bytes())
            .map(drop)
            .map_err(self.io("write (unmask)"))
    }

    /// Reads every pending port and unmasks it. `Ok(true)` if any was
    /// pending; stops at EAGAIN.
    fn drain(&self) -> Result<bool> {
        let mut fired = false;
        loop {
            let mut buf = [0u8; 64];
            match rustix::io::read(&self.dev, &mut buf) {
                Ok(0) => return Ok(fired),
                Ok(n) => {
                    for chunk in buf[..n - n % 4].chunks_exact(4) {
                        let p = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
                        if p != self.port {
                            tracing::warn!(port = p, ours = self.port, "event on a port not ours");
                        }
                        self.unmask(p)?;
                        fired = true;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(fired),
                Err(rustix::io::Errno::FBIG) => {
                    // The pending ring overflowed: start it afresh and treat
                    // it as one event on our port (events coalesce).
                    tracing::warn!(port = self.port, "evtchn ring overflow: resetting");
                    self.dev.evtchn_reset()?;
                    self.unmask(self.port)?;
                    fired = true;
                }
                Err(e) => return Err(self.io("read (pending ports)")(e)),
            }
        }
    }

    fn do_close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        self.dev.evtchn_unbind(self.port)
    }
}

impl EventChannel for XenChannel {
    fn local_port(&self) -> Port {
        self.port
    }
    fn remote_domid(&self) -> DomId {
        self.remote
    }
    fn notify(&self) -> Result<()> {
        self.dev.evtchn_notify(self.port)
    }
    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let afd = match self.afd() {
            Ok(a) => a,
            Err(e) => return Poll::Ready(Err(e)),
        };
        loop {
            let mut guard = match ready!(afd.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(source) => {
                    return Poll::Ready(Err(PlatformError::Io {
                        what: format!("{EVTCHN} poll (port {})", self.port),
                        error: source,
                    }))
                }
            };
            match self.drain() {
                Ok(fired) => {
                    // drain() stopped at EAGAIN: the descriptor is empty.
                    guard.clear_ready();
                    if fired {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
    fn close(mut self: Box<Self>) -> Result<()> {
        self.do_close()
    }
}

impl Drop for XenChannel {
    fn drop(&mut self) {
        // Closing the descriptor unbinds too; the explicit unbind reports.
        if let Err(e) = self.do_close() {
            tracing::debug!(error = %e, port = self.port, "unbinding a port at drop failed");
        }
    }
}
