//! The simulated hypervisor's state and operations, free of sockets: machine
//! memory and who owns each frame, every domain's grant table (shared with
//! the domain, which writes it by the seed's rules), active grant pins,
//! mappings, event-channel ports and unmap notifications.
//!
//! A domain is separate from the processes in it. Each process that joins
//! a domain opens a *session* of it (as a Linux process opens
//! `/dev/xen/{gntalloc,gntdev,evtchn}`): what the process allocates, maps,
//! binds or registers belongs to its session, and is released when the
//! session ends ([`sessions`] has the life cycle). The grant table belongs
//! to the domain; its references are handed to sessions in chunks of
//! [`CHUNK`] entries so that the sessions of one domain never collide.
//!
//! Invariants (checked by the tests and visible in the report):
//! * a frame has at most one owner (a domain, and the session in it that
//!   allocated or received it); a frame whose owner died while others still
//!   mapped it is an orphan, freed at its last unmap;
//! * an entry of a grant table has `GTF_reading` set iff some mapping pins
//!   it, and `GTF_writing` iff some writable mapping pins it;
//! * a chunk of a grant table is free, owned by one live session, or
//!   draining (its session ended while peers still mapped some entries):
//!   every entry of a free chunk is invalid, and a draining chunk's entries
//!   are cleared one by one at their last unmap;
//! * two bound ports hold each other's eventfds crossed (my `send` is the
//!   peer's `recv`), so notifications go straight from process to process;
//!   an unbound port keeps both eventfds so that a later bind reuses them.

mod events;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{fallocate, FallocateFlags};

use super::report::DomainState;
use super::wire::{NotifySpec, Reply, WireCopy, WirePtr};
use crate::abi::grant::GnttabStatus;
use crate::grant::entry::{hv_pin, hv_transfer_commit, hv_transfer_complete, hv_unpin};
use crate::grant::table::entry_cells;
use crate::shm::{memfd, Protection, Region, PAGE_SIZE};

pub(crate) use sessions::Left;

/// Entries of a grant table handed to a session at a time: one grant-table
/// frame's worth.
pub const CHUNK: u32 = 512;

/// Sizes of the simulated machine.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Machine memory in 4 KiB frames (sparse: only used frames cost memory).
    pub machine_frames: u64,
    /// Entries in each domain's grant table (a multiple of 512; each process
    /// of a domain is handed 512 at a time).
    pub gnttab_entries: u32,
    /// Highest port number + 1 per domain.
    pub max_ports: u32,
    /// Quotas of the host's xenstored for unprivileged domains.
    pub xenstore_quotas: crate::xenstore::Quotas,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            machine_frames: 1 << 18, // 1 GiB
            gnttab_entries: 32 * 512,
            max_ports: 4096,
            xenstore_quotas: crate::xenstore::Quotas::default(),
        }
    }
}

/// Who makes a call: a session of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The domain.
    pub domid: u16,
    /// The session (unique on the host, never reused).
    pub session: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct FrameInfo {
    owner: Option<u16>,
    /// The session of `owner` the frame belongs to.
    session: u64,
    maps: u32,
    orphan: bool,
}

#[derive(Debug)]
struct Active {
    readers: u32,
    writers: u32,
}

#[derive(Debug)]
struct MapRec {
    session: u64,
    granter: u16,
    refs: Vec<u32>,
    frames: Vec<u64>,
    writable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Unbound { remote: u16 },
    Interdomain { remote: u16, port: u32 },
}

#[derive(Debug)]
struct PortRec {
    session: u64,
    state: PortState,
    recv: Arc<OwnedFd>,
    send: Arc<OwnedFd>,
}

#[derive(Debug)]
struct NotifyRec {
    session: u64,
    spec: NotifySpec,
}

/// Who holds a chunk of a grant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Nobody; every entry is invalid.
    Free,
    /// A live session.
    Owned(u64),
    /// Its session ended while peers mapped some of its entries; each is
    /// cleared at its last unmap, and the chunk is free once none is left.
    Draining,
}

/// One process's hold on a domain.
#[derive(Debug, Default)]
struct Session {
    /// Indexes of the grant-table chunks it owns.
    chunks: Vec<u32>,
}

#[derive(Debug)]
struct Domain {
    state: DomainState,
    /// Made by `CreateDomain`: lives until destroyed. Otherwise made by a
    /// join, and destroyed when its last session ends.
    persistent: bool,
    gnttab_fd: OwnedFd,
    gnttab: Region,
    active: HashMap<u32, Active>,
    frames_owned: u64,
    mappings: HashMap<u64, MapRec>,
    ports: BTreeMap<u32, PortRec>,
    notifies: HashMap<u64, NotifyRec>,
    sessions: BTreeMap<u64, Session>,
    chunks: Vec<Chunk>,
}

/// A reply plus fds to pass with it.
pub(crate) type Answer = (Reply, Vec<OwnedFd>);

fn status(s: GnttabStatus, message: String) -> Reply {
    Reply::Status {
        status: s.raw(),
        message,
    }
}

fn errno(e: i32, message: String) -> Reply {
    Reply::Errno { errno: e, message }
}

fn new_eventfd() -> std::io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Adds one to an eventfd's counter (the notification).
pub(crate) fn signal(fd: &OwnedFd) {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
        Err(e) => tracing::warn!(error = %e, "eventfd write failed"),
    }
}

/// The simulated hypervisor.
#[derive(Debug)]
pub(crate) struct Hypervisor {
    cfg: HostConfig,
    mem_fd: OwnedFd,
    mem: Region,
    frames: Vec<FrameInfo>,
    free: Vec<u64>,
    domains: BTreeMap<u16, Domain>,
    next_id: u64,
}

impl Hypervisor {
    pub fn new(cfg: HostConfig) -> std::io::Result<Hypervisor> {
        let bytes = cfg.machine_frames * PAGE_SIZE as u64;
        let mem_fd = memfd("xenring-sim-machine", bytes).map_err(std::io::Error::other)?;
        let mem = Region::map_fd(mem_fd.as_fd(), 0, bytes as usize, Protection::ReadWrite)
            .map_err(std::io::Error::other)?;
        // Frame 0 is never handed out, so a zeroed entry never names a real page.
        let free = (1..cfg.machine_frames).rev().collect();
        Ok(Hypervisor {
            frames: vec![FrameInfo::default(); cfg.machine_frames as usize],
            cfg,
            mem_fd,
            mem,
            free,
            domains: BTreeMap::new(),
            next_id: 1,
        })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ------------------------------------------------------------- frames

    fn release_frame(&mut self, f: u64) {
        self.frames[f as usize] = FrameInfo::default();
        // Punching a hole both zeroes the frame and returns its memory.
        let off = f * PAGE_SIZE as u64;
        if let Err(e) = fallocate(
            &self.mem_fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            PAGE_SIZE as u64,
        ) {
            tracing::warn!(frame = f, error = %e, "punch hole failed; zeroing");
            self.mem.fill(off as usize, PAGE_SIZE, 0);
        }
        self.free.push(f);
    }

    /// Gives up ownership of frame `f`: freed now, or orphaned (freed at its
    /// last unmap) while others map it.
    fn disown_frame(&mut self, f: u64) {
        if self.frames[f as usize].maps == 0 {
            self.release_frame(f);
        } else {
            let fi = &mut self.frames[f as usize];
            fi.owner = None;
            fi.session = 0;
            fi.orphan = true;
        }
    }

    pub fn alloc_pages(&mut self, c: Caller, count: u32) -> Reply {
        if count as usize > self.free.len() {
            return status(
                GnttabStatus::NoSpace,
                format!(
                    "allocate {count} pages for domain {}: {} free",
                    c.domid,
                    self.free.len()
                ),
            );
        }
        let frames: Vec<u64> = (0..count)
            .map(|_| self.free.pop().expect("counted"))
            .collect();
        for f in &frames {
            let fi = &mut self.frames[*f as usize];
            fi.owner = Some(c.domid);
            fi.session = c.session;
        }
        if let Some(d) = self.domains.get_mut(&c.domid) {
            d.frames_owned += count as u64;
        }
        Reply::Frames { frames }
    }

    /// Whether frame `f` belongs to the caller's session.
    fn owned_by(&self, f: u64, c: Caller) -> bool {
        self.frames
            .get(f as usize)
            .is_some_and(|i| i.owner == Some(c.domid) && i.session == c.session)
    }

    pub fn free_pages(&mut self, c: Caller, frames: &[u64]) -> Reply {
        if let Some(f) = frames.iter().find(|f| !self.owned_by(**f, c)) {
            return status(
                GnttabStatus::BadPage,
                format!(
                    "free frame {f:#x}: not owned by this session of domain {}",
                    c.domid
                ),
            );
        }
        for f in frames {
            self.disown_frame(*f);
        }
        if let Some(d) = self.domains.get_mut(&c.domid) {
            d.frames_owned -= frames.len() as u64;
        }
        Reply::Ok
    }

    // ------------------------------------------------------- grant pinning

    /// Pins `granter`'s entry `gref` for `mapper`; returns the frame.
    fn pin(
        &mut self,
        granter: u16,
        gref: u32,
        mapper: u16,
        writable: bool,
    ) -> Result<u64, GnttabStatus> {
        let frames = &self.frames;
        let g = match self.domains.get_mut(&granter) {
            Some(g) if g.state == DomainState::Running => g,
            _ => return Err(GnttabStatus::BadDomain),
        };
        let (hdr, fr) = entry_cells(&g.gnttab, gref).ok_or(GnttabStatus::BadGntref)?;
        let frame = u64::from(hv_pin(hdr, fr, mapper, writable)?);
        if frames
            .get(frame as usize)
            .is_none_or(|i| i.owner != Some(granter))
        {
            // Granting a frame it does not own: undo our bits if we set them.
            let first = !g.active.contains_key(&gref);
            let a = g.active.get(&gref);
            let writers = a.map_or(0, |a| a.writers);
            hv_unpin(hdr, first, writable && writers == 0);
            return Err(GnttabStatus::BadPage);
        }
        let a = g.active.entry(gref).or_insert(Active {
            readers: 0,
            writers: 0,
        });
        if writable {
            a.writers += 1;
        } else {
            a.readers += 1;
        }
        Ok(frame)
    }

    fn unpin(&mut self, granter: u16, gref: u32, writable: bool) {
        let Some(g) = self.domains.get_mut(&granter) else {
            return;
        };
        let Some(a) = g.active.get_mut(&gref) else {
            return;
        };
        if writable {
            a.writers -= 1;
        } else {
            a.readers -= 1;
        }
        let last_writer = writable && a.writers == 0;
        let last = a.readers == 0 && a.writers == 0;
        if last {
            g.active.remove(&gref);
        }
        if let Some((hdr, _)) = entry_cells(&g.gnttab, gref) {
            hv_unpin(hdr, last, last_writer);
        }
        if last {
            sessions::after_last_unpin(g, gref);
        }
        self.reap(granter);
    }

    // ------------------------------------------------------------ mapping

    pub fn map(&mut self, c: Caller, granter: u16, writable: bool, refs: &[u32]) -> Reply {
        let mapper = c.domid;
        if refs.is_empty() {
            return status(
                GnttabStatus::GeneralError,
                "map: no grant references".into(),
            );
        }
        let mut frames = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            match self.pin(granter, *r, mapper, writable) {
                Ok(f) => frames.push(f),
                Err(s) => {
                    for done in &refs[..i] {
                        self.unpin(granter, *done, writable);
                    }
                    let mode = if writable { "writable" } else { "read-only" };
                    return status(
                        s,
                        format!("{mode} map of grant {r} of domain {granter} by domain {mapper}"),
                    );
                }
            }
        }
        for f in &frames {
            self.frames[*f as usize].maps += 1;
        }
        let handle = self.id();
        let d = self.domains.get_mut(&mapper).expect("mapper is connected");
        d.mappings.insert(
            handle,
            MapRec {
                session: c.session,
                granter,
                refs: refs.to_vec(),
                frames: frames.clone(),
                writable,
            },
        );
        Reply::Mapped { handle, frames }
    }

    /// Unmaps a mapping of the caller's session.
    pub fn unmap(&mut self, c: Caller, handle: u64) -> Reply {
        let mine = self
            .domains
            .get(&c.domid)
            .and_then(|d| d.mappings.get(&handle))
            .map(|m| m.session == c.session);
        match mine {
            Some(true) => self.unmap_any(c.domid, handle),
            Some(false) => status(
                GnttabStatus::BadHandle,
                format!(
                    "unmap of handle {handle} by domain {}: not mapped by this session",
                    c.domid
                ),
            ),
            None => status(
                GnttabStatus::BadHandle,
                format!("unmap of handle {handle} by domain {}: not mapped", c.domid),
            ),
        }
    }

    /// Unmaps mapping `handle` of domain `mapper`, whichever session made
    /// it: fires its notifications, unpins its grants, frees orphans.
    fn unmap_any(&mut self, mapper: u16, handle: u64) -> Reply {
        let Some(d) = self.domains.get_mut(&mapper) else {
            return status(
                GnttabStatus::BadDomain,
                format!("unmap: no domain {mapper}"),
            );
        };
        if !d.mappings.contains_key(&handle) {
            return status(
                GnttabStatus::BadHandle,
                format!("unmap of handle {handle} by domain {mapper}: not mapped"),
            );
        }
        let ids: Vec<u64> = d
            .notifies
            .iter()
            .filter(|(_, n)| n.spec.mapping == handle)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.fire_any(mapper, id);
        }
        let m = self
            .domains
            .get_mut(&mapper)
            .expect("present")
            .mappings
            .remove(&handle)
            .expect("present");
        for (r, f) in m.refs.iter().zip(&m.frames) {
            self.unpin(m.granter, *r, m.writable);
            let fi = &mut self.frames[*f as usize];
            fi.maps -= 1;
            if fi.maps == 0 && fi.orphan {
                self.release_frame(*f);
            }
        }
        Reply::Ok
    }

    // --------------------------------------------------------------- copy

    fn copy_side(
        &mut self,
        c: Caller,
        p: &WirePtr,
        len: u16,
        write: bool,
    ) -> Result<(u64, bool), GnttabStatus> {
        if p.offset as usize + len as usize > PAGE_SIZE {
            return Err(GnttabStatus::BadCopyArg);
        }
        if p.is_gref {
            let gref = u32::try_from(p.value).map_err(|_| GnttabStatus::BadGntref)?;
            Ok((self.pin(p.domid, gref, c.domid, write)?, true))
        } else if self.owned_by(p.value, c) {
            Ok((p.value, false))
        } else {
            Err(GnttabStatus::BadPage)
        }
    }

    fn copy_one(&mut self, c: Caller, op: &WireCopy) -> GnttabStatus {
        let (src, src_pinned) = match self.copy_side(c, &op.src, op.len, false) {
            Ok(v) => v,
            Err(s) => return s,
        };
        let result = match self.copy_side(c, &op.dst, op.len, true) {
            Ok((dst, dst_pinned)) => {
                let s = src as usize * PAGE_SIZE + op.src.offset as usize;
                let d = dst as usize * PAGE_SIZE + op.dst.offset as usize;
                self.mem.copy_from(d, &self.mem, s, op.len as usize);
                if dst_pinned {
                    self.unpin(op.dst.domid, op.dst.value as u32, true);
                }
                GnttabStatus::Okay
            }
            Err(s) => s,
        };
        if src_pinned {
            self.unpin(op.src.domid, op.src.value as u32, false);
        }
        result
    }

    pub fn copy(&mut self, c: Caller, ops: &[WireCopy]) -> Reply {
        let statuses = ops.iter().map(|op| self.copy_one(c, op).raw()).collect();
        Reply::Statuses { statuses }
    }

    // ----------------------------------------------------------- transfer

    /// Transfers the caller's `frame` into `to`'s accept-transfer entry
    /// `gref`; the page then belongs to the session of `to` that owns the
    /// entry's chunk.
    pub fn transfer(&mut self, c: Caller, frame: u64, to: u16, gref: u32) -> Reply {
        let sender = c.domid;
        let what = format!(
            "transfer of frame {frame:#x} from domain {sender} to grant {gref} of domain {to}"
        );
        if !self.owned_by(frame, c) || self.frames[frame as usize].maps != 0 {
            return status(GnttabStatus::BadPage, what);
        }
        // From here on the sender has lost the page, whatever happens.
        self.frames[frame as usize].owner = None;
        if let Some(d) = self.domains.get_mut(&sender) {
            d.frames_owned -= 1;
        }
        let outcome = match self.domains.get_mut(&to) {
            Some(r) if r.state == DomainState::Running => {
                match (entry_cells(&r.gnttab, gref), sessions::chunk_owner(r, gref)) {
                    (Some((hdr, fr)), Some(session)) => match hv_transfer_commit(hdr, sender) {
                        Err(s) => Err(s),
                        Ok(()) => {
                            r.frames_owned += 1;
                            let fi = &mut self.frames[frame as usize];
                            fi.owner = Some(to);
                            fi.session = session;
                            hv_transfer_complete(hdr, fr, frame as u32);
                            Ok(())
                        }
                    },
                    _ => Err(GnttabStatus::BadGntref),
                }
            }
            _ => Err(GnttabStatus::BadDomain),
        };
        match outcome {
            Ok(()) => Reply::Ok,
            Err(s) => {
                self.release_frame(frame);
                status(s, what)
            }
        }
    }
}

fn dup(fd: &Arc<OwnedFd>) -> Result<OwnedFd, Reply> {
    fd.try_clone()
        .map_err(|e| errno(crate::platform::libc_errno::ENOSPC, format!("dup: {e}")))
}
