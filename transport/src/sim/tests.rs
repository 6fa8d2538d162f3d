//! The simulated host with its domains inside one test process: sharing,
//! mapping, copying, transferring, events, misuse refusals, destruction.
//! Every test ends by asserting the host reports no leak.

use std::time::Duration;

use super::*;
use crate::abi::grant::{GnttabStatus, GTF_PERMIT_ACCESS, GTF_READING, GTF_WRITING};
use crate::platform::{Access, CopyPtr, GrantCopy, Platform, PlatformError, UnmapNotify};
use crate::shm::PAGE_SIZE;

fn host() -> (tempfile::TempDir, SimHost) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        machine_frames: 4096,
        gnttab_entries: 1024,
        max_ports: 64,
        ..HostConfig::default()
    };
    let host = SimHost::start(dir.path().join("control.sock"), cfg).unwrap();
    (dir, host)
}

fn join(h: &SimHost, domid: u16) -> SimDomain {
    SimDomain::connect(h.control_path(), domid).unwrap()
}

fn gnttab_status(e: PlatformError) -> GnttabStatus {
    match e {
        PlatformError::Gnttab { status, .. } => status,
        other => panic!("expected a grant-table status, got {other}"),
    }
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

#[test]
fn share_map_write_both_ways_and_release_cleanly() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 3, Access::ReadWrite).unwrap();
    assert_eq!(share.refs().len(), 3);
    share.memory().write(PAGE_SIZE * 2 + 5, b"from domain 1");
    let map = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
    let mut buf = [0u8; 13];
    map.memory().read(PAGE_SIZE * 2 + 5, &mut buf);
    assert_eq!(&buf, b"from domain 1");
    map.memory().write(7, b"from domain 0");
    share.memory().read(7, &mut buf);
    assert_eq!(&buf, b"from domain 0");

    // The host set GTF_reading|GTF_writing in domain 1's table, by CAS.
    let e = d1.grant_table().snapshot(share.refs()[0]).unwrap();
    assert_eq!(e.flags(), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
    let r = h.report();
    assert_eq!(r.domain(1).unwrap().grants_valid, 3);
    assert_eq!(r.domain(1).unwrap().grants_mapped_by_peers, 3);
    assert_eq!(r.domain(0).unwrap().mapped_pages, 3);
    assert_eq!(r.domain(1).unwrap().frames_owned, 3);

    map.unmap().unwrap();
    share.end().map_err(|(_, e)| e).unwrap();
    h.report().assert_clean();
}

#[test]
fn read_only_map_faults_are_prevented_by_protection() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadOnly).unwrap();
    share.memory().write(0, b"ro");
    let map = d0.map_grants(1, share.refs(), Access::ReadOnly).unwrap();
    assert_eq!(map.memory().protection(), crate::shm::Protection::ReadOnly);
    let mut b = [0u8; 2];
    map.memory().read(0, &mut b);
    assert_eq!(&b, b"ro");
    drop(map);
    drop(share);
    h.report().assert_clean();
}

#[test]
fn misuse_wrong_domid_is_permission_denied() {
    let (_d, h) = host();
    let (_d0, d1, d2) = (join(&h, 0), join(&h, 1), join(&h, 2));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    let err = d2
        .map_grants(1, share.refs(), Access::ReadOnly)
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(gnttab_status(err), GnttabStatus::PermissionDenied);
    assert!(
        msg.contains("grant") && msg.contains("domain 1") && msg.contains("domain 2"),
        "{msg}"
    );
    drop(share);
    h.report().assert_clean();
}

#[test]
fn misuse_write_map_of_read_only_grant_is_refused() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 2, Access::ReadOnly).unwrap();
    let err = d0
        .map_grants(1, share.refs(), Access::ReadWrite)
        .unwrap_err();
    assert_eq!(gnttab_status(err), GnttabStatus::GeneralError);
    // All or nothing: no entry was left pinned.
    for r in share.refs() {
        assert_eq!(
            d1.grant_table().snapshot(*r).unwrap().flags() & (GTF_READING | GTF_WRITING),
            0
        );
    }
    drop(share);
    h.report().assert_clean();
}

#[test]
fn misuse_bad_reference_and_missing_domain() {
    let (_d, h) = host();
    let (d0, _d1) = (join(&h, 0), join(&h, 1));
    assert_eq!(
        gnttab_status(d0.map_grants(1, &[9], Access::ReadOnly).unwrap_err()),
        GnttabStatus::GeneralError
    );
    assert_eq!(
        gnttab_status(d0.map_grants(1, &[1 << 20], Access::ReadOnly).unwrap_err()),
        GnttabStatus::BadGntref
    );
    assert_eq!(
        gnttab_status(d0.map_grants(7, &[8], Access::ReadOnly).unwrap_err()),
        GnttabStatus::BadDomain
    );
    h.report().assert_clean();
}

#[test]
fn misuse_ending_a_mapped_grant_is_refused_and_share_survives() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 2, Access::ReadWrite).unwrap();
    let refs = share.refs().to_vec();
    let map = d0.map_grants(1, &refs[1..], Access::ReadOnly).unwrap();
    let (share, err) = share.end().unwrap_err();
    assert!(matches!(err, PlatformError::Grant(_)), "{err}");
    assert!(err.to_string().contains("still mapped"), "{err}");
    // The mapped page is intact and still shared; the peer still reads it.
    share.memory().write(PAGE_SIZE, b"alive");
    let mut b = [0u8; 5];
    map.memory().read(0, &mut b);
    assert_eq!(&b, b"alive");
    map.unmap().unwrap();
    share.end().map_err(|(_, e)| e).unwrap();
    h.report().assert_clean();
}

#[test]
fn dropping_a_mapped_share_defers_its_end_until_unmapped() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    let map = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
    drop(share);
    // Still mapped: whoever retries (this call or the retry thread) must
    // leave the grant valid.
    d1.retry_deferred();
    assert_eq!(h.report().domain(1).unwrap().grants_valid, 1);
    drop(map);
    assert_eq!(d1.retry_deferred(), 0);
    h.report().assert_clean();
}

/// An idle domain (no further share to trigger a retry) still ends a
/// deferred share once the peer unmaps: the retry thread does it.
#[test]
fn a_deferred_share_is_ended_without_another_share() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    let map = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
    drop(share);
    drop(map);
    // Bounded wait for the retry thread (a hang guard, not a timing check).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !h.report().leaks().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the deferred share was never ended: {:?}",
            h.report().leaks()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(d1.retry_deferred(), 0);
}

#[test]
fn misuse_double_unmap_is_bad_handle() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    let map = d0.map(1, share.refs(), Access::ReadOnly).unwrap();
    d0.unmap_handle(map.handle()).unwrap();
    let err = d0.unmap_handle(map.handle()).unwrap_err();
    assert!(err.to_string().contains("not mapped"), "{err}");
    assert_eq!(gnttab_status(err), GnttabStatus::BadHandle);
    drop(map); // its own unmap is refused the same way, and only logged
    drop(share);
    h.report().assert_clean();
}

#[test]
fn misuse_notify_on_a_closed_port_is_einval() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let a = d1.alloc_unbound_port(0).unwrap();
    let port = a.local_port();
    let b = d0.bind_interdomain(1, port).unwrap();
    d1.notify_port(port).unwrap();
    a.close().unwrap();
    let err = d1.notify_port(port).unwrap_err();
    assert!(
        matches!(err, PlatformError::Errno { errno: 22, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("EINVAL"), "{err}");
    // The peer's port went back to unbound; notifying it is allowed and
    // goes nowhere, as on Xen.
    b.notify().unwrap();
    drop(b);
    h.report().assert_clean();
}

#[test]
fn grant_copy_moves_bytes_and_checks_arguments() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    let ro = d1.share_pages(0, 1, Access::ReadOnly).unwrap();
    share.memory().write(100, b"granted bytes");
    let local = d0.alloc_pages(2).unwrap();
    local.memory().write(PAGE_SIZE + 10, b"local bytes");
    let g = |gref, offset| CopyPtr::Grant {
        domid: 1,
        gref,
        offset,
    };
    let l = |offset| CopyPtr::Local {
        pages: &*local,
        offset,
    };
    let mut ops = [
        // granted page -> local page 0
        GrantCopy {
            source: g(share.refs()[0], 100),
            dest: l(50),
            len: 13,
            status: GnttabStatus::GeneralError,
        },
        // local page 1 -> granted page
        GrantCopy {
            source: l(PAGE_SIZE + 10),
            dest: g(share.refs()[0], 2000),
            len: 11,
            status: GnttabStatus::GeneralError,
        },
        // crosses the end of the page
        GrantCopy {
            source: g(share.refs()[0], 4000),
            dest: l(0),
            len: 200,
            status: GnttabStatus::Okay,
        },
        // write into a read-only grant
        GrantCopy {
            source: l(0),
            dest: g(ro.refs()[0], 0),
            len: 1,
            status: GnttabStatus::Okay,
        },
        // a reference that is not granted
        GrantCopy {
            source: g(900, 0),
            dest: l(0),
            len: 1,
            status: GnttabStatus::Okay,
        },
    ];
    d0.grant_copy(&mut ops).unwrap();
    let st: Vec<_> = ops.iter().map(|o| o.status).collect();
    assert_eq!(
        st,
        [
            GnttabStatus::Okay,
            GnttabStatus::Okay,
            GnttabStatus::BadCopyArg,
            GnttabStatus::GeneralError,
            GnttabStatus::GeneralError
        ]
    );
    let mut b = [0u8; 13];
    local.memory().read(50, &mut b);
    assert_eq!(&b, b"granted bytes");
    share.memory().read(2000, &mut b[..11]);
    assert_eq!(&b[..11], b"local bytes");
    // Copies pin only for their duration.
    assert_eq!(h.report().domain(1).unwrap().grants_mapped_by_peers, 0);
    drop((local, share, ro));
    h.report().assert_clean();
}

#[test]
fn transfer_slot_recycled_ten_thousand_times_without_leak() {
    let (_d, h) = host();
    let (sender, receiver) = (join(&h, 0), join(&h, 1));
    let mut slot = receiver.offer_transfer_slot(0).unwrap();
    let gref = slot.gref();
    assert!(slot.take().unwrap().is_none(), "nothing transferred yet");
    let start = h.report();
    let mut frames_seen = std::collections::HashSet::new();
    for i in 0u32..10_000 {
        let page = sender.alloc_pages(1).unwrap();
        page.memory().write(0, &i.to_le_bytes());
        let frame = page.as_any().downcast_ref::<SimPages>().unwrap().frames()[0];
        assert_eq!(h.report().domain(0).unwrap().frames_owned, 1);
        sender.transfer_page(page, 1, gref).unwrap();
        // The sender no longer owns the page; the receiver does.
        let r = h.report();
        assert_eq!(r.domain(0).unwrap().frames_owned, 0, "round {i}");
        assert_eq!(r.domain(1).unwrap().frames_owned, 1, "round {i}");
        let got = slot.take().unwrap().expect("transfer completed");
        let sim = got.as_any().downcast_ref::<SimPages>().unwrap();
        assert_eq!(
            sim.frames(),
            &[frame],
            "round {i}: the frame written into the entry"
        );
        let mut b = [0u8; 4];
        got.memory().read(0, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            i,
            "round {i}: the data came with the page"
        );
        frames_seen.insert(frame);
        drop(got);
        assert_eq!(
            slot.gref(),
            gref,
            "the slot is re-armed with the same reference"
        );
    }
    assert!(!frames_seen.is_empty());
    let end = h.report();
    assert_eq!(end.free_frames, start.free_frames, "no frame leaked");
    assert_eq!(
        end.domain(1).unwrap().grants_valid,
        1,
        "just the armed slot"
    );
    assert!(slot.reclaim().unwrap().is_none());
    h.report().assert_clean();
}

#[test]
fn transfer_refusals_and_the_sender_losing_the_page() {
    let (_d, h) = host();
    let (sender, receiver, other) = (join(&h, 0), join(&h, 1), join(&h, 2));
    let slot = receiver.offer_transfer_slot(2).unwrap(); // for domain 2 only
    let free0 = h.report().free_frames;
    let page = sender.alloc_pages(1).unwrap();
    let err = sender.transfer_page(page, 1, slot.gref()).unwrap_err();
    assert_eq!(gnttab_status(err), GnttabStatus::BadGntref);
    // Lost even though the transfer failed, and returned to the free pool.
    assert_eq!(h.report().domain(0).unwrap().frames_owned, 0);
    assert_eq!(h.report().free_frames, free0);
    // A committed slot, reclaimed: the page arrives through the reclaim rule.
    let page = other.alloc_pages(1).unwrap();
    page.memory().write(0, b"late");
    other.transfer_page(page, 1, slot.gref()).unwrap();
    let got = slot.reclaim().unwrap().expect("filled");
    let mut b = [0u8; 4];
    got.memory().read(0, &mut b);
    assert_eq!(&b, b"late");
    drop(got);
    h.report().assert_clean();
}

#[tokio::test]
async fn events_ping_pong_and_coalesce() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let a = d1.alloc_unbound_port(0).unwrap();
    let b = d0.bind_interdomain(1, a.local_port()).unwrap();
    assert_eq!(b.remote_domid(), 1);
    let pong = tokio::spawn(async move {
        for _ in 0..1000 {
            b.wait().await.unwrap();
            b.notify().unwrap();
        }
        b
    });
    for _ in 0..1000 {
        a.notify().unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.wait())
            .await
            .expect("pong")
            .unwrap();
    }
    let b = pong.await.unwrap();
    // Five notifications before a wait coalesce into one wakeup.
    for _ in 0..5 {
        a.notify().unwrap();
    }
    b.wait().await.unwrap();
    let again = tokio::time::timeout(Duration::from_millis(50), b.wait()).await;
    assert!(again.is_err(), "coalesced notifications woke twice");
    drop((a, b));
    h.report().assert_clean();
}

#[tokio::test]
async fn binding_rules_are_enforced() {
    let (_d, h) = host();
    let (d0, d1, d2) = (join(&h, 0), join(&h, 1), join(&h, 2));
    let a = d1.alloc_unbound_port(0).unwrap();
    let errno = |e: PlatformError| match e {
        PlatformError::Errno { errno, .. } => errno,
        other => panic!("{other}"),
    };
    assert_eq!(
        errno(d2.bind_interdomain(1, a.local_port()).unwrap_err()),
        22,
        "not for domain 2"
    );
    assert_eq!(
        errno(d0.bind_interdomain(1, 63).unwrap_err()),
        22,
        "no such port"
    );
    assert_eq!(
        errno(d0.bind_interdomain(9, 1).unwrap_err()),
        3,
        "no such domain"
    );
    let b = d0.bind_interdomain(1, a.local_port()).unwrap();
    assert_eq!(
        errno(d0.bind_interdomain(1, a.local_port()).unwrap_err()),
        22,
        "already bound"
    );
    // The peer closes and rebinds: notifications reach the new binding.
    b.close().unwrap();
    let b2 = d0.bind_interdomain(1, a.local_port()).unwrap();
    a.notify().unwrap();
    tokio::time::timeout(Duration::from_secs(5), b2.wait())
        .await
        .unwrap()
        .unwrap();
    b2.notify().unwrap();
    tokio::time::timeout(Duration::from_secs(5), a.wait())
        .await
        .unwrap()
        .unwrap();
    drop((a, b2));
    h.report().assert_clean();
}

#[tokio::test]
async fn unmap_notify_fires_on_unmap() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    share.memory().write(64, &[1]);
    let port1 = d1.alloc_unbound_port(0).unwrap();
    let port0 = d0.bind_interdomain(1, port1.local_port()).unwrap();
    let mut map = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
    map.set_unmap_notify(UnmapNotify {
        clear_byte: Some(64),
        event: Some(port0.local_port()),
    })
    .unwrap();
    assert_eq!(h.report().domain(0).unwrap().notifies, 1);
    map.unmap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), port1.wait())
        .await
        .expect("event")
        .unwrap();
    let mut b = [9u8];
    share.memory().read(64, &mut b);
    assert_eq!(b[0], 0, "byte cleared");
    drop((share, port0, port1));
    h.report().assert_clean();
}

#[tokio::test]
async fn destroyed_domain_is_cleaned_up_and_its_peer_notified() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    // Domain 1 shares a page (live byte at 0) and maps one of domain 0's.
    let mut share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    share.memory().write(0, &[1]);
    let p1 = d1.alloc_unbound_port(0).unwrap();
    let p0 = d0.bind_interdomain(1, p1.local_port()).unwrap();
    share
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(0),
            event: Some(p1.local_port()),
        })
        .unwrap();
    let theirs = d0.share_pages(1, 2, Access::ReadWrite).unwrap();
    let _their_map = d1.map_grants(0, theirs.refs(), Access::ReadWrite).unwrap();
    let map0 = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
    let slot = d1.offer_transfer_slot(0).unwrap();
    let _pages = d1.alloc_pages(3).unwrap();

    h.destroy_domain(1).unwrap();
    tokio::time::timeout(Duration::from_secs(5), p0.wait())
        .await
        .expect("unmap event")
        .unwrap();
    let mut b = [1u8];
    map0.memory().read(0, &mut b);
    assert_eq!(b[0], 0, "live byte cleared");
    let r = h.report();
    let d1r = r.domain(1).expect("zombie while domain 0 maps its page");
    assert_eq!(d1r.state, DomainState::Dying);
    assert_eq!(
        (d1r.frames_owned, d1r.mappings, d1r.ports, d1r.notifies),
        (0, 0, 0, 0)
    );
    assert_eq!(r.orphan_frames, 1, "the page domain 0 still maps");
    assert_eq!(r.domain(0).unwrap().ports, 1, "our port is back to unbound");
    // Domain 0's grants that domain 1 mapped are free again.
    assert_eq!(r.domain(0).unwrap().grants_mapped_by_peers, 0);
    // Domain 1's own calls now fail with a message saying why.
    let err = d1.alloc_pages(1).unwrap_err();
    assert!(
        err.to_string().contains("closed the connection") || err.to_string().contains("destroyed"),
        "{err}"
    );

    drop(map0);
    let r = h.report();
    assert!(r.domain(1).is_none(), "zombie reaped at last unmap");
    assert_eq!(r.orphan_frames, 0);
    std::mem::forget((share, slot, _pages, _their_map)); // domain 1's handles: its "process" is dead
    drop((theirs, p0));
    h.report().assert_clean();
}

#[test]
fn joining_a_running_domain_again_opens_a_second_session() {
    let (_d, h) = host();
    let first = join(&h, 1);
    let second = join(&h, 1);
    let r = h.report();
    let d1 = r.domain(1).unwrap();
    assert_eq!((d1.sessions, d1.persistent), (2, false));
    drop(first);
    wait_until(|| h.report().domain(1).is_some_and(|d| d.sessions == 1));
    drop(second);
    wait_until(|| h.report().domain(1).is_none());
    h.report().assert_clean();
}

#[test]
fn a_dropped_domain_is_destroyed() {
    let (_d, h) = host();
    let (d0, d1) = (join(&h, 0), join(&h, 1));
    let share = d1.share_pages(0, 1, Access::ReadWrite).unwrap();
    let map = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
    drop(share); // refused while mapped: deferred, still granted
    drop(d1); // the last handle on domain 1: its connection closes
    wait_until(|| {
        h.report()
            .domain(1)
            .is_some_and(|d| d.state == DomainState::Dying)
    });
    drop(map);
    wait_until(|| h.report().domain(1).is_none());
    h.report().assert_clean();
}

#[test]
fn only_dom0_may_destroy() {
    let (_d, h) = host();
    let (d0, d1, _d2) = (join(&h, 0), join(&h, 1), join(&h, 2));
    let err = d1.destroy_domain(2).unwrap_err();
    assert!(err.to_string().contains("only dom0"), "{err}");
    d0.destroy_domain(2).unwrap();
    wait_until(|| h.report().domain(2).is_none());
}

#[test]
fn zero_pages_is_an_invalid_argument() {
    let (_d, h) = host();
    let d1 = join(&h, 1);
    let err = d1.share_pages(0, 0, Access::ReadWrite).unwrap_err();
    assert!(matches!(err, PlatformError::InvalidArgument(_)), "{err}");
    assert!(matches!(
        d1.alloc_pages(0).unwrap_err(),
        PlatformError::InvalidArgument(_)
    ));
    assert!(d1.map_grants(0, &[], Access::ReadOnly).is_err());
    h.report().assert_clean();
}
