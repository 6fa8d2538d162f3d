//! Fuzzes the simulated host's control protocol codec
//! ([`xenring::sim::wire`]): arbitrary bytes are decoded as a request (what
//! the host reads from a session or an administrator) and as a reply (what
//! a domain reads from the host).
//!
//! Asserted: no panic (and no allocation sized by a count the input does
//! not back: a vector's count is checked against the bytes left before it
//! is allocated); anything decoded re-encodes to bytes that decode to the
//! same value, and re-encoding that value gives the same bytes again (the
//! encoding is canonical once decoded: booleans are the only fields where
//! the input may differ, any non-zero byte reading as true).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenring::sim::wire::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let bytes = req.encode();
        assert_eq!(bytes.len(), data.len(), "same length as the input");
        let again = Request::decode(&bytes).expect("an encoded request decodes");
        assert_eq!(again, req);
        assert_eq!(again.encode(), bytes);
    }
    if let Ok(rep) = Reply::decode(data) {
        let bytes = rep.encode();
        assert_eq!(bytes.len(), data.len(), "same length as the input");
        let again = Reply::decode(&bytes).expect("an encoded reply decodes");
        assert_eq!(again, rep);
        assert_eq!(again.encode(), bytes);
    }
});
