//! The host's xenstored follows the domains: introduced when one is
//! created (by a join or a create request), released in every path that
//! destroys it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::*;
use crate::abi::xs_wire::{XsErrno, XsType};
use crate::xenstore::codec::decode;
use crate::xenstore::XsMsg;

/// A blocking raw xs_wire client (dom0's socket unless told otherwise).
struct Xs {
    s: UnixStream,
    buf: Vec<u8>,
    events: Vec<String>,
}

impl Xs {
    fn connect(h: &SimHost, domid: u16) -> Xs {
        let s = UnixStream::connect(h.xenstore_path(domid).unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Xs {
            s,
            buf: Vec::new(),
            events: Vec::new(),
        }
    }

    fn recv(&mut self) -> XsMsg {
        loop {
            if let Some((m, used)) = decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                return m;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("xenstored reply in time");
            assert!(n > 0, "xenstored closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, ty: XsType, parts: &[&str]) -> XsMsg {
        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        let m = XsMsg::with_strings(ty, 9, 0, &parts, true).unwrap();
        self.s.write_all(&m.to_bytes()).unwrap();
        loop {
            let r = self.recv();
            if r.kind() == Some(XsType::WatchEvent) {
                self.events
                    .push(String::from_utf8_lossy(r.parts()[0]).into_owned());
                continue;
            }
            return r;
        }
    }

    fn introduced(&mut self, domid: u16) -> bool {
        let r = self.call(XsType::IsDomainIntroduced, &[&domid.to_string()]);
        r.payload == b"T\0"
    }

    /// Waits for an event on `path`.
    fn wait_event(&mut self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.events.iter().any(|e| e == path) {
            assert!(
                Instant::now() < deadline,
                "no event on {path}: {:?}",
                self.events
            );
            let r = self.recv();
            assert_eq!(r.kind(), Some(XsType::WatchEvent));
            self.events
                .push(String::from_utf8_lossy(r.parts()[0]).into_owned());
        }
    }
}

fn host() -> (tempfile::TempDir, SimHost) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        machine_frames: 1024,
        gnttab_entries: 512,
        max_ports: 16,
        ..HostConfig::default()
    };
    let host = SimHost::start(dir.path().join("control.sock"), cfg).unwrap();
    (dir, host)
}

#[test]
fn sockets_live_beside_the_control_socket_and_admins_can_ask() {
    let (dir, h) = host();
    let p = h.xenstore_path(3).unwrap();
    assert_eq!(p, dir.path().join("xenstore").join("3.sock"));
    let admin = SimAdmin::connect(h.control_path()).unwrap();
    assert_eq!(admin.xenstore_path(3).unwrap(), p);
    let mut xs = Xs::connect(&h, 0);
    let r = xs.call(XsType::Read, &["/local/domain/0/name"]);
    assert_eq!(r.payload, b"Domain-0");
    drop(xs);
    h.shutdown();
    assert!(!p.exists(), "sockets removed at shutdown");
}

#[test]
fn joining_introduces_and_every_destroy_path_releases() {
    let (_d, h) = host();
    let mut xs = Xs::connect(&h, 0);
    xs.call(XsType::Watch, &["@releaseDomain", "r"]);
    xs.call(XsType::Watch, &["@introduceDomain", "i"]);
    xs.events.clear();
    assert!(!xs.introduced(1));

    // Disconnect.
    let d1 = SimDomain::connect(h.control_path(), 1).unwrap();
    xs.wait_event("@introduceDomain");
    assert!(xs.introduced(1));
    let r = xs.call(XsType::Read, &["/local/domain/1/domid"]);
    assert_eq!(r.payload, b"1");
    drop(d1);
    xs.wait_event("@releaseDomain");
    assert!(!xs.introduced(1));

    // Destroy request.
    xs.events.clear();
    let d0 = SimDomain::connect(h.control_path(), 0).unwrap();
    let _d2 = SimDomain::connect(h.control_path(), 2).unwrap();
    assert!(xs.introduced(2));
    d0.destroy_domain(2).unwrap();
    xs.wait_event("@releaseDomain");
    assert!(!xs.introduced(2));

    // Shutdown: domain 3 is released before xenstored stops (its watch
    // on @releaseDomain/3 hears of it).
    let _d3 = SimDomain::connect(h.control_path(), 3).unwrap();
    xs.events.clear();
    xs.call(XsType::Watch, &["@releaseDomain/3", "r3"]);
    assert!(xs.introduced(3));
    let t = std::thread::spawn(move || h.shutdown());
    xs.wait_event("@releaseDomain/3");
    t.join().unwrap();
}

#[test]
fn a_created_domain_is_introduced_and_outlives_its_sessions() {
    let (_d, h) = host();
    let mut xs = Xs::connect(&h, 0);
    h.create_domain(4).unwrap();
    assert!(xs.introduced(4));
    let r = xs.call(XsType::Read, &["/local/domain/4/domid"]);
    assert_eq!(r.payload, b"4");
    let s = SimDomain::connect(h.control_path(), 4).unwrap();
    assert_eq!(h.report().domain(4).unwrap().sessions, 1);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.report().domain(4).unwrap().sessions != 0 {
        assert!(Instant::now() < deadline, "the session never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(xs.introduced(4), "still introduced without a session");
    xs.call(XsType::Watch, &["@releaseDomain", "r"]);
    xs.events.clear();
    h.destroy_domain(4).unwrap();
    xs.wait_event("@releaseDomain");
    assert!(!xs.introduced(4));
}

#[test]
fn a_domain_socket_speaks_for_that_domain() {
    let (_d, h) = host();
    let _d1 = SimDomain::connect(h.control_path(), 1).unwrap();
    let mut xs1 = Xs::connect(&h, 1);
    assert_eq!(xs1.call(XsType::Read, &["name"]).payload, b"domain-1");
    let r = xs1.call(XsType::Read, &["/local/domain/0/name"]);
    assert_eq!(r.error_name(), Some(XsErrno::Eacces));
}

#[test]
fn a_destroyed_domain_leaves_no_home_and_its_domid_starts_afresh() {
    let (_d, h) = host();
    let mut xs = Xs::connect(&h, 0);
    h.create_domain(5).unwrap();
    {
        let mut xs5 = Xs::connect(&h, 5);
        let r = xs5.call(XsType::Write, &["data/x", "v"]);
        assert_eq!(r.payload, b"OK\0");
    }
    h.destroy_domain(5).unwrap();
    for p in ["/local/domain/5", "/local/domain/5/name"] {
        let r = xs.call(XsType::Read, &[p]);
        assert_eq!(r.error_name(), Some(XsErrno::Enoent), "{p}");
    }
    h.report().assert_clean();

    h.create_domain(5).unwrap();
    let mut xs5 = Xs::connect(&h, 5);
    assert_eq!(xs5.call(XsType::Read, &["name"]).payload, b"domain-5");
    assert_eq!(xs5.call(XsType::Read, &["domid"]).payload, b"5");
    assert_eq!(
        xs5.call(XsType::Read, &["data/x"]).error_name(),
        Some(XsErrno::Enoent)
    );
    h.destroy_domain(5).unwrap();
    h.report().assert_clean();
}

#[test]
fn the_report_names_xenstore_nodes_left_of_a_destroyed_domain() {
    let (_d, h) = host();
    let mut xs = Xs::connect(&h, 0);
    h.create_domain(6).unwrap();
    h.destroy_domain(6).unwrap();
    // A dom0 writer recreates part of the dead domain's home.
    let r = xs.call(XsType::Write, &["/local/domain/6/device/vif/0/state", "6"]);
    assert_eq!(r.payload, b"OK\0");
    let report = h.report();
    let leaks = report.leaks();
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert!(leaks[0].contains("/local/domain/6"), "{leaks:?}");
    // The admin's report (what `xenring-sim report --check` reads) too.
    let admin = SimAdmin::connect(h.control_path()).unwrap();
    assert_eq!(admin.report().unwrap().leaks(), leaks);
    assert!(report.to_string().contains("/local/domain/6"), "{report}");
    xs.call(XsType::Rm, &["/local/domain/6"]);
    h.report().assert_clean();
}

#[test]
fn the_socket_folder_is_private_and_a_shared_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let t = tempfile::tempdir().unwrap();
    // A folder the host makes is its user's alone, and so is xenstore/.
    let mine = t.path().join("sim");
    let h = SimHost::start(mine.join("control.sock"), HostConfig::default()).unwrap();
    assert_eq!(mode(&mine), 0o700);
    assert_eq!(mode(&mine.join("xenstore")), 0o700);
    assert_eq!(mode(&mine.join("control.sock")), 0o600);
    h.shutdown();
    // One someone left open (as /tmp/xenring-sim-<uid> made by another
    // user with mode 0777 would be) is refused, and left as it was.
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = SimHost::start(open.join("control.sock"), HostConfig::default()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("mode 0777"), "{e}");
    assert!(!open.join("control.sock").exists());
    assert_eq!(mode(&open), 0o777);
    // Clients refuse to connect through such a folder too.
    let e = SimAdmin::connect(open.join("control.sock")).unwrap_err();
    assert!(e.to_string().contains("mode 0777"), "{e}");
}

impl Xs {
    /// Reads until the server closes the connection (events may come
    /// first; a reply may not).
    fn expect_closed(&mut self) {
        loop {
            if let Some((m, used)) = decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                assert_eq!(m.kind(), Some(XsType::WatchEvent), "{m:?}");
                continue;
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Issue (dead domains still speak): `create` makes the socket at once;
/// destroying the domain closes its open connections and its socket, and
/// what it wrote goes.
#[test]
fn a_destroyed_domain_cannot_speak() {
    let (_d, h) = host();
    let p = h.xenstore_path(4).unwrap();
    assert!(!p.exists(), "no socket before the domain exists");
    h.create_domain(4).unwrap();
    assert!(p.exists(), "create makes the socket");
    let mut dom4 = Xs::connect(&h, 4);
    assert_eq!(dom4.call(XsType::Read, &["domid"]).payload, b"4");
    let r = dom4.call(XsType::Mkdir, &["data/mine"]);
    assert_eq!(r.error_name(), None);
    let mut dom0 = Xs::connect(&h, 0);
    h.destroy_domain(4).unwrap();
    dom4.expect_closed();
    assert!(
        UnixStream::connect(&p).is_err(),
        "a dead domain's socket refuses"
    );
    let r = dom0.call(XsType::Read, &["/local/domain/4/data/mine"]);
    assert_eq!(r.error_name(), Some(crate::abi::xs_wire::XsErrno::Enoent));
    h.report().assert_clean();
}

/// Issue (never-created domains speak): a domid nobody created has no
/// socket; one created implicitly by joining has one while it lives, and
/// its nodes go with it.
#[test]
fn only_a_living_domain_has_a_socket() {
    let (_d, h) = host();
    let p = h.xenstore_path(9).unwrap();
    assert!(UnixStream::connect(&p).is_err(), "domain 9 does not exist");
    let mut dom0 = Xs::connect(&h, 0);
    dom0.call(XsType::Watch, &["@releaseDomain", "r"]);
    dom0.events.clear();
    let d9 = SimDomain::connect(h.control_path(), 9).unwrap();
    let mut dom9 = Xs::connect(&h, 9);
    let r = dom9.call(XsType::Mkdir, &["data/mine"]);
    assert_eq!(r.error_name(), None);
    drop(d9);
    dom0.wait_event("@releaseDomain");
    dom9.expect_closed();
    assert!(UnixStream::connect(&p).is_err());
    let r = dom0.call(XsType::Read, &["/local/domain/9/data/mine"]);
    assert_eq!(r.error_name(), Some(crate::abi::xs_wire::XsErrno::Enoent));
    h.report().assert_clean();
}
