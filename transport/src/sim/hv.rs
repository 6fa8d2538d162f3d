//! The simulated hypervisor's state and operations, free of sockets: machine
//! memory and who owns each frame, every domain's grant table (shared with
//! the domain, which writes it by the seed's rules), active grant pins,
//! mappings, event-channel ports and unmap notifications.
//!
//! Invariants (checked by the tests and visible in the report):
//! * a frame has at most one owner; a frame whose owner died while others
//!   still mapped it is an orphan, freed at its last unmap;
//! * an entry of a grant table has `GTF_reading` set iff some mapping pins
//!   it, and `GTF_writing` iff some writable mapping pins it;
//! * two bound ports hold each other's eventfds crossed (my `send` is the
//!   peer's `recv`), so notifications go straight from process to process;
//!   an unbound port keeps both eventfds so that a later bind reuses them.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{fallocate, FallocateFlags};

use super::report::{DomainReport, DomainState, HostReport};
use super::wire::{NotifySpec, Reply, WireCopy, WirePtr};
use crate::abi::grant::{GnttabStatus, GTF_TYPE_MASK};
use crate::grant::entry::{self, hv_pin, hv_transfer_commit, hv_transfer_complete, hv_unpin};
use crate::grant::table::{entry_cells, ENTRY_SIZE};
use crate::platform::libc_errno::{EEXIST, EINVAL, ENOSPC, ESRCH};
use crate::shm::{memfd, Protection, Region, PAGE_SIZE};

/// Sizes of the simulated machine.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Machine memory in 4 KiB frames (sparse: only used frames cost memory).
    pub machine_frames: u64,
    /// Entries in each domain's grant table (a multiple of 512).
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

#[derive(Debug, Clone, Copy, Default)]
struct FrameInfo {
    owner: Option<u16>,
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
    state: PortState,
    recv: Arc<OwnedFd>,
    send: Arc<OwnedFd>,
}

#[derive(Debug)]
struct Domain {
    state: DomainState,
    gnttab: Region,
    active: HashMap<u32, Active>,
    frames_owned: u64,
    mappings: HashMap<u64, MapRec>,
    ports: BTreeMap<u32, PortRec>,
    notifies: HashMap<u64, NotifySpec>,
}

/// What a join hands the domain: machine memory and its grant table.
#[derive(Debug)]
pub(crate) struct Joined {
    pub mem_fd: OwnedFd,
    pub gnttab_fd: OwnedFd,
    pub gnttab_entries: u32,
    pub machine_frames: u64,
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

    pub fn is_running(&self, domid: u16) -> bool {
        self.domains
            .get(&domid)
            .is_some_and(|d| d.state == DomainState::Running)
    }

    // ------------------------------------------------------------ domains

    pub fn join(&mut self, domid: u16) -> Result<Joined, Reply> {
        if self.domains.contains_key(&domid) {
            return Err(errno(EEXIST, format!("domain {domid} already exists")));
        }
        let entries = self.cfg.gnttab_entries;
        let bytes = entries as usize * ENTRY_SIZE;
        let io =
            |e: crate::shm::ShmError| errno(ENOSPC, format!("grant table of domain {domid}: {e}"));
        let gnttab_fd = memfd(&format!("xenring-sim-gnttab-{domid}"), bytes as u64).map_err(io)?;
        let gnttab =
            Region::map_fd(gnttab_fd.as_fd(), 0, bytes, Protection::ReadWrite).map_err(io)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| errno(ENOSPC, format!("dup: {e}")))
        };
        let joined = Joined {
            mem_fd: dup(&self.mem_fd)?,
            gnttab_fd: dup(&gnttab_fd)?,
            gnttab_entries: entries,
            machine_frames: self.cfg.machine_frames,
        };
        self.domains.insert(
            domid,
            Domain {
                state: DomainState::Running,
                gnttab,
                active: HashMap::new(),
                frames_owned: 0,
                mappings: HashMap::new(),
                ports: BTreeMap::new(),
                notifies: HashMap::new(),
            },
        );
        tracing::info!(domid, "domain created");
        Ok(joined)
    }

    /// Destroys a running domain: fires its unmap notifications, drops its
    /// mappings, closes its ports, frees its frames (orphaning those others
    /// still map) and keeps it as a zombie while others map its grants.
    pub fn destroy(&mut self, domid: u16) -> Result<(), Reply> {
        match self.domains.get(&domid) {
            Some(d) if d.state == DomainState::Running => {}
            _ => return Err(errno(ESRCH, format!("no running domain {domid}"))),
        }
        let notifies: Vec<u64> = self.domains[&domid].notifies.keys().copied().collect();
        for id in notifies {
            self.fire(domid, id);
        }
        let handles: Vec<u64> = self.domains[&domid].mappings.keys().copied().collect();
        for h in handles {
            let _ = self.unmap(domid, h);
        }
        let ports: Vec<u32> = self.domains[&domid].ports.keys().copied().collect();
        for p in ports {
            let _ = self.close_port(domid, p);
        }
        for f in 0..self.frames.len() {
            if self.frames[f].owner == Some(domid) {
                self.frames[f].owner = None;
                if self.frames[f].maps == 0 {
                    self.release_frame(f as u64);
                } else {
                    self.frames[f].orphan = true;
                }
            }
        }
        let d = self.domains.get_mut(&domid).expect("checked above");
        d.frames_owned = 0;
        d.state = DomainState::Dying;
        self.reap(domid);
        tracing::info!(domid, "domain destroyed");
        Ok(())
    }

    /// Removes a dying domain once nobody maps its grants.
    fn reap(&mut self, domid: u16) {
        if let Some(d) = self.domains.get(&domid) {
            if d.state == DomainState::Dying && d.active.is_empty() {
                self.domains.remove(&domid);
            }
        }
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

    pub fn alloc_pages(&mut self, domid: u16, count: u32) -> Reply {
        if count as usize > self.free.len() {
            return status(
                GnttabStatus::NoSpace,
                format!(
                    "allocate {count} pages for domain {domid}: {} free",
                    self.free.len()
                ),
            );
        }
        let frames: Vec<u64> = (0..count)
            .map(|_| self.free.pop().expect("counted"))
            .collect();
        for f in &frames {
            self.frames[*f as usize].owner = Some(domid);
        }
        if let Some(d) = self.domains.get_mut(&domid) {
            d.frames_owned += count as u64;
        }
        Reply::Frames { frames }
    }

    fn owned_by(&self, f: u64, domid: u16) -> bool {
        self.frames
            .get(f as usize)
            .is_some_and(|i| i.owner == Some(domid))
    }

    pub fn free_pages(&mut self, domid: u16, frames: &[u64]) -> Reply {
        if let Some(f) = frames.iter().find(|f| !self.owned_by(**f, domid)) {
            return status(
                GnttabStatus::BadPage,
                format!("free frame {f:#x}: not owned by domain {domid}"),
            );
        }
        for f in frames {
            if self.frames[*f as usize].maps == 0 {
                self.release_frame(*f);
            } else {
                self.frames[*f as usize].owner = None;
                self.frames[*f as usize].orphan = true;
            }
        }
        if let Some(d) = self.domains.get_mut(&domid) {
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
        self.reap(granter);
    }

    // ------------------------------------------------------------ mapping

    pub fn map(&mut self, mapper: u16, granter: u16, writable: bool, refs: &[u32]) -> Reply {
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
                granter,
                refs: refs.to_vec(),
                frames: frames.clone(),
                writable,
            },
        );
        Reply::Mapped { handle, frames }
    }

    pub fn unmap(&mut self, mapper: u16, handle: u64) -> Reply {
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
            .filter(|(_, n)| n.mapping == handle)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.fire(mapper, id);
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
        me: u16,
        p: &WirePtr,
        len: u16,
        write: bool,
    ) -> Result<(u64, bool), GnttabStatus> {
        if p.offset as usize + len as usize > PAGE_SIZE {
            return Err(GnttabStatus::BadCopyArg);
        }
        if p.is_gref {
            let gref = u32::try_from(p.value).map_err(|_| GnttabStatus::BadGntref)?;
            Ok((self.pin(p.domid, gref, me, write)?, true))
        } else if self.owned_by(p.value, me) {
            Ok((p.value, false))
        } else {
            Err(GnttabStatus::BadPage)
        }
    }

    fn copy_one(&mut self, me: u16, op: &WireCopy) -> GnttabStatus {
        let (src, src_pinned) = match self.copy_side(me, &op.src, op.len, false) {
            Ok(v) => v,
            Err(s) => return s,
        };
        let result = match self.copy_side(me, &op.dst, op.len, true) {
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

    pub fn copy(&mut self, me: u16, ops: &[WireCopy]) -> Reply {
        let statuses = ops.iter().map(|op| self.copy_one(me, op).raw()).collect();
        Reply::Statuses { statuses }
    }

    // ----------------------------------------------------------- transfer

    pub fn transfer(&mut self, sender: u16, frame: u64, to: u16, gref: u32) -> Reply {
        let what = format!(
            "transfer of frame {frame:#x} from domain {sender} to grant {gref} of domain {to}"
        );
        if !self.owned_by(frame, sender) || self.frames[frame as usize].maps != 0 {
            return status(GnttabStatus::BadPage, what);
        }
        // From here on the sender has lost the page, whatever happens.
        self.frames[frame as usize].owner = None;
        if let Some(d) = self.domains.get_mut(&sender) {
            d.frames_owned -= 1;
        }
        let outcome = match self.domains.get_mut(&to) {
            Some(r) if r.state == DomainState::Running => match entry_cells(&r.gnttab, gref) {
                None => Err(GnttabStatus::BadGntref),
                Some((hdr, fr)) => match hv_transfer_commit(hdr, sender) {
                    Err(s) => Err(s),
                    Ok(()) => {
                        r.frames_owned += 1;
                        self.frames[frame as usize].owner = Some(to);
                        hv_transfer_complete(hdr, fr, frame as u32);
                        Ok(())
                    }
                },
            },
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

    // -------------------------------------------------------------- ports

    fn free_port(&self, d: &Domain) -> Option<u32> {
        (1..self.cfg.max_ports).find(|p| !d.ports.contains_key(p))
    }

    pub fn alloc_unbound(&mut self, me: u16, remote: u16) -> Result<Answer, Reply> {
        let d = self
            .domains
            .get(&me)
            .ok_or_else(|| errno(ESRCH, format!("no domain {me}")))?;
        let port = self.free_port(d).ok_or_else(|| {
            errno(
                ENOSPC,
                format!("domain {me} has no free event-channel port"),
            )
        })?;
        let mk = || new_eventfd().map_err(|e| errno(ENOSPC, format!("eventfd: {e}")));
        let (recv, send) = (Arc::new(mk()?), Arc::new(mk()?));
        let fds = vec![dup(&recv)?, dup(&send)?];
        self.domains.get_mut(&me).expect("checked").ports.insert(
            port,
            PortRec {
                state: PortState::Unbound { remote },
                recv,
                send,
            },
        );
        Ok((Reply::Port { port }, fds))
    }

    pub fn bind_interdomain(&mut self, me: u16, remote: u16, rport: u32) -> Result<Answer, Reply> {
        let what = format!("bind of domain {me} to port {rport} of domain {remote}");
        let r = match self.domains.get(&remote) {
            Some(r) if r.state == DomainState::Running => r,
            _ => return Err(errno(ESRCH, format!("{what}: no such domain"))),
        };
        let rp = r
            .ports
            .get(&rport)
            .ok_or_else(|| errno(EINVAL, format!("{what}: port not open")))?;
        if rp.state != (PortState::Unbound { remote: me }) {
            return Err(errno(
                EINVAL,
                format!("{what}: port is not unbound for domain {me}"),
            ));
        }
        let (recv, send) = (rp.send.clone(), rp.recv.clone());
        let d = self
            .domains
            .get(&me)
            .ok_or_else(|| errno(ESRCH, format!("no domain {me}")))?;
        let port = self
            .free_port(d)
            .ok_or_else(|| errno(ENOSPC, format!("{what}: no free port")))?;
        let fds = vec![dup(&recv)?, dup(&send)?];
        self.domains.get_mut(&me).expect("checked").ports.insert(
            port,
            PortRec {
                state: PortState::Interdomain {
                    remote,
                    port: rport,
                },
                recv,
                send,
            },
        );
        self.domains
            .get_mut(&remote)
            .expect("checked")
            .ports
            .get_mut(&rport)
            .expect("checked")
            .state = PortState::Interdomain { remote: me, port };
        Ok((Reply::Port { port }, fds))
    }

    pub fn close_port(&mut self, me: u16, port: u32) -> Reply {
        let Some(d) = self.domains.get_mut(&me) else {
            return errno(ESRCH, format!("no domain {me}"));
        };
        let Some(rec) = d.ports.remove(&port) else {
            return errno(
                EINVAL,
                format!("close of port {port} of domain {me}: not open"),
            );
        };
        if let PortState::Interdomain {
            remote,
            port: rport,
        } = rec.state
        {
            if let Some(rp) = self
                .domains
                .get_mut(&remote)
                .and_then(|r| r.ports.get_mut(&rport))
            {
                rp.state = PortState::Unbound { remote: me };
            }
        }
        Reply::Ok
    }

    // ------------------------------------------------------------ notifies

    pub fn add_notify(&mut self, me: u16, n: NotifySpec) -> Reply {
        let NotifySpec {
            mapping,
            frame,
            offset,
            ..
        } = n;
        let frame_ok = if mapping == 0 {
            self.owned_by(frame, me)
        } else {
            self.domains
                .get(&me)
                .and_then(|d| d.mappings.get(&mapping))
                .is_some_and(|m| m.frames.contains(&frame))
        };
        if !frame_ok || offset as usize >= PAGE_SIZE {
            return status(
                GnttabStatus::BadPage,
                format!("unmap notification on frame {frame:#x} offset {offset}: not a page of this share or mapping"),
            );
        }
        let id = self.id();
        let d = self.domains.get_mut(&me).expect("caller is connected");
        d.notifies.insert(id, n);
        Reply::NotifyId { id }
    }

    /// Fires and removes notification `id` of domain `me`.
    pub fn fire(&mut self, me: u16, id: u64) -> Reply {
        let Some(n) = self
            .domains
            .get_mut(&me)
            .and_then(|d| d.notifies.remove(&id))
        else {
            return errno(EINVAL, format!("no unmap notification {id} in domain {me}"));
        };
        if n.clear {
            let off = n.frame as usize * PAGE_SIZE + n.offset as usize;
            // Release: what the dying side wrote before is visible to a peer
            // that sees the byte cleared.
            self.mem
                .atomic_u8(off)
                .store(0, std::sync::atomic::Ordering::Release);
        }
        if n.event {
            if let Some(p) = self.domains.get(&me).and_then(|d| d.ports.get(&n.port)) {
                signal(&p.send);
            }
        }
        Reply::Ok
    }

    // ------------------------------------------------------------- report

    pub fn report(&self) -> HostReport {
        let domains = self
            .domains
            .iter()
            .map(|(domid, d)| {
                let grants_valid = (0..self.cfg.gnttab_entries)
                    .filter(|r| {
                        let (hdr, _) = entry_cells(&d.gnttab, *r).expect("in table");
                        let w = hdr.load(std::sync::atomic::Ordering::Relaxed);
                        entry::flags_of(w) & GTF_TYPE_MASK != 0
                    })
                    .count() as u32;
                DomainReport {
                    domid: *domid,
                    state: d.state,
                    frames_owned: d.frames_owned,
                    grants_valid,
                    grants_mapped_by_peers: d.active.len() as u32,
                    mappings: d.mappings.len() as u32,
                    mapped_pages: d.mappings.values().map(|m| m.refs.len() as u32).sum(),
                    ports: d.ports.len() as u32,
                    notifies: d.notifies.len() as u32,
                }
            })
            .collect();
        HostReport {
            free_frames: self.free.len() as u64,
            orphan_frames: self.frames.iter().filter(|f| f.orphan).count() as u64,
            domains,
        }
    }
}

fn dup(fd: &Arc<OwnedFd>) -> Result<OwnedFd, Reply> {
    fd.try_clone()
        .map_err(|e| errno(ENOSPC, format!("dup: {e}")))
}
