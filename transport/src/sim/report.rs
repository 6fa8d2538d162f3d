//! The simulated host's account of what each domain still holds, so that a
//! test can end by asserting that nothing leaked.
//!
//! What counts as a leak: anything a domain holds (frames, valid grants,
//! grants mapped by peers, mappings, ports, unmap notifications), any
//! orphaned frame, and any XenStore node left of a destroyed domain. A domain itself is not a leak: a persistent domain with
//! no session and nothing held is just idle, and the resources of a
//! session that ended are released with it, so what a dead session left
//! (a grant a peer still maps, an orphaned frame) shows as held until it
//! is gone.

use std::fmt;

/// Life of a domain on the simulated host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DomainState {
    /// It exists: it may be joined, and its sessions (processes) work. A
    /// persistent domain is running even with no session.
    Running = 0,
    /// It was destroyed (or an implicit domain's last process is gone) but
    /// other domains still map its pages: its granted frames live on until
    /// they are unmapped (as Xen keeps a zombie domain).
    Dying = 1,
}

impl DomainState {
    pub(crate) fn from_u8(v: u8) -> Option<DomainState> {
        match v {
            0 => Some(DomainState::Running),
            1 => Some(DomainState::Dying),
            _ => None,
        }
    }
}

/// What one domain holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainReport {
    /// The domain.
    pub domid: u16,
    /// Running or dying.
    pub state: DomainState,
    /// Made by `create` (lives until destroyed); false for a domain made by
    /// its first process joining (destroyed when its last session ends).
    pub persistent: bool,
    /// Sessions (joined processes) it has now.
    pub sessions: u32,
    /// Machine frames it owns.
    pub frames_owned: u64,
    /// Valid entries in its grant table (granted to someone).
    pub grants_valid: u32,
    /// Of those, entries another domain has mapped now.
    pub grants_mapped_by_peers: u32,
    /// Mappings of other domains' grants it holds.
    pub mappings: u32,
    /// Pages in those mappings.
    pub mapped_pages: u32,
    /// Event-channel ports it has open.
    pub ports: u32,
    /// Unmap notifications registered and not yet fired.
    pub notifies: u32,
}

impl DomainReport {
    /// True if the domain holds nothing (whatever its sessions: an idle
    /// persistent domain is clean).
    pub fn is_clean(&self) -> bool {
        self.frames_owned == 0
            && self.grants_valid == 0
            && self.grants_mapped_by_peers == 0
            && self.mappings == 0
            && self.mapped_pages == 0
            && self.ports == 0
            && self.notifies == 0
    }
}

impl fmt::Display for DomainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.persistent { ", persistent" } else { "" };
        let plural = if self.sessions == 1 { "" } else { "s" };
        write!(
            f,
            "domain {} ({:?}{kind}, {} session{plural}): {} frames owned, {} grants valid ({} mapped by peers), \
             {} mappings ({} pages), {} ports, {} unmap notifications",
            self.domid,
            self.state,
            self.sessions,
            self.frames_owned,
            self.grants_valid,
            self.grants_mapped_by_peers,
            self.mappings,
            self.mapped_pages,
            self.ports,
            self.notifies
        )
    }
}

/// The whole host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// Frames free for allocation.
    pub free_frames: u64,
    /// Frames whose owner died while they were still mapped elsewhere.
    pub orphan_frames: u64,
    /// One entry per existing domain, by domid.
    pub domains: Vec<DomainReport>,
    /// What the host's xenstored still holds of destroyed domains: their
    /// `/local/domain/<domid>` nodes, nodes they own, permission entries
    /// naming them (one line each). Destroying a domain removes all of
    /// it, so anything here was written afterwards and is a leak.
    pub xenstore: Vec<String>,
}

impl HostReport {
    /// The domain's entry, if it exists.
    pub fn domain(&self, domid: u16) -> Option<&DomainReport> {
        self.domains.iter().find(|d| d.domid == domid)
    }

    /// Domains that hold anything, orphaned frames, and XenStore nodes
    /// left of destroyed domains, as lines of text; empty if nothing
    /// leaked. Domains that hold nothing are not listed,
    /// with or without sessions.
    pub fn leaks(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .domains
            .iter()
            .filter(|d| !d.is_clean())
            .map(|d| d.to_string())
            .collect();
        if self.orphan_frames != 0 {
            out.push(format!("{} orphaned frames", self.orphan_frames));
        }
        out.extend(self.xenstore.iter().cloned());
        out
    }

    /// Panics with the list of leaks unless every domain is clean.
    #[track_caller]
    pub fn assert_clean(&self) {
        let leaks = self.leaks();
        assert!(
            leaks.is_empty(),
            "simulated host reports leaks:\n  {}",
            leaks.join("\n  ")
        );
    }
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} free frames, {} orphaned frames, {} domains",
            self.free_frames,
            self.orphan_frames,
            self.domains.len()
        )?;
        for d in &self.domains {
            writeln!(f, "  {d}")?;
        }
        for x in &self.xenstore {
            writeln!(f, "  {x}")?;
        }
        Ok(())
    }
}
