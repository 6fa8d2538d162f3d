//! Domains and sessions: several processes (here, several `SimDomain`s) in
//! one domain, persistent domains that outlive their processes, what a
//! session's end releases, grant-table chunks, and destruction of a domain
//! with live sessions. Every test ends by asserting the host reports no
//! leak.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::abi::grant::GnttabStatus;
use crate::platform::{Access, ForeignMapping, Platform, PlatformError, SharedPages, UnmapNotify};
use crate::shm::PAGE_SIZE;

/// A host whose grant tables have `chunks` chunks of 512 references.
fn host(chunks: u32) -> (tempfile::TempDir, SimHost) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        machine_frames: 4096,
        gnttab_entries: chunks * 512,
        max_ports: 64,
        ..HostConfig::default()
    };
    let host = SimHost::start(dir.path().join("control.sock"), cfg).unwrap();
    (dir, host)
}

fn join(h: &SimHost, domid: u16) -> SimDomain {
    SimDomain::connect(h.control_path(), domid).unwrap()
}

/// Waits until the host has processed a disconnect (it runs on its own
/// thread).
fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached in 5 s");
}

fn sessions(h: &SimHost, domid: u16) -> Option<u32> {
    h.report().domain(domid).map(|d| d.sessions)
}

fn errno(e: PlatformError) -> (i32, String) {
    let text = e.to_string();
    match e {
        PlatformError::Errno { errno, .. } => (errno, text),
        other => panic!("expected an errno, got {other}"),
    }
}

#[test]
fn two_sessions_allocate_grants_concurrently_without_collision() {
    let (_d, h) = host(8);
    let (a, b, d0) = (join(&h, 1), join(&h, 1), join(&h, 0));
    let share_many = |s: SimDomain| {
        std::thread::spawn(move || {
            let shares: Vec<Box<dyn SharedPages>> = (0..600)
                .map(|_| s.share_pages(0, 1, Access::ReadWrite).unwrap())
                .collect();
            (s, shares)
        })
    };
    let (ta, tb) = (share_many(a), share_many(b));
    let (a, sa) = ta.join().unwrap();
    let (b, sb) = tb.join().unwrap();
    let refs = |shares: &[Box<dyn SharedPages>]| -> Vec<u32> {
        shares.iter().map(|s| s.refs()[0]).collect()
    };
    let (ra, rb) = (refs(&sa), refs(&sb));
    let all: HashSet<u32> = ra.iter().chain(&rb).copied().collect();
    assert_eq!(all.len(), 1200, "no reference handed out twice");
    // 600 refs do not fit one chunk: each session was handed a second one,
    // and used only its own.
    for (s, r) in [(&a, &ra), (&b, &rb)] {
        let ranges = s.grant_table().ranges();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert!(
            r.iter()
                .all(|g| ranges.iter().any(|(lo, hi)| (lo..hi).contains(&g))),
            "{ranges:?}"
        );
    }
    let r = h.report();
    assert_eq!(r.domain(1).unwrap().grants_valid, 1200);
    assert_eq!(r.domain(1).unwrap().sessions, 2);
    // Both sessions' grants work: domain 0 maps one of each.
    sa[599].memory().write(0, b"from session a");
    sb[599].memory().write(0, b"from session b");
    let m = d0
        .map_grants(1, &[ra[599], rb[599]], Access::ReadOnly)
        .unwrap();
    let mut buf = [0u8; 14];
    m.memory().read(0, &mut buf);
    assert_eq!(&buf, b"from session a");
    m.memory().read(PAGE_SIZE, &mut buf);
    assert_eq!(&buf, b"from session b");
    drop(m);
    drop((sa, sb));
    h.report().assert_clean();
}

#[test]
fn a_full_grant_table_refuses_a_chunk_until_a_session_returns_one() {
    let (_d, h) = host(2);
    let (a, b) = (join(&h, 1), join(&h, 1));
    // Both chunks are taken: a third session joins without any.
    let c = join(&h, 1);
    assert!(c.grant_table().ranges().is_empty());
    let (code, text) = errno(c.share_pages(0, 1, Access::ReadWrite).unwrap_err());
    assert_eq!(code, 28, "{text}");
    assert!(text.contains("grant table of domain 1 full"), "{text}");
    // Its page went back: the host holds nothing for it.
    assert_eq!(h.report().domain(1).unwrap().frames_owned, 0);
    // A session that ends returns its chunk.
    drop(b);
    wait_until(|| sessions(&h, 1) == Some(2));
    let share = c.share_pages(0, 1, Access::ReadWrite).unwrap();
    assert_eq!(c.grant_table().ranges(), vec![(512, 1024)]);
    assert_eq!(share.refs(), &[512]);
    drop((share, a, c));
    wait_until(|| h.report().domain(1).is_none());
    h.report().assert_clean();
}

#[tokio::test]
async fn a_session_closes_while_another_session_of_the_domain_keeps_working() {
    let (_d, h) = host(4);
    let (a, b, d0) = (join(&h, 1), join(&h, 1), join(&h, 0));
    // Session a holds a page, a port bound by domain 0, and a mapping.
    let share_a = a.share_pages(0, 1, Access::ReadWrite).unwrap();
    let port_a = a.alloc_unbound_port(0).unwrap();
    let bound_a = d0.bind_interdomain(1, port_a.local_port()).unwrap();
    let theirs = d0.share_pages(1, 1, Access::ReadWrite).unwrap();
    let map_a = a.map_grants(0, theirs.refs(), Access::ReadWrite).unwrap();
    // Session b shares with domain 0 too.
    let share_b = b.share_pages(0, 2, Access::ReadWrite).unwrap();
    share_b.memory().write(PAGE_SIZE + 9, b"session b");
    let port_b = b.alloc_unbound_port(0).unwrap();
    let bound_b = d0.bind_interdomain(1, port_b.local_port()).unwrap();
    let map_b = d0.map_grants(1, share_b.refs(), Access::ReadWrite).unwrap();

    a.disconnect(); // session a's process dies
    wait_until(|| sessions(&h, 1) == Some(1));
    let r = h.report();
    let d1 = r.domain(1).unwrap();
    assert_eq!(d1.state, DomainState::Running);
    assert_eq!(
        (d1.frames_owned, d1.grants_valid, d1.ports, d1.mappings),
        (2, 2, 1, 0),
        "only session b's resources are left: {d1}"
    );
    assert_eq!(r.domain(0).unwrap().grants_mapped_by_peers, 0);
    // Session a's handles now fail (or only log, when dropped).
    assert!(a.alloc_pages(1).is_err());
    drop((share_a, port_a, map_a));

    // Session b's share and port are unaffected.
    let mut buf = [0u8; 9];
    map_b.memory().read(PAGE_SIZE + 9, &mut buf);
    assert_eq!(&buf, b"session b");
    for _ in 0..100 {
        bound_b.notify().unwrap();
        tokio::time::timeout(Duration::from_secs(5), port_b.wait())
            .await
            .expect("event")
            .unwrap();
        port_b.notify().unwrap();
        tokio::time::timeout(Duration::from_secs(5), bound_b.wait())
            .await
            .expect("event")
            .unwrap();
    }
    let more = b.share_pages(0, 1, Access::ReadOnly).unwrap();
    drop((more, map_b, share_b, port_b, bound_b, bound_a, theirs));
    h.report().assert_clean();
}

#[test]
fn a_persistent_domain_survives_its_only_session_and_takes_a_new_one() {
    let (_d, h) = host(2);
    h.create_domain(5).unwrap();
    let r = h.report();
    let d5 = r.domain(5).unwrap();
    assert_eq!(
        (d5.state, d5.persistent, d5.sessions),
        (DomainState::Running, true, 0)
    );
    r.assert_clean(); // an idle domain is not a leak

    let d0 = join(&h, 0);
    let first = join(&h, 5);
    let share = first.share_pages(0, 1, Access::ReadWrite).unwrap();
    let port = first.alloc_unbound_port(0).unwrap();
    let _pages = first.alloc_pages(2).unwrap();
    first.disconnect(); // killed while holding all that
    wait_until(|| sessions(&h, 5) == Some(0));
    let r = h.report();
    assert_eq!(r.domain(5).unwrap().state, DomainState::Running);
    r.assert_clean();
    drop((share, port, _pages, first));

    // A new process joins the same domain and works.
    let second = join(&h, 5);
    assert_eq!(second.domid(), 5);
    let share = second.share_pages(0, 1, Access::ReadWrite).unwrap();
    share.memory().write(0, b"second life");
    let map = d0.map_grants(5, share.refs(), Access::ReadOnly).unwrap();
    let mut buf = [0u8; 11];
    map.memory().read(0, &mut buf);
    assert_eq!(&buf, b"second life");
    drop((map, share, second));
    wait_until(|| sessions(&h, 5) == Some(0));
    h.report().assert_clean();
    assert!(h.report().domain(5).is_some(), "still there, idle");

    h.destroy_domain(5).unwrap();
    assert!(h.report().domain(5).is_none());
    let err = h.destroy_domain(5).unwrap_err();
    assert!(err.contains("no running domain 5"), "{err}");
    h.report().assert_clean();
}

#[test]
fn a_dead_sessions_page_stays_valid_while_a_peer_maps_it() {
    let (_d, h) = host(2);
    h.create_domain(3).unwrap();
    let d0 = join(&h, 0);
    let a = join(&h, 3);
    let share = a.share_pages(0, 1, Access::ReadWrite).unwrap();
    let gref = share.refs()[0];
    share.memory().write(100, b"written before death");
    let map = d0.map(3, &[gref], Access::ReadWrite).unwrap();

    a.disconnect();
    wait_until(|| sessions(&h, 3) == Some(0));
    // The peer still reads (and writes) valid memory.
    let mut buf = [0u8; 20];
    map.memory().read(100, &mut buf);
    assert_eq!(&buf, b"written before death");
    map.memory().write(0, b"still mine");
    let r = h.report();
    let d3 = r.domain(3).unwrap();
    assert_eq!((d3.grants_valid, d3.grants_mapped_by_peers), (1, 1), "{d3}");
    assert_eq!(d3.frames_owned, 0, "the page is an orphan now");
    assert_eq!(r.orphan_frames, 1);
    assert!(!r.leaks().is_empty(), "held until the peer unmaps");
    // Its chunk is draining: a new session gets the other one.
    let b = join(&h, 3);
    assert_eq!(b.grant_table().ranges(), vec![(512, 1024)]);

    drop(map);
    // The entry is cleared at the last unmap, and the page freed.
    let e = a.grant_table().snapshot(gref).unwrap();
    assert_eq!(e.flags(), 0, "entry revoked");
    h.report().assert_clean();
    // And the chunk is free again.
    let c = join(&h, 3);
    assert_eq!(c.grant_table().ranges(), vec![(8, 512)]);
    drop((share, a, b, c));
    wait_until(|| sessions(&h, 3) == Some(0));
    h.report().assert_clean();
}

#[tokio::test]
async fn killing_a_session_releases_its_ports_and_fires_its_unmap_notifications() {
    let (_d, h) = host(4);
    let (a, keep, d0) = (join(&h, 1), join(&h, 1), join(&h, 0));
    // Session a: a shared page with a live byte and an unmap notification
    // on its port, which domain 0 binds; and a mapping of domain 0's page
    // with a notification that clears a byte there.
    let mut share = a.share_pages(0, 1, Access::ReadWrite).unwrap();
    share.memory().write(0, &[1]);
    let port = a.alloc_unbound_port(0).unwrap();
    let peer_port = d0.bind_interdomain(1, port.local_port()).unwrap();
    share
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(0),
            event: Some(port.local_port()),
        })
        .unwrap();
    let theirs = d0.share_pages(1, 1, Access::ReadWrite).unwrap();
    theirs.memory().write(5, &[1]);
    let mut map = a.map_grants(0, theirs.refs(), Access::ReadWrite).unwrap();
    map.set_unmap_notify(UnmapNotify {
        clear_byte: Some(5),
        event: None,
    })
    .unwrap();
    let peer_map = d0.map_grants(1, share.refs(), Access::ReadOnly).unwrap();
    assert_eq!(h.report().domain(1).unwrap().notifies, 2);

    a.disconnect();
    tokio::time::timeout(Duration::from_secs(5), peer_port.wait())
        .await
        .expect("the dead session's unmap notification")
        .unwrap();
    wait_until(|| sessions(&h, 1) == Some(1));
    let mut b = [9u8];
    peer_map.memory().read(0, &mut b);
    assert_eq!(b[0], 0, "live byte cleared");
    theirs.memory().read(5, &mut b);
    assert_eq!(b[0], 0, "the mapping's byte cleared at its unmap");
    let r = h.report();
    let d1 = r.domain(1).unwrap();
    assert_eq!(
        (d1.ports, d1.notifies, d1.mappings),
        (0, 0, 0),
        "the session's ports, notifications and mappings are gone: {d1}"
    );
    assert_eq!(r.domain(0).unwrap().grants_mapped_by_peers, 0);
    // Domain 0's port went back to unbound: notifying it goes nowhere.
    peer_port.notify().unwrap();
    // ... and a new session of domain 1 may bind it again.
    let rebound = keep.bind_interdomain(0, peer_port.local_port()).unwrap();
    peer_port.notify().unwrap();
    tokio::time::timeout(Duration::from_secs(5), rebound.wait())
        .await
        .expect("event to the new binding")
        .unwrap();
    drop((share, port, map, a));
    drop((peer_map, theirs, rebound, peer_port));
    h.report().assert_clean();
}

#[test]
fn a_session_cannot_undo_another_sessions_mapping() {
    let (_d, h) = host(4);
    let (a, b, d0) = (join(&h, 1), join(&h, 1), join(&h, 0));
    let theirs = d0.share_pages(1, 1, Access::ReadOnly).unwrap();
    let map = a.map(0, theirs.refs(), Access::ReadOnly).unwrap();
    let err = b.unmap_handle(map.handle()).unwrap_err();
    assert!(
        err.to_string().contains("not mapped by this session"),
        "{err}"
    );
    match err {
        PlatformError::Gnttab { status, .. } => assert_eq!(status, GnttabStatus::BadHandle),
        other => panic!("{other}"),
    }
    drop((map, theirs, a, b));
    h.report().assert_clean();
}

#[test]
fn destroying_a_persistent_domain_cuts_all_its_sessions() {
    let (_d, h) = host(4);
    let d0 = join(&h, 0);
    d0.create_domain(4).unwrap();
    let (a, b) = (join(&h, 4), join(&h, 4));
    let share_a = a.share_pages(0, 1, Access::ReadWrite).unwrap();
    let share_b = b.share_pages(0, 2, Access::ReadWrite).unwrap();
    let _port = b.alloc_unbound_port(0).unwrap();
    let _pages = a.alloc_pages(3).unwrap();
    let map = d0.map_grants(4, share_a.refs(), Access::ReadWrite).unwrap();
    assert_eq!(sessions(&h, 4), Some(2));

    d0.destroy_domain(4).unwrap();
    // Both sessions' next calls say what happened.
    for s in [&a, &b] {
        let err = s.alloc_pages(1).unwrap_err();
        assert!(
            err.to_string().contains("domain 4 has been destroyed"),
            "{err}"
        );
    }
    let r = h.report();
    let d4 = r.domain(4).expect("a zombie while domain 0 maps its page");
    assert_eq!((d4.state, d4.sessions), (DomainState::Dying, 0));
    assert_eq!(
        (d4.frames_owned, d4.ports, d4.grants_valid),
        (0, 0, 1),
        "{d4}"
    );
    // A dying domain cannot be joined or created.
    let err = SimDomain::connect(h.control_path(), 4).unwrap_err();
    assert!(err.to_string().contains("domain 4 is dying"), "{err}");
    assert!(h.create_domain(4).unwrap_err().contains("already exists"));
    drop(map);
    assert!(h.report().domain(4).is_none(), "reaped at the last unmap");
    std::mem::forget((share_a, share_b, _port, _pages)); // their processes are dead
    drop((a, b));
    h.report().assert_clean();
}

#[test]
fn creating_an_existing_domain_is_refused() {
    let (_d, h) = host(2);
    h.create_domain(2).unwrap();
    let err = h.create_domain(2).unwrap_err();
    assert_eq!(err, "domain 2 already exists");
    let _d1 = join(&h, 1); // an implicit domain exists too
    let admin = SimAdmin::connect(h.control_path()).unwrap();
    let (code, text) = errno(admin.create_domain(1).unwrap_err());
    assert_eq!(code, 17, "{text}");
    assert!(text.contains("domain 1 already exists"), "{text}");
    admin.create_domain(3).unwrap();
    let r = admin.report().unwrap();
    assert!(r.domain(3).unwrap().persistent && !r.domain(1).unwrap().persistent);
    admin.destroy_domain(2).unwrap();
    admin.destroy_domain(3).unwrap();
    h.report().assert_clean();
}

#[test]
fn only_dom0_may_create_domains() {
    let (_d, h) = host(2);
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let (code, text) = errno(d1.create_domain(7).unwrap_err());
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("domain 1 may not create domain 7: only dom0 may"),
        "{text}"
    );
    assert!(h.report().domain(7).is_none());
    d0.create_domain(7).unwrap();
    assert!(h.report().domain(7).unwrap().persistent);
    h.report().assert_clean();
}

#[test]
fn the_report_shows_sessions_and_persistence() {
    let (_d, h) = host(2);
    h.create_domain(6).unwrap();
    let (_a, _b) = (join(&h, 6), join(&h, 6));
    let _c = join(&h, 1);
    let text = h.report().to_string();
    assert!(
        text.contains("domain 6 (Running, persistent, 2 sessions): 0 frames owned"),
        "{text}"
    );
    assert!(
        text.contains("domain 1 (Running, 1 session): 0 frames owned"),
        "{text}"
    );
}
