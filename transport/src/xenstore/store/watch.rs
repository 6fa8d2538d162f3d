//! Watches: who watches what, and which events a change produces.
//!
//! Rules (C xenstored's watch.c, docs/misc/xenstore.txt):
//! * a watch on `P` fires for a change of `P` or of anything below it
//!   ([`Match::Subtree`]); removing a subtree fires, for each removed node
//!   below the removed root, only the watches set exactly on that node
//!   ([`Match::Exact`]), so a watch below a removed node hears of it once,
//!   with its own path;
//! * the event names the changed path as the watcher wrote its watch:
//!   a relative watch gets relative paths;
//! * a watcher hears of a change only if it may read the node (as it is
//!   after the change, or, for a removal, as it was), or could read it
//!   before the change (a SET_PERMS that takes its access away fires once);
//!   the privileged domain hears of everything. This is stricter than C
//!   xenstored's `watch_permitted()`, which also lets a readable parent
//!   reveal an unreadable child: here a watcher never hears of a node it may
//!   not read;
//! * special paths (`@introduceDomain`, `@releaseDomain`) fire only for
//!   watches on exactly that path, or on `@releaseDomain/<domid>` for one
//!   domain, subject to the read permission of the special node.

use super::tree::{access_for, PRIV_DOMID};
use super::{ConnId, Event};
use crate::abi::xs_wire::XENSTORE_PAYLOAD_MAX;
use crate::xenstore::Perm;

/// How a change matches watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Match {
    /// Watches on the path or above it.
    Subtree,
    /// Watches on exactly the path.
    Exact,
}

/// A change that may fire watches, with what the permission check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    /// The changed path (absolute or special).
    pub path: String,
    /// How it matches.
    pub kind: Match,
    /// The node's permissions (after the change; for a removal, as it was).
    pub node: Option<Vec<Perm>>,
    /// The node's permissions before the change, when they changed.
    pub old: Option<Vec<Perm>>,
}

impl Change {
    fn permitted(&self, domid: u16) -> bool {
        if domid == PRIV_DOMID {
            return true;
        }
        [&self.old, &self.node]
            .into_iter()
            .flatten()
            .any(|p| access_for(domid, p).read)
    }
}

/// One watch.
#[derive(Debug, Clone)]
struct Watch {
    conn: ConnId,
    domid: u16,
    /// Absolute or special path.
    path: String,
    token: Vec<u8>,
    /// Bytes of `path` the watcher did not write.
    prefix: usize,
}

/// Every watch of every connection, in the order they were set.
#[derive(Debug, Default)]
pub(super) struct Watches {
    list: Vec<Watch>,
}

impl Watches {
    /// Whether `conn` has this watch already.
    pub fn contains(&self, conn: ConnId, path: &str, token: &[u8]) -> bool {
        self.list
            .iter()
            .any(|w| w.conn == conn && w.path == path && w.token == token)
    }

    /// Watches of `domid` (all its connections).
    pub fn count_domain(&self, domid: u16) -> usize {
        self.list.iter().filter(|w| w.domid == domid).count()
    }

    /// Adds a watch; returns the event it fires at once.
    pub fn add(
        &mut self,
        conn: ConnId,
        domid: u16,
        path: String,
        prefix: usize,
        token: Vec<u8>,
    ) -> Event {
        let ev = Event {
            conn,
            path: path.get(prefix..).unwrap_or(&path).to_string(),
            token: token.clone(),
        };
        self.list.push(Watch {
            conn,
            domid,
            path,
            token,
            prefix,
        });
        ev
    }

    /// Removes one watch of `conn`; false if it had none such.
    pub fn remove(&mut self, conn: ConnId, path: &str, token: &[u8]) -> bool {
        let before = self.list.len();
        self.list
            .retain(|w| !(w.conn == conn && w.path == path && w.token == token));
        self.list.len() != before
    }

    /// Removes every watch of `conn`.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.list.retain(|w| w.conn != conn);
    }

    /// Removes every watch of connections of `domid`.
    pub fn remove_domain(&mut self, domid: u16) {
        self.list.retain(|w| w.domid != domid);
    }

    /// The events `change` produces.
    pub fn fire(&self, change: &Change) -> Vec<Event> {
        let mut out = Vec::new();
        for w in &self.list {
            let hit = match change.kind {
                Match::Exact => w.path == change.path,
                Match::Subtree => super::path::is_below(&change.path, &w.path),
            };
            if !hit || !change.permitted(w.domid) {
                continue;
            }
            let ev = Event {
                conn: w.conn,
                path: change
                    .path
                    .get(w.prefix..)
                    .unwrap_or(&change.path)
                    .to_string(),
                token: w.token.clone(),
            };
            // C xenstored drops events too long to send.
            if ev.path.len() + ev.token.len() + 2 <= XENSTORE_PAYLOAD_MAX {
                out.push(ev);
            }
        }
        out
    }
}
