//! Fuzzes the sans-IO ring ends ([`FrontRing`] and [`BackRing`]) against a
//! hostile peer that scribbles the shared page between steps.
//!
//! The first input byte chooses which end is honest (front or back), the
//! ring's size (1 or 2 pages), and the second to fifth bytes the index the
//! ring starts at (to reach wrap-around). The rest is a script: each byte
//! picks a step of the honest end (put, push, take, final check, count
//! unconsumed) or a scribble by the peer (a little-endian `u32` into one of
//! the four header index fields, or arbitrary bytes at an arbitrary offset
//! of the region, header and slots alike).
//!
//! Asserted after every step:
//! * nothing panics, and nothing reads or writes outside the region (the
//!   sanitizer would say so);
//! * every error is the one the step may give: `Full` only from a put on a
//!   full front, `NothingToAnswer` only from a put on a back that owes
//!   nothing, otherwise only the fatal producer errors;
//! * once a fatal error is reported, every later step reports the same
//!   error and [`FrontRing::error`]/[`BackRing::error`] holds it;
//! * the honest front never yields more responses than requests it pushed,
//!   and the honest back never holds more than `size` unanswered requests
//!   nor answers more than it took;
//! * the honest end's private counters (free slots, owed responses) agree
//!   with the model kept here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenring::abi::ring::{REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET};
use xenring::ring::echo::Msg64;
use xenring::ring::{BackRing, FrontRing, RingError};
use xenring::shm::{Region, PAGE_SIZE};

/// Reads the script one byte at a time; the end of the input reads as 0.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const INDEX_FIELDS: [usize; 4] = [
    REQ_PROD_OFFSET,
    REQ_EVENT_OFFSET,
    RSP_PROD_OFFSET,
    RSP_EVENT_OFFSET,
];

/// The peer's scribbles: an index field set to a chosen value (sometimes
/// relative to the honest end's counter, so plausible values are common),
/// or raw bytes anywhere in the region.
fn scribble(region: &Region, op: u8, near: u32, s: &mut Script<'_>) {
    match op {
        0 => {
            let field = INDEX_FIELDS[usize::from(s.byte() % 4)];
            region.write(field, &s.u32().to_le_bytes());
        }
        1 => {
            // A value a few steps around the honest end's counter.
            let field = INDEX_FIELDS[usize::from(s.byte() % 4)];
            let delta = i32::from(s.byte() as i8);
            region.write(field, &near.wrapping_add_signed(delta).to_le_bytes());
        }
        _ => {
            let off = usize::from(u16::from_le_bytes([s.byte(), s.byte()])) % region.len();
            let len = usize::from(s.byte() % 64).min(region.len() - off);
            let mut bytes = [0u8; 64];
            for b in bytes.iter_mut().take(len) {
                *b = s.byte();
            }
            region.write(off, &bytes[..len]);
        }
    }
}

/// Tracks the first fatal error and checks that it sticks.
#[derive(Default)]
struct Fatal(Option<RingError>);

impl Fatal {
    /// Checks `r` against the sticky error; `allowed` says which non-fatal
    /// error the step may return.
    fn check<T>(&mut self, r: Result<T, RingError>, allowed: fn(&RingError) -> bool) -> Option<T> {
        match (&self.0, r) {
            (Some(first), Ok(_)) => panic!("closed ring ({first}) accepted a step"),
            (Some(first), Err(e)) => {
                assert_eq!(&e, first, "a closed ring repeats its error");
                None
            }
            (None, Ok(v)) => Some(v),
            (None, Err(e)) if e.is_fatal() => {
                self.0 = Some(e);
                None
            }
            (None, Err(e)) => {
                assert!(allowed(&e), "unexpected error {e:?}");
                None
            }
        }
    }
}

fn never(_: &RingError) -> bool {
    false
}

fn front(region: &Region, start: u32, s: &mut Script<'_>) {
    let mut ring = FrontRing::<Msg64, Msg64, _>::init_at(region, start).expect("front");
    let size = ring.size();
    let mut fatal = Fatal::default();
    let (mut put, mut pushed, mut taken) = (0u32, 0u32, 0u32);
    let mut seq = 0u64;
    while !s.is_empty() {
        let op = s.byte();
        match op % 8 {
            0 => {
                let mut req = Msg64::request(seq);
                req.id = seq;
                let full = put - taken == size;
                let r = ring.put_request(&req);
                if fatal.0.is_none() {
                    assert_eq!(r.is_err(), full, "put refused iff full");
                }
                if fatal
                    .check(r, |e| matches!(e, RingError::Full { .. }))
                    .is_some()
                {
                    put += 1;
                    seq += 1;
                }
            }
            1 => {
                if fatal.check(ring.push_requests(), never).is_some() {
                    pushed = put;
                }
            }
            2 => {
                if let Some(got) = fatal.check(ring.take_response(), never) {
                    if got.is_some() {
                        taken += 1;
                    }
                }
            }
            3 => {
                if let Some(more) = fatal.check(ring.final_check_for_responses(), never) {
                    assert!(!more || taken < pushed, "pending responses beyond pushed");
                }
            }
            4 => {
                if let Some(n) = fatal.check(ring.unconsumed_responses(), never) {
                    assert!(n <= pushed - taken, "{n} unconsumed beyond pushed");
                }
            }
            _ => scribble(region, op >> 3, start.wrapping_add(pushed), s),
        }
        assert!(taken <= pushed, "more responses than requests pushed");
        assert!(pushed <= put && put - taken <= size);
        assert_eq!(ring.free_requests(), size - (put - taken));
        assert_eq!(ring.rsp_cons(), start.wrapping_add(taken));
        assert_eq!(ring.req_prod_pvt(), start.wrapping_add(put));
        assert_eq!(ring.error(), fatal.0.as_ref());
        if let Some(e) = &fatal.0 {
            assert!(matches!(e, RingError::ResponseProducer { .. }));
        }
    }
}

fn back(region: &Region, start: u32, s: &mut Script<'_>) {
    // The peer (the fuzzer) plays the frontend: it initialises the header.
    drop(FrontRing::<Msg64, Msg64, _>::init_at(region, start).expect("init"));
    let mut ring = BackRing::<Msg64, Msg64, _>::attach(region, start).expect("back");
    let size = ring.size();
    let mut fatal = Fatal::default();
    let (mut taken, mut answered, mut pushed) = (0u32, 0u32, 0u32);
    while !s.is_empty() {
        let op = s.byte();
        match op % 8 {
            0 => {
                if let Some(got) = fatal.check(ring.take_request(), never) {
                    if let Some(req) = got {
                        taken += 1;
                        // Echo something derived from the peer's bytes.
                        let _ = Msg64::answer(&req);
                    }
                }
            }
            1 => {
                let owed = taken - answered;
                let r = ring.put_response(&Msg64::request(u64::from(answered)));
                if fatal.0.is_none() {
                    assert_eq!(r.is_err(), owed == 0, "put refused iff nothing owed");
                }
                if fatal
                    .check(r, |e| matches!(e, RingError::NothingToAnswer { .. }))
                    .is_some()
                {
                    answered += 1;
                }
            }
            2 => {
                if fatal.check(ring.push_responses(), never).is_some() {
                    pushed = answered;
                }
            }
            3 => {
                let _ = fatal.check(ring.final_check_for_requests(), never);
            }
            4 => {
                if let Some(n) = fatal.check(ring.unconsumed_requests(), never) {
                    assert!(
                        n <= size - (taken - answered),
                        "{n} unconsumed beyond the free slots"
                    );
                }
            }
            _ => scribble(region, op >> 3, start.wrapping_add(taken), s),
        }
        assert!(answered <= taken, "more responses than requests taken");
        assert!(pushed <= answered);
        assert!(
            taken - answered <= size,
            "more than size requests unanswered"
        );
        assert_eq!(ring.owed_responses(), taken - answered);
        assert_eq!(ring.req_cons(), start.wrapping_add(taken));
        assert_eq!(ring.rsp_prod_pvt(), start.wrapping_add(answered));
        assert_eq!(ring.error(), fatal.0.as_ref());
        if let Some(e) = &fatal.0 {
            assert!(matches!(e, RingError::RequestProducer { .. }));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mode = s.byte();
    let start = s.u32();
    let pages = if mode & 2 == 0 { 1 } else { 2 };
    let region = Region::anonymous(pages * PAGE_SIZE).expect("anonymous memory");
    if mode & 1 == 0 {
        front(&region, start, &mut s);
    } else {
        back(&region, start, &mut s);
    }
});
