//! Event-channel ports and unmap notifications of the simulated hypervisor.
//! A port's number is the domain's, but the port belongs to the session
//! that opened it: only that session may close it, and it closes when the
//! session ends (as the evtchn device closes a process's ports).

use super::{
    dup, errno, new_eventfd, signal, status, Answer, Caller, Domain, Hypervisor, NotifyRec,
    PortRec, PortState,
};
use crate::abi::grant::GnttabStatus;
use crate::platform::libc_errno::{EINVAL, ENOSPC, ESRCH};
use crate::shm::PAGE_SIZE;
use crate::sim::wire::{NotifySpec, Reply};
use std::sync::Arc;

impl Hypervisor {
    fn free_port(&self, d: &Domain) -> Option<u32> {
        (1..self.cfg.max_ports).find(|p| !d.ports.contains_key(p))
    }

    pub fn alloc_unbound(&mut self, c: Caller, remote: u16) -> Result<Answer, Reply> {
        let me = c.domid;
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
                session: c.session,
                state: PortState::Unbound { remote },
                recv,
                send,
            },
        );
        Ok((Reply::Port { port }, fds))
    }

    pub fn bind_interdomain(
        &mut self,
        c: Caller,
        remote: u16,
        rport: u32,
    ) -> Result<Answer, Reply> {
        let me = c.domid;
        let what = format!("bind of domain {me} to port {rport} of domain {remote}");
        let r = match self.domains.get(&remote) {
            Some(r) if r.state == crate::sim::DomainState::Running => r,
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
                session: c.session,
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

    /// Closes a port of the caller's session.
    pub fn close_port(&mut self, c: Caller, port: u32) -> Reply {
        let me = c.domid;
        let mine = self
            .domains
            .get(&me)
            .and_then(|d| d.ports.get(&port))
            .map(|p| p.session == c.session);
        match mine {
            Some(true) => self.close_any(me, port),
            Some(false) => errno(
                EINVAL,
                format!("close of port {port} of domain {me}: not open in this session"),
            ),
            None => errno(
                EINVAL,
                format!("close of port {port} of domain {me}: not open"),
            ),
        }
    }

    /// Closes port `port` of domain `me`, whichever session opened it; a
    /// bound peer's port goes back to unbound (for `me`).
    pub(super) fn close_any(&mut self, me: u16, port: u32) -> Reply {
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

    /// Registers an unmap notification on a page of the caller's session:
    /// one it allocated (`mapping` 0, a share) or one of its mappings.
    pub fn add_notify(&mut self, c: Caller, n: NotifySpec) -> Reply {
        let NotifySpec {
            mapping,
            frame,
            offset,
            ..
        } = n;
        let frame_ok = if mapping == 0 {
            self.owned_by(frame, c)
        } else {
            self.domains
                .get(&c.domid)
                .and_then(|d| d.mappings.get(&mapping))
                .is_some_and(|m| m.session == c.session && m.frames.contains(&frame))
        };
        if !frame_ok || offset as usize >= PAGE_SIZE {
            return status(
                GnttabStatus::BadPage,
                format!("unmap notification on frame {frame:#x} offset {offset}: not a page of this share or mapping"),
            );
        }
        let id = self.id();
        let d = self.domains.get_mut(&c.domid).expect("caller is connected");
        d.notifies.insert(
            id,
            NotifyRec {
                session: c.session,
                spec: n,
            },
        );
        Reply::NotifyId { id }
    }

    /// Fires and removes notification `id` of the caller's session.
    pub fn fire(&mut self, c: Caller, id: u64) -> Reply {
        let mine = self
            .domains
            .get(&c.domid)
            .and_then(|d| d.notifies.get(&id))
            .is_some_and(|n| n.session == c.session);
        if !mine {
            return errno(
                EINVAL,
                format!(
                    "no unmap notification {id} in this session of domain {}",
                    c.domid
                ),
            );
        }
        self.fire_any(c.domid, id)
    }

    /// Fires and removes notification `id` of domain `me`, whichever
    /// session registered it.
    pub(super) fn fire_any(&mut self, me: u16, id: u64) -> Reply {
        let Some(n) = self
            .domains
            .get_mut(&me)
            .and_then(|d| d.notifies.remove(&id))
        else {
            return errno(EINVAL, format!("no unmap notification {id} in domain {me}"));
        };
        let n = n.spec;
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
}
