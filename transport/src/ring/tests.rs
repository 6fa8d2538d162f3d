//! Sans-IO tests of the ring: no runtime, one process; the "other side" is
//! the test writing into the same region.

use std::sync::atomic::Ordering;

use super::*;
use crate::abi::blkif::{BlkifRequest, BlkifResponse, BlkifSegment};
use crate::abi::netif::{NetifTxRequest, NetifTxResponse};
use crate::abi::ring::{REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET};
use crate::shm::{memfd, Protection, Region, PAGE_SIZE};

type Req = BlkifRequest<[u8; 112]>;
type Rsp = BlkifResponse<[u8; 16]>;
type Front<'a> = FrontRing<Req, Rsp, &'a Region>;
type Back<'a> = BackRing<Req, Rsp, &'a Region>;

fn req(id: u64) -> Req {
    let mut r = BlkifRequest::new_unchecked([0u8; 112]);
    r.set_operation((id % 2) as u8);
    r.set_nr_segments(1);
    r.set_handle(0x300);
    r.set_id(id);
    r.set_sector_number(id.wrapping_mul(8));
    let seg = BlkifSegment {
        gref: id as u32,
        first_sect: 0,
        last_sect: 7,
    };
    r.set_segment(0, seg).unwrap();
    r
}

fn rsp(id: u64) -> Rsp {
    let mut r = BlkifResponse::new_unchecked([0u8; 16]);
    r.set_id(id);
    r.set_operation((id % 2) as u8);
    r.set_status(if id % 3 == 0 { -1 } else { 0 });
    r
}

fn region(pages: usize) -> Region {
    Region::anonymous(pages * PAGE_SIZE).unwrap()
}

fn header(r: &Region) -> [u32; 4] {
    [
        REQ_PROD_OFFSET,
        REQ_EVENT_OFFSET,
        RSP_PROD_OFFSET,
        RSP_EVENT_OFFSET,
    ]
    .map(|o| r.atomic_u32(o).load(Ordering::SeqCst))
}

/// Front puts and pushes `n` requests, back takes and answers them all,
/// front takes the responses; ids start at `first`.
fn round_trip(front: &mut Front<'_>, back: &mut Back<'_>, first: u64, n: u64) {
    for id in first..first + n {
        front.put_request(&req(id)).unwrap();
    }
    let _ = front.push_requests().unwrap();
    for id in first..first + n {
        assert_eq!(back.take_request().unwrap(), Some(req(id)));
    }
    assert_eq!(back.take_request().unwrap(), None);
    for id in first..first + n {
        back.put_response(&rsp(id)).unwrap();
    }
    let _ = back.push_responses().unwrap();
    for id in first..first + n {
        assert_eq!(front.take_response().unwrap(), Some(rsp(id)));
    }
    assert_eq!(front.take_response().unwrap(), None);
}

#[test]
fn sizes_follow_the_rounding_rule() {
    // (4096 * pages - 64) / 112, rounded down to a power of two.
    for (pages, entries) in [(1, 32u32), (2, 64), (4, 128), (8, 256), (16, 512)] {
        let mem = region(pages);
        let fit = (pages * PAGE_SIZE - 64) as u32 / 112;
        assert!(entries <= fit && fit < 2 * entries);
        let front = Front::init(&mem).unwrap();
        assert_eq!(front.size(), entries, "{pages} pages");
        assert_eq!(front.free_requests(), entries);
        assert_eq!(Back::new(&mem).unwrap().size(), entries);
    }
    let mem = region(1);
    let tx = FrontRing::<NetifTxRequest<[u8; 12]>, NetifTxResponse<[u8; 4]>, _>::init(&mem);
    assert_eq!(tx.unwrap().size(), 256);
}

#[test]
fn bad_regions_are_refused() {
    for pages in [3, 5, 32] {
        let mem = region(pages);
        assert_eq!(
            Front::init(&mem).unwrap_err(),
            RingError::RegionSize {
                len: pages * PAGE_SIZE
            }
        );
    }
    let fd = memfd("ro", PAGE_SIZE as u64).unwrap();
    let ro = Region::map_fd(
        std::os::fd::AsFd::as_fd(&fd),
        0,
        PAGE_SIZE,
        Protection::ReadOnly,
    )
    .unwrap();
    assert_eq!(Back::new(&ro).unwrap_err(), RingError::ReadOnly);

    struct Huge;
    impl RingEntry for Huge {
        const SIZE: usize = 4096;
        fn decode(_: &[u8]) -> Self {
            Huge
        }
        fn encode(&self, _: &mut [u8]) {}
    }
    let mem = region(1);
    let e = FrontRing::<Huge, Huge, _>::init(&mem).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ring slots of 4096 bytes cannot make a ring in 4096 bytes"
    );
    // Two pages hold one.
    let mem = region(2);
    assert_eq!(FrontRing::<Huge, Huge, _>::init(&mem).unwrap().size(), 1);
}

#[test]
fn init_writes_ring_h_header() {
    let mem = region(1);
    mem.fill(0, PAGE_SIZE, 0xa5);
    let _front = Front::init(&mem).unwrap();
    let mut hdr = [0u8; 64];
    mem.read(0, &mut hdr);
    let mut golden = [0u8; 64];
    golden[4] = 1;
    golden[12] = 1;
    assert_eq!(hdr, golden);
    // Slots untouched.
    let mut slot = [0u8; 8];
    mem.read(64, &mut slot);
    assert_eq!(slot, [0xa5; 8]);
}

#[test]
fn fill_to_full_then_drain_every_size() {
    for pages in [1, 2, 4, 16] {
        let mem = region(pages);
        let mut front = Front::init(&mem).unwrap();
        let mut back = Back::new(&mem).unwrap();
        let size = u64::from(front.size());
        for round in 0..3 {
            round_trip(&mut front, &mut back, round * size, size);
            assert_eq!(front.free_requests(), front.size());
            assert_eq!(back.owed_responses(), 0);
        }
        let s = front.stats();
        assert_eq!((s.produced, s.consumed), (3 * size, 3 * size));
    }
}

#[test]
fn exactly_full_then_one_more_is_refused_without_overwriting() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    for id in 0..31 {
        front.put_request(&req(id)).unwrap();
    }
    assert_eq!(front.free_requests(), 1);
    assert!(!front.is_full());
    front.put_request(&req(31)).unwrap();
    assert!(front.is_full());
    let mut before = vec![0u8; PAGE_SIZE];
    mem.read(0, &mut before);
    assert_eq!(
        front.put_request(&req(99)),
        Err(RingError::Full { size: 32 })
    );
    let mut after = vec![0u8; PAGE_SIZE];
    mem.read(0, &mut after);
    assert_eq!(before, after, "a refused put must not touch the ring");
    assert_eq!(front.error(), None, "full is not fatal");
    let _ = front.push_requests().unwrap();
    // The backend consuming requests does not free slots: only responses
    // taken by the frontend do.
    assert_eq!(back.take_request().unwrap(), Some(req(0)));
    assert!(front.is_full());
    back.put_response(&rsp(0)).unwrap();
    let _ = back.push_responses().unwrap();
    assert!(front.is_full());
    assert_eq!(front.take_response().unwrap(), Some(rsp(0)));
    assert_eq!(front.free_requests(), 1);
    front.put_request(&req(32)).unwrap();
    assert!(front.put_request(&req(33)).is_err());
}

#[test]
fn a_response_needs_a_consumed_request() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    assert_eq!(
        back.put_response(&rsp(0)),
        Err(RingError::NothingToAnswer { req_cons: 0 })
    );
    front.put_request(&req(0)).unwrap();
    let _ = front.push_requests().unwrap();
    // Pushed but not taken: still nothing to answer.
    assert!(back.put_response(&rsp(0)).is_err());
    back.take_request().unwrap().unwrap();
    assert_eq!(back.owed_responses(), 1);
    back.put_response(&rsp(0)).unwrap();
    assert!(back.put_response(&rsp(1)).is_err());
    assert_eq!(back.error(), None);
}

#[test]
fn indexes_wrap_past_u32_max() {
    for pages in [1, 4] {
        let start = u32::MAX - 40;
        let mem = region(pages);
        let mut front = Front::init_at(&mem, start).unwrap();
        let mut back = Back::attach(&mem, start).unwrap();
        assert_eq!(header(&mem), [start, start + 1, start, start + 1]);
        let size = u64::from(front.size());
        // Odd batch sizes, so that batches straddle the wrap at every
        // offset within a batch.
        let mut id = 0;
        for n in [7, size, 3, size - 1, 1, size] {
            round_trip(&mut front, &mut back, id, n);
            id += n;
        }
        let end = start.wrapping_add(id as u32);
        assert!(end < start, "the test must cross u32::MAX");
        assert_eq!(front.req_prod_pvt(), end);
        assert_eq!(back.req_cons(), end);
        assert_eq!(header(&mem)[0], end);
        assert_eq!(header(&mem)[2], end);
    }
}

#[test]
fn full_ring_across_the_wrap() {
    let mem = region(1);
    let start = u32::MAX - 3;
    let mut front = Front::init_at(&mem, start).unwrap();
    let mut back = Back::attach(&mem, start).unwrap();
    for id in 0..32 {
        front.put_request(&req(id)).unwrap();
    }
    assert!(front.put_request(&req(32)).is_err());
    let _ = front.push_requests().unwrap();
    // req_prod is start + 32 (wrapped), exactly size ahead: accepted.
    assert_eq!(back.unconsumed_requests().unwrap(), 32);
    for id in 0..32 {
        assert_eq!(back.take_request().unwrap(), Some(req(id)));
    }
}

#[test]
fn a_batch_notifies_once_when_the_peer_asked() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    // The backend asks to be woken (it is idle).
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(header(&mem)[1], 1);
    for id in 0..8 {
        front.put_request(&req(id)).unwrap();
    }
    assert_eq!(front.unpushed(), 8);
    assert_eq!(front.push_requests().unwrap(), NotifyNeeded::Yes);
    // More pushes while the backend has not asked again: suppressed.
    for id in 8..20 {
        front.put_request(&req(id)).unwrap();
        assert_eq!(front.push_requests().unwrap(), NotifyNeeded::No);
    }
    // A push with nothing new never notifies.
    assert_eq!(front.push_requests().unwrap(), NotifyNeeded::No);
    let s = front.stats();
    assert_eq!((s.notifications, s.suppressed), (1, 12));

    // The backend drains, answers in one batch; the frontend has asked.
    assert!(!front.final_check_for_responses().unwrap());
    while back.take_request().unwrap().is_some() {}
    for id in 0..20 {
        back.put_response(&rsp(id)).unwrap();
    }
    assert_eq!(back.push_responses().unwrap(), NotifyNeeded::Yes);
    assert_eq!(back.stats().notifications, 1);
}

#[test]
fn single_pushes_notify_once_per_request_for_event() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    let mut notified = 0;
    // The backend asked (fresh ring: req_event = 1); it then stays busy.
    for id in 0..10 {
        front.put_request(&req(id)).unwrap();
        notified += front.push_requests().unwrap().needed() as u32;
    }
    assert_eq!(notified, 1);
    // The backend takes them without asking again: no notifications.
    while back.take_request().unwrap().is_some() {}
    for id in 0..10 {
        back.put_response(&rsp(id)).unwrap();
    }
    let _ = back.push_responses().unwrap();
    while front.take_response().unwrap().is_some() {}
    let mut notified = 0;
    for id in 10..20 {
        front.put_request(&req(id)).unwrap();
        notified += front.push_requests().unwrap().needed() as u32;
    }
    assert_eq!(notified, 0, "the backend never asked for these");
    // Asked with work pending: final check says so and does not set the
    // event (as ring.h).
    let event_before = header(&mem)[1];
    assert!(back.final_check_for_requests().unwrap());
    assert_eq!(header(&mem)[1], event_before);
}

#[test]
fn final_check_does_not_lose_a_request_that_races_it() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    round_trip(&mut front, &mut back, 0, 1);
    // The backend found the ring empty (its "check")...
    assert_eq!(back.take_request().unwrap(), None);
    // ...a request arrives before it sets req_event: the frontend sees the
    // old event and does not notify...
    front.put_request(&req(1)).unwrap();
    assert_eq!(front.push_requests().unwrap(), NotifyNeeded::No);
    // ...so the final check must find it.
    assert!(back.final_check_for_requests().unwrap());
    assert_eq!(back.take_request().unwrap(), Some(req(1)));
    // Arriving after the event is set: the frontend notifies.
    assert!(!back.final_check_for_requests().unwrap());
    front.put_request(&req(2)).unwrap();
    assert_eq!(front.push_requests().unwrap(), NotifyNeeded::Yes);
    // Same on the response side.
    back.put_response(&rsp(1)).unwrap();
    let _ = back.push_responses().unwrap();
    assert_eq!(front.take_response().unwrap(), Some(rsp(1)));
    assert_eq!(front.take_response().unwrap(), None);
    back.take_request().unwrap().unwrap();
    back.put_response(&rsp(2)).unwrap();
    assert_eq!(back.push_responses().unwrap(), NotifyNeeded::No);
    assert!(front.final_check_for_responses().unwrap());
    assert_eq!(front.take_response().unwrap(), Some(rsp(2)));
}

/// Two threads, a counting "event channel": every request is answered and
/// no side ever waits on a notification that does not come.
#[test]
fn no_lost_wakeups_between_threads() {
    use std::sync::mpsc::{channel, RecvTimeoutError};
    use std::time::Duration;
    const N: u64 = 50_000;
    let mem = region(1);
    let (to_back, back_events) = channel::<()>();
    let (to_front, front_events) = channel::<()>();
    let wait = |rx: &std::sync::mpsc::Receiver<()>, who: &str| match rx
        .recv_timeout(Duration::from_secs(10))
    {
        Ok(()) => {}
        Err(RecvTimeoutError::Timeout) => panic!("{who}: lost wakeup"),
        Err(RecvTimeoutError::Disconnected) => {}
    };
    std::thread::scope(|s| {
        let mut front = Front::init(&mem).unwrap();
        let mut back = Back::new(&mem).unwrap();
        s.spawn(move || {
            let mut seen = 0;
            while seen < N {
                while let Some(r) = back.take_request().unwrap() {
                    assert_eq!(r.id(), seen);
                    seen += 1;
                    back.put_response(&rsp(r.id())).unwrap();
                }
                if back.push_responses().unwrap().needed() {
                    to_front.send(()).unwrap();
                }
                if seen < N && !back.final_check_for_requests().unwrap() {
                    wait(&back_events, "backend");
                }
            }
        });
        let (mut sent, mut got) = (0, 0);
        while got < N {
            while sent < N && !front.is_full() {
                front.put_request(&req(sent)).unwrap();
                sent += 1;
            }
            if front.push_requests().unwrap().needed() {
                to_back.send(()).unwrap();
            }
            while let Some(r) = front.take_response().unwrap() {
                assert_eq!(r.id(), got);
                got += 1;
            }
            // Sleep only with nothing to send: every slot in use, or all
            // sent and responses still due.
            let can_send = sent < N && !front.is_full();
            if got < N && !can_send && !front.final_check_for_responses().unwrap() {
                wait(&front_events, "frontend");
            }
        }
        let st = front.stats();
        assert_eq!(st.produced, N);
        assert!(st.notifications + st.suppressed > 0);
    });
}

#[test]
fn hostile_request_producer_closes_the_back() {
    let size = 32u32;
    // (description, value written into req_prod given req_cons = start + 6
    // and rsp_prod_pvt = start + 3)
    type Case = (&'static str, fn(u32) -> u32);
    let cases: [Case; 4] = [
        ("far ahead", |base| base.wrapping_add(1000)),
        ("one past full", |base| base.wrapping_add(3 + 32 + 1)),
        ("behind the consumer", |base| base.wrapping_add(4)),
        ("garbage", |_| 0xdead_beef),
    ];
    for start in [0u32, u32::MAX - 2] {
        for (what, value) in cases {
            let mem = region(1);
            let mut front = Front::init_at(&mem, start).unwrap();
            let mut back = Back::attach(&mem, start).unwrap();
            for id in 0..6 {
                front.put_request(&req(id)).unwrap();
            }
            let _ = front.push_requests().unwrap();
            for _ in 0..5 {
                back.take_request().unwrap().unwrap();
            }
            for id in 0..3 {
                back.put_response(&rsp(id)).unwrap();
            }
            // Exactly full relative to the responses produced is fine.
            mem.atomic_u32(REQ_PROD_OFFSET)
                .store(start.wrapping_add(3 + size), Ordering::SeqCst);
            assert_eq!(back.unconsumed_requests().unwrap(), size - 2, "{what}");
            // Back to the truth; the backend takes the last request, so the
            // next take reads req_prod again.
            mem.atomic_u32(REQ_PROD_OFFSET)
                .store(start.wrapping_add(6), Ordering::SeqCst);
            assert_eq!(back.unconsumed_requests().unwrap(), 1);
            assert_eq!(back.take_request().unwrap(), Some(req(5)));
            // Now the frontend scribbles.
            let bad = value(start);
            mem.atomic_u32(REQ_PROD_OFFSET).store(bad, Ordering::SeqCst);
            let e = back.take_request().unwrap_err();
            let want = RingError::RequestProducer {
                req_prod: bad,
                req_cons: start.wrapping_add(6),
                rsp_prod_pvt: start.wrapping_add(3),
                size,
            };
            assert_eq!(e, want, "{what}");
            assert!(e.is_fatal());
            assert!(e.to_string().starts_with("ring back end: request producer"));
            // Closed: everything returns the error, even once the index
            // looks sane again.
            mem.atomic_u32(REQ_PROD_OFFSET)
                .store(start.wrapping_add(7), Ordering::SeqCst);
            assert_eq!(back.take_request().unwrap_err(), want);
            assert_eq!(back.unconsumed_requests().unwrap_err(), want);
            assert_eq!(back.put_response(&rsp(3)).unwrap_err(), want);
            assert_eq!(back.push_responses().unwrap_err(), want);
            assert_eq!(back.final_check_for_requests().unwrap_err(), want);
            assert_eq!(back.error(), Some(&want));
        }
    }
}

#[test]
fn hostile_response_producer_closes_the_front() {
    for start in [0u32, u32::MAX - 1] {
        let cases: [(&str, u32); 4] = [
            ("ahead of the requests pushed", start.wrapping_add(5)),
            ("far ahead", start.wrapping_add(100_000)),
            ("behind the consumer", start.wrapping_add(1)),
            ("garbage", 0xffff_0000),
        ];
        for (what, bad) in cases {
            let mem = region(1);
            let mut front = Front::init_at(&mem, start).unwrap();
            let mut back = Back::attach(&mem, start).unwrap();
            for id in 0..4 {
                front.put_request(&req(id)).unwrap();
            }
            let _ = front.push_requests().unwrap();
            // A fifth request put but not pushed: responses to it are bad.
            front.put_request(&req(4)).unwrap();
            for id in 0..2 {
                back.take_request().unwrap().unwrap();
                back.put_response(&rsp(id)).unwrap();
            }
            let _ = back.push_responses().unwrap();
            assert_eq!(front.take_response().unwrap(), Some(rsp(0)));
            assert_eq!(front.take_response().unwrap(), Some(rsp(1)));
            // Answering every pushed request is fine.
            mem.atomic_u32(RSP_PROD_OFFSET)
                .store(start.wrapping_add(4), Ordering::SeqCst);
            assert_eq!(front.unconsumed_responses().unwrap(), 2, "{what}");
            mem.atomic_u32(RSP_PROD_OFFSET).store(bad, Ordering::SeqCst);
            let want = RingError::ResponseProducer {
                rsp_prod: bad,
                rsp_cons: start.wrapping_add(2),
                req_prod: start.wrapping_add(4),
            };
            assert_eq!(front.final_check_for_responses().unwrap_err(), want);
            assert!(want.is_fatal());
            assert_eq!(front.take_response().unwrap_err(), want);
            assert_eq!(front.put_request(&req(9)).unwrap_err(), want);
            assert_eq!(front.push_requests().unwrap_err(), want);
            assert_eq!(front.unconsumed_responses().unwrap_err(), want);
            assert_eq!(front.error(), Some(&want));
        }
    }
}

#[test]
fn scribbled_event_fields_only_change_notify_decisions() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    for ev in [0, 0xdead_beef, u32::MAX, 2] {
        mem.atomic_u32(REQ_EVENT_OFFSET).store(ev, Ordering::SeqCst);
        mem.atomic_u32(RSP_EVENT_OFFSET).store(ev, Ordering::SeqCst);
        let id = u64::from(ev);
        front.put_request(&req(id)).unwrap();
        let _ = front.push_requests().unwrap();
        assert_eq!(back.take_request().unwrap(), Some(req(id)));
        back.put_response(&rsp(id)).unwrap();
        let _ = back.push_responses().unwrap();
        assert_eq!(front.take_response().unwrap(), Some(rsp(id)));
    }
    assert_eq!((front.error(), back.error()), (None, None));
}

#[test]
fn scribbled_entry_after_take_leaves_the_private_copy() {
    let mem = region(1);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::new(&mem).unwrap();
    front.put_request(&req(7)).unwrap();
    let _ = front.push_requests().unwrap();
    let got = back.take_request().unwrap().unwrap();
    // The frontend rewrites the slot after the backend copied it.
    mem.fill(64, 112, 0xff);
    assert_eq!(got, req(7));
    assert_eq!(got.id(), 7);
    assert_eq!(got.segment(0).unwrap().gref, 7);
    back.put_response(&rsp(7)).unwrap();
    let _ = back.push_responses().unwrap();
    let r = front.take_response().unwrap().unwrap();
    mem.fill(64, 16, 0x00);
    assert_eq!(r, rsp(7));
}

#[test]
fn front_and_back_in_two_mappings_of_one_memfd() {
    use std::os::fd::AsFd;
    let fd = memfd("ring", 4 * PAGE_SIZE as u64).unwrap();
    let a = Region::map_fd(fd.as_fd(), 0, 4 * PAGE_SIZE, Protection::ReadWrite).unwrap();
    let b = Region::map_pages_of(fd.as_fd(), &[0, 1, 2, 3], Protection::ReadWrite).unwrap();
    let mut front: FrontRing<Req, Rsp> = FrontRing::init(a).unwrap();
    let mut back: BackRing<Req, Rsp> = BackRing::new(b).unwrap();
    assert_eq!(front.size(), 128);
    for id in 0..100 {
        front.put_request(&req(id)).unwrap();
    }
    assert_eq!(front.push_requests().unwrap(), NotifyNeeded::Yes);
    for id in 0..100 {
        assert_eq!(back.take_request().unwrap(), Some(req(id)));
        back.put_response(&rsp(id)).unwrap();
    }
    assert_eq!(back.push_responses().unwrap(), NotifyNeeded::Yes);
    for id in 0..100 {
        assert_eq!(front.take_response().unwrap(), Some(rsp(id)));
    }
    let region = front.into_inner();
    assert_eq!(region.len(), 4 * PAGE_SIZE);
}

/// A protocol of one's own: a 64-byte message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    seq: u32,
    body: [u8; 60],
}

impl RingEntry for Msg {
    const SIZE: usize = 64;
    const ALIGN: usize = 4;
    fn decode(b: &[u8]) -> Self {
        Msg {
            seq: u32::from_le_bytes(b[..4].try_into().unwrap()),
            body: b[4..64].try_into().unwrap(),
        }
    }
    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.seq.to_le_bytes());
        out[4..].copy_from_slice(&self.body);
    }
}

#[test]
fn a_custom_entry_type() {
    let mem = region(2);
    let mut front = FrontRing::<Msg, Msg, _>::init(&mem).unwrap();
    let mut back = BackRing::<Msg, Msg, _>::new(&mem).unwrap();
    // (8192 - 64) / 64 = 127 -> 64.
    assert_eq!(front.size(), 64);
    for seq in 0..200u32 {
        let m = Msg {
            seq,
            body: [seq as u8; 60],
        };
        front.put_request(&m).unwrap();
        let _ = front.push_requests().unwrap();
        let got = back.take_request().unwrap().unwrap();
        assert_eq!(got, m);
        back.put_response(&Msg { seq: !seq, ..got }).unwrap();
        let _ = back.push_responses().unwrap();
        assert_eq!(front.take_response().unwrap().unwrap().seq, !seq);
    }
}

#[test]
fn notify_rule_is_ring_h_s() {
    use NotifyNeeded::{No, Yes};
    // event in (old, new] notifies.
    assert_eq!(NotifyNeeded::from_indexes(0, 1, 1), Yes);
    assert_eq!(NotifyNeeded::from_indexes(0, 5, 3), Yes);
    assert_eq!(NotifyNeeded::from_indexes(0, 5, 5), Yes);
    assert_eq!(NotifyNeeded::from_indexes(0, 5, 6), No);
    assert_eq!(NotifyNeeded::from_indexes(3, 5, 3), No);
    assert_eq!(NotifyNeeded::from_indexes(5, 5, 5), No);
    // Across the wrap.
    assert_eq!(NotifyNeeded::from_indexes(u32::MAX - 1, 2, 0), Yes);
    assert_eq!(NotifyNeeded::from_indexes(u32::MAX - 1, 2, u32::MAX), Yes);
    assert_eq!(NotifyNeeded::from_indexes(u32::MAX - 1, 2, 3), No);
    assert!(Yes.needed() && !No.needed());
}
