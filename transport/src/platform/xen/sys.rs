//! The Linux Xen devices' ioctls: request numbers, argument layouts
//! (include/uapi/xen/{gntalloc,gntdev,evtchn}.h, x86_64) and one safe
//! wrapper per ioctl. Every `unsafe` block of the xen platform that calls
//! into the kernel is here; each wrapper builds the exact argument struct
//! its request expects, so callers cannot pass a wrong one.
//!
//! Errors name the device and the ioctl (`/dev/xen/gntdev
//! IOCTL_GNTDEV_MAP_GRANT_REF (domid 3, refs [8, 9])`).

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::platform::{DomId, GrantRef, PlatformError, Port, Result, UnmapNotify};

/// The grant-allocation device.
pub const GNTALLOC: &str = "/dev/xen/gntalloc";
/// The grant-mapping device.
pub const GNTDEV: &str = "/dev/xen/gntdev";
/// The event-channel device.
pub const EVTCHN: &str = "/dev/xen/evtchn";

// ------------------------------------------------------------ request numbers
// _IOC(_IOC_NONE, type, nr, size) = size << 16 | type << 8 | nr.

const IOCTL_EVTCHN_BIND_INTERDOMAIN: u64 = 0x0008_4501;
const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u64 = 0x0004_4502;
const IOCTL_EVTCHN_UNBIND: u64 = 0x0004_4503;
const IOCTL_EVTCHN_NOTIFY: u64 = 0x0004_4504;
const IOCTL_EVTCHN_RESET: u64 = 0x0000_4505;

const IOCTL_GNTDEV_MAP_GRANT_REF: u64 = 0x0018_4700;
const IOCTL_GNTDEV_UNMAP_GRANT_REF: u64 = 0x0010_4701;
const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u64 = 0x0010_4707;
const IOCTL_GNTDEV_GRANT_COPY: u64 = 0x0010_4708;

const IOCTL_GNTALLOC_ALLOC_GREF: u64 = 0x0018_4705;
const IOCTL_GNTALLOC_DEALLOC_GREF: u64 = 0x0010_4706;
const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u64 = 0x0010_4707;

/// `GNTALLOC_FLAG_WRITABLE`: the peer may map the pages writable.
const GNTALLOC_FLAG_WRITABLE: u16 = 1;
/// `UNMAP_NOTIFY_CLEAR_BYTE`.
const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 1;
/// `UNMAP_NOTIFY_SEND_EVENT`.
const UNMAP_NOTIFY_SEND_EVENT: u32 = 2;
/// `GNTCOPY_source_gref`.
pub const GNTCOPY_SOURCE_GREF: u16 = 1;
/// `GNTCOPY_dest_gref`.
pub const GNTCOPY_DEST_GREF: u16 = 2;

// ------------------------------------------------------------------ layouts

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
struct BindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}

/// `struct ioctl_evtchn_bind_unbound_port`, `_unbind`, `_notify`: one u32.
#[repr(C)]
struct OneU32 {
    value: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` without its `refs[]` (which follow
/// as `{u32 domid, u32 ref}` pairs).
#[repr(C)]
struct MapGrantRefHead {
    count: u32,
    pad: u32,
    index: u64,
}

/// `struct ioctl_gntdev_unmap_grant_ref` and
/// `struct ioctl_gntalloc_dealloc_gref` (the same 16 bytes).
#[repr(C)]
struct IndexCount {
    index: u64,
    count: u32,
    pad: u32,
}

/// `struct ioctl_gntdev_unmap_notify` and `struct ioctl_gntalloc_unmap_notify`.
#[repr(C)]
struct UnmapNotifyArg {
    index: u64,
    action: u32,
    event_channel_port: u32,
}

/// `struct ioctl_gntalloc_alloc_gref` without its `gref_ids[]`.
#[repr(C)]
struct AllocGrefHead {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
}

/// `struct ioctl_gntdev_grant_copy`.
#[repr(C)]
struct GrantCopyArg {
    count: u32,
    segments: *mut CopySegment,
}

/// `struct gntdev_grant_copy_segment`, 24 bytes: two 8-byte unions
/// (a virtual address, or `{u32 ref, u16 offset, u16 domid}`), then len,
/// flags and the status the kernel writes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CopySegment {
    /// Source: an address, or a packed foreign reference (see [`foreign`]).
    pub source: u64,
    /// Destination, likewise.
    pub dest: u64,
    /// Bytes.
    pub len: u16,
    /// `GNTCOPY_*` flags saying which side is a grant.
    pub flags: u16,
    /// `GNTST_*` written by the kernel.
    pub status: i16,
    /// Padding to 24 bytes.
    pub pad: u16,
}

const _: () = {
    assert!(std::mem::size_of::<BindInterdomain>() == 8);
    assert!(std::mem::size_of::<MapGrantRefHead>() == 16);
    assert!(std::mem::size_of::<IndexCount>() == 16);
    assert!(std::mem::size_of::<UnmapNotifyArg>() == 16);
    assert!(std::mem::size_of::<AllocGrefHead>() == 16);
    assert!(std::mem::size_of::<GrantCopyArg>() == 16);
    assert!(std::mem::size_of::<CopySegment>() == 24);
    assert!(std::mem::offset_of!(CopySegment, len) == 16);
    assert!(std::mem::offset_of!(CopySegment, status) == 20);
};

/// The foreign side of a copy segment: `{u32 ref, u16 offset, u16 domid}`
/// packed into the union's 8 bytes (little-endian).
pub fn foreign(gref: GrantRef, offset: u16, domid: DomId) -> u64 {
    u64::from(gref) | u64::from(offset) << 32 | u64::from(domid) << 48
}

// ------------------------------------------------------------------ devices

/// An open Xen device, with its path for error messages.
#[derive(Debug)]
pub struct Device {
    path: &'static str,
    fd: OwnedFd,
}

impl Device {
    /// Opens `path` read-write, close-on-exec (and non-blocking if asked).
    pub fn open(path: &'static str, nonblocking: bool) -> Result<Device> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if nonblocking {
            o.custom_flags(libc::O_NONBLOCK);
        }
        let f: File = o.open(path).map_err(|source| PlatformError::Io {
            what: format!("opening {path} (is the Xen module loaded and this a Xen domain?)"),
            error: source,
        })?;
        Ok(Device { path, fd: f.into() })
    }

    /// The device's path.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// A second descriptor for the same open device (for tokio's reactor).
    pub fn dup(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|source| PlatformError::Io {
            what: format!("duplicating the {} descriptor", self.path),
            error: source,
        })
    }

    fn err(&self, ioctl: &str, args: String) -> impl FnOnce(std::io::Error) -> PlatformError {
        let what = format!("{} {ioctl} ({args})", self.path);
        move |source| PlatformError::Io {
            what,
            error: source,
        }
    }

    /// Issues `request` with `arg`.
    ///
    /// # Safety
    /// `arg` must point to memory laid out as `request` expects (including
    /// any trailing array the kernel reads or writes), valid for the call.
    unsafe fn ioctl(&self, request: u64, arg: *mut c_void) -> std::io::Result<i32> {
        // SAFETY: the fd is open for the Device's life; the caller vouches
        // for `arg`.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as libc::c_ulong, arg) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    // --------------------------------------------------------------- evtchn

    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: a new port `remote` may bind.
    pub fn evtchn_bind_unbound(&self, remote: DomId) -> Result<Port> {
        let mut a = OneU32 {
            value: u32::from(remote),
        };
        // SAFETY: `a` is the one-u32 struct this request reads.
        let r = unsafe { self.ioctl(IOCTL_EVTCHN_BIND_UNBOUND_PORT, (&raw mut a).cast()) };
        r.map(|p| p as Port).map_err(self.err(
            "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
            format!("remote domain {remote}"),
        ))
    }

    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: binds to `remote`'s port.
    pub fn evtchn_bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port> {
        let mut a = BindInterdomain {
            remote_domain: u32::from(remote),
            remote_port,
        };
        // SAFETY: `a` is the struct this request reads.
        let r = unsafe { self.ioctl(IOCTL_EVTCHN_BIND_INTERDOMAIN, (&raw mut a).cast()) };
        r.map(|p| p as Port).map_err(self.err(
            "IOCTL_EVTCHN_BIND_INTERDOMAIN",
            format!("remote domain {remote}, remote port {remote_port}"),
        ))
    }

    /// `IOCTL_EVTCHN_NOTIFY` on our `port`.
    pub fn evtchn_notify(&self, port: Port) -> Result<()> {
        let mut a = OneU32 { value: port };
        // SAFETY: `a` is the one-u32 struct this request reads.
        let r = unsafe { self.ioctl(IOCTL_EVTCHN_NOTIFY, (&raw mut a).cast()) };
        r.map(drop)
            .map_err(self.err("IOCTL_EVTCHN_NOTIFY", format!("port {port}")))
    }

    /// `IOCTL_EVTCHN_UNBIND` of our `port`.
    pub fn evtchn_unbind(&self, port: Port) -> Result<()> {
        let mut a = OneU32 { value: port };
        // SAFETY: `a` is the one-u32 struct this request reads.
        let r = unsafe { self.ioctl(IOCTL_EVTCHN_UNBIND, (&raw mut a).cast()) };
        r.map(drop)
            .map_err(self.err("IOCTL_EVTCHN_UNBIND", format!("port {port}")))
    }

    /// `IOCTL_EVTCHN_RESET`: empties the pending ring after an overflow.
    pub fn evtchn_reset(&self) -> Result<()> {
        // SAFETY: this request takes no argument.
        let r = unsafe { self.ioctl(IOCTL_EVTCHN_RESET, std::ptr::null_mut()) };
        r.map(drop)
            .map_err(self.err("IOCTL_EVTCHN_RESET", String::new()))
    }

    // -------------------------------------------------------------- gntalloc

    /// `IOCTL_GNTALLOC_ALLOC_GREF`: allocates and grants `count` pages to
    /// `peer`; returns the mmap offset and the references.
    pub fn gntalloc_alloc(
        &self,
        peer: DomId,
        count: usize,
        writable: bool,
    ) -> Result<(u64, Vec<GrantRef>)> {
        let args = format!("domid {peer}, {count} pages");
        let n = u32::try_from(count).map_err(|_| {
            PlatformError::InvalidArgument(format!("{count} pages is too many to share"))
        })?;
        // u64 words: the 16-byte head, then count u32s (at least one, as the
        // uapi struct declares `gref_ids[1]`), 8-byte aligned.
        let words = 2 + count.max(1).div_ceil(2);
        let mut buf = vec![0u64; words];
        let head = AllocGrefHead {
            domid: peer,
            flags: if writable { GNTALLOC_FLAG_WRITABLE } else { 0 },
            count: n,
            index: 0,
        };
        // SAFETY: the buffer is at least 16 bytes and 8-aligned; a
        // repr(C) head of 16 bytes fits at its start.
        unsafe { buf.as_mut_ptr().cast::<AllocGrefHead>().write(head) };
        // SAFETY: the buffer holds the head and room for `count` gref ids,
        // which is what this request reads and writes.
        unsafe { self.ioctl(IOCTL_GNTALLOC_ALLOC_GREF, buf.as_mut_ptr().cast()) }
            .map_err(self.err("IOCTL_GNTALLOC_ALLOC_GREF", args))?;
        let index = buf[1];
        let refs = (0..count)
            .map(|i| {
                let w = buf[2 + i / 2];
                if i % 2 == 0 {
                    w as u32
                } else {
                    (w >> 32) as u32
                }
            })
            .collect();
        Ok((index, refs))
    }

    /// `IOCTL_GNTALLOC_DEALLOC_GREF`.
    pub fn gntalloc_dealloc(&self, index: u64, count: usize) -> Result<()> {
        let mut a = IndexCount {
            index,
            count: count as u32,
            pad: 0,
        };
        // SAFETY: `a` is the struct this request reads.
        let r = unsafe { self.ioctl(IOCTL_GNTALLOC_DEALLOC_GREF, (&raw mut a).cast()) };
        r.map(drop).map_err(self.err(
            "IOCTL_GNTALLOC_DEALLOC_GREF",
            format!("index {index:#x}, {count} pages"),
        ))
    }

    // ---------------------------------------------------------------- gntdev

    /// `IOCTL_GNTDEV_MAP_GRANT_REF`: reserves a mapping of `refs` (all from
    /// `peer`); returns the mmap offset. The hypervisor maps at mmap time.
    pub fn gntdev_map(&self, peer: DomId, refs: &[GrantRef]) -> Result<u64> {
        let args = format!("domid {peer}, refs {refs:?}");
        let count = u32::try_from(refs.len()).map_err(|_| {
            PlatformError::InvalidArgument(format!("{} references is too many", refs.len()))
        })?;
        // u64 words: head, then one {u32 domid, u32 ref} per reference.
        let mut buf = vec![0u64; 2 + refs.len().max(1)];
        let head = MapGrantRefHead {
            count,
            pad: 0,
            index: 0,
        };
        // SAFETY: 16-byte, 8-aligned head at the start of a buffer of at
        // least 24 bytes.
        unsafe { buf.as_mut_ptr().cast::<MapGrantRefHead>().write(head) };
        for (i, r) in refs.iter().enumerate() {
            buf[2 + i] = u64::from(peer) | u64::from(*r) << 32;
        }
        // SAFETY: the buffer holds the head and `count` reference pairs,
        // what this request reads (it writes only `index`).
        unsafe { self.ioctl(IOCTL_GNTDEV_MAP_GRANT_REF, buf.as_mut_ptr().cast()) }
            .map_err(self.err("IOCTL_GNTDEV_MAP_GRANT_REF", args))?;
        Ok(buf[1])
    }

    /// `IOCTL_GNTDEV_UNMAP_GRANT_REF` (after munmap).
    pub fn gntdev_unmap(&self, index: u64, count: usize) -> Result<()> {
        let mut a = IndexCount {
            index,
            count: count as u32,
            pad: 0,
        };
        // SAFETY: `a` is the struct this request reads.
        let r = unsafe { self.ioctl(IOCTL_GNTDEV_UNMAP_GRANT_REF, (&raw mut a).cast()) };
        r.map(drop).map_err(self.err(
            "IOCTL_GNTDEV_UNMAP_GRANT_REF",
            format!("index {index:#x}, {count} pages"),
        ))
    }

    /// `IOCTL_GNTDEV_GRANT_COPY` of `segs`; the kernel writes each status.
    pub fn gntdev_copy(&self, segs: &mut [CopySegment]) -> Result<()> {
        let mut a = GrantCopyArg {
            count: segs.len() as u32,
            segments: segs.as_mut_ptr(),
        };
        // SAFETY: `a` points at `segs`, `count` segments of the layout the
        // kernel expects, writable for the status; the local addresses in
        // them were checked by the caller to lie in memory it owns.
        let r = unsafe { self.ioctl(IOCTL_GNTDEV_GRANT_COPY, (&raw mut a).cast()) };
        r.map(drop).map_err(self.err(
            "IOCTL_GNTDEV_GRANT_COPY",
            format!("{} segments", segs.len()),
        ))
    }

    // ----------------------------------------------------- both grant devices

    /// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY` / `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`:
    /// `index` is the mapping's mmap offset; the byte to clear is relative
    /// to it.
    pub fn set_unmap_notify(&self, index: u64, notify: UnmapNotify) -> Result<()> {
        let (request, name) = if self.path == GNTALLOC {
            (
                IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
                "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY",
            )
        } else {
            (
                IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
                "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
            )
        };
        let mut action = 0;
        let mut byte = 0u64;
        if let Some(b) = notify.clear_byte {
            action |= UNMAP_NOTIFY_CLEAR_BYTE;
            byte = b as u64;
        }
        if notify.event.is_some() {
            action |= UNMAP_NOTIFY_SEND_EVENT;
        }
        let mut a = UnmapNotifyArg {
            index: index + byte,
            action,
            event_channel_port: notify.event.unwrap_or(0),
        };
        // SAFETY: `a` is the struct both devices' request reads.
        let r = unsafe { self.ioctl(request, (&raw mut a).cast()) };
        r.map(drop)
            .map_err(self.err(name, format!("index {index:#x}, {notify:?}")))
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
