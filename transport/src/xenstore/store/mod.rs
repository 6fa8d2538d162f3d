//! The embedded xenstored's store, sans-IO: a tree of nodes, permissions,
//! watches, transactions, domains and quotas, behaving like Xen's C
//! xenstored. [`Store::handle`] takes one request of one connection and
//! answers an [`Outcome`]: the reply and the watch events to deliver. No
//! sockets, no clock, no runtime: the server ([`super::server`]) does the
//! IO.
//!
//! | module | what |
//! |---|---|
//! | `path` | path validation and resolution (relative paths, special `@` paths) |
//! | `tree` | nodes, permission checks (`perm_for_conn`), the live tree, owner counts |
//! | `db` | one request's view (through its transaction), shared permission and creation rules |
//! | `ops` | READ, WRITE, MKDIR, RM, DIRECTORY(_PART), GET/SET_PERMS |
//! | `txn` | transactions: per-node generations, `EAGAIN` on conflict |
//! | `watch` | watches and which events a change fires |
//! | `domain` | initial tree, INTRODUCE/RELEASE (homes made and removed), special watches, leftovers, CONTROL |
//! | `dispatch` | [`Store`]: dispatch, connections, replies, GET/SET_FEATURE, GET/SET_QUOTA |
//!
//! Quotas: the global [`Quotas`] are what a domain starts with when it is
//! introduced; SET_QUOTA changes the global ones (for domains introduced
//! later) or one domain's ([`Store::quotas_for`]), as C xenstored does.
//!
//! Replies always come before the events of the same request in an
//! [`Outcome`] (a WATCH's acknowledgement precedes its first event). C
//! xenstored queues the events a write causes for the writer itself before
//! its reply; clients accept both orders.

mod db;
mod dispatch;
mod domain;
mod ops;
mod path;
mod tree;
mod txn;
mod watch;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_parity;
#[cfg(test)]
mod tests_txn;

use std::fmt;

pub use self::dispatch::Store;
pub use self::domain::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::abi::xs_wire::XsType;
use crate::xenstore::XsMsg;

/// Identifies one client connection (chosen by the caller, unique while
/// the connection lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// A watch event to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The watching connection.
    pub conn: ConnId,
    /// The path, as the watcher wrote its watch (relative stays relative).
    pub path: String,
    /// The watch's token.
    pub token: Vec<u8>,
}

impl Event {
    /// The `WATCH_EVENT` message: `<path>\0<token>\0`, req_id and tx_id 0.
    pub fn to_msg(&self) -> XsMsg {
        let mut payload = Vec::with_capacity(self.path.len() + self.token.len() + 2);
        payload.extend_from_slice(self.path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(&self.token);
        payload.push(0);
        XsMsg {
            ty: XsType::WatchEvent.raw(),
            req_id: 0,
            tx_id: 0,
            payload,
        }
    }
}

/// What one request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply to the requester (echoing its req_id and tx_id).
    pub reply: XsMsg,
    /// Watch events, in order, for any connection (the requester's own
    /// come after its reply).
    pub events: Vec<Event>,
}

/// Per-domain limits, with C xenstored's defaults. They bind unprivileged
/// domains only; 0 turns a limit off. Exceeding one is `ENOSPC`, as in
/// current C xenstored (4.17 answered `E2BIG` for watches). Each limit is
/// the largest allowed value: a domain may own `nodes` nodes, hold
/// `watches` watches, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`nodes`, default 1000).
    pub nodes: u32,
    /// Watches a domain may hold over all its connections (`watches`, 128).
    pub watches: u32,
    /// Transactions a domain may have open (`transactions`, 10).
    pub transactions: u32,
    /// Replies a connection may have queued before the server stops
    /// reading its requests (`outstanding`, 20). Not an error: C
    /// xenstored stops reading from the domain, and so does the server.
    pub outstanding: u32,
    /// Largest node an unprivileged domain may write, counted as C
    /// xenstored does: 16 bytes of header, 8 per permission entry, the
    /// value, and each child's name with a NUL (`node-size`, 2048).
    pub node_size: u32,
    /// Permission entries per node (`node-permissions`, 5).
    pub permissions: u32,
    /// Nodes one transaction may touch (`transaction-nodes`, 1024).
    pub transaction_nodes: u32,
    /// Longest path an unprivileged domain may name, counted without the
    /// `/local/domain/<domid>/` prefix (`path-max`, 2048). It can only
    /// tighten the protocol's limit ([`XENSTORE_REL_PATH_MAX`], which
    /// binds every domain, dom0 included): a value of 0 or above 2048
    /// leaves 2048.
    ///
    /// [`XENSTORE_REL_PATH_MAX`]: crate::abi::xs_wire::XENSTORE_REL_PATH_MAX
    pub path_max: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            watches: 128,
            transactions: 10,
            outstanding: 20,
            node_size: 2048,
            permissions: 5,
            transaction_nodes: 1024,
            path_max: 2048,
        }
    }
}

impl Quotas {
    /// Name (as C xenstored's `quota` control command and GET_QUOTA /
    /// SET_QUOTA call it), value and description of each limit, in C
    /// xenstored's order (which lacks only its `memory` quota here).
    pub fn entries(&self) -> [(&'static str, u32, &'static str); 8] {
        [
            ("nodes", self.nodes, "Nodes per domain"),
            ("watches", self.watches, "Watches per domain"),
            (
                "outstanding",
                self.outstanding,
                "Outstanding requests per domain",
            ),
            (
                "transactions",
                self.transactions,
                "Active transactions per domain",
            ),
            (
                "transaction-nodes",
                self.transaction_nodes,
                "Max. number of accessed nodes per transaction",
            ),
            (
                "node-permissions",
                self.permissions,
                "Max. number of permissions per node",
            ),
            ("path-max", self.path_max, "Max. length of a node path"),
            ("node-size", self.node_size, "Max. size of a node"),
        ]
    }

    /// The longest path (counted as `path::counted_len` does) a domain may
    /// name: the protocol's [`XENSTORE_REL_PATH_MAX`] for everyone, or a
    /// smaller non-zero `path_max` for an unprivileged domain.
    ///
    /// [`XENSTORE_REL_PATH_MAX`]: crate::abi::xs_wire::XENSTORE_REL_PATH_MAX
    pub(crate) fn path_limit(&self, privileged: bool) -> usize {
        let proto = crate::abi::xs_wire::XENSTORE_REL_PATH_MAX;
        match self.path_max as usize {
            q if !privileged && q > 0 && q < proto => q,
            _ => proto,
        }
    }

    /// The limit named `name` (as [`Quotas::entries`] names them), for
    /// SET_QUOTA.
    pub(crate) fn get_mut(&mut self, name: &[u8]) -> Option<&mut u32> {
        Some(match name {
            b"nodes" => &mut self.nodes,
            b"watches" => &mut self.watches,
            b"outstanding" => &mut self.outstanding,
            b"transactions" => &mut self.transactions,
            b"transaction-nodes" => &mut self.transaction_nodes,
            b"node-permissions" => &mut self.permissions,
            b"path-max" => &mut self.path_max,
            b"node-size" => &mut self.node_size,
            _ => return None,
        })
    }

    /// The text of the `quota` control command.
    pub fn describe(&self) -> String {
        let mut s = String::from("Quota settings:\n");
        for (name, val, descr) in self.entries() {
            s.push_str(&format!("{name:<17}: {val:>8} {descr}\n"));
        }
        s
    }
}
