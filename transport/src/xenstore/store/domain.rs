//! Domains in the store: the initial tree, introducing and releasing
//! domains (with their `/local/domain/<domid>` nodes and the special
//! watches), and the CONTROL commands.
//!
//! What C xenstored does (domain.c, core.c `setup_structure()`) and what
//! the toolstack does (libxl), both done here:
//! * the initial tree is `/`, `/tool/xenstored`, and the special nodes
//!   `@introduceDomain` and `@releaseDomain`, all owned by dom0 with no
//!   access for others (an unprivileged domain hears of the special events
//!   only once dom0 gives it read access with SET_PERMS);
//! * introducing a domain creates `/local/domain/<domid>` (owned by dom0,
//!   readable by the domain) with `name` and `domid`, and the domain's own
//!   writable `device`, `data`, `control` and `error` (as the toolstack
//!   would), then fires `@introduceDomain` (not for dom0). Nodes of the
//!   home that exist already (dom0 prepared them, as libxl does) keep
//!   their values and get those permissions;
//! * releasing a domain drops its connections' watches and transactions,
//!   removes its home `/local/domain/<domid>` (as the toolstack does on
//!   destroy: C xenstored leaves that to libxl) and every other node it
//!   owns (with everything below, firing watches), removes it from other
//!   nodes' permission lists, then fires `@releaseDomain`. A special node
//!   it owned goes back to dom0 (C moves orphans to dom0) rather than
//!   disappearing;
//! * [`leftovers`] names what is still there of a released domain.

use std::collections::BTreeSet;

use super::path::{basename, home, is_below, join, parent};
use super::tree::{Node, Tree, PRIV_DOMID};
use super::watch::{Change, Match};
use super::Quotas;
use crate::abi::xs_wire::XsErrno;
use crate::xenstore::{Perm, PermAccess};

/// The special path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special path fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// `DOMID_SELF`, which IS_DOMAIN_INTRODUCED answers `T` for.
pub(super) const DOMID_SELF: u16 = 0x7ff0;

/// The subdirectories of a domain's home it may write.
const DOMAIN_DIRS: [&str; 4] = ["device", "data", "control", "error"];

fn priv_only() -> Vec<Perm> {
    vec![Perm::new(PRIV_DOMID, PermAccess::None)]
}

/// Creates `path` (whose parent exists) unless it exists, and gives it
/// `perms` if it exists with others (its value stays); records the change.
fn ensure(tree: &mut Tree, path: &str, value: &[u8], perms: Vec<Perm>, changes: &mut Vec<Change>) {
    if let Some(n) = tree.get(path) {
        if n.perms != perms {
            let mut n = n.clone();
            let old = std::mem::replace(&mut n.perms, perms.clone());
            tree.insert(path, n);
            changes.push(Change {
                path: path.to_string(),
                kind: Match::Subtree,
                node: Some(perms),
                old: Some(old),
            });
        }
        return;
    }
    if !path.starts_with('@') {
        let pp = parent(path);
        let Some(mut pn) = tree.get(pp).cloned() else {
            return;
        };
        pn.children.push(basename(path).to_string());
        tree.insert(pp, pn);
    }
    let mut n = Node::new(perms.clone());
    n.value = value.to_vec();
    tree.insert(path, n);
    changes.push(Change {
        path: path.to_string(),
        kind: Match::Subtree,
        node: Some(perms),
        old: None,
    });
}

/// Creates `path` (whose parent exists) as dom0's, if missing.
fn ensure_missing(tree: &mut Tree, path: &str, changes: &mut Vec<Change>) {
    if tree.get(path).is_none() {
        ensure(tree, path, b"", priv_only(), changes);
    }
}

/// The tree a fresh store starts with.
pub(super) fn initial_tree() -> Tree {
    let mut t = Tree::new();
    let mut ignored = Vec::new();
    for p in ["/tool", "/tool/xenstored", "/local", "/local/domain"] {
        ensure(&mut t, p, b"", priv_only(), &mut ignored);
    }
    for p in [INTRODUCE_DOMAIN, RELEASE_DOMAIN] {
        ensure(&mut t, p, b"", priv_only(), &mut ignored);
    }
    t
}

/// Creates the missing nodes of `domid`'s home (and its missing
/// parents, should dom0 have removed `/local/domain`), and repairs the
/// permissions of those that exist.
pub(super) fn create_home(tree: &mut Tree, domid: u16) -> Vec<Change> {
    let mut changes = Vec::new();
    for p in ["/local", "/local/domain"] {
        ensure_missing(tree, p, &mut changes);
    }
    let h = home(domid);
    let mut perms = vec![Perm::new(PRIV_DOMID, PermAccess::None)];
    if domid != PRIV_DOMID {
        perms.push(Perm::new(domid, PermAccess::Read));
    }
    ensure(tree, &h, b"", perms.clone(), &mut changes);
    let name = if domid == PRIV_DOMID {
        "Domain-0".to_string()
    } else {
        format!("domain-{domid}")
    };
    ensure(
        tree,
        &join(&h, "name"),
        name.as_bytes(),
        perms.clone(),
        &mut changes,
    );
    let id = domid.to_string();
    ensure(tree, &join(&h, "domid"), id.as_bytes(), perms, &mut changes);
    for d in DOMAIN_DIRS {
        let own = vec![Perm::new(domid, PermAccess::None)];
        ensure(tree, &join(&h, d), b"", own, &mut changes);
    }
    changes
}

/// The changes that fire a special watch for `domid`: on the special path
/// itself and on `<special>/<domid>`.
pub(super) fn special_changes(tree: &Tree, special: &str, domid: u16) -> Vec<Change> {
    let node = tree.get(special).map(|n| n.perms.clone());
    [special.to_string(), format!("{special}/{domid}")]
        .into_iter()
        .map(|path| Change {
            path,
            kind: Match::Exact,
            node: node.clone(),
            old: None,
        })
        .collect()
}

/// Removes `domid`'s home, what else it owns, and its entries in other
/// nodes' permissions (C's `domain_tree_remove()`, plus the toolstack's
/// removal of the home). The changes, in firing order.
pub(super) fn remove_domain_nodes(tree: &mut Tree, domid: u16, quotas: &Quotas) -> Vec<Change> {
    let mut changes = Vec::new();
    let h = home(domid);
    if tree.get(&h).is_some() {
        let mut db = super::db::Db::new(tree, None, PRIV_DOMID, quotas);
        if db.remove_tree(&h).is_ok() {
            changes.extend(db.into_changes());
        }
    }
    let mut removed_roots: Vec<String> = Vec::new();
    for p in tree.paths() {
        if removed_roots.iter().any(|r| is_below(&p, r)) {
            continue;
        }
        let Some(n) = tree.get(&p) else { continue };
        if n.owner() == domid && p.starts_with('@') {
            let mut n = n.clone();
            let old = n.perms.clone();
            n.perms[0].domid = PRIV_DOMID;
            n.perms.retain(|e| e.domid != domid);
            let perms = n.perms.clone();
            tree.insert(&p, n);
            changes.push(Change {
                path: p.clone(),
                kind: Match::Exact,
                node: Some(perms),
                old: Some(old),
            });
            continue;
        }
        if n.owner() == domid && p != "/" {
            let mut db = super::db::Db::new(tree, None, PRIV_DOMID, quotas);
            if db.remove_tree(&p).is_ok() {
                changes.extend(db.into_changes());
            }
            removed_roots.push(p);
            continue;
        }
        if n.perms.iter().skip(1).any(|e| e.domid == domid) {
            if let Some(n) = tree.get_mut_untracked(&p) {
                let mut kept = vec![n.perms[0]];
                kept.extend(n.perms[1..].iter().filter(|e| e.domid != domid));
                n.perms = kept;
            }
        }
    }
    changes
}

/// What is left in `tree` of the domains in `released`, one line each: a
/// home (`/local/domain/<domid>`, counted with everything below it), a
/// node such a domain owns, or a node whose permissions name one.
pub fn leftovers(tree: &Tree, released: &BTreeSet<u16>) -> Vec<String> {
    let mut out = Vec::new();
    let paths = tree.paths();
    for &d in released {
        let h = home(d);
        let below = paths.iter().filter(|p| is_below(p, &h)).count();
        if below > 0 {
            out.push(format!(
                "xenstore: {h} ({below} nodes) is still there, but domain {d} was released"
            ));
        }
    }
    for p in &paths {
        let Some(n) = tree.get(p) else { continue };
        let Some(d) = n
            .perms
            .iter()
            .map(|e| e.domid)
            .find(|d| released.contains(d))
        else {
            continue;
        };
        if is_below(p, &home(d)) {
            continue;
        }
        out.push(format!(
            "xenstore: {p} has permissions {} naming domain {d}, which was released",
            n.perms
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    out
}

/// What CONTROL answers to `args` (the command, then its parameters).
pub(super) fn control(args: &[&[u8]], quotas: &Quotas) -> Result<Vec<u8>, XsErrno> {
    let Some((cmd, params)) = args.split_first() else {
        return Err(XsErrno::Einval);
    };
    let text = |s: String| {
        let mut v = s.into_bytes();
        v.push(0);
        Ok(v)
    };
    match (*cmd, params.len()) {
        (b"check", 0) => Ok(super::ops::OK.to_vec()),
        (b"print", 1) => {
            tracing::info!(
                message = %String::from_utf8_lossy(params[0]),
                "xenstored: print"
            );
            Ok(super::ops::OK.to_vec())
        }
        (b"quota", 0) => text(quotas.describe()),
        (b"help", 0) => text("check\nprint <string>\nquota\nhelp\n".to_string()),
        _ => Err(XsErrno::Einval),
    }
}
