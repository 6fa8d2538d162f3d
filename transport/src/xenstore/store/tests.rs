//! Store tests without any IO: permissions, relative paths, watches,
//! domains, quotas, malformed input. Transactions are in `tests_txn.rs`.

use super::*;
use crate::abi::xs_wire::XsErrno;

/// A store with domains 1 and 2 introduced, and request helpers.
pub(super) struct T {
    pub s: Store,
    req: u32,
}

pub(super) fn msg(ty: XsType, tx: u32, payload: &[u8]) -> XsMsg {
    XsMsg {
        ty: ty.raw(),
        req_id: 0,
        tx_id: tx,
        payload: payload.to_vec(),
    }
}

/// `parts` each followed by a NUL.
pub(super) fn z(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

impl T {
    pub fn new() -> T {
        T::with(Quotas::default())
    }

    pub fn with(q: Quotas) -> T {
        let mut s = Store::new(q);
        s.introduce(1);
        s.introduce(2);
        T { s, req: 100 }
    }

    /// Sends `payload` as `ty` on connection `conn` of `domid`; checks the
    /// echo of req_id and tx_id.
    pub fn call_tx(
        &mut self,
        conn: u64,
        domid: u16,
        ty: XsType,
        tx: u32,
        payload: &[u8],
    ) -> Outcome {
        self.req += 1;
        let mut m = msg(ty, tx, payload);
        m.req_id = self.req;
        let out = self.s.handle(ConnId(conn), domid, &m);
        assert_eq!(out.reply.req_id, self.req, "req_id echo");
        assert_eq!(out.reply.tx_id, tx, "tx_id echo");
        out
    }

    pub fn call(&mut self, conn: u64, domid: u16, ty: XsType, payload: &[u8]) -> Outcome {
        self.call_tx(conn, domid, ty, 0, payload)
    }

    /// The reply payload, or the error it names.
    pub fn res(
        &mut self,
        conn: u64,
        domid: u16,
        ty: XsType,
        tx: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsErrno> {
        let out = self.call_tx(conn, domid, ty, tx, payload);
        match out.reply.error_name() {
            Some(e) => Err(e),
            None => {
                assert_eq!(out.reply.ty, ty.raw(), "reply type");
                Ok(out.reply.payload)
            }
        }
    }

    pub fn write(&mut self, domid: u16, path: &str, value: &str) -> Result<(), XsErrno> {
        let mut p = z(&[path]);
        p.extend_from_slice(value.as_bytes());
        self.res(domid.into(), domid, XsType::Write, 0, &p)
            .map(|r| assert_eq!(r, b"OK\0"))
    }

    pub fn read(&mut self, domid: u16, path: &str) -> Result<String, XsErrno> {
        self.res(domid.into(), domid, XsType::Read, 0, &z(&[path]))
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn perms(&mut self, domid: u16, path: &str) -> Result<Vec<u8>, XsErrno> {
        self.res(domid.into(), domid, XsType::GetPerms, 0, &z(&[path]))
    }

    pub fn set_perms(&mut self, domid: u16, path: &str, perms: &[&str]) -> Result<(), XsErrno> {
        let mut parts = vec![path];
        parts.extend_from_slice(perms);
        self.res(domid.into(), domid, XsType::SetPerms, 0, &z(&parts))
            .map(|_| ())
    }

    pub fn rm(&mut self, domid: u16, path: &str) -> Result<(), XsErrno> {
        self.res(domid.into(), domid, XsType::Rm, 0, &z(&[path]))
            .map(|_| ())
    }

    pub fn dir(&mut self, domid: u16, path: &str) -> Result<Vec<u8>, XsErrno> {
        self.res(domid.into(), domid, XsType::Directory, 0, &z(&[path]))
    }

    /// Sets a watch on connection `conn`; returns the events of the call.
    pub fn watch(&mut self, conn: u64, domid: u16, path: &str, token: &str) -> Vec<Event> {
        let out = self.call(conn, domid, XsType::Watch, &z(&[path, token]));
        assert_eq!(out.reply.payload, b"OK\0", "{:?}", out.reply);
        out.events
    }

    /// Writes as `domid` (connection = domid) and returns the events.
    pub fn write_ev(&mut self, domid: u16, path: &str, value: &str) -> Vec<Event> {
        let mut p = z(&[path]);
        p.extend_from_slice(value.as_bytes());
        let out = self.call(domid.into(), domid, XsType::Write, &p);
        assert_eq!(out.reply.payload, b"OK\0", "{:?}", out.reply);
        out.events
    }
}

pub(super) fn ev(conn: u64, path: &str, token: &str) -> Event {
    Event {
        conn: ConnId(conn),
        path: path.into(),
        token: token.as_bytes().to_vec(),
    }
}

// ---- permissions ----

#[test]
fn dom0_reads_and_writes_everything() {
    let mut t = T::new();
    t.write(0, "/a/b", "x").unwrap();
    assert_eq!(t.read(0, "/a/b").unwrap(), "x");
    assert_eq!(t.read(0, "/a").unwrap(), "", "parents are created empty");
    t.write(0, "/local/domain/1/data/mine", "y").unwrap();
    assert_eq!(t.perms(0, "/a/b").unwrap(), b"n0\0");
    assert_eq!(t.read(0, "/local/domain/1/data/mine").unwrap(), "y");
}

#[test]
fn domu_reads_only_what_it_was_given() {
    let mut t = T::new();
    t.write(0, "/secret", "s").unwrap();
    assert_eq!(t.read(1, "/secret"), Err(XsErrno::Eacces));
    assert_eq!(t.dir(1, "/"), Err(XsErrno::Eacces));
    t.set_perms(0, "/secret", &["n0", "r1"]).unwrap();
    assert_eq!(t.read(1, "/secret").unwrap(), "s");
    assert_eq!(t.read(2, "/secret"), Err(XsErrno::Eacces));
    assert_eq!(t.write(1, "/secret", "no"), Err(XsErrno::Eacces));
    assert_eq!(t.rm(1, "/secret"), Err(XsErrno::Eacces));
    t.set_perms(0, "/secret", &["r0", "w1"]).unwrap();
    assert_eq!(
        t.read(2, "/secret").unwrap(),
        "s",
        "owner's entry is the default"
    );
    assert_eq!(t.read(1, "/secret"), Err(XsErrno::Eacces), "w1 only");
    t.write(1, "/secret", "yes").unwrap();
    assert_eq!(t.read(0, "/secret").unwrap(), "yes");
}

#[test]
fn missing_nodes_are_enoent_only_where_the_parent_may_be_read() {
    let mut t = T::new();
    t.write(0, "/open", "").unwrap();
    t.set_perms(0, "/open", &["r0"]).unwrap();
    assert_eq!(t.read(1, "/open/none"), Err(XsErrno::Enoent));
    assert_eq!(t.read(1, "/closed/none"), Err(XsErrno::Eacces), "/ is n0");
    assert_eq!(t.read(0, "/closed/none"), Err(XsErrno::Enoent));
    assert_eq!(t.read(1, "data/none"), Err(XsErrno::Enoent));
}

#[test]
fn domu_home_is_readable_and_its_own_dirs_writable() {
    let mut t = T::new();
    assert_eq!(t.read(1, "/local/domain/1/name").unwrap(), "domain-1");
    assert_eq!(t.read(1, "domid").unwrap(), "1");
    assert_eq!(t.perms(1, "/local/domain/1").unwrap(), b"n0\0r1\0");
    assert_eq!(t.write(1, "name", "evil"), Err(XsErrno::Eacces));
    assert_eq!(t.write(1, "newnode", "x"), Err(XsErrno::Eacces));
    assert_eq!(t.read(2, "/local/domain/1/name"), Err(XsErrno::Eacces));
    for d in ["device", "data", "control", "error"] {
        assert_eq!(t.perms(1, d).unwrap(), b"n1\0", "{d}");
        t.write(1, &format!("{d}/x"), "v").unwrap();
    }
    assert_eq!(t.read(2, "/local/domain/1/data/x"), Err(XsErrno::Eacces));
    assert_eq!(
        t.write(2, "/local/domain/1/data/y", "v"),
        Err(XsErrno::Eacces)
    );
}

#[test]
fn new_nodes_inherit_parent_perms_and_unprivileged_creators_own_them() {
    let mut t = T::new();
    t.write(0, "/shared", "").unwrap();
    t.set_perms(0, "/shared", &["n0", "r1", "b2"]).unwrap();
    t.write(2, "/shared/a/b", "x").unwrap();
    assert_eq!(t.perms(0, "/shared/a").unwrap(), b"n2\0r1\0b2\0");
    assert_eq!(t.perms(0, "/shared/a/b").unwrap(), b"n2\0r1\0b2\0");
    t.write(0, "/shared/c", "").unwrap();
    assert_eq!(
        t.perms(0, "/shared/c").unwrap(),
        b"n0\0r1\0b2\0",
        "dom0 keeps the owner"
    );
    assert_eq!(t.read(1, "/shared/a/b").unwrap(), "x");
    assert_eq!(
        t.write(1, "/shared/d", "x"),
        Err(XsErrno::Eacces),
        "r1 only"
    );
    let mkdir = t.res(1, 1, XsType::Mkdir, 0, &z(&["/shared/d"]));
    assert_eq!(mkdir, Err(XsErrno::Eacces));
}

#[test]
fn owner_change_rules() {
    let mut t = T::new();
    t.write(1, "data/x", "v").unwrap();
    t.set_perms(1, "data/x", &["n1", "r2"]).unwrap();
    assert_eq!(t.read(2, "/local/domain/1/data/x").unwrap(), "v");
    assert_eq!(t.set_perms(1, "data/x", &["n2"]), Err(XsErrno::Eperm));
    assert_eq!(
        t.set_perms(2, "/local/domain/1/data/x", &["n2"]),
        Err(XsErrno::Eacces),
        "not the owner"
    );
    t.set_perms(0, "/local/domain/1/data/x", &["b2"]).unwrap();
    assert_eq!(t.perms(1, "data/x").unwrap(), b"b2\0");
    assert_eq!(t.set_perms(1, "data/x", &["n1"]), Err(XsErrno::Eacces));
    t.set_perms(2, "/local/domain/1/data/x", &["n2", "r1"])
        .unwrap();
    assert_eq!(
        t.set_perms(1, "data/missing", &["n1"]),
        Err(XsErrno::Enoent)
    );
}

#[test]
fn set_perms_refuses_bad_entries() {
    let mut t = T::new();
    t.write(0, "/p", "").unwrap();
    for bad in [
        &["x0"][..],
        &["r"],
        &["r-1"],
        &["r65536"],
        &["r1", "q2"],
        &[""],
    ] {
        assert_eq!(t.set_perms(0, "/p", bad), Err(XsErrno::Einval), "{bad:?}");
    }
    assert_eq!(
        t.res(0, 0, XsType::SetPerms, 0, &z(&["/p"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(t.perms(0, "/p").unwrap(), b"n0\0", "unchanged");
}

#[test]
fn rm_rules() {
    let mut t = T::new();
    t.write(0, "/a/b/c", "").unwrap();
    t.rm(0, "/a/b/none").unwrap();
    assert_eq!(t.rm(0, "/a/none/none"), Err(XsErrno::Enoent));
    assert_eq!(t.rm(0, "/"), Err(XsErrno::Einval));
    t.rm(0, "/a/b").unwrap();
    assert_eq!(t.read(0, "/a/b/c"), Err(XsErrno::Enoent));
    assert_eq!(t.dir(0, "/a").unwrap(), b"");
    t.write(1, "data/t/u", "").unwrap();
    t.rm(1, "data/t").unwrap();
    assert_eq!(t.read(1, "data/t/u"), Err(XsErrno::Enoent));
}

#[test]
fn mkdir_creates_once_and_keeps_values() {
    let mut t = T::new();
    t.write(0, "/m", "keep").unwrap();
    let out = t.call(0, 0, XsType::Mkdir, &z(&["/m"]));
    assert_eq!(out.reply.payload, b"OK\0");
    assert_eq!(t.read(0, "/m").unwrap(), "keep");
    t.res(0, 0, XsType::Mkdir, 0, &z(&["/m/n/o"])).unwrap();
    assert_eq!(t.dir(0, "/m").unwrap(), b"n\0");
}

#[test]
fn directory_lists_children_in_creation_order() {
    let mut t = T::new();
    for c in ["zeta", "alpha", "mid"] {
        t.write(0, &format!("/d/{c}"), "").unwrap();
    }
    assert_eq!(t.dir(0, "/d").unwrap(), b"zeta\0alpha\0mid\0");
    assert_eq!(t.dir(0, "/d/zeta").unwrap(), b"");
}

#[test]
fn relative_paths_resolve_under_the_domain_home() {
    let mut t = T::new();
    t.write(1, "data/rel", "r").unwrap();
    assert_eq!(t.read(0, "/local/domain/1/data/rel").unwrap(), "r");
    t.write(0, "data/zero", "z").unwrap();
    assert_eq!(t.read(0, "/local/domain/0/data/zero").unwrap(), "z");
    let r = t.res(1, 1, XsType::GetDomainPath, 0, &z(&["7"])).unwrap();
    assert_eq!(r, b"/local/domain/7\0");
}

#[test]
fn directory_part_pages_through_a_long_list() {
    let mut t = T::new();
    let names: Vec<String> = (0..400)
        .map(|i| format!("child-with-a-long-name-{i:04}"))
        .collect();
    for n in &names {
        t.write(0, &format!("/big/{n}"), "").unwrap();
    }
    assert_eq!(t.dir(0, "/big"), Err(XsErrno::E2big));
    let mut all = Vec::new();
    let mut gen = None;
    let mut calls = 0;
    loop {
        calls += 1;
        let off = all.len().to_string();
        let r = t
            .res(0, 0, XsType::DirectoryPart, 0, &z(&["/big", &off]))
            .unwrap();
        assert!(r.len() <= 4096);
        let g = r.split(|b| *b == 0).next().unwrap().to_vec();
        assert!(gen.get_or_insert(g.clone()) == &g, "generation stable");
        let body = &r[g.len() + 1..];
        if body.ends_with(b"\0\0") || body == b"\0" {
            all.extend_from_slice(&body[..body.len() - 1]);
            break;
        }
        all.extend_from_slice(body);
    }
    assert!(calls > 1, "needed several pieces");
    let expect: Vec<u8> = z(&names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(all, expect);
    let past = t
        .res(0, 0, XsType::DirectoryPart, 0, &z(&["/big", "99999"]))
        .unwrap();
    assert!(past.ends_with(b"\0\0"));
    assert_eq!(
        t.res(0, 0, XsType::DirectoryPart, 0, &z(&["/big"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(1, 1, XsType::DirectoryPart, 0, &z(&["/big", "0"])),
        Err(XsErrno::Eacces)
    );
}

// ---- watches ----

#[test]
fn watch_fires_once_when_set_after_its_ack() {
    let mut t = T::new();
    let out = t.call(5, 0, XsType::Watch, &z(&["/w", "tok"]));
    assert_eq!(out.reply.ty, XsType::Watch.raw());
    assert_eq!(out.reply.payload, b"OK\0");
    assert_eq!(out.events, vec![ev(5, "/w", "tok")]);
    assert_eq!(
        out.events[0].to_msg().payload,
        b"/w\0tok\0",
        "event payload: path, token"
    );
    assert_eq!(out.events[0].to_msg().ty, XsType::WatchEvent.raw());
    assert_eq!(
        t.res(5, 0, XsType::Watch, 0, &z(&["/w", "tok"])),
        Err(XsErrno::Eexist)
    );
    assert!(
        t.watch(5, 0, "/w", "tok2").len() == 1,
        "another token is another watch"
    );
}

#[test]
fn watch_fires_for_the_node_and_below_only() {
    let mut t = T::new();
    t.write(0, "/w/x", "").unwrap();
    t.watch(5, 0, "/w/x", "t");
    assert_eq!(t.write_ev(0, "/w/x", "1"), vec![ev(5, "/w/x", "t")]);
    assert_eq!(t.write_ev(0, "/w/x/y/z", "1"), vec![ev(5, "/w/x/y/z", "t")]);
    assert_eq!(t.write_ev(0, "/w/xx", "1"), vec![]);
    assert_eq!(t.write_ev(0, "/w", "1"), vec![]);
    t.watch(6, 0, "/", "root");
    assert_eq!(
        t.write_ev(0, "/w/x", "2"),
        vec![ev(5, "/w/x", "t"), ev(6, "/w/x", "root")]
    );
}

#[test]
fn relative_watches_get_relative_paths() {
    let mut t = T::new();
    let first = t.watch(7, 1, "data", "rel");
    assert_eq!(first, vec![ev(7, "data", "rel")]);
    t.watch(8, 0, "/local/domain/1/data", "abs");
    let evs = t.write_ev(1, "data/k", "v");
    assert_eq!(
        evs,
        vec![
            ev(7, "data/k", "rel"),
            ev(8, "/local/domain/1/data/k", "abs")
        ]
    );
    let out = t.call(7, 1, XsType::Unwatch, &z(&["data", "rel"]));
    assert_eq!(out.reply.payload, b"OK\0");
    assert_eq!(
        t.write_ev(1, "data/k", "w"),
        vec![ev(8, "/local/domain/1/data/k", "abs")]
    );
}

#[test]
fn watch_events_respect_read_permission() {
    let mut t = T::new();
    t.watch(9, 1, "/", "all");
    assert_eq!(
        t.write_ev(0, "/secret", "s"),
        vec![],
        "n0 node under n0 root"
    );
    assert_eq!(
        t.write_ev(0, "/local/domain/1/data/x", "s"),
        vec![ev(9, "/local/domain/1/data/x", "all")]
    );
    // Unlike C's watch_permitted(), a readable parent does not reveal an
    // unreadable child: the watcher never hears of a node it may not read.
    t.write(0, "/pub", "").unwrap();
    t.set_perms(0, "/pub", &["n0", "r1"]).unwrap();
    t.write(0, "/pub/hidden", "").unwrap();
    t.set_perms(0, "/pub/hidden", &["n0"]).unwrap();
    t.write(0, "/pub/hidden/deeper", "").unwrap();
    assert_eq!(
        t.write_ev(0, "/pub/hidden", "1"),
        vec![],
        "parent readable, node not"
    );
    assert_eq!(
        t.write_ev(0, "/pub/visible", "1"),
        vec![ev(9, "/pub/visible", "all")],
        "a new node under /pub inherits r1"
    );
    assert_eq!(
        t.write_ev(0, "/pub/hidden/deeper", "1"),
        vec![],
        "neither readable"
    );
}

#[test]
fn losing_read_access_still_fires_once() {
    let mut t = T::new();
    t.write(0, "/lose", "").unwrap();
    t.set_perms(0, "/lose", &["n0", "r1"]).unwrap();
    t.watch(9, 1, "/lose", "t");
    let out = t.call(0, 0, XsType::SetPerms, &z(&["/lose", "n0"]));
    assert_eq!(out.events, vec![ev(9, "/lose", "t")]);
    assert_eq!(t.write_ev(0, "/lose", "x"), vec![]);
}

#[test]
fn rm_fires_the_removed_node_and_watches_below_it_once() {
    let mut t = T::new();
    t.write(0, "/r/a/b/c", "").unwrap();
    t.watch(1, 0, "/r/a/b/c", "deep");
    t.watch(2, 0, "/r/a/b/none", "missing");
    t.watch(3, 0, "/r/a", "top");
    t.watch(4, 0, "/", "root");
    t.watch(5, 0, "/r/a/b", "mid");
    let out = t.call(0, 0, XsType::Rm, &z(&["/r/a"]));
    assert_eq!(out.reply.payload, b"OK\0");
    let mut evs = out.events;
    evs.sort_by_key(|e| e.conn);
    assert_eq!(
        evs,
        vec![
            ev(1, "/r/a/b/c", "deep"),
            ev(3, "/r/a", "top"),
            ev(4, "/r/a", "root"),
            ev(5, "/r/a/b", "mid"),
        ]
    );
    let out = t.call(0, 0, XsType::Rm, &z(&["/r/a"]));
    assert_eq!(out.events, vec![], "removing nothing fires nothing");
}

#[test]
fn unwatch_and_reset_watches() {
    let mut t = T::new();
    t.watch(3, 0, "/u", "a");
    t.watch(3, 0, "/u", "b");
    assert_eq!(
        t.res(3, 0, XsType::Unwatch, 0, &z(&["/u", "zz"])),
        Err(XsErrno::Enoent)
    );
    assert_eq!(
        t.res(3, 0, XsType::Unwatch, 0, &z(&["/u"])),
        Err(XsErrno::Einval)
    );
    t.res(3, 0, XsType::Unwatch, 0, &z(&["/u", "a"])).unwrap();
    assert_eq!(t.write_ev(0, "/u", "1"), vec![ev(3, "/u", "b")]);
    let tx = t.res(3, 0, XsType::TransactionStart, 0, b"\0").unwrap();
    assert_eq!(tx, b"1\0");
    t.res(3, 0, XsType::ResetWatches, 0, b"").unwrap();
    assert_eq!(t.write_ev(0, "/u", "2"), vec![]);
    assert_eq!(
        t.res(3, 0, XsType::Read, 1, &z(&["/u"])),
        Err(XsErrno::Enoent),
        "the transaction is gone too"
    );
}

#[test]
fn watch_ignores_tx_id_and_disconnect_drops_watches() {
    let mut t = T::new();
    let out = t.call_tx(3, 0, XsType::Watch, 77, &z(&["/i", "t"]));
    assert_eq!(out.reply.payload, b"OK\0");
    assert_eq!(out.reply.tx_id, 77);
    t.s.disconnect(ConnId(3));
    assert_eq!(t.write_ev(0, "/i", "x"), vec![]);
}

#[test]
fn special_watches_introduce_and_release() {
    let mut t = T::new();
    assert_eq!(
        t.watch(1, 0, "@introduceDomain", "i"),
        vec![ev(1, "@introduceDomain", "i")]
    );
    t.watch(2, 0, "@releaseDomain", "r");
    t.watch(3, 0, "@releaseDomain/5", "r5");
    t.watch(4, 1, "@releaseDomain", "domu");
    t.watch(5, 0, "/", "root");
    let evs = t.s.introduce(5);
    assert!(evs.contains(&ev(1, "@introduceDomain", "i")), "{evs:?}");
    assert!(evs.contains(&ev(5, "/local/domain/5", "root")), "{evs:?}");
    assert!(t.s.introduce(5).is_empty(), "once");
    assert_eq!(t.s.introduce(0), vec![], "dom0 is always introduced");
    let evs = t.s.release(5);
    let special: Vec<_> = evs
        .iter()
        .filter(|e| e.path.starts_with('@'))
        .cloned()
        .collect();
    assert_eq!(
        special,
        vec![
            ev(2, "@releaseDomain", "r"),
            ev(3, "@releaseDomain/5", "r5")
        ]
    );
    // The domU hears of it once dom0 lets it read @releaseDomain.
    t.set_perms(0, "@releaseDomain", &["n0", "r1"]).unwrap();
    t.s.introduce(6);
    let evs = t.s.release(6);
    assert!(evs.contains(&ev(4, "@releaseDomain", "domu")), "{evs:?}");
    assert!(!evs.iter().any(|e| e.path == "@releaseDomain/5"));
    assert_eq!(t.perms(1, "@releaseDomain").unwrap(), b"n0\0r1\0");
    assert_eq!(
        t.read(0, "@releaseDomain"),
        Err(XsErrno::Einval),
        "not a node path"
    );
}

#[test]
fn release_removes_owned_nodes_and_ends_watches_and_transactions() {
    let mut t = T::new();
    t.write(1, "data/x/y", "v").unwrap();
    t.write(0, "/shared", "").unwrap();
    t.set_perms(0, "/shared", &["n0", "r1", "b2"]).unwrap();
    t.watch(20, 0, "/local/domain/1/data/x/y", "dom0");
    t.watch(21, 1, "data", "mine");
    t.res(21, 1, XsType::TransactionStart, 0, b"\0").unwrap();
    let evs = t.s.release(1);
    assert!(
        evs.contains(&ev(20, "/local/domain/1/data/x/y", "dom0")),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| e.conn == ConnId(21)), "{evs:?}");
    assert_eq!(t.read(0, "/local/domain/1/data"), Err(XsErrno::Enoent));
    assert_eq!(t.read(0, "/local/domain/1/name"), Err(XsErrno::Enoent));
    assert_eq!(t.perms(0, "/shared").unwrap(), b"n0\0b2\0");
    assert_eq!(t.perms(0, "/local/domain/1"), Err(XsErrno::Enoent));
    assert_eq!(
        t.res(21, 1, XsType::Read, 1, &z(&["domid"])),
        Err(XsErrno::Enoent)
    );
    assert!(t.s.release(1).is_empty(), "once");
    t.s.introduce(1);
    assert_eq!(t.perms(1, "data").unwrap(), b"n1\0", "home restored");
}

#[test]
fn domain_requests_over_the_wire() {
    let mut t = T::new();
    let intro = |d: &str, port: &str| z(&[d, "0", port]);
    let out = t.call(0, 0, XsType::Introduce, &intro("9", "3"));
    assert_eq!(out.reply.payload, b"OK\0");
    assert!(t.s.is_introduced(9));
    assert_eq!(
        t.res(0, 0, XsType::Introduce, 0, &intro("9", "0")),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(0, 0, XsType::Introduce, 0, &z(&["9"])),
        Err(XsErrno::Einval)
    );
    let is = |t: &mut T, d: &str| t.res(0, 0, XsType::IsDomainIntroduced, 0, &z(&[d]));
    assert_eq!(is(&mut t, "9").unwrap(), b"T\0");
    assert_eq!(is(&mut t, "10").unwrap(), b"F\0");
    assert_eq!(is(&mut t, "32752").unwrap(), b"T\0", "DOMID_SELF");
    assert_eq!(is(&mut t, "x"), Err(XsErrno::Einval));
    assert_eq!(
        t.res(0, 0, XsType::Release, 0, &z(&["0"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(0, 0, XsType::Release, 0, &z(&["10"])),
        Err(XsErrno::Enoent)
    );
    t.res(0, 0, XsType::Resume, 0, &z(&["9"])).unwrap();
    t.res(0, 0, XsType::Release, 0, &z(&["9"])).unwrap();
    assert!(!t.s.is_introduced(9));
    for ty in [
        XsType::Introduce,
        XsType::Release,
        XsType::IsDomainIntroduced,
        XsType::Control,
        XsType::GetQuota,
        XsType::SetTarget,
    ] {
        assert_eq!(t.res(1, 1, ty, 0, &z(&["1"])), Err(XsErrno::Eacces), "{ty}");
    }
}

#[test]
fn control_commands() {
    let mut t = T::new();
    assert_eq!(
        t.res(0, 0, XsType::Control, 0, &z(&["print", "hi"]))
            .unwrap(),
        b"OK\0"
    );
    assert_eq!(
        t.res(0, 0, XsType::Control, 0, &z(&["check"])).unwrap(),
        b"OK\0"
    );
    let q = t.res(0, 0, XsType::Control, 0, &z(&["quota"])).unwrap();
    let q = String::from_utf8(q).unwrap();
    assert!(q.starts_with("Quota settings:\n"), "{q}");
    assert!(q.contains("nodes            :     1000"), "{q}");
    assert!(q.contains("node-size        :     2048"), "{q}");
    assert!(q.ends_with('\0'));
    assert!(t.res(0, 0, XsType::Control, 0, &z(&["help"])).is_ok());
    assert_eq!(
        t.res(0, 0, XsType::Control, 0, &z(&["bogus"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(0, 0, XsType::Control, 0, b"print"),
        Err(XsErrno::Einval)
    );
    let names = t.res(0, 0, XsType::GetQuota, 0, b"").unwrap();
    assert!(names.starts_with(b"nodes watches"));
    assert_eq!(
        t.res(0, 0, XsType::GetQuota, 0, &z(&["watches"])).unwrap(),
        b"128\0"
    );
    assert_eq!(
        t.res(0, 0, XsType::GetQuota, 0, &z(&["1", "nodes"]))
            .unwrap(),
        b"1000\0"
    );
}

// ---- malformed input ----

#[test]
fn malformed_requests_get_error_replies() {
    let mut t = T::new();
    for raw in [15u32, 16, 20, 27, 99, 0xffff] {
        let m = XsMsg {
            ty: raw,
            req_id: 42,
            tx_id: 0,
            payload: b"/x\0".to_vec(),
        };
        let out = t.s.handle(ConnId(1), 0, &m);
        assert_eq!(out.reply.error_name(), Some(XsErrno::Enosys), "type {raw}");
        assert_eq!(out.reply.req_id, 42);
    }
    let cases: Vec<(XsType, Vec<u8>)> = vec![
        (XsType::Read, b"/x".to_vec()),
        (XsType::Read, b"/x\0/y\0".to_vec()),
        (XsType::Read, b"".to_vec()),
        (XsType::Read, z(&["/a b"])),
        (XsType::Read, z(&["/a/"])),
        (XsType::Read, z(&["/a//b"])),
        (XsType::Read, z(&["/caf\u{e9}"])),
        (XsType::Write, b"/x".to_vec()),
        (XsType::Write, z(&["/x.y", "v"])),
        (XsType::Mkdir, z(&["@special"])),
        (XsType::Watch, z(&["/x"])),
        (XsType::Watch, b"/x\0tok".to_vec()),
        (XsType::Watch, z(&["/x!", "tok"])),
        (XsType::TransactionEnd, b"".to_vec()),
        (XsType::GetDomainPath, z(&["abc"])),
        (XsType::GetDomainPath, z(&["70000"])),
    ];
    for (ty, p) in cases {
        assert_eq!(t.res(0, 0, ty, 0, &p), Err(XsErrno::Einval), "{ty} {p:?}");
    }
    let long = format!("/{}", "a".repeat(3100));
    assert_eq!(t.write(0, &long, "v"), Err(XsErrno::Einval));
    let big = XsMsg {
        ty: XsType::Write.raw(),
        req_id: 3,
        tx_id: 0,
        payload: vec![b'a'; 5000],
    };
    assert_eq!(
        t.s.handle(ConnId(1), 0, &big).reply.error_name(),
        Some(XsErrno::E2big)
    );
    assert_eq!(t.read(0, "/x"), Err(XsErrno::Enoent), "nothing written");
}

#[test]
fn replies_echo_ids_and_values_may_hold_nuls() {
    let mut t = T::new();
    let mut p = z(&["/bin"]);
    p.extend_from_slice(b"a\0b\0");
    let out = t.call_tx(1, 0, XsType::Write, 0, &p);
    assert_eq!(out.reply.payload, b"OK\0");
    assert_eq!(
        t.res(1, 0, XsType::Read, 0, &z(&["/bin"])).unwrap(),
        b"a\0b\0"
    );
    let out = t.call_tx(1, 0, XsType::Read, 55, &z(&["/bin"]));
    assert_eq!(
        out.reply.error_name(),
        Some(XsErrno::Enoent),
        "no such transaction"
    );
    assert_eq!((out.reply.req_id, out.reply.tx_id), (t.req, 55));
}

// ---- quotas ----

#[test]
fn node_quota_counts_owned_nodes() {
    let mut t = T::with(Quotas {
        nodes: 10,
        ..Quotas::default()
    });
    // Domain 1 owns device, data, control and error already.
    for i in 0..6 {
        t.write(1, &format!("data/n{i}"), "").unwrap();
    }
    assert_eq!(t.write(1, "data/n6", ""), Err(XsErrno::Enospc));
    assert_eq!(t.write(1, "data/a/b", ""), Err(XsErrno::Enospc));
    t.write(1, "data/n0", "rewrite is fine").unwrap();
    t.rm(1, "data/n0").unwrap();
    t.write(1, "data/n6", "").unwrap();
    for i in 0..20 {
        t.write(0, &format!("/local/domain/1/data/dom0-{i}"), "")
            .unwrap();
    }
}

#[test]
fn watch_quota_counts_per_domain() {
    let mut t = T::with(Quotas {
        watches: 3,
        ..Quotas::default()
    });
    t.watch(1, 1, "data/a", "t");
    t.watch(2, 1, "data/b", "t");
    t.watch(2, 1, "data/c", "t");
    assert_eq!(
        t.res(3, 1, XsType::Watch, 0, &z(&["data/d", "t"])),
        Err(XsErrno::Enospc)
    );
    t.res(2, 1, XsType::Unwatch, 0, &z(&["data/c", "t"]))
        .unwrap();
    t.watch(3, 1, "data/d", "t");
    for i in 0..10 {
        t.watch(9, 0, &format!("/p{i}"), "dom0");
    }
}

#[test]
fn transaction_quota_counts_per_domain() {
    let mut t = T::with(Quotas {
        transactions: 2,
        ..Quotas::default()
    });
    t.res(1, 1, XsType::TransactionStart, 0, b"\0").unwrap();
    t.res(2, 1, XsType::TransactionStart, 0, b"\0").unwrap();
    assert_eq!(
        t.res(2, 1, XsType::TransactionStart, 0, b"\0"),
        Err(XsErrno::Enospc)
    );
    t.res(1, 1, XsType::TransactionEnd, 1, b"F\0").unwrap();
    t.res(2, 1, XsType::TransactionStart, 0, b"\0").unwrap();
    for _ in 0..5 {
        t.res(0, 0, XsType::TransactionStart, 0, b"\0").unwrap();
    }
}

#[test]
fn node_size_quota_counts_like_c_xenstored() {
    let mut t = T::with(Quotas {
        node_size: 100,
        ..Quotas::default()
    });
    // 16 header + 8 for the one permission entry + the value.
    t.write(1, "data/x", &"v".repeat(76)).unwrap();
    assert_eq!(t.write(1, "data/x", &"v".repeat(77)), Err(XsErrno::Enospc));
    assert_eq!(t.read(1, "data/x").unwrap().len(), 76, "unchanged");
    assert_eq!(t.write(1, "data/y", &"v".repeat(77)), Err(XsErrno::Enospc));
    assert_eq!(t.read(1, "data/y"), Err(XsErrno::Enoent), "not created");
    assert_eq!(
        t.set_perms(1, "data/x", &["n1", "r2"]),
        Err(XsErrno::Enospc),
        "another entry is 8 bytes more"
    );
    t.write(0, "/local/domain/1/data/x", &"v".repeat(1000))
        .unwrap();
}

#[test]
fn permission_entries_quota() {
    let mut t = T::with(Quotas {
        permissions: 2,
        ..Quotas::default()
    });
    t.write(1, "data/p", "").unwrap();
    t.set_perms(1, "data/p", &["n1", "r2"]).unwrap();
    assert_eq!(
        t.set_perms(1, "data/p", &["n1", "r2", "r3"]),
        Err(XsErrno::Enospc)
    );
    t.set_perms(0, "/local/domain/1/data/p", &["n1", "r2", "r3", "r4"])
        .unwrap();
}

/// Creates `n` nodes owned by `domid` under `under`, in groups of 40 so
/// that no directory outgrows the node-size quota (as in C xenstored, a
/// domU's directory listing counts against it).
fn fill(t: &mut T, domid: u16, under: &str, n: usize) -> Result<(), XsErrno> {
    let mut made = 0;
    let mut g = 0;
    while made < n {
        t.write(domid, &format!("{under}/g{g}"), "")?;
        made += 1;
        let mut j = 0;
        while made < n && j < 40 {
            t.write(domid, &format!("{under}/g{g}/n{j}"), "")?;
            made += 1;
            j += 1;
        }
        g += 1;
    }
    Ok(())
}

#[test]
fn a_domu_directory_is_bounded_by_the_node_size_quota() {
    let mut t = T::new();
    let mut i = 0;
    let err = loop {
        match t.write(1, &format!("data/n{i:04}"), "") {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, XsErrno::Enospc);
    // 16 + 8 + 6 bytes per child "nNNNN\0" <= 2048.
    assert_eq!(i, (2048 - 24) / 6);
}

#[test]
fn quotas_zero_means_unlimited() {
    let mut t = T::with(Quotas {
        nodes: 0,
        watches: 0,
        node_size: 0,
        ..Quotas::default()
    });
    fill(&mut t, 1, "data", 1100).unwrap();
    for i in 0..1100 {
        t.write(1, &format!("control/n{i}"), "").unwrap();
    }
    t.write(1, "data/big", &"v".repeat(4000)).unwrap();
    for i in 0..200 {
        t.watch(1, 1, &format!("data/w{i}"), "t");
    }
}

#[test]
fn default_quotas_are_c_xenstored_defaults() {
    let q = Quotas::default();
    assert_eq!(
        (
            q.nodes,
            q.watches,
            q.transactions,
            q.outstanding,
            q.node_size
        ),
        (1000, 128, 10, 20, 2048)
    );
    let mut t = T::new();
    // Domain 1 owns 4 nodes from the start.
    fill(&mut t, 1, "data", 996).unwrap();
    assert_eq!(t.write(1, "control/one-too-many", ""), Err(XsErrno::Enospc));
    t.rm(1, "data/g0/n0").unwrap();
    t.write(1, "control/one-more", "").unwrap();
    for i in 0..128 {
        t.watch(1, 1, &format!("w{i}"), "t");
    }
    assert_eq!(
        t.res(1, 1, XsType::Watch, 0, &z(&["w128", "t"])),
        Err(XsErrno::Enospc)
    );
}

// ---- random input ----

#[test]
fn random_requests_never_panic_and_always_answer() {
    // A deterministic xorshift: no new dependency, same run every time.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let pieces: [&[u8]; 16] = [
        b"/",
        b"a",
        b"b",
        b"data",
        b"@releaseDomain",
        b"\0",
        b"\0",
        b"\0",
        b"1",
        b"T",
        b"r1",
        b"n0",
        b"//",
        b"..",
        b"\xff",
        b"local/domain/1",
    ];
    let mut t = T::with(Quotas {
        nodes: 50,
        watches: 5,
        transactions: 3,
        transaction_nodes: 20,
        ..Quotas::default()
    });
    for i in 0..20_000u32 {
        let r = next();
        let ty = match r % 10 {
            0 => (r >> 8) as u32 % 30,
            _ => [1u32, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 21, 22][(r >> 8) as usize % 13],
        };
        let mut payload = Vec::new();
        for _ in 0..(r >> 16) % 6 {
            payload.extend_from_slice(pieces[(next() % 16) as usize]);
        }
        let domid = [0u16, 1, 2, 3][(r >> 24) as usize % 4];
        let tx = if (r >> 30) % 4 == 0 {
            (r >> 32) as u32 % 4
        } else {
            0
        };
        let m = XsMsg {
            ty,
            req_id: i,
            tx_id: tx,
            payload,
        };
        let out =
            t.s.handle(ConnId(u64::from(domid) * 2 + (r >> 40) % 2), domid, &m);
        assert_eq!((out.reply.req_id, out.reply.tx_id), (i, tx));
        assert!(out.reply.payload.len() <= crate::abi::xs_wire::XENSTORE_PAYLOAD_MAX);
        if i % 5000 == 0 {
            t.s.release(1);
            t.s.introduce(1);
        }
    }
}
