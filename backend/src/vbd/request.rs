//! Validation of one blkif request, on the private copy the ring handed
//! out (the shared slot is never read again). Everything the frontend
//! wrote is checked here once, before any mapping or I/O: the operation,
//! the segment count against the direct/indirect limits, each segment's
//! sector range inside its page, and the whole transfer inside the image.
//! A request that fails gets `BLKIF_RSP_ERROR` (or `BLKIF_RSP_EOPNOTSUPP`
//! for an operation we do not serve) and touches nothing.

use xenring::abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifSegment,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, SEGS_PER_INDIRECT_FRAME,
};
use xenring::abi::blkif_ext::{
    BlkifRequestStatus, BLKIF_OP_XENRING_BLOCK_STATUS, BLKIF_OP_XENRING_WRITE_ZEROES, ZERO_FAST,
    ZERO_MAY_UNMAP,
};
use xenring::platform::GrantRef;

/// Sectors (of 512 bytes) in a page.
pub const SECTORS_PER_PAGE: u8 = 8;

/// The request type the ring carries.
pub type Req = BlkifRequest<[u8; 112]>;

/// What the device allows, for validation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size of the image in 512-byte sectors.
    pub sectors: u64,
    /// Most segments of an indirect request (0: indirect not offered).
    pub max_indirect_segments: u16,
    /// The image is read-only.
    pub readonly: bool,
    /// Discard is offered.
    pub discard: bool,
    /// xenring's write-zeroes and block-status operations are offered
    /// (`xenring::abi::blkif_ext`).
    pub extensions: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// An operation this backend does not serve (answered
    /// `BLKIF_RSP_EOPNOTSUPP`).
    #[error("operation {0} not supported")]
    Unsupported(u8),
    /// A malformed or out-of-range request (answered `BLKIF_RSP_ERROR`).
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> Reject {
    Reject::Invalid(msg.into())
}

/// A checked request, before its indirect pages (if any) are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Read (`write == false`) or write of the segments' sectors, laid
    /// end to end on disk from `sector`. `flush_after`: a write barrier
    /// (the data reaches stable storage before the answer).
    Rw {
        /// Data goes from the pages to the disk.
        write: bool,
        /// First sector on disk.
        sector: u64,
        /// The segments, already checked.
        segments: Vec<BlkifSegment>,
        /// Make the write durable before answering.
        flush_after: bool,
    },
    /// An indirect read or write: `nr_segments` descriptors in the pages
    /// `pages`, to be read with [`parse_indirect_segments`].
    Indirect {
        /// Data goes from the pages to the disk.
        write: bool,
        /// First sector on disk.
        sector: u64,
        /// Number of descriptors.
        nr_segments: u16,
        /// The pages holding them.
        pages: Vec<GrantRef>,
    },
    /// Make every completed write durable.
    Flush,
    /// Drop the data of `nr_sectors` from `sector` (reads back as zeroes).
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        nr_sectors: u64,
    },
    /// Zero `nr_sectors` from `sector` (xenring extension).
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        nr_sectors: u64,
        /// The range may be deallocated.
        unmap: bool,
        /// Fail with `BLKIF_RSP_EOPNOTSUPP` rather than be slow.
        fast: bool,
    },
    /// Report the allocation of `nr_sectors` from `sector` into page
    /// `gref` (xenring extension).
    BlockStatus {
        /// First sector.
        sector: u64,
        /// Number of sectors (nonzero).
        nr_sectors: u64,
        /// The page to write the extents into.
        gref: GrantRef,
    },
}

/// Checks the segments of a read/write and the disk range they cover.
pub fn check_segments(
    segments: &[BlkifSegment],
    sector: u64,
    limits: &Limits,
) -> Result<u64, Reject> {
    let mut total: u64 = 0;
    for (i, s) in segments.iter().enumerate() {
        if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
            return Err(invalid(format!(
                "segment {i}: sectors {}..={} not inside a page (0..=7)",
                s.first_sect, s.last_sect
            )));
        }
        total += u64::from(s.last_sect - s.first_sect) + 1;
    }
    check_range(sector, total, limits)?;
    Ok(total)
}

fn check_range(sector: u64, count: u64, limits: &Limits) -> Result<(), Reject> {
    match sector.checked_add(count) {
        Some(end) if end <= limits.sectors => Ok(()),
        _ => Err(invalid(format!(
            "sectors {sector}+{count} outside the image of {} sectors",
            limits.sectors
        ))),
    }
}

/// The most data bytes `req` can move, from its operation and segment
/// count alone (before [`check`]; clamped to what [`check`] allows): what
/// the queue reserves from the device's in-flight budget.
pub fn data_bytes(req: &Req) -> usize {
    const PAGE: usize = 4096;
    match req.operation() {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER => {
            usize::from(req.nr_segments()).min(BLKIF_MAX_SEGMENTS_PER_REQUEST) * PAGE
        }
        BLKIF_OP_INDIRECT => {
            usize::from(indirect(req).nr_segments()).min(usize::from(super::MAX_INDIRECT_SEGMENTS))
                * PAGE
        }
        // The status page, the buffer of zeroes written where the file
        // system cannot zero a range itself.
        BLKIF_OP_XENRING_BLOCK_STATUS => PAGE,
        BLKIF_OP_XENRING_WRITE_ZEROES => super::image::ZERO_CHUNK,
        _ => 0,
    }
}

/// Checks one request copied out of the ring.
pub fn check(req: &Req, limits: &Limits) -> Result<Checked, Reject> {
    let op = req.operation();
    let write_op = matches!(
        op,
        BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_DISCARD | BLKIF_OP_XENRING_WRITE_ZEROES
    ) || (op == BLKIF_OP_INDIRECT && indirect(req).indirect_op() == BLKIF_OP_WRITE);
    if write_op && limits.readonly {
        return Err(invalid(format!("operation {op}: the image is read-only")));
    }
    match op {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER => {
            let n = usize::from(req.nr_segments());
            if n > BLKIF_MAX_SEGMENTS_PER_REQUEST || (n == 0 && op != BLKIF_OP_WRITE_BARRIER) {
                return Err(invalid(format!(
                    "{n} segments (1 to {BLKIF_MAX_SEGMENTS_PER_REQUEST})"
                )));
            }
            let segments: Vec<BlkifSegment> = (0..n).filter_map(|i| req.segment(i)).collect();
            check_segments(&segments, req.sector_number(), limits)?;
            Ok(Checked::Rw {
                write: op != BLKIF_OP_READ,
                sector: req.sector_number(),
                segments,
                flush_after: op == BLKIF_OP_WRITE_BARRIER,
            })
        }
        BLKIF_OP_FLUSH_DISKCACHE => Ok(Checked::Flush),
        BLKIF_OP_DISCARD => {
            if !limits.discard {
                return Err(Reject::Unsupported(op));
            }
            let d = BlkifRequestDiscard::new_unchecked(req.into_inner());
            check_range(d.sector_number(), d.nr_sectors(), limits)?;
            Ok(Checked::Discard {
                sector: d.sector_number(),
                nr_sectors: d.nr_sectors(),
            })
        }
        BLKIF_OP_INDIRECT => {
            if limits.max_indirect_segments == 0 {
                return Err(Reject::Unsupported(op));
            }
            let r = indirect(req);
            let inner = r.indirect_op();
            if inner != BLKIF_OP_READ && inner != BLKIF_OP_WRITE {
                return Err(invalid(format!("indirect operation {inner}")));
            }
            let n = r.nr_segments();
            if n == 0 || n > limits.max_indirect_segments {
                return Err(invalid(format!(
                    "{n} indirect segments (1 to {})",
                    limits.max_indirect_segments
                )));
            }
            let pages_needed = usize::from(n).div_ceil(SEGS_PER_INDIRECT_FRAME);
            if pages_needed > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
                return Err(invalid(format!("{pages_needed} indirect pages")));
            }
            let pages = (0..pages_needed)
                .filter_map(|i| r.indirect_gref(i))
                .collect();
            Ok(Checked::Indirect {
                write: inner == BLKIF_OP_WRITE,
                sector: r.sector_number(),
                nr_segments: n,
                pages,
            })
        }
        BLKIF_OP_XENRING_WRITE_ZEROES if limits.extensions => {
            let d = BlkifRequestDiscard::new_unchecked(req.into_inner());
            let flag = d.flag();
            if flag & !(ZERO_MAY_UNMAP | ZERO_FAST) != 0 {
                return Err(invalid(format!("write-zeroes flags {flag:#x}")));
            }
            check_range(d.sector_number(), d.nr_sectors(), limits)?;
            Ok(Checked::WriteZeroes {
                sector: d.sector_number(),
                nr_sectors: d.nr_sectors(),
                unmap: flag & ZERO_MAY_UNMAP != 0,
                fast: flag & ZERO_FAST != 0,
            })
        }
        BLKIF_OP_XENRING_BLOCK_STATUS if limits.extensions => {
            let r = BlkifRequestStatus::new_unchecked(req.into_inner());
            if r.nr_sectors() == 0 {
                return Err(invalid("block status of 0 sectors"));
            }
            check_range(r.sector_number(), r.nr_sectors(), limits)?;
            Ok(Checked::BlockStatus {
                sector: r.sector_number(),
                nr_sectors: r.nr_sectors(),
                gref: r.gref(),
            })
        }
        other => Err(Reject::Unsupported(other)),
    }
}

fn indirect(req: &Req) -> BlkifRequestIndirect<[u8; 112]> {
    BlkifRequestIndirect::new_unchecked(req.into_inner())
}

/// Reads `nr_segments` descriptors from the private copy `pages` of an
/// indirect request's pages (4096 bytes each, in order) and checks them.
pub fn parse_indirect_segments(
    pages: &[u8],
    nr_segments: u16,
    sector: u64,
    limits: &Limits,
) -> Result<Vec<BlkifSegment>, Reject> {
    let mut segs = Vec::with_capacity(usize::from(nr_segments));
    for i in 0..usize::from(nr_segments) {
        let page = i / SEGS_PER_INDIRECT_FRAME;
        let slot = i % SEGS_PER_INDIRECT_FRAME;
        let bytes = pages
            .get(page * 4096..(page + 1) * 4096)
            .ok_or_else(|| invalid("indirect pages missing"))?;
        segs.push(
            BlkifSegment::from_indirect_page(bytes, slot)
                .map_err(|e| invalid(format!("indirect segment {i}: {e}")))?,
        );
    }
    check_segments(&segs, sector, limits)?;
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        sectors: 1000,
        max_indirect_segments: 256,
        readonly: false,
        discard: true,
        extensions: true,
    };

    fn rw(op: u8, sector: u64, segs: &[(u8, u8)]) -> Req {
        let mut r = Req::new_unchecked([0u8; 112]);
        r.set_operation(op);
        r.set_nr_segments(segs.len() as u8);
        r.set_sector_number(sector);
        for (i, &(f, l)) in segs.iter().enumerate().take(11) {
            r.set_segment(
                i,
                BlkifSegment {
                    gref: 100 + i as u32,
                    first_sect: f,
                    last_sect: l,
                },
            )
            .unwrap();
        }
        r
    }

    #[test]
    fn good_read_and_write() {
        let c = check(&rw(BLKIF_OP_READ, 0, &[(0, 7), (0, 3)]), &LIM).unwrap();
        assert!(matches!(c, Checked::Rw { write: false, ref segments, .. } if segments.len() == 2));
        // The last 8 sectors of the image.
        assert!(check(&rw(BLKIF_OP_WRITE, 992, &[(0, 7)]), &LIM).is_ok());
    }

    #[test]
    fn bad_segments_and_ranges_are_refused() {
        for (sector, segs) in [
            (0u64, vec![(0u8, 8u8)]),     // past the page
            (0, vec![(5, 4)]),            // first after last
            (993, vec![(0, 7)]),          // one sector past the end
            (u64::MAX - 2, vec![(0, 7)]), // wraps
            (0, vec![]),                  // no segment
            (0, vec![(0, 7); 12]),        // more than 11 (nr says 12)
        ] {
            let r = rw(BLKIF_OP_READ, sector, &segs);
            assert!(
                matches!(check(&r, &LIM), Err(Reject::Invalid(_))),
                "sector {sector} segs {segs:?} accepted"
            );
        }
    }

    #[test]
    fn readonly_refuses_writes_and_discards() {
        let ro = Limits {
            readonly: true,
            ..LIM
        };
        assert!(check(&rw(BLKIF_OP_WRITE, 0, &[(0, 7)]), &ro).is_err());
        assert!(check(&rw(BLKIF_OP_READ, 0, &[(0, 7)]), &ro).is_ok());
        let mut d = BlkifRequestDiscard::new_unchecked([0u8; 112]);
        d.set_operation(BLKIF_OP_DISCARD);
        d.set_nr_sectors(8);
        let r = Req::new_unchecked(d.into_inner());
        assert!(check(&r, &ro).is_err());
        assert!(check(&r, &LIM).is_ok());
    }

    #[test]
    fn xenring_extensions_are_checked() {
        use xenring::abi::blkif_ext::*;
        let zero = |flag: u8, sector: u64, n: u64| {
            let mut d = BlkifRequestDiscard::new_unchecked([0u8; 112]);
            d.set_operation(BLKIF_OP_XENRING_WRITE_ZEROES);
            d.set_flag(flag);
            d.set_sector_number(sector);
            d.set_nr_sectors(n);
            Req::new_unchecked(d.into_inner())
        };
        assert_eq!(
            check(&zero(ZERO_MAY_UNMAP, 8, 8), &LIM),
            Ok(Checked::WriteZeroes {
                sector: 8,
                nr_sectors: 8,
                unmap: true,
                fast: false
            })
        );
        assert!(check(&zero(4, 8, 8), &LIM).is_err(), "unknown flag");
        assert!(check(&zero(0, 999, 2), &LIM).is_err(), "past the end");
        let ro = Limits {
            readonly: true,
            ..LIM
        };
        assert!(check(&zero(0, 0, 1), &ro).is_err(), "read-only");
        let plain = Limits {
            extensions: false,
            ..LIM
        };
        assert_eq!(
            check(&zero(0, 0, 1), &plain),
            Err(Reject::Unsupported(BLKIF_OP_XENRING_WRITE_ZEROES))
        );
        let status = |sector: u64, n: u64| {
            let mut r = BlkifRequestStatus::new_unchecked([0u8; 112]);
            r.set_sector_number(sector);
            r.set_nr_sectors(n);
            r.set_gref(77);
            r.set_operation(BLKIF_OP_XENRING_BLOCK_STATUS);
            Req::new_unchecked(r.into_inner())
        };
        assert_eq!(
            check(&status(0, 1000), &ro),
            Ok(Checked::BlockStatus {
                sector: 0,
                nr_sectors: 1000,
                gref: 77
            })
        );
        // Their buffers count in the device's in-flight bytes.
        assert_eq!(data_bytes(&status(0, 1)), 4096);
        assert_eq!(data_bytes(&zero(0, 0, 1)), crate::vbd::image::ZERO_CHUNK);
        assert!(check(&status(0, 0), &LIM).is_err());
        assert!(check(&status(1, 1000), &LIM).is_err());
        assert!(check(&status(u64::MAX, 2), &LIM).is_err());
        assert!(check(&status(0, 1), &plain).is_err());
    }

    #[test]
    fn discard_range_checked() {
        let mut d = BlkifRequestDiscard::new_unchecked([0u8; 112]);
        d.set_operation(BLKIF_OP_DISCARD);
        d.set_sector_number(999);
        d.set_nr_sectors(2);
        assert!(check(&Req::new_unchecked(d.into_inner()), &LIM).is_err());
    }

    #[test]
    fn indirect_limits_and_segments() {
        let mut r = BlkifRequestIndirect::new_unchecked([0u8; 112]);
        r.set_operation(BLKIF_OP_INDIRECT);
        r.set_indirect_op(BLKIF_OP_WRITE);
        r.set_nr_segments(257);
        assert!(check(&Req::new_unchecked(r.into_inner()), &LIM).is_err());
        r.set_nr_segments(3);
        r.set_indirect_gref(0, 55).unwrap();
        let c = check(&Req::new_unchecked(r.into_inner()), &LIM).unwrap();
        assert_eq!(
            c,
            Checked::Indirect {
                write: true,
                sector: 0,
                nr_segments: 3,
                pages: vec![55]
            }
        );
        let mut page = vec![0u8; 4096];
        for i in 0..3 {
            BlkifSegment {
                gref: i,
                first_sect: 0,
                last_sect: 7,
            }
            .write_to_indirect_page(&mut page, i as usize)
            .unwrap();
        }
        assert_eq!(parse_indirect_segments(&page, 3, 0, &LIM).unwrap().len(), 3);
        // A bad descriptor in the page is caught after the copy.
        BlkifSegment {
            gref: 9,
            first_sect: 3,
            last_sect: 9,
        }
        .write_to_indirect_page(&mut page, 1)
        .unwrap();
        assert!(parse_indirect_segments(&page, 3, 0, &LIM).is_err());
        // The whole transfer must be inside the image.
        assert!(parse_indirect_segments(&page[..], 1, 995, &LIM).is_err());
    }

    #[test]
    fn barrier_writes_then_flushes() {
        let c = check(&rw(BLKIF_OP_WRITE_BARRIER, 8, &[(0, 7)]), &LIM).unwrap();
        assert!(matches!(
            c,
            Checked::Rw {
                write: true,
                flush_after: true,
                ..
            }
        ));
        // An empty barrier is a pure flush point.
        let c = check(&rw(BLKIF_OP_WRITE_BARRIER, 0, &[]), &LIM).unwrap();
        assert!(matches!(c, Checked::Rw { ref segments, .. } if segments.is_empty()));
        let r = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]);
        assert_eq!(check(&r, &LIM), Ok(Checked::Flush));
    }

    #[test]
    fn unknown_ops_unsupported() {
        let mut r = Req::new_unchecked([0u8; 112]);
        r.set_operation(4);
        assert_eq!(check(&r, &LIM), Err(Reject::Unsupported(4)));
    }
}
