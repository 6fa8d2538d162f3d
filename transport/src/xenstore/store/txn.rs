//! Transactions, the way C xenstored (transaction.c) does them: optimistic,
//! per node.
//!
//! The first time a transaction touches a node (read or write, present or
//! absent), the node's live state and generation are copied into the
//! transaction; from then on the transaction sees only its copy. Commit
//! succeeds if every touched node still has the generation it had at first
//! touch (an absent node must still be absent); otherwise it answers
//! `EAGAIN` and changes nothing. On success the modified nodes are written
//! to the live tree and the watch events queued during the transaction
//! fire, each once.

use std::collections::HashMap;

use super::tree::{Node, Tree, PRIV_DOMID};
use super::watch::{Change, Match};
use crate::abi::xs_wire::XsErrno;
use crate::xenstore::Perm;

/// One node a transaction touched.
#[derive(Debug)]
struct Entry {
    /// The transaction's view of the node (`None`: absent).
    node: Option<Node>,
    /// Live generation at first touch (`None`: absent then).
    base: Option<u64>,
    /// Live permissions at first touch (for watch permission checks of
    /// events fired at commit: a watcher that could read the node before
    /// still hears about it).
    old_perms: Option<Vec<Perm>>,
    /// Written or removed in the transaction.
    modified: bool,
    /// A watch event to fire at commit, and how it matches.
    fire: Option<Match>,
}

/// An open transaction.
#[derive(Debug)]
pub(super) struct Txn {
    /// Entries in first-touch order.
    entries: Vec<(String, Entry)>,
    index: HashMap<String, usize>,
    /// Change of each domain's owned-node count in this transaction.
    owned_delta: HashMap<u16, i64>,
    /// A node was created (the node quota is checked again at commit).
    created: bool,
    /// An operation failed half way (the transaction-nodes quota): commit
    /// is refused, as in C xenstored.
    failed: bool,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn {
            entries: Vec::new(),
            index: HashMap::new(),
            owned_delta: HashMap::new(),
            created: false,
            failed: false,
        }
    }

    /// Number of nodes touched.
    pub fn touched(&self) -> usize {
        self.entries.len()
    }

    /// Marks the transaction as failed.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// The transaction's view of `path`, if it touched it already.
    pub fn view(&self, path: &str) -> Option<&Option<Node>> {
        self.index.get(path).map(|&i| &self.entries[i].1.node)
    }

    /// Records the first touch of `path`, whose live state is `live`.
    pub fn touch(&mut self, path: &str, live: Option<&Node>) {
        if self.index.contains_key(path) {
            return;
        }
        self.index.insert(path.to_string(), self.entries.len());
        self.entries.push((
            path.to_string(),
            Entry {
                node: live.cloned(),
                base: live.map(|n| n.generation),
                old_perms: live.map(|n| n.perms.clone()),
                modified: false,
                fire: None,
            },
        ));
    }

    /// Sets the transaction's view of a touched `path` (`None` removes); an
    /// untouched path fails the transaction.
    pub fn set(&mut self, path: &str, node: Option<Node>) {
        let Some(&i) = self.index.get(path) else {
            self.failed = true;
            return;
        };
        let old_owner = self.view(path).and_then(|n| n.as_ref().map(Node::owner));
        let new_owner = node.as_ref().map(Node::owner);
        if old_owner != new_owner {
            if let Some(o) = old_owner {
                *self.owned_delta.entry(o).or_default() -= 1;
            }
            if let Some(o) = new_owner {
                *self.owned_delta.entry(o).or_default() += 1;
            }
        }
        if old_owner.is_none() && new_owner.is_some() {
            self.created = true;
        }
        let e = &mut self.entries[i].1;
        e.node = node;
        e.modified = true;
    }

    /// Change of `domid`'s owned-node count so far.
    pub fn owned_delta(&self, domid: u16) -> i64 {
        self.owned_delta.get(&domid).copied().unwrap_or(0)
    }

    /// Queues a watch event for a touched `path` (a subtree match wins
    /// over an exact one).
    pub fn queue_fire(&mut self, path: &str, kind: Match) {
        let Some(&i) = self.index.get(path) else {
            self.failed = true;
            return;
        };
        let e = &mut self.entries[i].1;
        e.fire = match (e.fire, kind) {
            (Some(Match::Subtree), _) | (_, Match::Subtree) => Some(Match::Subtree),
            _ => Some(Match::Exact),
        };
    }

    /// Commits into `tree` for `committer`; `nodes_max` is the node quota
    /// (0: none). On success, the watch events to fire.
    pub fn commit(
        self,
        tree: &mut Tree,
        committer: u16,
        nodes_max: u32,
    ) -> Result<Vec<Change>, XsErrno> {
        if self.failed {
            return Err(XsErrno::Enomem);
        }
        if self.created && committer != PRIV_DOMID && nodes_max > 0 {
            for (&d, &delta) in &self.owned_delta {
                if d != PRIV_DOMID && delta > 0 && tree.owned(d) + delta > i64::from(nodes_max) {
                    return Err(XsErrno::Enospc);
                }
            }
        }
        for (path, e) in &self.entries {
            if tree.get(path).map(|n| n.generation) != e.base {
                return Err(XsErrno::Eagain);
            }
        }
        for (path, e) in &self.entries {
            if !e.modified {
                continue;
            }
            match &e.node {
                Some(n) => tree.insert(path, n.clone()),
                None => {
                    tree.remove(path);
                }
            }
        }
        let mut changes = Vec::new();
        for (path, e) in self.entries {
            let Some(kind) = e.fire else { continue };
            let node = tree.get(&path).map(|n| n.perms.clone());
            changes.push(Change {
                path,
                kind,
                node,
                old: e.old_perms,
            });
        }
        Ok(changes)
    }
}
