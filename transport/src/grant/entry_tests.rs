//! Tests of the entry rules: single-threaded behaviour, loom models of every
//! guest/hypervisor race, and a stress test on real shared memory.

use super::*;
use crate::abi::grant::{GTF_ACCEPT_TRANSFER, GTF_PERMIT_ACCESS, GTF_READONLY};
use std::sync::atomic::AtomicU32;

super::impl_atomic_word!(
    loom::sync::atomic::AtomicU32,
    loom::sync::atomic::fence,
    loom::thread::yield_now
);

struct Entry<W> {
    hdr: W,
    frame: W,
}

fn std_entry() -> Entry<AtomicU32> {
    Entry {
        hdr: AtomicU32::new(0),
        frame: AtomicU32::new(0),
    }
}

fn loom_entry() -> loom::sync::Arc<Entry<loom::sync::atomic::AtomicU32>> {
    loom::sync::Arc::new(Entry {
        hdr: loom::sync::atomic::AtomicU32::new(0),
        frame: loom::sync::atomic::AtomicU32::new(0),
    })
}

// ------------------------------------------------------------ sequential

#[test]
fn install_writes_domid_frame_and_flags() {
    let e = std_entry();
    install(
        &e.hdr,
        &e.frame,
        7,
        0xabcd,
        GTF_PERMIT_ACCESS | GTF_READONLY,
    );
    let w = e.hdr.load(Ordering::Relaxed);
    assert_eq!(flags_of(w), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(domid_of(w), 7);
    assert_eq!(e.frame.load(Ordering::Relaxed), 0xabcd);
}

#[test]
fn end_access_of_unmapped_entry_clears_flags_keeps_domid() {
    let e = std_entry();
    install(&e.hdr, &e.frame, 3, 9, GTF_PERMIT_ACCESS);
    end_access(&e.hdr).unwrap();
    let w = e.hdr.load(Ordering::Relaxed);
    assert_eq!(flags_of(w), 0);
    assert_eq!(domid_of(w), 3);
}

#[test]
fn end_access_of_mapped_entry_reports_still_mapped_and_leaves_it() {
    let e = std_entry();
    install(&e.hdr, &e.frame, 3, 9, GTF_PERMIT_ACCESS);
    assert_eq!(hv_pin(&e.hdr, &e.frame, 3, false), Ok(9));
    let before = e.hdr.load(Ordering::Relaxed);
    assert_eq!(
        end_access(&e.hdr),
        Err(EntryError::StillMapped {
            flags: GTF_PERMIT_ACCESS | GTF_READING
        })
    );
    assert_eq!(e.hdr.load(Ordering::Relaxed), before, "entry left intact");
    hv_unpin(&e.hdr, true, false);
    end_access(&e.hdr).unwrap();
}

#[test]
fn end_access_of_wrong_type_is_refused() {
    let e = std_entry();
    assert!(matches!(
        end_access(&e.hdr),
        Err(EntryError::WrongType { found: 0, .. })
    ));
    install(&e.hdr, &e.frame, 1, 0, GTF_ACCEPT_TRANSFER);
    assert!(matches!(
        end_access(&e.hdr),
        Err(EntryError::WrongType { found: 2, .. })
    ));
}

#[test]
fn hv_pin_checks_type_domid_and_readonly() {
    let e = std_entry();
    assert_eq!(
        hv_pin(&e.hdr, &e.frame, 1, false),
        Err(GnttabStatus::GeneralError)
    );
    install(&e.hdr, &e.frame, 1, 5, GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(
        hv_pin(&e.hdr, &e.frame, 2, false),
        Err(GnttabStatus::PermissionDenied)
    );
    assert_eq!(
        hv_pin(&e.hdr, &e.frame, 1, true),
        Err(GnttabStatus::GeneralError)
    );
    assert_eq!(
        flags_of(e.hdr.load(Ordering::Relaxed)) & (GTF_READING | GTF_WRITING),
        0
    );
    assert_eq!(hv_pin(&e.hdr, &e.frame, 1, false), Ok(5));
    make_writable(&e.hdr);
    assert_eq!(hv_pin(&e.hdr, &e.frame, 1, true), Ok(5));
    assert_eq!(
        flags_of(e.hdr.load(Ordering::Relaxed)),
        GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
    );
}

#[test]
fn make_readonly_refused_while_writing() {
    let e = std_entry();
    install(&e.hdr, &e.frame, 1, 5, GTF_PERMIT_ACCESS);
    hv_pin(&e.hdr, &e.frame, 1, true).unwrap();
    assert!(matches!(
        make_readonly(&e.hdr),
        Err(EntryError::Writing { .. })
    ));
    hv_unpin(&e.hdr, false, true);
    make_readonly(&e.hdr).unwrap();
    assert_ne!(flags_of(e.hdr.load(Ordering::Relaxed)) & GTF_READONLY, 0);
    make_writable(&e.hdr);
    assert_eq!(flags_of(e.hdr.load(Ordering::Relaxed)) & GTF_READONLY, 0);
}

#[test]
fn transfer_then_reclaim_yields_frame() {
    let e = std_entry();
    install(&e.hdr, &e.frame, 4, 0, GTF_ACCEPT_TRANSFER);
    assert_eq!(hv_transfer_commit(&e.hdr, 5), Err(GnttabStatus::BadGntref));
    hv_transfer_commit(&e.hdr, 4).unwrap();
    assert_eq!(
        hv_transfer_commit(&e.hdr, 4),
        Err(GnttabStatus::BadGntref),
        "flags must be exactly accept_transfer"
    );
    hv_transfer_complete(&e.hdr, &e.frame, 0x99);
    assert_eq!(
        reclaim_transfer(&e.hdr, &e.frame),
        Ok(Reclaim::Filled(0x99))
    );
    assert_eq!(flags_of(e.hdr.load(Ordering::Relaxed)), 0);
}

#[test]
fn reclaim_of_unfilled_slot_reports_not_filled() {
    let e = std_entry();
    install(&e.hdr, &e.frame, 4, 0, GTF_ACCEPT_TRANSFER);
    assert_eq!(take_completed(&e.hdr, &e.frame), None);
    assert_eq!(reclaim_transfer(&e.hdr, &e.frame), Ok(Reclaim::NotFilled));
    assert_eq!(flags_of(e.hdr.load(Ordering::Relaxed)), 0);
    assert_eq!(hv_transfer_commit(&e.hdr, 4), Err(GnttabStatus::BadGntref));
}

#[test]
fn remove_accept_transfer_clears_flags() {
    let e = std_entry();
    install(&e.hdr, &e.frame, 4, 0, GTF_ACCEPT_TRANSFER);
    remove_accept_transfer(&e.hdr);
    assert_eq!(flags_of(e.hdr.load(Ordering::Relaxed)), 0);
}

// ------------------------------------------------------------------ loom

/// Guest removal races hypervisor map: exactly one wins, and an entry is
/// never both removed and mapped.
#[test]
fn loom_end_access_races_map() {
    loom::model(|| {
        let e = loom_entry();
        install(&e.hdr, &e.frame, 1, 0x1234, GTF_PERMIT_ACCESS);
        let e2 = e.clone();
        let hv = loom::thread::spawn(move || hv_pin(&e2.hdr, &e2.frame, 1, true));
        let removed = end_access(&e.hdr);
        let mapped = hv.join().unwrap();
        let w = e.hdr.load(Ordering::SeqCst);
        match (removed, mapped) {
            (Ok(()), Err(GnttabStatus::GeneralError)) => assert_eq!(flags_of(w), 0),
            (Err(EntryError::StillMapped { .. }), Ok(frame)) => {
                assert_eq!(frame, 0x1234);
                assert_eq!(flags_of(w), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
            }
            other => panic!("removed and mapped disagree: {other:?}"),
        }
    });
}

/// A hypervisor that sees a freshly installed entry sees its frame (the
/// release fence in install).
#[test]
fn loom_install_publishes_frame() {
    loom::model(|| {
        let e = loom_entry();
        let e2 = e.clone();
        let hv = loom::thread::spawn(move || hv_pin(&e2.hdr, &e2.frame, 9, false));
        install(&e.hdr, &e.frame, 9, 0xfeed, GTF_PERMIT_ACCESS);
        if let Ok(frame) = hv.join().unwrap() {
            assert_eq!(frame, 0xfeed);
        }
    });
}

/// Reclaim races a transfer: either the slot is taken back unfilled and the
/// transfer refused, or the transfer lands and the guest reads its frame.
#[test]
fn loom_reclaim_races_transfer() {
    loom::model(|| {
        let e = loom_entry();
        install(&e.hdr, &e.frame, 2, 0, GTF_ACCEPT_TRANSFER);
        let e2 = e.clone();
        let hv = loom::thread::spawn(move || {
            let r = hv_transfer_commit(&e2.hdr, 2);
            if r.is_ok() {
                hv_transfer_complete(&e2.hdr, &e2.frame, 77);
            }
            r
        });
        let got = reclaim_transfer(&e.hdr, &e.frame).unwrap();
        let sent = hv.join().unwrap();
        match (got, sent) {
            (Reclaim::NotFilled, Err(GnttabStatus::BadGntref)) => {}
            (Reclaim::Filled(77), Ok(())) => {}
            other => panic!("reclaim and transfer disagree: {other:?}"),
        }
    });
}

/// make_readonly races a writable map: never read-only and writing at once.
#[test]
fn loom_make_readonly_races_write_map() {
    loom::model(|| {
        let e = loom_entry();
        install(&e.hdr, &e.frame, 1, 3, GTF_PERMIT_ACCESS);
        let e2 = e.clone();
        let hv = loom::thread::spawn(move || hv_pin(&e2.hdr, &e2.frame, 1, true));
        let ro = make_readonly(&e.hdr);
        let mapped = hv.join().unwrap();
        let f = flags_of(e.hdr.load(Ordering::SeqCst));
        assert!(
            f & GTF_READONLY == 0 || f & GTF_WRITING == 0,
            "flags {f:#x}"
        );
        match (ro, mapped) {
            (Ok(()), Err(GnttabStatus::GeneralError)) => {}
            (Err(EntryError::Writing { .. }), Ok(3)) => {}
            other => panic!("make_readonly and map disagree: {other:?}"),
        }
    });
}

/// What a mapper wrote to the page before unmapping happens before the
/// guest's reuse after a successful removal (hv_unpin release, end_access
/// acquire): a guest that removed the entry after a mapping must read what
/// the mapper wrote. The page word is a relaxed atomic, so only the entry's
/// orderings can make the write visible.
#[test]
fn loom_unmap_then_remove_orders_page_writes() {
    loom::model(|| {
        let e = loom_entry();
        let page = loom::sync::Arc::new(loom::sync::atomic::AtomicU32::new(0));
        install(&e.hdr, &e.frame, 1, 3, GTF_PERMIT_ACCESS);
        let (e2, page2) = (e.clone(), page.clone());
        let hv = loom::thread::spawn(move || {
            let pinned = hv_pin(&e2.hdr, &e2.frame, 1, true).is_ok();
            if pinned {
                page2.store(42, Ordering::Relaxed);
                hv_unpin(&e2.hdr, true, true);
            }
            pinned
        });
        loop {
            match end_access(&e.hdr) {
                Ok(()) => break,
                Err(EntryError::StillMapped { .. }) => loom::thread::yield_now(),
                Err(other) => panic!("{other}"),
            }
        }
        // The entry is ours again: reuse the page.
        let seen = page.load(Ordering::Relaxed);
        let pinned = hv.join().unwrap();
        if pinned {
            assert_eq!(seen, 42, "mapper's write not visible after removal");
        } else {
            assert_eq!(seen, 0);
        }
    });
}

// ---------------------------------------------------------------- stress

/// Real threads on real shared memory: one thread removes, the other maps,
/// 100,000 rounds; in every round exactly one of them succeeds.
#[test]
fn stress_end_access_against_map_on_shared_memory() {
    use crate::shm::{memfd, Protection, Region, PAGE_SIZE};
    use std::os::fd::AsFd;
    use std::sync::{Arc, Barrier};

    const ROUNDS: usize = 100_000;
    let fd = memfd("stress", PAGE_SIZE as u64).unwrap();
    let guest = Arc::new(Region::map_fd(fd.as_fd(), 0, PAGE_SIZE, Protection::ReadWrite).unwrap());
    let hv_view =
        Arc::new(Region::map_fd(fd.as_fd(), 0, PAGE_SIZE, Protection::ReadWrite).unwrap());
    let start = Arc::new(Barrier::new(2));
    let done = Arc::new(Barrier::new(2));
    let after = Arc::new(Barrier::new(2));
    let (s2, d2, a2, hv_view2) = (start.clone(), done.clone(), after.clone(), hv_view.clone());
    let hv = std::thread::spawn(move || {
        let mut mapped = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS {
            let slot = (i % 64) * 8;
            s2.wait();
            let r = hv_pin(
                hv_view2.atomic_u32(slot),
                hv_view2.atomic_u32(slot + 4),
                1,
                i % 2 == 0,
            );
            // Stay mapped until the guest's attempt is over.
            d2.wait();
            if r.is_ok() {
                hv_unpin(hv_view2.atomic_u32(slot), true, i % 2 == 0);
            }
            mapped.push(r);
            a2.wait();
        }
        mapped
    });
    let mut removed = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let slot = (i % 64) * 8;
        let (hdr, frame) = (guest.atomic_u32(slot), guest.atomic_u32(slot + 4));
        install(hdr, frame, 1, i as u32, GTF_PERMIT_ACCESS);
        start.wait();
        let r = end_access(hdr);
        removed.push(r);
        done.wait();
        after.wait();
        if r.is_err() {
            // The map won; it has unmapped by now, so removal must succeed.
            end_access(hdr).unwrap();
        }
    }
    let mapped = hv.join().unwrap();
    let mut both_seen = [0usize; 2];
    for (i, (r, m)) in removed.iter().zip(&mapped).enumerate() {
        match (r, m) {
            (Ok(()), Err(_)) => both_seen[0] += 1,
            (Err(EntryError::StillMapped { .. }), Ok(frame)) => {
                assert_eq!(*frame, i as u32, "round {i}: mapped a stale frame");
                both_seen[1] += 1;
            }
            other => panic!("round {i}: removal and map disagree: {other:?}"),
        }
    }
    assert_eq!(both_seen[0] + both_seen[1], ROUNDS);
}
