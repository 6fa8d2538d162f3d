//! The node requests: READ, WRITE, MKDIR, RM, DIRECTORY, DIRECTORY_PART,
//! GET_PERMS, SET_PERMS. Each takes the request payload and a [`Db`] and
//! answers the reply payload or an error; changes for the watches are
//! recorded in the `Db`.
//!
//! Payloads (docs/misc/xenstore.txt): `READ <path>|`, `WRITE <path>|<value>`
//! (the value may hold NULs), `MKDIR <path>|`, `RM <path>|`,
//! `DIRECTORY <path>|` -> `<child>|*`, `DIRECTORY_PART <path>|<offset>|` ->
//! `<generation>|<child>|*` with one more NUL once the list is complete,
//! `GET_PERMS <path>|` -> `<perm>|+`, `SET_PERMS <path>|<perm>|+`.

use super::db::Db;
use super::domain::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use super::path::{parent, Resolved};
use super::tree::{perms_payload, Access};
use super::watch::{Change, Match};
use crate::abi::xs_wire::{XsErrno, XENSTORE_PAYLOAD_MAX};
use crate::xenstore::Perm;

/// The `OK` reply payload.
pub(super) const OK: &[u8] = b"OK\0";

/// The only argument of a payload that must be exactly one NUL-terminated
/// string (C's `onearg()`).
pub(super) fn onearg(payload: &[u8]) -> Result<&[u8], XsErrno> {
    match payload.iter().position(|b| *b == 0) {
        Some(i) if i + 1 == payload.len() => Ok(&payload[..i]),
        _ => Err(XsErrno::Einval),
    }
}

/// The NUL-terminated strings of a payload; bytes after the last NUL are
/// not a string (C's `get_strings()`).
pub(super) fn strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = payload.split(|b| *b == 0).collect();
    out.pop();
    out
}

fn path_arg(db: &Db<'_>, payload: &[u8], special: bool) -> Result<Resolved, XsErrno> {
    db.resolve(onearg(payload)?, special)
}

/// READ.
pub(super) fn read(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let p = path_arg(db, payload, false)?;
    Ok(db.get_checked(&p.abs, Access::READ)?.value)
}

fn write_change(db: &mut Db<'_>, path: &str, perms: Vec<Perm>) -> Result<(), XsErrno> {
    db.changed(Change {
        path: path.to_string(),
        kind: Match::Subtree,
        node: Some(perms),
        old: None,
    });
    Ok(())
}

/// Creates `path` after checking that the nearest existing ancestor lets
/// the requester write (the errno of a missing node that may not be
/// created is `EACCES`).
fn create(db: &mut Db<'_>, path: &str, value: Vec<u8>) -> Result<(), XsErrno> {
    match db.errno_from_parents(path, XsErrno::Enoent, Access::WRITE)? {
        XsErrno::Enoent => {}
        e => return Err(e),
    }
    let node = db.create(path, value)?;
    write_change(db, path, node.perms)
}

/// WRITE: creates missing parents.
pub(super) fn write(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let nul = payload
        .iter()
        .position(|b| *b == 0)
        .ok_or(XsErrno::Einval)?;
    let p = db.resolve(&payload[..nul], false)?;
    let value = payload[nul + 1..].to_vec();
    match db.get(&p.abs)? {
        Some(mut n) => {
            if !db.access(&n).write {
                return Err(XsErrno::Eacces);
            }
            n.value = value;
            db.check_size(&n)?;
            let perms = n.perms.clone();
            db.put(&p.abs, n);
            write_change(db, &p.abs, perms)?;
        }
        None => create(db, &p.abs, value)?,
    }
    Ok(OK.to_vec())
}

/// MKDIR: nothing changes (and nothing fires) if the node exists.
pub(super) fn mkdir(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let p = path_arg(db, payload, false)?;
    match db.get(&p.abs)? {
        Some(n) if db.access(&n).write => {}
        Some(_) => return Err(XsErrno::Eacces),
        None => create(db, &p.abs, Vec::new())?,
    }
    Ok(OK.to_vec())
}

/// RM: removing a missing node is fine if its parent exists.
pub(super) fn rm(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let p = path_arg(db, payload, false)?;
    match db.get_checked(&p.abs, Access::WRITE) {
        Ok(_) => {}
        Err(XsErrno::Enoent) => {
            return match db.get(parent(&p.abs))? {
                Some(_) => Ok(OK.to_vec()),
                None => Err(XsErrno::Enoent),
            };
        }
        Err(e) => return Err(e),
    }
    if p.abs == "/" {
        return Err(XsErrno::Einval);
    }
    db.remove_tree(&p.abs)?;
    Ok(OK.to_vec())
}

/// DIRECTORY: `E2BIG` (by the caller's reply check) when the list does
/// not fit in one message; clients then use DIRECTORY_PART.
pub(super) fn directory(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let p = path_arg(db, payload, false)?;
    Ok(db.get_checked(&p.abs, Access::READ)?.children_bytes())
}

/// DIRECTORY_PART: the children list from byte `offset`, as much as fits,
/// after the node's generation; the reply of the last piece ends with an
/// extra NUL (an offset at or past the end gives just that).
pub(super) fn directory_part(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let args = strings(payload);
    if args.len() != 2 || payload.last() != Some(&0) {
        return Err(XsErrno::Einval);
    }
    let p = db.resolve(args[0], false)?;
    let off: usize = std::str::from_utf8(args[1])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsErrno::Einval)?;
    let node = db.get_checked(&p.abs, Access::READ)?;
    let list = node.children_bytes();
    let mut out = node.generation.to_string().into_bytes();
    out.push(0);
    if off >= list.len() {
        out.push(0);
        return Ok(out);
    }
    let max = XENSTORE_PAYLOAD_MAX - out.len() - 1;
    let mut len = 0;
    let rest = &list[off..];
    while len < rest.len() {
        let name_len = rest[len..]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(rest.len() - len);
        if len + name_len >= max {
            break;
        }
        len += name_len + 1;
    }
    let len = len.min(rest.len());
    out.extend_from_slice(&rest[..len]);
    if len == rest.len() {
        out.push(0);
    }
    Ok(out)
}

/// GET_PERMS (special paths allowed).
pub(super) fn get_perms(db: &mut Db<'_>, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
    let p = path_arg(db, payload, true)?;
    Ok(perms_payload(&db.get_checked(&p.abs, Access::READ)?.perms))
}

/// SET_PERMS: only the owner (or the privileged domain) may; only the
/// privileged domain may change the owner (`EPERM`). As C xenstored: an
/// owner entry naming a domain that does not exist (`exists` says which
/// do) is `ENOENT`, for dom0 too, before the path is looked at; of the
/// special paths only `@introduceDomain` and `@releaseDomain` have
/// permissions to set, any other `@...` is `EINVAL` (C 4.17's
/// `set_perms_special()`).
pub(super) fn set_perms(
    db: &mut Db<'_>,
    payload: &[u8],
    exists: impl Fn(u16) -> bool,
) -> Result<Vec<u8>, XsErrno> {
    let args = strings(payload);
    if args.len() < 2 {
        return Err(XsErrno::Einval);
    }
    let max = db.quotas().permissions as usize;
    if !db.privileged() && max > 0 && args.len() - 1 > max {
        return Err(XsErrno::Enospc);
    }
    let perms = args[1..]
        .iter()
        .map(|a| {
            std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse::<Perm>().ok())
                .ok_or(XsErrno::Einval)
        })
        .collect::<Result<Vec<Perm>, XsErrno>>()?;
    if !exists(perms[0].domid) {
        return Err(XsErrno::Enoent);
    }
    let p = db.resolve(args[0], true)?;
    if p.abs.starts_with('@') && p.abs != INTRODUCE_DOMAIN && p.abs != RELEASE_DOMAIN {
        return Err(XsErrno::Einval);
    }
    let mut node = db.get_checked(&p.abs, Access::OWN)?;
    if !db.privileged() && perms[0].domid != node.owner() {
        return Err(XsErrno::Eperm);
    }
    let old = std::mem::replace(&mut node.perms, perms.clone());
    db.check_size(&node)?;
    db.put(&p.abs, node);
    db.changed(Change {
        path: p.abs,
        kind: Match::Subtree,
        node: Some(perms),
        old: Some(old),
    });
    Ok(OK.to_vec())
}
