//! Domains and their sessions: creation (persistent, by `CreateDomain`, or
//! implicit, by the first join), sessions joining and leaving, grant-table
//! chunks, destruction, and the report.
//!
//! ```text
//!   CreateDomain{N} ---> Running, persistent, 0 sessions <----------+
//!   Join{N} (no N) ----> Running, implicit,   1 session             |
//!                          | Join{N}: +1 session  | a session ends:  |
//!                          |                      | its resources go |
//!                          v                      +------------------+
//!   Destroy{N}, or the last session of an implicit domain ends:
//!     every session ends -> Dying (zombie while peers map its grants)
//!                        -> gone at the last unmap
//! ```
//!
//! A session's end releases what it holds, as Linux does when a process's
//! `/dev/xen` fds close: its unmap notifications fire, its mappings go, its
//! ports close, its pages are freed (orphaned while others map them), and
//! the entries of its grant-table chunks are cleared to invalid, except
//! those a peer still maps: each of those is cleared at its last unmap (the
//! peer keeps valid memory until then), and the chunk is free again once
//! none is left.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::{errno, Caller, Chunk, Domain, Hypervisor, Session, CHUNK};
use crate::abi::grant::{GNTTAB_NR_RESERVED_ENTRIES, GTF_TYPE_MASK};
use crate::grant::entry;
use crate::grant::table::{entry_cells, ENTRY_SIZE};
use crate::platform::libc_errno::{EEXIST, ENOSPC, ESRCH};
use crate::shm::{memfd, Protection, Region};
use crate::sim::report::{DomainReport, DomainState, HostReport};
use crate::sim::wire::Reply;

/// What a join hands the session: machine memory, its domain's grant table
/// and the first chunk of references it may use.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The new session.
    pub session: u64,
    /// Whether the join created the (implicit) domain.
    pub created: bool,
    pub mem_fd: OwnedFd,
    pub gnttab_fd: OwnedFd,
    pub gnttab_entries: u32,
    pub machine_frames: u64,
    /// The session's first chunk, `lo..hi`; empty if the table is full.
    pub refs: (u32, u32),
}

/// What ending a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// The session was already gone (its domain destroyed).
    Gone,
    /// The session ended; its domain lives on.
    Stays,
    /// The session ended and, being the last of an implicit domain, took
    /// the domain with it.
    Destroyed,
}

/// References `lo..hi` of chunk `idx` in a table of `entries` (reserved
/// references left out).
fn chunk_range(entries: u32, idx: u32) -> (u32, u32) {
    let lo = (idx * CHUNK).max(GNTTAB_NR_RESERVED_ENTRIES);
    let hi = ((idx + 1) * CHUNK).min(entries);
    (lo, hi.max(lo))
}

fn entries_of(d: &Domain) -> u32 {
    (d.gnttab.len() / ENTRY_SIZE) as u32
}

/// Clears entry `gref` to invalid (its domid stays, as the guest's own
/// removal leaves it). Only the host writes the entries of a chunk whose
/// session ended; the chunk is handed out again only after this, under the
/// host's lock. Release: a later owner that reads the entry invalid also
/// sees the page's last uses (the peer's, ended by the unpin before) done.
fn revoke(gnttab: &Region, gref: u32) {
    if let Some((hdr, _)) = entry_cells(gnttab, gref) {
        hdr.fetch_and(0xffff_0000, Ordering::Release);
    }
}

/// The live session that owns the chunk holding `gref`.
pub(super) fn chunk_owner(d: &Domain, gref: u32) -> Option<u64> {
    match d.chunks.get((gref / CHUNK) as usize) {
        Some(Chunk::Owned(s)) => Some(*s),
        _ => None,
    }
}

/// The last pin of `gref` went away: if its chunk is draining, clear the
/// entry, and free the chunk once nothing in it is pinned.
pub(super) fn after_last_unpin(d: &mut Domain, gref: u32) {
    let idx = gref / CHUNK;
    if d.chunks.get(idx as usize) != Some(&Chunk::Draining) {
        return;
    }
    revoke(&d.gnttab, gref);
    let (lo, hi) = chunk_range(entries_of(d), idx);
    if !(lo..hi).any(|r| d.active.contains_key(&r)) {
        d.chunks[idx as usize] = Chunk::Free;
    }
}

impl Hypervisor {
    fn new_domain(&mut self, domid: u16, persistent: bool) -> Result<(), Reply> {
        let entries = self.cfg.gnttab_entries;
        let bytes = entries as usize * ENTRY_SIZE;
        let io =
            |e: crate::shm::ShmError| errno(ENOSPC, format!("grant table of domain {domid}: {e}"));
        let gnttab_fd = memfd(&format!("xenring-sim-gnttab-{domid}"), bytes as u64).map_err(io)?;
        let gnttab =
            Region::map_fd(gnttab_fd.as_fd(), 0, bytes, Protection::ReadWrite).map_err(io)?;
        self.domains.insert(
            domid,
            Domain {
                state: DomainState::Running,
                persistent,
                gnttab_fd,
                gnttab,
                active: HashMap::new(),
                frames_owned: 0,
                mappings: HashMap::new(),
                ports: BTreeMap::new(),
                notifies: HashMap::new(),
                sessions: BTreeMap::new(),
                chunks: vec![Chunk::Free; entries.div_ceil(CHUNK) as usize],
            },
        );
        tracing::info!(domid, persistent, "domain created");
        Ok(())
    }

    /// Creates a persistent domain: it lives, with or without sessions,
    /// until destroyed.
    pub fn create_domain(&mut self, domid: u16) -> Result<(), Reply> {
        match self.domains.get(&domid) {
            Some(d) if d.state == DomainState::Dying => Err(errno(
                EEXIST,
                format!("domain {domid} already exists (dying: peers still map its grants)"),
            )),
            Some(_) => Err(errno(EEXIST, format!("domain {domid} already exists"))),
            None => self.new_domain(domid, true),
        }
    }

    /// Opens a session of domain `domid`, creating the domain (implicit:
    /// destroyed with its last session) if it does not exist.
    pub fn join(&mut self, domid: u16) -> Result<Joined, Reply> {
        let created = match self.domains.get(&domid) {
            Some(d) if d.state == DomainState::Dying => {
                return Err(errno(
                    EEXIST,
                    format!(
                        "domain {domid} is dying (destroyed, peers still map its grants): \
                         it cannot be joined until they unmap"
                    ),
                ))
            }
            Some(_) => false,
            None => {
                self.new_domain(domid, false)?;
                true
            }
        };
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| errno(ENOSPC, format!("dup: {e}")))
        };
        let d = &self.domains[&domid];
        let fds = dup(&self.mem_fd).and_then(|m| Ok((m, dup(&d.gnttab_fd)?)));
        let (mem_fd, gnttab_fd) = match fds {
            Ok(f) => f,
            Err(e) => {
                if created {
                    self.domains.remove(&domid);
                }
                return Err(e);
            }
        };
        let session = self.id();
        self.domains
            .get_mut(&domid)
            .expect("present")
            .sessions
            .insert(session, Session::default());
        let c = Caller { domid, session };
        let refs = match self.grant_chunk(c) {
            Reply::Chunk { lo, hi } => (lo, hi),
            _ => (0, 0),
        };
        tracing::info!(domid, session, "session joined");
        Ok(Joined {
            session,
            created,
            mem_fd,
            gnttab_fd,
            gnttab_entries: self.cfg.gnttab_entries,
            machine_frames: self.cfg.machine_frames,
            refs,
        })
    }

    /// Whether session `session` of domain `domid` is live.
    pub fn session_alive(&self, domid: u16, session: u64) -> bool {
        self.domains
            .get(&domid)
            .is_some_and(|d| d.state == DomainState::Running && d.sessions.contains_key(&session))
    }

    /// The domains that are running.
    pub fn running(&self) -> Vec<u16> {
        self.domains
            .iter()
            .filter(|(_, d)| d.state == DomainState::Running)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Hands the caller's session a free chunk of its domain's grant table.
    pub fn grant_chunk(&mut self, c: Caller) -> Reply {
        let Some(d) = self.domains.get_mut(&c.domid) else {
            return errno(ESRCH, format!("no domain {}", c.domid));
        };
        let entries = entries_of(d);
        let free = (0..d.chunks.len() as u32).find(|i| {
            let (lo, hi) = chunk_range(entries, *i);
            d.chunks[*i as usize] == Chunk::Free && lo < hi
        });
        let (Some(idx), Some(s)) = (free, d.sessions.get_mut(&c.session)) else {
            return errno(
                ENOSPC,
                format!(
                    "grant table of domain {} full: all {} chunks of {CHUNK} references are \
                     in use",
                    c.domid,
                    d.chunks.len()
                ),
            );
        };
        s.chunks.push(idx);
        d.chunks[idx as usize] = Chunk::Owned(c.session);
        let (lo, hi) = chunk_range(entries, idx);
        Reply::Chunk { lo, hi }
    }

    /// Ends a session (its connection closed). An implicit domain goes with
    /// its last session.
    pub fn leave(&mut self, domid: u16, session: u64) -> Left {
        if !self.session_alive(domid, session) {
            return Left::Gone;
        }
        self.end_session(domid, session);
        tracing::info!(domid, session, "session ended");
        let d = &self.domains[&domid];
        if d.persistent || !d.sessions.is_empty() {
            return Left::Stays;
        }
        match self.destroy(domid) {
            Ok(_) => Left::Destroyed,
            Err(_) => Left::Stays,
        }
    }

    /// Releases what one session holds (see the module doc).
    fn end_session(&mut self, domid: u16, sid: u64) {
        let Some(sess) = self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.sessions.remove(&sid))
        else {
            return;
        };
        let d = &self.domains[&domid];
        let notifies: Vec<u64> = d
            .notifies
            .iter()
            .filter(|(_, n)| n.session == sid)
            .map(|(id, _)| *id)
            .collect();
        for id in notifies {
            self.fire_any(domid, id);
        }
        let d = &self.domains[&domid];
        let handles: Vec<u64> = d
            .mappings
            .iter()
            .filter(|(_, m)| m.session == sid)
            .map(|(h, _)| *h)
            .collect();
        for h in handles {
            let _ = self.unmap_any(domid, h);
        }
        let d = &self.domains[&domid];
        let ports: Vec<u32> = d
            .ports
            .iter()
            .filter(|(_, p)| p.session == sid)
            .map(|(p, _)| *p)
            .collect();
        for p in ports {
            let _ = self.close_any(domid, p);
        }
        let mut freed = 0;
        for f in 0..self.frames.len() {
            let fi = self.frames[f];
            if fi.owner == Some(domid) && fi.session == sid {
                self.disown_frame(f as u64);
                freed += 1;
            }
        }
        let d = self.domains.get_mut(&domid).expect("present");
        d.frames_owned -= freed;
        let entries = entries_of(d);
        for idx in sess.chunks {
            let (lo, hi) = chunk_range(entries, idx);
            let mut pinned = false;
            for r in lo..hi {
                if d.active.contains_key(&r) {
                    pinned = true;
                } else {
                    revoke(&d.gnttab, r);
                }
            }
            d.chunks[idx as usize] = if pinned { Chunk::Draining } else { Chunk::Free };
        }
    }

    /// Destroys a running domain: ends every session (firing their unmap
    /// notifications, dropping their mappings, closing their ports, freeing
    /// their frames, revoking their grants) and keeps the domain as a
    /// zombie while others map its grants. Returns the sessions ended.
    pub fn destroy(&mut self, domid: u16) -> Result<Vec<u64>, Reply> {
        let sessions: Vec<u64> = match self.domains.get(&domid) {
            Some(d) if d.state == DomainState::Running => d.sessions.keys().copied().collect(),
            _ => return Err(errno(ESRCH, format!("no running domain {domid}"))),
        };
        for s in &sessions {
            self.end_session(domid, *s);
        }
        let d = self.domains.get_mut(&domid).expect("checked above");
        d.state = DomainState::Dying;
        self.reap(domid);
        tracing::info!(domid, "domain destroyed");
        Ok(sessions)
    }

    /// Removes a dying domain once nobody maps its grants.
    pub(super) fn reap(&mut self, domid: u16) {
        if let Some(d) = self.domains.get(&domid) {
            if d.state == DomainState::Dying && d.active.is_empty() {
                self.domains.remove(&domid);
            }
        }
    }

    // ------------------------------------------------------------- report

    pub fn report(&self) -> HostReport {
        let domains = self
            .domains
            .iter()
            .map(|(domid, d)| {
                let grants_valid = (0..entries_of(d))
                    .filter(|r| {
                        let (hdr, _) = entry_cells(&d.gnttab, *r).expect("in table");
                        let w = hdr.load(Ordering::Relaxed);
                        entry::flags_of(w) & GTF_TYPE_MASK != 0
                    })
                    .count() as u32;
                DomainReport {
                    domid: *domid,
                    state: d.state,
                    persistent: d.persistent,
                    sessions: d.sessions.len() as u32,
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
            xenstore: Vec::new(),
            free_frames: self.free.len() as u64,
            orphan_frames: self.frames.iter().filter(|f| f.orphan).count() as u64,
            domains,
        }
    }
}
