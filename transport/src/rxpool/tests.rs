//! Receive pools between two simulated domains: thousands of fills in
//! each mode with every slot, page and frame back where it started, peers
//! that lie about fills, and late fills found by the reclaim rule.

use std::sync::Arc;

use super::*;
use crate::sim::{HostConfig, SimDomain, SimHost};

fn host() -> (tempfile::TempDir, SimHost) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        machine_frames: 8192,
        gnttab_entries: 2048,
        max_ports: 64,
        ..HostConfig::default()
    };
    let host = SimHost::start(dir.path().join("control.sock"), cfg).unwrap();
    (dir, host)
}

fn join(h: &SimHost, domid: u16) -> Arc<dyn Platform> {
    Arc::new(SimDomain::connect(h.control_path(), domid).unwrap())
}

fn payload(round: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (round as usize * 7 + k * 13) as u8)
        .collect()
}

/// `rounds` rounds of filling every slot, in batches of 8; each fill
/// checked; the pool and the host back to their start afterwards.
fn recycle(mode: RxMode, slots: u16, rounds: u32) {
    let (_d, h) = host();
    let (sender, receiver) = (join(&h, 0), join(&h, 1));
    let mut pool = RxPool::new(receiver.as_ref(), 0, slots, mode).unwrap();
    let mut filler = RxFiller::new(sender.clone(), 1, mode, 8).unwrap();
    let start = pool.stats();
    assert_eq!(start.armed, usize::from(slots));
    let host_start = h.report();
    let grefs: Vec<GrantRef> = (0..slots).map(|i| pool.gref(i).unwrap()).collect();
    for round in 0..rounds {
        for chunk in (0..slots).collect::<Vec<_>>().chunks(8) {
            let datas: Vec<Vec<u8>> = chunk
                .iter()
                .map(|&i| payload(round, 60 + (usize::from(i) * 97 + round as usize) % 4000))
                .collect();
            let fills: Vec<(GrantRef, &[u8])> = chunk
                .iter()
                .zip(&datas)
                .map(|(&i, d)| (grefs[usize::from(i)], d.as_slice()))
                .collect();
            for r in filler.fill_batch(&fills).unwrap() {
                r.unwrap();
            }
            for (&i, d) in chunk.iter().zip(&datas) {
                let page = pool.complete(i, 0, d.len() as u16).unwrap();
                assert_eq!(page.len(), d.len());
                let mut got = vec![0u8; d.len()];
                page.read(&mut got);
                assert_eq!(&got, d, "round {round} slot {i}: the data came through");
                if mode == RxMode::Transfer {
                    assert_eq!(pool.stats().pages_out, 1);
                }
                assert_eq!(
                    pool.gref(i).unwrap(),
                    grefs[usize::from(i)],
                    "same reference"
                );
            }
        }
    }
    let end = pool.stats();
    assert_eq!(end.armed, start.armed, "every slot armed again");
    assert_eq!(end.pages_out, 0, "every page returned");
    assert_eq!(end.filled, u64::from(rounds) * u64::from(slots));
    assert_eq!(end.bad_fills, 0);
    let host_end = h.report();
    assert_eq!(
        host_end.free_frames, host_start.free_frames,
        "no frame leaked"
    );
    for d in [0, 1] {
        assert_eq!(
            host_end.domain(d).unwrap().frames_owned,
            host_start.domain(d).unwrap().frames_owned,
            "domain {d} owns what it owned at the start"
        );
    }
    assert_eq!(
        host_end.domain(1).unwrap().grants_valid,
        u32::from(slots),
        "just the armed slots"
    );
    assert!(pool.close().unwrap().is_empty());
    drop(filler);
    h.report().assert_clean();
}

#[test]
fn transfer_pool_recycled_ten_thousand_fills_without_leak() {
    recycle(RxMode::Transfer, 16, 640);
}

#[test]
fn copy_pool_recycled_ten_thousand_fills_without_leak() {
    recycle(RxMode::Copy, 16, 640);
}

#[test]
fn bad_completions_are_refused_and_the_slot_stays_armed() {
    for mode in [RxMode::Transfer, RxMode::Copy] {
        let (_d, h) = host();
        let (sender, receiver) = (join(&h, 0), join(&h, 1));
        let mut pool = RxPool::new(receiver.as_ref(), 0, 4, mode).unwrap();
        let mut filler = RxFiller::new(sender.clone(), 1, mode, 4).unwrap();
        let e = pool.complete(9, 0, 10).unwrap_err();
        assert!(
            matches!(
                e,
                RxPoolError::NoSlot {
                    id: 9,
                    count: 4,
                    ..
                }
            ),
            "{e}"
        );
        if mode == RxMode::Transfer {
            // Nothing was transferred, whatever the peer says.
            let e = pool.complete(1, 0, 10).unwrap_err();
            assert!(e.to_string().contains("no page was transferred"), "{e}");
        }
        // A fill reported outside the page: refused, and the page (if one
        // came) freed.
        filler.fill(pool.gref(2).unwrap(), b"hello").unwrap();
        let e = pool.complete(2, 4000, 200).unwrap_err();
        assert!(e.to_string().contains("do not fit in a page"), "{e}");
        assert_eq!(pool.stats().pages_out, 0);
        // The slot still works.
        filler.fill(pool.gref(2).unwrap(), b"again").unwrap();
        let p = pool.complete(2, 0, 5).unwrap();
        assert_eq!(&p.into_bytes()[..], b"again");
        let s = pool.stats();
        assert_eq!(s.armed, 4);
        assert_eq!(s.bad_fills, if mode == RxMode::Transfer { 2 } else { 1 });
        // Too long for a page.
        let e = filler
            .fill(pool.gref(0).unwrap(), &[0u8; PAGE_SIZE + 1])
            .unwrap_err();
        assert!(matches!(e, RxPoolError::TooLong { .. }), "{e}");
        assert!(pool.close().unwrap().is_empty());
        drop(filler);
        h.report().assert_clean();
    }
}

#[test]
fn a_fill_into_someone_elses_slot_is_refused_and_the_sender_loses_the_page() {
    let (_d, h) = host();
    let (sender, receiver, other) = (join(&h, 0), join(&h, 1), join(&h, 2));
    // Offered to domain 2 only.
    let pool = RxPool::new(receiver.as_ref(), 2, 1, RxMode::Transfer).unwrap();
    let mut filler = RxFiller::new(sender.clone(), 1, RxMode::Transfer, 1).unwrap();
    let e = filler.fill(pool.gref(0).unwrap(), b"x").unwrap_err();
    assert!(
        matches!(
            e,
            RxPoolError::Refused {
                status: GnttabStatus::BadGntref,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        h.report().domain(0).unwrap().frames_owned,
        0,
        "the page is gone"
    );
    drop((pool, filler, other));
    h.report().assert_clean();
}

#[test]
fn close_takes_late_fills_by_the_reclaim_rule() {
    let (_d, h) = host();
    let (sender, receiver) = (join(&h, 0), join(&h, 1));
    let pool = RxPool::new(receiver.as_ref(), 0, 3, RxMode::Transfer).unwrap();
    let mut filler = RxFiller::new(sender.clone(), 1, RxMode::Transfer, 1).unwrap();
    // Filled but never completed: the pool finds it when it closes.
    filler.fill(pool.gref(1).unwrap(), b"late").unwrap();
    let handle = pool.stats_handle();
    let late = pool.close().unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(handle.stats().pages_out, 1);
    drop(late);
    assert_eq!(handle.stats().pages_out, 0);
    drop(filler);
    h.report().assert_clean();
}

#[test]
fn modes_parse_and_transfer_is_probed() {
    assert_eq!("copy".parse::<RxMode>().unwrap(), RxMode::Copy);
    assert_eq!("transfer".parse::<RxMode>().unwrap(), RxMode::Transfer);
    assert!("page"
        .parse::<RxMode>()
        .unwrap_err()
        .contains("transfer or copy"));
    let (_d, h) = host();
    let d = join(&h, 3);
    assert!(transfer_supported(d.as_ref()));
    drop(d);
    h.report().assert_clean();
}
