//! The live node tree: nodes keyed by absolute path, a global generation
//! counter, and how many nodes each domain owns (for the node quota).
//!
//! Invariants: `/` always exists; every node but `/` and the special nodes
//! (`@...`) has its parent in the tree, listing it among its children once;
//! `owned[d]` is the number of nodes whose first permission entry names `d`.

use std::collections::HashMap;

use crate::xenstore::{Perm, PermAccess};

/// The domain with every right (the control domain).
pub(super) const PRIV_DOMID: u16 = 0;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    /// The value (any bytes).
    pub value: Vec<u8>,
    /// Permissions; never empty, the first entry is the owner.
    pub perms: Vec<Perm>,
    /// Names of the children, in creation order.
    pub children: Vec<String>,
    /// Changes whenever the node is written (conflict detection,
    /// `DIRECTORY_PART`).
    pub generation: u64,
}

impl Node {
    /// An empty node with `perms`.
    pub fn new(perms: Vec<Perm>) -> Node {
        Node {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            generation: 0,
        }
    }

    /// The owner (first permission entry).
    pub fn owner(&self) -> u16 {
        self.perms.first().map_or(PRIV_DOMID, |p| p.domid)
    }

    /// The size C xenstored accounts for a node against the node-size
    /// quota: a 16-byte header, 8 bytes per permission entry, the value,
    /// and the children's names each with a NUL.
    pub fn accounted_size(&self) -> usize {
        16 + 8 * self.perms.len()
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }

    /// The children as the wire lists them: each name followed by a NUL.
    pub fn children_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// What a domain may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Access {
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
    /// Owns it (or is privileged): may change its permissions.
    pub owner: bool,
}

impl Access {
    /// Everything.
    pub const ALL: Access = Access {
        read: true,
        write: true,
        owner: true,
    };
    /// Read only (what a request needs).
    pub const READ: Access = Access {
        read: true,
        write: false,
        owner: false,
    };
    /// Write only (what a request needs).
    pub const WRITE: Access = Access {
        read: false,
        write: true,
        owner: false,
    };
    /// Write and ownership (what `SET_PERMS` needs).
    pub const OWN: Access = Access {
        read: false,
        write: true,
        owner: true,
    };

    /// Whether every right in `need` is here.
    pub fn covers(self, need: Access) -> bool {
        (self.read || !need.read) && (self.write || !need.write) && (self.owner || !need.owner)
    }

    /// Whether any right in `need` is here (C's `perm & need`, used to
    /// decide whether a missing node may be reported as missing).
    pub fn any_of(self, need: Access) -> bool {
        (self.read && need.read) || (self.write && need.write) || (self.owner && need.owner)
    }
}

fn grants(access: PermAccess) -> Access {
    Access {
        read: access.can_read(),
        write: access.can_write(),
        owner: false,
    }
}

/// What `domid` may do under `perms` (C's `perm_for_conn()`): the
/// privileged domain and the owner may do everything; otherwise the first
/// later entry naming `domid` decides, else the owner entry's access.
pub(super) fn access_for(domid: u16, perms: &[Perm]) -> Access {
    let Some(first) = perms.first() else {
        return if domid == PRIV_DOMID {
            Access::ALL
        } else {
            Access::default()
        };
    };
    if domid == PRIV_DOMID || first.domid == domid {
        return Access::ALL;
    }
    match perms[1..].iter().find(|p| p.domid == domid) {
        Some(p) => grants(p.access),
        None => grants(first.access),
    }
}

/// Permissions as `GET_PERMS` answers them: each entry followed by a NUL.
pub(super) fn perms_payload(perms: &[Perm]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in perms {
        out.extend_from_slice(p.to_string().as_bytes());
        out.push(0);
    }
    out
}

/// The live tree.
#[derive(Debug)]
pub(super) struct Tree {
    nodes: HashMap<String, Node>,
    generation: u64,
    owned: HashMap<u16, i64>,
}

impl Tree {
    /// A tree holding only `/`, owned by the privileged domain with no
    /// access for others.
    pub fn new() -> Tree {
        let mut t = Tree {
            nodes: HashMap::new(),
            generation: 0,
            owned: HashMap::new(),
        };
        let root = Node::new(vec![Perm::new(PRIV_DOMID, PermAccess::None)]);
        t.insert("/", root);
        t
    }

    /// A fresh generation number.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Stores `node` at `path` with a fresh generation, keeping the owner
    /// counts right. The caller keeps the parent's children list right.
    pub fn insert(&mut self, path: &str, mut node: Node) {
        node.generation = self.next_generation();
        let new_owner = node.owner();
        if let Some(old) = self.nodes.get(path) {
            let old_owner = old.owner();
            if old_owner != new_owner {
                *self.owned.entry(old_owner).or_default() -= 1;
                *self.owned.entry(new_owner).or_default() += 1;
            }
        } else {
            *self.owned.entry(new_owner).or_default() += 1;
        }
        self.nodes.insert(path.to_string(), node);
    }

    /// Removes the node at `path` (only that node).
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let old = self.nodes.remove(path)?;
        *self.owned.entry(old.owner()).or_default() -= 1;
        Some(old)
    }

    /// Nodes owned by `domid`.
    pub fn owned(&self, domid: u16) -> i64 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Every path, sorted (so that parents come before their children).
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.keys().cloned().collect();
        v.sort();
        v
    }

    /// Mutable access without generation or owner bookkeeping, for
    /// changes that are neither (dropping a released domain's extra
    /// permission entries).
    pub fn get_mut_untracked(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Perm {
        s.parse().unwrap()
    }

    #[test]
    fn access_rules_follow_perm_for_conn() {
        let perms = [p("n1"), p("r2"), p("w3"), p("b4")];
        assert_eq!(access_for(0, &perms), Access::ALL, "dom0 is privileged");
        assert_eq!(access_for(1, &perms), Access::ALL, "the owner");
        assert!(access_for(2, &perms).read && !access_for(2, &perms).write);
        assert!(!access_for(3, &perms).read && access_for(3, &perms).write);
        assert!(access_for(4, &perms).read && access_for(4, &perms).write);
        assert!(!access_for(4, &perms).owner);
        assert_eq!(access_for(5, &perms), Access::default(), "owner's n");
        let open = [p("r1")];
        assert!(access_for(9, &open).read && !access_for(9, &open).write);
    }

    #[test]
    fn owner_counts_follow_inserts_and_removes() {
        let mut t = Tree::new();
        t.insert("/a", Node::new(vec![p("n3")]));
        t.insert("/b", Node::new(vec![p("n3")]));
        assert_eq!(t.owned(3), 2);
        t.insert("/b", Node::new(vec![p("n4")]));
        assert_eq!((t.owned(3), t.owned(4)), (1, 1));
        t.remove("/a");
        assert_eq!(t.owned(3), 0);
        assert_eq!(t.owned(0), 1, "the root");
    }

    #[test]
    fn accounted_size_counts_header_perms_value_and_children() {
        let mut n = Node::new(vec![p("n1"), p("r2")]);
        n.value = vec![b'x'; 10];
        n.children = vec!["ab".into(), "c".into()];
        assert_eq!(n.accounted_size(), 16 + 16 + 10 + 5);
        assert_eq!(n.children_bytes(), b"ab\0c\0");
        assert_eq!(perms_payload(&n.perms), b"n1\0r2\0");
    }
}
