//! The small interface all protocol code is written against.
//!
//! A [`Platform`] is "this domain, on some Xen": it shares pages with other
//! domains, maps their grants, copies and transfers pages, and binds event
//! channels. Two implementations exist: the simulated host
//! ([`crate::sim::SimDomain`]) and real Xen through
//! `/dev/xen/{gntalloc,gntdev,evtchn}` ([`xen::XenPlatform`], which has the
//! ioctl-level table). The trait follows what the Linux
//! devices can do, so the real implementation fits without changing
//! protocol code:
//!
//! | trait method | real Xen from user space |
//! |---|---|
//! | [`Platform::share_pages`] | gntalloc `ALLOC_GREF` + mmap (pages are allocated and granted in one step) |
//! | [`SharedPages::end`] | munmap + gntalloc `DEALLOC_GREF` |
//! | [`Platform::map_grants`] | gntdev `MAP_GRANT_REF` (a batch) + mmap |
//! | [`ForeignMapping::unmap`] | munmap + gntdev `UNMAP_GRANT_REF` |
//! | `set_unmap_notify` | gntalloc/gntdev `SET_UNMAP_NOTIFY` |
//! | [`Platform::grant_copy`] | gntdev `GRANT_COPY` (local side: an address in our memory) |
//! | [`Platform::alloc_pages`] | anonymous memory |
//! | [`Platform::offer_transfer_slot`], [`Platform::transfer_page`] | not available (Linux cannot create accept_transfer grants): [`PlatformError::Unsupported`] |
//! | [`Platform::alloc_unbound_port`], [`Platform::bind_interdomain`] | evtchn `BIND_UNBOUND_PORT` / `BIND_INTERDOMAIN` |
//! | [`EventChannel::notify`], [`EventChannel::poll_event`] | evtchn `NOTIFY`; read + unmask, through tokio's `AsyncFd` |
//!
//! Every handle is an owned object that undoes itself when dropped (ends the
//! share, unmaps, closes the port); the explicit methods (`end`, `unmap`,
//! `close`) report errors that a drop can only log.
//!
//! Handles are trait objects so that a daemon can pick its platform at run
//! time (`--platform sim|xen`) without making every protocol type generic.

pub mod xen;

use std::any::Any;
use std::fmt::Debug;
use std::future::poll_fn;
use std::task::{Context, Poll};

pub use crate::abi::grant::{DomId, GnttabStatus, GrantRef};
use crate::grant::GrantError;
use crate::shm::{Region, ShmError};

/// An event-channel port number.
pub type Port = u32;

/// Whether the peer may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The peer may only read.
    ReadOnly,
    /// The peer may read and write.
    ReadWrite,
}

impl Access {
    /// True for [`Access::ReadWrite`].
    pub fn writable(self) -> bool {
        self == Access::ReadWrite
    }
}

/// Errors of platform operations. Each message says what was attempted and
/// what refused it.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The hypervisor refused a grant-table operation.
    #[error("{what}: {status}")]
    Gnttab {
        /// The operation, with its arguments.
        what: String,
        /// Xen's status code.
        status: GnttabStatus,
    },
    /// The hypervisor refused with an errno (event channels, domains).
    #[error("{what}: {}", errno_name(*errno))]
    Errno {
        /// The operation, with its arguments.
        what: String,
        /// The (positive) errno Xen returns for it.
        errno: i32,
    },
    /// The guest-side grant table refused.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The operation does not exist on this platform.
    #[error("{0} is not supported on this platform")]
    Unsupported(&'static str),
    /// Mapping memory failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// Talking to the hypervisor (device or simulated host) failed.
    /// (Its text includes the I/O error, which is therefore not also its
    /// `source()`: a chain printer would show it twice.)
    #[error("{what}: {error}")]
    Io {
        /// What we were doing.
        what: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The caller passed an argument the operation cannot take.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The hypervisor answered something that makes no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Linux errno names for the values event-channel operations return.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc_errno::EPERM => "EPERM",
        libc_errno::ENOENT => "ENOENT",
        libc_errno::ESRCH => "ESRCH",
        libc_errno::EINVAL => "EINVAL",
        libc_errno::ENOSPC => "ENOSPC",
        libc_errno::EBUSY => "EBUSY",
        libc_errno::EEXIST => "EEXIST",
        libc_errno::ENOMEM => "ENOMEM",
        _ => return format!("errno {errno}"),
    };
    format!("{name} ({errno})")
}

/// The errno values used by event-channel errors (Linux numbering, which is
/// also Xen's).
pub mod libc_errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// No such entry.
    pub const ENOENT: i32 = 2;
    /// No such domain.
    pub const ESRCH: i32 = 3;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Already exists.
    pub const EEXIST: i32 = 17;
    /// Device or port busy.
    pub const EBUSY: i32 = 16;
    /// Invalid argument (e.g. a closed port).
    pub const EINVAL: i32 = 22;
    /// No free port.
    pub const ENOSPC: i32 = 28;
}

/// Result of platform operations.
pub type Result<T, E = PlatformError> = std::result::Result<T, E>;

/// What to do when this side's share or mapping goes away (explicitly, or
/// because this domain died): clear one byte of the shared pages and/or send
/// an event on one of this domain's ports. The peer learns that we are gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Byte offset, within the shared/mapped pages, to set to 0.
    pub clear_byte: Option<usize>,
    /// Local port to notify.
    pub event: Option<Port>,
}

/// Pages of this domain granted to a peer.
pub trait SharedPages: Send + Sync + Debug {
    /// The peer they are granted to.
    fn peer(&self) -> DomId;
    /// One grant reference per page, in order.
    fn refs(&self) -> &[GrantRef];
    /// Our mapping of the pages.
    fn memory(&self) -> &Region;
    /// Arranges `notify` for when the share ends or this domain dies.
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()>;
    /// Ends the share and frees the pages. Refused while the peer still maps
    /// a page: the share comes back intact (as far as it was not ended) with
    /// the error, to be retried later.
    #[allow(clippy::result_large_err)]
    fn end(self: Box<Self>) -> Result<(), (Box<dyn SharedPages>, PlatformError)>;
}

/// A peer's granted pages mapped into this domain.
pub trait ForeignMapping: Send + Sync + Debug {
    /// The granting domain.
    fn peer(&self) -> DomId;
    /// The references mapped, in order.
    fn refs(&self) -> &[GrantRef];
    /// The mapped pages, contiguous, in the order of `refs`.
    fn memory(&self) -> &Region;
    /// Arranges `notify` for when this mapping goes away or this domain dies.
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()>;
    /// Unmaps.
    fn unmap(self: Box<Self>) -> Result<()>;
}

/// Pages of this domain's own memory, not granted to anyone: the local side
/// of a grant copy, or a page to transfer.
pub trait LocalPages: Send + Sync + Debug {
    /// The pages.
    fn memory(&self) -> &Region;
    /// For the platform to recognise its own handles.
    fn as_any(&self) -> &dyn Any;
    /// For the platform to take back its own handles.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// One side of a grant copy.
#[derive(Debug, Clone, Copy)]
pub enum CopyPtr<'a> {
    /// A page another domain granted us.
    Grant {
        /// The granting domain.
        domid: DomId,
        /// Its reference.
        gref: GrantRef,
        /// Offset in the page.
        offset: u16,
    },
    /// Our own memory.
    Local {
        /// The pages.
        pages: &'a dyn LocalPages,
        /// Byte offset within them.
        offset: usize,
    },
}

/// One grant-copy operation; `status` is written by [`Platform::grant_copy`].
#[derive(Debug, Clone, Copy)]
pub struct GrantCopy<'a> {
    /// Copy from.
    pub source: CopyPtr<'a>,
    /// Copy to.
    pub dest: CopyPtr<'a>,
    /// Bytes; neither side may cross its page end.
    pub len: u16,
    /// Result of this operation.
    pub status: GnttabStatus,
}

/// An accept_transfer slot offered to a peer.
pub trait TransferSlot: Send + Sync + Debug {
    /// The peer allowed to transfer into it.
    fn peer(&self) -> DomId;
    /// Its grant reference (what the peer is told).
    fn gref(&self) -> GrantRef;
    /// If a page has been transferred in, takes it and re-arms the slot (same
    /// reference) for the next transfer.
    fn take(&mut self) -> Result<Option<Box<dyn LocalPages>>>;
    /// Withdraws the slot by the reclaim rule: a page that was committed
    /// meanwhile is waited for and returned.
    fn reclaim(self: Box<Self>) -> Result<Option<Box<dyn LocalPages>>>;
}

/// One bound event-channel port.
pub trait EventChannel: Send + Sync + Debug {
    /// Our port number.
    fn local_port(&self) -> Port;
    /// The domain at the other end.
    fn remote_domid(&self) -> DomId;
    /// Signals the other end.
    fn notify(&self) -> Result<()>;
    /// Ready once for any number of events since the last ready (events
    /// coalesce). Must be polled inside a tokio runtime.
    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Result<()>>;
    /// Closes the port.
    fn close(self: Box<Self>) -> Result<()>;
}

impl dyn EventChannel + '_ {
    /// Waits for the next event (any number of notifications coalesce into
    /// one wakeup).
    ///
    /// Cancellation safe: dropping the future loses no event that it has not
    /// returned.
    pub async fn wait(&self) -> Result<()> {
        poll_fn(|cx| self.poll_event(cx)).await
    }
}

/// This domain, on some Xen.
pub trait Platform: Send + Sync + Debug {
    /// Our domain id.
    fn domid(&self) -> DomId;
    /// The platform's name: `"sim"` or `"xen"`.
    fn name(&self) -> &'static str;
    /// Allocates `count` zeroed pages and grants them to `peer`.
    fn share_pages(
        &self,
        peer: DomId,
        count: usize,
        access: Access,
    ) -> Result<Box<dyn SharedPages>>;
    /// Maps `refs` granted by `peer`, contiguously. All or nothing: if one
    /// reference is refused, none stays mapped and the error names it.
    fn map_grants(
        &self,
        peer: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<Box<dyn ForeignMapping>>;
    /// Allocates `count` zeroed pages of our own.
    fn alloc_pages(&self, count: usize) -> Result<Box<dyn LocalPages>>;
    /// Performs the copies; each op's `status` says how it went. Returns an
    /// error only if the batch could not be submitted.
    fn grant_copy(&self, ops: &mut [GrantCopy<'_>]) -> Result<()>;
    /// Offers an accept_transfer slot to `peer`.
    fn offer_transfer_slot(&self, peer: DomId) -> Result<Box<dyn TransferSlot>>;
    /// Gives the one page `page` to `peer` through its slot `gref`. The page
    /// is ours no longer, whether the transfer succeeds or not.
    fn transfer_page(&self, page: Box<dyn LocalPages>, peer: DomId, gref: GrantRef) -> Result<()>;
    /// Allocates a port that `remote` may bind to.
    fn alloc_unbound_port(&self, remote: DomId) -> Result<Box<dyn EventChannel>>;
    /// Binds to `remote`'s unbound port `remote_port`.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Box<dyn EventChannel>>;
    /// Resolves, with the reason, when this platform handle can no longer
    /// work: its domain was destroyed or its host went away. A daemon
    /// selects on it and exits with that error instead of idling or
    /// retrying forever. The default never resolves: on real Xen a
    /// domain's processes go with the domain. Must be polled inside a
    /// tokio runtime.
    fn ended(&self) -> futures::future::BoxFuture<'static, PlatformError> {
        Box::pin(std::future::pending())
    }
}
