//! The view one request works on: the live tree, or the live tree seen
//! through the request's transaction, plus the permission and quota checks
//! every operation shares (C xenstored's `get_node()`, `errno_from_parents()`,
//! `construct_node()`, `create_node()` and the node removal walk).

use super::path::{basename, join, parent, resolve, Resolved};
use super::tree::{access_for, Access, Node, Tree, PRIV_DOMID};
use super::txn::Txn;
use super::watch::{Change, Match};
use super::Quotas;
use crate::abi::xs_wire::XsErrno;

/// The tree as one request of `domid` sees it.
pub(super) struct Db<'a> {
    tree: &'a mut Tree,
    tx: Option<&'a mut Txn>,
    /// The domain making the request.
    pub domid: u16,
    quotas: &'a Quotas,
    changes: Vec<Change>,
}

impl<'a> Db<'a> {
    /// A view for `domid`, through `tx` if given.
    pub fn new(
        tree: &'a mut Tree,
        tx: Option<&'a mut Txn>,
        domid: u16,
        quotas: &'a Quotas,
    ) -> Db<'a> {
        Db {
            tree,
            tx,
            domid,
            quotas,
            changes: Vec::new(),
        }
    }

    /// Whether the requester is the privileged domain (no quotas, every
    /// right).
    pub fn privileged(&self) -> bool {
        self.domid == PRIV_DOMID
    }

    /// The quotas.
    pub fn quotas(&self) -> &Quotas {
        self.quotas
    }

    /// `raw` validated and resolved for the requester, within its path
    /// length limit.
    pub fn resolve(&self, raw: &[u8], allow_special: bool) -> Result<Resolved, XsErrno> {
        let max = self.quotas.path_limit(self.privileged());
        resolve(self.domid, raw, allow_special, max)
    }

    /// The node at `path` as this request sees it. In a transaction the
    /// first touch records the node (`ENOSPC` past the transaction-nodes
    /// quota, which also fails the transaction).
    pub fn get(&mut self, path: &str) -> Result<Option<Node>, XsErrno> {
        let Some(tx) = self.tx.as_deref_mut() else {
            return Ok(self.tree.get(path).cloned());
        };
        if let Some(v) = tx.view(path) {
            return Ok(v.clone());
        }
        let max = self.quotas.transaction_nodes as usize;
        if self.domid != PRIV_DOMID && max > 0 && tx.touched() >= max {
            tx.fail();
            return Err(XsErrno::Enospc);
        }
        let live = self.tree.get(path);
        tx.touch(path, live);
        Ok(live.cloned())
    }

    /// Writes `node` at `path` (which the request has normally read
    /// before; if not, the transaction records it now).
    pub fn put(&mut self, path: &str, mut node: Node) {
        match self.tx.as_deref_mut() {
            None => self.tree.insert(path, node),
            Some(tx) => {
                tx.touch(path, self.tree.get(path));
                node.generation = self.tree.next_generation();
                tx.set(path, Some(node));
            }
        }
    }

    /// Removes the single node at `path`.
    pub fn remove(&mut self, path: &str) {
        match self.tx.as_deref_mut() {
            None => {
                self.tree.remove(path);
            }
            Some(tx) => {
                tx.touch(path, self.tree.get(path));
                tx.set(path, None);
            }
        }
    }

    /// Nodes `domid` owns, as this request sees it.
    pub fn owned(&self, domid: u16) -> i64 {
        self.tree.owned(domid) + self.tx.as_deref().map_or(0, |t| t.owned_delta(domid))
    }

    /// Records a change for the watches: queued in the transaction, or
    /// kept for the caller to fire.
    pub fn changed(&mut self, change: Change) {
        match self.tx.as_deref_mut() {
            Some(tx) => tx.queue_fire(&change.path, change.kind),
            None => self.changes.push(change),
        }
    }

    /// The changes to fire now (none in a transaction: they fire at
    /// commit).
    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }

    /// What the requester may do with `node`.
    pub fn access(&self, node: &Node) -> Access {
        access_for(self.domid, &node.perms)
    }

    /// The node at `path` if the requester has `need` on it. A node it
    /// may not use is `EACCES`; a missing one is `ENOENT` only if the
    /// nearest existing ancestor grants some of `need`, else `EACCES`, so
    /// that a domain learns nothing about what it may not see.
    pub fn get_checked(&mut self, path: &str, need: Access) -> Result<Node, XsErrno> {
        match self.get(path)? {
            Some(n) if self.access(&n).covers(need) => Ok(n),
            Some(_) => Err(XsErrno::Eacces),
            None => Err(self.errno_from_parents(path, XsErrno::Enoent, need)?),
        }
    }

    /// `err`, or `EACCES` if the nearest existing ancestor of `path`
    /// grants none of `need`.
    pub fn errno_from_parents(
        &mut self,
        path: &str,
        err: XsErrno,
        need: Access,
    ) -> Result<XsErrno, XsErrno> {
        let mut p = path;
        loop {
            if p == "/" {
                break;
            }
            p = parent(p);
            if let Some(n) = self.get(p)? {
                return Ok(if self.access(&n).any_of(need) {
                    err
                } else {
                    XsErrno::Eacces
                });
            }
        }
        Ok(XsErrno::Eacces)
    }

    /// `ENOSPC` if an unprivileged requester would make `node` bigger
    /// than the node-size quota.
    pub fn check_size(&self, node: &Node) -> Result<(), XsErrno> {
        let max = self.quotas.node_size as usize;
        if !self.privileged() && max > 0 && node.accounted_size() > max {
            return Err(XsErrno::Enospc);
        }
        Ok(())
    }

    /// Creates `path` with `value` and any missing parents (empty). New
    /// nodes copy their parent's permissions; an unprivileged creator
    /// becomes their owner. The caller has checked write access on the
    /// nearest existing ancestor. Returns the new node and its parent's
    /// permissions.
    pub fn create(&mut self, path: &str, value: Vec<u8>) -> Result<Node, XsErrno> {
        let mut missing = vec![path.to_string()];
        let mut at = parent(path).to_string();
        let mut above = loop {
            match self.get(&at)? {
                Some(n) => break n,
                None if at == "/" => return Err(XsErrno::Eio),
                None => {
                    let up = parent(&at).to_string();
                    missing.push(std::mem::replace(&mut at, up));
                }
            }
        };
        let nodes_max = i64::from(self.quotas.nodes);
        if !self.privileged()
            && nodes_max > 0
            && self.owned(self.domid) + missing.len() as i64 > nodes_max
        {
            return Err(XsErrno::Enospc);
        }
        // Build everything, check sizes, then write: a refusal changes
        // nothing.
        let mut built: Vec<(String, Node)> = Vec::with_capacity(missing.len() + 1);
        above
            .children
            .push(basename(&missing[missing.len() - 1]).to_string());
        self.check_size(&above)?;
        let mut perms = above.perms.clone();
        if !self.privileged() {
            perms[0].domid = self.domid;
        }
        built.push((at, above));
        for (i, p) in missing.iter().enumerate().rev() {
            let mut n = Node::new(perms.clone());
            if i == 0 {
                n.value = value.clone();
            } else {
                n.children.push(basename(&missing[i - 1]).to_string());
            }
            self.check_size(&n)?;
            built.push((p.clone(), n));
        }
        let mut leaf = None;
        for (p, n) in built {
            if p == path {
                leaf = Some(n.clone());
            }
            self.put(&p, n);
        }
        leaf.ok_or(XsErrno::Eio)
    }

    /// Removes `root` and everything below it, recording the changes:
    /// each removed node below `root` matches watches on exactly it, `root`
    /// matches watches on it and above. Children go before parents.
    pub fn remove_tree(&mut self, root: &str) -> Result<(), XsErrno> {
        // Depth-first, post-order, without recursion: when a node's second
        // visit pops, its descendants have all left `pending`, so it is
        // the last one there.
        let mut order: Vec<(String, Node)> = Vec::new();
        let mut stack: Vec<(String, bool)> = vec![(root.to_string(), false)];
        let mut pending: Vec<(String, Node)> = Vec::new();
        while let Some((p, second)) = stack.pop() {
            if second {
                order.extend(pending.pop());
                continue;
            }
            let Some(n) = self.get(&p)? else { continue };
            stack.push((p.clone(), true));
            for c in n.children.iter().rev() {
                stack.push((join(&p, c), false));
            }
            pending.push((p, n));
        }
        let parent_path = parent(root).to_string();
        let mut parent_node = self.get(&parent_path)?;
        let mut changes = Vec::with_capacity(order.len());
        for (p, n) in &order {
            changes.push(Change {
                path: p.clone(),
                kind: if p == root {
                    Match::Subtree
                } else {
                    Match::Exact
                },
                node: Some(n.perms.clone()),
                old: None,
            });
        }
        for c in changes {
            self.remove(&c.path);
            self.changed(c);
        }
        if let Some(mut pn) = parent_node.take() {
            let name = basename(root);
            pn.children.retain(|c| c != name);
            self.put(&parent_path, pn);
        }
        Ok(())
    }
}
