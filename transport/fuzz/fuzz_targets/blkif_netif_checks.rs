//! Fuzzes the blkif and netif views ([`xenring::abi::blkif`],
//! [`xenring::abi::netif`]), the block backend's request checks
//! (`xenring_backend::vbd::request::{check, parse_indirect_segments}`)
//! and the net backend's check of a packet's tx slots
//! (`xenring_backend::vif::check_tx_slots`): what a frontend writes into
//! a ring slot or an indirect page.
//!
//! The input's first bytes set the device's limits (size in sectors,
//! indirect segments offered, read-only, discard), then 112 bytes are a
//! blkif request slot, and what follows is the indirect pages' contents.
//! The same bytes are also read through every netif view.
//!
//! Asserted: no panic in any view accessor or check (checked construction
//! refuses a short buffer, then no accessor panics); a request the check
//! accepts stays inside the limits: a read/write has 1 to 11 (a barrier 0
//! to 11) segments, each inside its page, and its sectors end inside the
//! image; nothing accepted writes to a read-only image; an indirect
//! request names 1 to the offered segments and at most 8 pages, and its
//! parsed segments (when the pages are there) pass the same checks; a
//! discard lies inside the image; [`data_bytes`] bounds the data of every
//! accepted read/write; an accepted tx packet has 1 to 18 slots whose
//! parts add up to the frame's length, within the limits, each inside its
//! page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenring::abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifResponse, BlkifSegment,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
};
use xenring::abi::netif::{
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
};
use xenring_backend::vbd::request::{
    check, data_bytes, parse_indirect_segments, Checked, Limits, Req, SECTORS_PER_PAGE,
};
use xenring_backend::vif::check_tx_slots;

fn seg_ok(s: &BlkifSegment) -> bool {
    s.first_sect <= s.last_sect && s.last_sect < SECTORS_PER_PAGE
}

fn sectors(segs: &[BlkifSegment]) -> u64 {
    segs.iter()
        .map(|s| u64::from(s.last_sect - s.first_sect) + 1)
        .sum()
}

fn views(data: &[u8]) {
    // Every view over every prefix: checked construction, then accessors.
    for len in [0, 1, 7, 8, 12, 16, 111, 112, data.len()] {
        let b = &data[..len.min(data.len())];
        if let Ok(r) = BlkifRequest::new_checked(b) {
            let _ = (
                r.operation(),
                r.nr_segments(),
                r.handle(),
                r.id(),
                r.sector_number(),
            );
            for i in 0..=usize::from(r.nr_segments()).max(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1) {
                let _ = r.segment(i);
            }
        }
        if let Ok(r) = BlkifRequestIndirect::new_checked(b) {
            let _ = (
                r.operation(),
                r.indirect_op(),
                r.nr_segments(),
                r.id(),
                r.handle(),
            );
            for i in 0..=BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST + 1 {
                let _ = r.indirect_gref(i);
            }
        }
        if let Ok(r) = BlkifRequestDiscard::new_checked(b) {
            let _ = (r.operation(), r.flag(), r.sector_number(), r.nr_sectors());
        }
        if let Ok(r) = BlkifResponse::new_checked(b) {
            let _ = (r.id(), r.operation(), r.status());
        }
        if let Ok(r) = NetifTxRequest::new_checked(b) {
            let _ = (r.gref(), r.offset(), r.flags(), r.id(), r.size());
        }
        if let Ok(r) = NetifTxResponse::new_checked(b) {
            let _ = r.as_bytes();
        }
        if let Ok(r) = NetifRxRequest::new_checked(b) {
            let _ = (r.id(), r.gref());
        }
        if let Ok(r) = NetifRxResponse::new_checked(b) {
            let _ = (r.id(), r.offset(), r.flags(), r.status());
        }
        if let Ok(e) = NetifExtraInfo::new_checked(b) {
            let _ = (
                e.extra_type(),
                e.flags(),
                e.union_bytes(),
                e.gso_size(),
                e.gso_type(),
            );
            let _ = (e.gso_pad(), e.gso_features(), e.mcast_addr());
            let _ = (e.hash_type(), e.hash_algorithm(), e.hash_value());
        }
        let _ = BlkifSegment::from_bytes(b);
        for i in [0, 1, 511, 512, 513] {
            let _ = BlkifSegment::from_indirect_page(b, i);
        }
    }
}

/// The vif backend's check of one packet's tx slots: the input read as up
/// to 20 slots of 12 bytes, and a frame limit.
fn tx_slots(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max_frame = 14 + usize::from(limit) * 16;
    let slots: Vec<NetifTxRequest<[u8; 12]>> = rest
        .chunks_exact(12)
        .take(20)
        .map(|c| NetifTxRequest::new_unchecked(c.try_into().expect("12")))
        .collect();
    if let Ok(parts) = check_tx_slots(&slots, max_frame) {
        assert_eq!(parts.len(), slots.len());
        assert!((1..=18).contains(&slots.len()));
        let total: usize = parts.iter().map(|(_, len)| len).sum();
        assert_eq!(
            total,
            usize::from(slots[0].size()),
            "the parts make the frame"
        );
        assert!((14..=max_frame).contains(&total));
        assert!(
            parts.iter().all(|(off, len)| off + len <= 4096),
            "inside the page"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    views(data);
    tx_slots(data);
    if data.len() < 4 + 112 {
        return;
    }
    let (head, rest) = data.split_at(4);
    let (slot, pages) = rest.split_at(112);
    let limits = Limits {
        // Small images make range errors likely, large ones overflow.
        sectors: match head[0] % 4 {
            0 => u64::from(head[1]),
            1 => u64::from(head[1]) << 20,
            2 => u64::MAX - u64::from(head[1]),
            _ => 0,
        },
        max_indirect_segments: u16::from(head[2]) * 16 % 4097,
        readonly: head[3] & 1 != 0,
        discard: head[3] & 2 != 0,
        extensions: head[3] & 4 != 0,
    };
    let mut buf = [0u8; 112];
    buf.copy_from_slice(slot);
    let req = Req::new_unchecked(buf);
    let bound = data_bytes(&req);
    match check(&req, &limits) {
        Ok(Checked::Rw {
            write,
            sector,
            segments,
            flush_after,
        }) => {
            assert!(!(write && limits.readonly), "write to a read-only image");
            assert!(segments.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST);
            assert!(!segments.is_empty() || flush_after, "empty read/write");
            assert!(segments.iter().all(seg_ok), "segment outside its page");
            let end = sector.checked_add(sectors(&segments)).expect("no overflow");
            assert!(end <= limits.sectors, "past the image end");
            assert!(segments.len() * 4096 <= bound, "data_bytes bounds the data");
        }
        Ok(Checked::Indirect {
            write,
            sector,
            nr_segments,
            pages: grefs,
        }) => {
            assert!(!(write && limits.readonly), "write to a read-only image");
            assert!(nr_segments >= 1 && nr_segments <= limits.max_indirect_segments);
            assert!(grefs.len() <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
            assert_eq!(grefs.len(), usize::from(nr_segments).div_ceil(512));
            match parse_indirect_segments(pages, nr_segments, sector, &limits) {
                Ok(segs) => {
                    assert_eq!(segs.len(), usize::from(nr_segments));
                    assert!(segs.iter().all(seg_ok), "segment outside its page");
                    let end = sector.checked_add(sectors(&segs)).expect("no overflow");
                    assert!(end <= limits.sectors, "past the image end");
                    assert!(pages.len() >= grefs.len().saturating_sub(1) * 4096);
                }
                Err(_) => {}
            }
        }
        Ok(Checked::Discard { sector, nr_sectors }) => {
            assert!(limits.discard && !limits.readonly);
            let end = sector.checked_add(nr_sectors).expect("no overflow");
            assert!(end <= limits.sectors, "discard past the image end");
        }
        Ok(Checked::WriteZeroes {
            sector, nr_sectors, ..
        }) => {
            assert!(limits.extensions && !limits.readonly);
            let end = sector.checked_add(nr_sectors).expect("no overflow");
            assert!(end <= limits.sectors, "write zeroes past the image end");
        }
        Ok(Checked::BlockStatus {
            sector, nr_sectors, ..
        }) => {
            assert!(limits.extensions && nr_sectors >= 1);
            let end = sector.checked_add(nr_sectors).expect("no overflow");
            assert!(end <= limits.sectors, "block status past the image end");
        }
        Ok(Checked::Flush) | Err(_) => {}
    }
    // A status page from a hostile backend: never more than was asked.
    let asked = u64::from(head[1]) + 1;
    if let Ok(ext) = xenring::abi::blkif_ext::decode_extents(pages, asked) {
        assert!(!ext.is_empty() && ext.len() <= xenring::abi::blkif_ext::MAX_EXTENTS);
        assert!(ext.iter().map(|e| e.sectors).sum::<u64>() <= asked);
        assert!(ext.iter().all(|e| e.sectors > 0));
    }
});
