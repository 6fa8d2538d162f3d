//! Transaction tests: isolation, conflicts, abort, watches at commit,
//! transaction quotas.

use super::tests::{ev, z, T};
use super::*;
use crate::abi::xs_wire::XsErrno;

fn start(t: &mut T, conn: u64, domid: u16) -> u32 {
    let r = t
        .res(conn, domid, XsType::TransactionStart, 0, b"\0")
        .unwrap();
    std::str::from_utf8(&r[..r.len() - 1])
        .unwrap()
        .parse()
        .unwrap()
}

fn end(t: &mut T, conn: u64, domid: u16, tx: u32, commit: bool) -> Result<Vec<Event>, XsErrno> {
    let out = t.call_tx(
        conn,
        domid,
        XsType::TransactionEnd,
        tx,
        if commit { b"T\0" } else { b"F\0" },
    );
    match out.reply.error_name() {
        Some(e) => Err(e),
        None => Ok(out.events),
    }
}

fn tx_write(
    t: &mut T,
    conn: u64,
    domid: u16,
    tx: u32,
    path: &str,
    value: &str,
) -> Result<Vec<Event>, XsErrno> {
    let mut p = z(&[path]);
    p.extend_from_slice(value.as_bytes());
    let out = t.call_tx(conn, domid, XsType::Write, tx, &p);
    match out.reply.error_name() {
        Some(e) => Err(e),
        None => Ok(out.events),
    }
}

fn tx_read(t: &mut T, conn: u64, domid: u16, tx: u32, path: &str) -> Result<String, XsErrno> {
    t.res(conn, domid, XsType::Read, tx, &z(&[path]))
        .map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn ids_are_per_connection_nonzero_and_echoed() {
    let mut t = T::new();
    assert_eq!(start(&mut t, 1, 0), 1);
    assert_eq!(start(&mut t, 1, 0), 2);
    assert_eq!(start(&mut t, 2, 0), 1, "another connection");
    let out = t.call_tx(1, 0, XsType::Write, 2, &z(&["/in-tx"]));
    assert_eq!((out.reply.tx_id, &out.reply.payload[..]), (2, &b"OK\0"[..]));
    assert_eq!(
        tx_read(&mut t, 2, 0, 2, "/x"),
        Err(XsErrno::Enoent),
        "not its own"
    );
    assert_eq!(
        t.res(1, 0, XsType::TransactionStart, 1, b"\0"),
        Err(XsErrno::Ebusy),
        "no nesting"
    );
    assert_eq!(
        t.res(1, 0, XsType::TransactionStart, 9, b"\0"),
        Err(XsErrno::Enoent)
    );
    assert_eq!(
        t.res(1, 0, XsType::TransactionEnd, 1, b"X\0"),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        end(&mut t, 1, 0, 1, false),
        Ok(vec![]),
        "still open after EINVAL"
    );
    assert_eq!(end(&mut t, 1, 0, 1, false), Err(XsErrno::Enoent), "gone");
    assert_eq!(
        end(&mut t, 1, 0, 0, true),
        Err(XsErrno::Enoent),
        "no transaction"
    );
}

#[test]
fn writes_are_isolated_until_commit() {
    let mut t = T::new();
    let tx = start(&mut t, 1, 0);
    tx_write(&mut t, 1, 0, tx, "/iso/a", "1").unwrap();
    assert_eq!(tx_read(&mut t, 1, 0, tx, "/iso/a").unwrap(), "1");
    assert_eq!(t.read(0, "/iso/a"), Err(XsErrno::Enoent));
    assert_eq!(
        t.res(1, 0, XsType::Directory, tx, &z(&["/iso"])).unwrap(),
        b"a\0"
    );
    end(&mut t, 1, 0, tx, true).unwrap();
    assert_eq!(t.read(0, "/iso/a").unwrap(), "1");
}

#[test]
fn reads_keep_the_first_seen_value_and_conflicts_are_eagain() {
    let mut t = T::new();
    t.write(0, "/c/b", "old").unwrap();
    let tx = start(&mut t, 1, 0);
    assert_eq!(tx_read(&mut t, 1, 0, tx, "/c/b").unwrap(), "old");
    t.write(0, "/c/b", "new").unwrap();
    assert_eq!(tx_read(&mut t, 1, 0, tx, "/c/b").unwrap(), "old");
    tx_write(&mut t, 1, 0, tx, "/c/other", "x").unwrap();
    assert_eq!(end(&mut t, 1, 0, tx, true), Err(XsErrno::Eagain));
    assert_eq!(
        t.read(0, "/c/other"),
        Err(XsErrno::Enoent),
        "nothing applied"
    );
    assert_eq!(t.read(0, "/c/b").unwrap(), "new");
}

#[test]
fn a_node_created_meanwhile_conflicts_with_a_read_of_its_absence() {
    let mut t = T::new();
    let tx = start(&mut t, 1, 0);
    assert_eq!(tx_read(&mut t, 1, 0, tx, "/late"), Err(XsErrno::Enoent));
    t.write(0, "/late", "here").unwrap();
    assert_eq!(end(&mut t, 1, 0, tx, true), Err(XsErrno::Eagain));
}

#[test]
fn unrelated_changes_do_not_conflict() {
    let mut t = T::new();
    t.write(0, "/u/a", "").unwrap();
    t.write(0, "/v/b", "").unwrap();
    let tx = start(&mut t, 1, 0);
    tx_write(&mut t, 1, 0, tx, "/u/a", "tx").unwrap();
    t.write(0, "/v/b", "outside").unwrap();
    end(&mut t, 1, 0, tx, true).unwrap();
    assert_eq!(t.read(0, "/u/a").unwrap(), "tx");
    assert_eq!(t.read(0, "/v/b").unwrap(), "outside");
}

#[test]
fn abort_discards_everything() {
    let mut t = T::new();
    t.write(0, "/ab", "keep").unwrap();
    let tx = start(&mut t, 1, 0);
    tx_write(&mut t, 1, 0, tx, "/ab", "lost").unwrap();
    tx_write(&mut t, 1, 0, tx, "/ab/new", "lost").unwrap();
    t.res(1, 0, XsType::Rm, tx, &z(&["/ab"])).unwrap();
    assert_eq!(end(&mut t, 1, 0, tx, false), Ok(vec![]));
    assert_eq!(t.read(0, "/ab").unwrap(), "keep");
    assert_eq!(t.dir(0, "/ab").unwrap(), b"");
}

#[test]
fn watches_fire_at_commit_only() {
    let mut t = T::new();
    t.write(0, "/w/gone", "").unwrap();
    t.watch(9, 0, "/w", "t");
    let tx = start(&mut t, 1, 0);
    assert_eq!(tx_write(&mut t, 1, 0, tx, "/w/a", "1"), Ok(vec![]));
    assert_eq!(tx_write(&mut t, 1, 0, tx, "/w/a", "2"), Ok(vec![]));
    let out = t.call_tx(1, 0, XsType::Rm, tx, &z(&["/w/gone"]));
    assert_eq!(out.events, vec![]);
    let mut evs = end(&mut t, 1, 0, tx, true).unwrap();
    evs.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(
        evs,
        vec![ev(9, "/w/a", "t"), ev(9, "/w/gone", "t")],
        "once each"
    );
    let tx = start(&mut t, 1, 0);
    tx_write(&mut t, 1, 0, tx, "/w/b", "1").unwrap();
    assert_eq!(
        end(&mut t, 1, 0, tx, false),
        Ok(vec![]),
        "abort fires nothing"
    );
}

#[test]
fn commit_time_watch_permissions_use_the_node_before_and_after() {
    let mut t = T::new();
    t.write(0, "/vis", "").unwrap();
    t.set_perms(0, "/vis", &["n0", "r1"]).unwrap();
    t.write(0, "/vis/x", "").unwrap();
    t.watch(9, 1, "/vis/x", "t");
    let tx = start(&mut t, 1, 0);
    t.res(1, 0, XsType::Rm, tx, &z(&["/vis/x"])).unwrap();
    assert_eq!(
        end(&mut t, 1, 0, tx, true).unwrap(),
        vec![ev(9, "/vis/x", "t")]
    );
}

#[test]
fn domu_transactions_keep_permissions() {
    let mut t = T::new();
    let tx = start(&mut t, 1, 1);
    assert_eq!(
        tx_write(&mut t, 1, 1, tx, "/local/domain/1/name", "x"),
        Err(XsErrno::Eacces)
    );
    tx_write(&mut t, 1, 1, tx, "data/t", "v").unwrap();
    end(&mut t, 1, 1, tx, true).unwrap();
    assert_eq!(t.perms(0, "/local/domain/1/data/t").unwrap(), b"n1\0");
}

#[test]
fn transaction_nodes_quota_fails_the_transaction() {
    let mut t = T::with(Quotas {
        transaction_nodes: 3,
        ..Quotas::default()
    });
    let tx = start(&mut t, 1, 1);
    for p in ["data", "control", "error"] {
        tx_read(&mut t, 1, 1, tx, p).unwrap();
    }
    assert_eq!(tx_read(&mut t, 1, 1, tx, "device"), Err(XsErrno::Enospc));
    assert_eq!(
        tx_read(&mut t, 1, 1, tx, "data").unwrap(),
        "",
        "touched ones still read"
    );
    assert_eq!(
        end(&mut t, 1, 1, tx, true),
        Err(XsErrno::Enomem),
        "as C xenstored"
    );
}

#[test]
fn node_quota_is_checked_again_at_commit() {
    let mut t = T::with(Quotas {
        nodes: 7,
        ..Quotas::default()
    });
    // Domain 1 owns 4 nodes; each transaction alone may add 3.
    let a = start(&mut t, 1, 1);
    let b = start(&mut t, 2, 1);
    for i in 0..3 {
        tx_write(&mut t, 1, 1, a, &format!("data/a{i}"), "").unwrap();
        tx_write(&mut t, 2, 1, b, &format!("control/b{i}"), "").unwrap();
    }
    assert_eq!(
        tx_write(&mut t, 1, 1, a, "data/a3", ""),
        Err(XsErrno::Enospc)
    );
    end(&mut t, 1, 1, a, true).unwrap();
    assert_eq!(end(&mut t, 2, 1, b, true), Err(XsErrno::Enospc));
    assert_eq!(t.dir(1, "control").unwrap(), b"");
}

#[test]
fn commit_failures_leave_nothing_half_done() {
    let mut t = T::new();
    t.write(0, "/h/a", "1").unwrap();
    let tx = start(&mut t, 1, 0);
    t.res(1, 0, XsType::Rm, tx, &z(&["/h"])).unwrap();
    tx_write(&mut t, 1, 0, tx, "/h2/b", "2").unwrap();
    t.write(0, "/h/a", "changed").unwrap();
    assert_eq!(end(&mut t, 1, 0, tx, true), Err(XsErrno::Eagain));
    assert_eq!(t.read(0, "/h/a").unwrap(), "changed");
    assert_eq!(t.read(0, "/h2"), Err(XsErrno::Enoent));
    let nodes = t.s.node_count();
    let tx = start(&mut t, 1, 0);
    t.res(1, 0, XsType::Rm, tx, &z(&["/h"])).unwrap();
    end(&mut t, 1, 0, tx, true).unwrap();
    assert_eq!(t.s.node_count(), nodes - 2);
}
