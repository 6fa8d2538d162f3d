//! Sans-IO tests of the vchan byte stream: two ends over one memfd mapped
//! separately by each (as two domains would), no runtime.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::abi::vchan::{VchanHeader, CONTROL_PAGE_SIZE, VCHAN_NOTIFY_READ, VCHAN_NOTIFY_WRITE};
use crate::shm::{memfd, Protection, Region};

// ------------------------------------------------------------------ helpers

/// xorshift64*: deterministic, good enough for chunk sizes and data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `1..=max`.
    fn upto(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
}

/// Period of the stream contents (prime, so it never lines up with a ring).
const P: usize = 65_521;

/// Stream byte `i` is `PATTERN[i % P]`; the buffer holds two periods so
/// that any chunk of up to `P` bytes is one slice.
fn pattern() -> &'static [u8] {
    static PAT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PAT.get_or_init(|| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let once: Vec<u8> = (0..P).map(|_| rng.next() as u8).collect();
        once.iter().chain(&once).copied().collect()
    })
}

/// Stream bytes `pos..pos + len` (len <= P).
fn chunk(pos: u64, len: usize) -> &'static [u8] {
    let at = (pos % P as u64) as usize;
    &pattern()[at..at + len]
}

const LEFT_GRANT0: u32 = 0x1000;
const RIGHT_GRANT0: u32 = 0x2000;

fn paged(order: u16) -> usize {
    if order >= 12 {
        1 << order
    } else {
        0
    }
}

/// One memfd laid out as control page, left pages, right pages; each end
/// maps its own view of it, as two domains would.
struct Rig {
    fd: OwnedFd,
    lo: u16,
    ro: u16,
}

impl Rig {
    fn new(lo: u16, ro: u16) -> Rig {
        let len = CONTROL_PAGE_SIZE + paged(lo) + paged(ro);
        let fd = memfd("vchan-test", len as u64).unwrap();
        Rig { fd, lo, ro }
    }

    fn map(&self, offset: usize, len: usize, prot: Protection) -> Region {
        Region::map_fd(self.fd.as_fd(), offset as u64, len, prot).unwrap()
    }

    /// A third view of the control page: the "hostile peer" and the
    /// inspector of golden bytes.
    fn raw(&self) -> Region {
        self.map(0, CONTROL_PAGE_SIZE, Protection::ReadWrite)
    }

    fn page_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONTROL_PAGE_SIZE];
        self.raw().read(0, &mut b);
        b
    }

    /// The memory of `ring`'s pages, as `side` maps it (read-only for the
    /// reader, as libxenvchan's client maps its read ring).
    fn ring_memory(&self, ring: RingId, side: Side) -> Option<Region> {
        let (order, offset) = match ring {
            RingId::Left => (self.lo, CONTROL_PAGE_SIZE),
            RingId::Right => (self.ro, CONTROL_PAGE_SIZE + paged(self.lo)),
        };
        let prot = if side.tx_ring() == ring {
            Protection::ReadWrite
        } else {
            Protection::ReadOnly
        };
        (order >= 12).then(|| self.map(offset, 1 << order, prot))
    }

    fn server_setup(&self, ring: RingId) -> RingSetup {
        let (order, g0) = match ring {
            RingId::Left => (self.lo, LEFT_GRANT0),
            RingId::Right => (self.ro, RIGHT_GRANT0),
        };
        match self.ring_memory(ring, Side::Server) {
            None => RingSetup::in_page(order),
            Some(m) => {
                let grants = (0..1u32 << (order - 12)).map(|i| g0 + i).collect();
                RingSetup::pages(order, grants, m)
            }
        }
    }

    fn server(&self) -> Vchan {
        // Garbage first: init must zero the whole page, as libxenvchan's
        // memset does.
        self.raw().fill(0, CONTROL_PAGE_SIZE, 0xee);
        Vchan::server_init(
            self.map(0, CONTROL_PAGE_SIZE, Protection::ReadWrite),
            self.server_setup(RingId::Left),
            self.server_setup(RingId::Right),
        )
        .unwrap()
    }

    fn client(&self) -> Vchan {
        let control = self.map(0, CONTROL_PAGE_SIZE, Protection::ReadWrite);
        let layout = ControlPage::new(&control).unwrap().read_layout().unwrap();
        let setup = |ring: RingId, l: RingLayout| {
            let memory = self
                .ring_memory(ring, Side::Client)
                .map(|m| Box::new(m) as Box<dyn MappedMemory>);
            RingSetup::new(l, memory)
        };
        let left = setup(RingId::Left, layout.left);
        let right = setup(RingId::Right, layout.right);
        Vchan::client_attach(control, left, right).unwrap()
    }

    fn pair(&self) -> (Vchan, Vchan) {
        let s = self.server();
        let c = self.client();
        (s, c)
    }
}

/// Moves `total` bytes from `tx` to `rx` in random chunks of up to
/// `max_chunk`, checking every byte; `pos` is where the stream stands.
fn pump(tx: &mut Vchan, rx: &mut Vchan, pos: u64, total: u64, max_chunk: usize, rng: &mut Rng) {
    let max_chunk = max_chunk.min(P);
    let (mut w, mut r) = (pos, pos);
    let mut buf = vec![0u8; max_chunk];
    while r < pos + total {
        if w < pos + total {
            let len = rng.upto(max_chunk).min((pos + total - w) as usize);
            let (n, _) = tx.write(chunk(w, len)).unwrap();
            w += n as u64;
        }
        let len = rng.upto(max_chunk);
        let (n, _) = rx.read(&mut buf[..len]).unwrap();
        assert!(
            buf[..n] == *chunk(r, n),
            "stream bytes {r}..{} differ",
            r + n as u64
        );
        r += n as u64;
        assert!(w - r <= tx.writer().capacity() as u64);
    }
    assert_eq!(rx.readable().unwrap(), 0);
}

/// Writes until the ring is full; returns how much went in.
fn fill(tx: &mut Vchan, pos: u64) -> usize {
    let mut done = 0;
    loop {
        let (n, _) = tx.write(chunk(pos + done as u64, 4096)).unwrap();
        if n == 0 {
            return done;
        }
        done += n;
    }
}

fn drain(rx: &mut Vchan, pos: u64, expect: usize) {
    let mut buf = vec![0u8; 4096];
    let mut done = 0;
    while done < expect {
        let (n, _) = rx.read(&mut buf).unwrap();
        assert!(n > 0, "ring ran dry after {done} of {expect} bytes");
        assert!(buf[..n] == *chunk(pos + done as u64, n));
        done += n;
    }
    assert_eq!(rx.readable().unwrap(), 0);
}

// ------------------------------------------------------------ layout, golden

/// The first offset where two pages differ, with both bytes.
fn first_diff(page: &[u8], golden: &[u8]) -> Option<(usize, u8, u8)> {
    assert_eq!(page.len(), golden.len());
    (0..page.len())
        .find(|&i| page[i] != golden[i])
        .map(|i| (i, page[i], golden[i]))
}

#[test]
fn server_page_golden_bytes_in_page_orders() {
    for (lo, ro) in [(10u16, 11u16), (11, 10)] {
        let rig = Rig::new(lo, ro);
        let _server = rig.server();
        let mut golden = vec![0u8; CONTROL_PAGE_SIZE];
        golden[16..24].copy_from_slice(&[lo as u8, 0, ro as u8, 0, 2, 1, 1, 0]);
        // The one byte libxenvchan's server does not write: our clean-close
        // marker, 1 (alive), right after the (empty) grant list.
        golden[24] = MARKER_ALIVE;
        assert_eq!(
            first_diff(&rig.page_bytes(), &golden),
            None,
            "orders {lo}/{ro}"
        );
    }
}

#[test]
fn server_page_golden_bytes_with_grants() {
    let rig = Rig::new(12, 14);
    let _server = rig.server();
    let page = rig.page_bytes();
    let mut golden = vec![0u8; CONTROL_PAGE_SIZE];
    golden[16..24].copy_from_slice(&[0x0c, 0, 0x0e, 0, 2, 1, 1, 0]);
    golden[24..44].copy_from_slice(&[
        0x00, 0x10, 0, 0, // left: 0x1000
        0x00, 0x20, 0, 0, // right: 0x2000..0x2003
        0x01, 0x20, 0, 0, //
        0x02, 0x20, 0, 0, //
        0x03, 0x20, 0, 0,
    ]);
    // The server's clean-close marker right after the grants; the client's
    // byte after it stays 0 until a client attaches.
    golden[44] = MARKER_ALIVE;
    assert_eq!(first_diff(&page, &golden), None);

    // The abi view reads the same fields from the same bytes.
    let h = VchanHeader::new_checked(&page[..]).unwrap();
    assert_eq!((h.left_order(), h.right_order()), (12, 14));
    assert_eq!((h.cli_live(), h.srv_live()), (2, 1));
    assert_eq!((h.cli_notify(), h.srv_notify()), (VCHAN_NOTIFY_WRITE, 0));
    assert_eq!(h.grant(0), Some(0x1000));
    assert_eq!(h.grant(4), Some(0x2003));

    // Order 11 in the page with 256 grants (the most that fit before 2048).
    let rig = Rig::new(20, 11);
    let _server = rig.server();
    let page = rig.page_bytes();
    let h = VchanHeader::new_checked(&page[..]).unwrap();
    assert_eq!((h.left_order(), h.right_order()), (20, 11));
    assert_eq!(h.grant(255), Some(0x1000 + 255));
    assert_eq!(page[24 + 256 * 4], MARKER_ALIVE);
    assert!(page[24 + 256 * 4 + 1..].iter().all(|&b| b == 0));
}

#[test]
fn control_page_atomics_agree_with_the_abi_view() {
    let raw = Region::anonymous(CONTROL_PAGE_SIZE).unwrap();
    let c = ControlPage::new(&raw).unwrap();
    c.cons(RingId::Left).store(0x0102_0304, Ordering::Relaxed);
    c.prod(RingId::Left).store(0x0506_0708, Ordering::Relaxed);
    c.cons(RingId::Right).store(0x0a0b_0c0d, Ordering::Relaxed);
    c.prod(RingId::Right).store(0xfffe_fdfc, Ordering::Relaxed);
    c.order(RingId::Left).store(13, Ordering::Relaxed);
    c.order(RingId::Right).store(17, Ordering::Relaxed);
    c.live(Side::Client).store(2, Ordering::Relaxed);
    c.live(Side::Server).store(1, Ordering::Relaxed);
    c.notify(Side::Client)
        .store(VCHAN_NOTIFY_READ, Ordering::Relaxed);
    c.notify(Side::Server).store(3, Ordering::Relaxed);
    c.grant(1017).unwrap().store(0xabcd, Ordering::Relaxed);
    assert!(c.grant(1018).is_none());
    let mut page = vec![0u8; CONTROL_PAGE_SIZE];
    raw.read(0, &mut page);
    let h = VchanHeader::new_checked(&page[..]).unwrap();
    assert_eq!(
        (h.left_cons(), h.left_prod(), h.right_cons(), h.right_prod()),
        (0x0102_0304, 0x0506_0708, 0x0a0b_0c0d, 0xfffe_fdfc)
    );
    assert_eq!((h.left_order(), h.right_order()), (13, 17));
    assert_eq!((h.cli_live(), h.srv_live()), (2, 1));
    assert_eq!((h.cli_notify(), h.srv_notify()), (VCHAN_NOTIFY_READ, 3));
    assert_eq!(h.grant(1017), Some(0xabcd));
    assert_eq!(Side::Server.live_offset(), 21);
    assert_eq!(Side::Client.live_offset(), 20);
}

#[test]
fn client_attach_marks_itself_live_and_asks_for_writes() {
    let rig = Rig::new(13, 10);
    let server = rig.server();
    assert_eq!(server.peer_state(), Ok(PeerState::NotYetConnected));
    let raw = rig.raw();
    let layout = ControlPage::new(&raw).unwrap().read_layout().unwrap();
    assert_eq!(
        layout,
        Layout {
            left: RingLayout {
                order: 13,
                grants: vec![0x1000, 0x1001]
            },
            right: RingLayout {
                order: 10,
                grants: vec![]
            },
        }
    );
    let client = rig.client();
    let page = rig.page_bytes();
    assert_eq!(&page[16..24], &[13, 0, 10, 0, 1, 1, 1, VCHAN_NOTIFY_WRITE]);
    // Both markers 1 (server's, client's) after the two grants.
    assert_eq!(&page[32..34], &[MARKER_ALIVE, MARKER_ALIVE]);
    assert_eq!(server.peer_state(), Ok(PeerState::Connected));
    assert_eq!(client.peer_state(), Ok(PeerState::Connected));
    assert_eq!(server.side(), Side::Server);
    assert_eq!(client.side(), Side::Client);
}

#[test]
fn layouts_libxenvchan_cannot_use_are_refused() {
    let ring = |order: u16| RingLayout {
        order,
        grants: vec![
            7;
            if (12..=20).contains(&order) {
                1 << (order - 12)
            } else {
                0
            }
        ],
    };
    let lay = |lo, ro| Layout {
        left: ring(lo),
        right: ring(ro),
    };
    for lo in 10..=20 {
        for ro in 10..=20 {
            let want = if lo == ro && lo < 12 {
                Err(StreamError::InPageClash {
                    order: lo,
                    offset: 1 << lo,
                })
            } else if (lo == 10 && ro == 20) || (lo == 20 && ro == 10) {
                Err(StreamError::GrantsOverlapRing {
                    count: 256,
                    end: 1048,
                    ring: if lo == 10 {
                        RingId::Left
                    } else {
                        RingId::Right
                    },
                    offset: 1024,
                })
            } else {
                Ok(())
            };
            assert_eq!(lay(lo, ro).check(), want, "orders {lo}/{ro}");
        }
    }
    for bad in [0u16, 9, 21, u16::MAX] {
        assert_eq!(
            lay(bad, 12).check(),
            Err(StreamError::BadOrder {
                ring: RingId::Left,
                order: bad
            })
        );
        assert_eq!(
            lay(12, bad).check(),
            Err(StreamError::BadOrder {
                ring: RingId::Right,
                order: bad
            })
        );
    }
    let mut short = lay(13, 10);
    short.left.grants.pop();
    assert_eq!(
        short.check().unwrap_err().to_string(),
        "vchan left (client to server) ring: order 13 needs 2 grant references, got 1"
    );
    assert_eq!(
        lay(10, 10).check().unwrap_err().to_string(),
        "vchan control page: both rings have order 10, so both would sit at offset 1024"
    );

    // A client refuses a page whose orders are out of range, before
    // mapping anything.
    let rig = Rig::new(10, 11);
    let _server = rig.server();
    let raw = rig.raw();
    ControlPage::new(&raw)
        .unwrap()
        .order(RingId::Right)
        .store(21, Ordering::Relaxed);
    assert_eq!(
        ControlPage::new(&raw).unwrap().read_layout(),
        Err(StreamError::BadOrder {
            ring: RingId::Right,
            order: 21
        })
    );
    ControlPage::new(&raw)
        .unwrap()
        .order(RingId::Right)
        .store(10, Ordering::Relaxed);
    assert!(matches!(
        ControlPage::new(&raw).unwrap().read_layout(),
        Err(StreamError::InPageClash { .. })
    ));
}

#[test]
fn memory_that_does_not_fit_the_layout_is_refused() {
    let rig = Rig::new(12, 13);
    let control = || rig.map(0, CONTROL_PAGE_SIZE, Protection::ReadWrite);
    let page = |n: usize, prot| rig.map(CONTROL_PAGE_SIZE, n * 4096, prot);
    let err = |r: Result<Vchan, StreamError>| r.unwrap_err().to_string();

    assert_eq!(
        err(Vchan::server_init(
            control(),
            RingSetup::pages(12, vec![1], page(2, Protection::ReadWrite)),
            RingSetup::in_page(11),
        )),
        "vchan left (client to server) ring: order 12 needs 4096 bytes of memory, got 8192"
    );
    assert_eq!(
        err(Vchan::server_init(
            control(),
            RingSetup::new(
                RingLayout {
                    order: 12,
                    grants: vec![1]
                },
                None
            ),
            RingSetup::in_page(11),
        )),
        "vchan left (client to server) ring: order 12 needs the memory of its pages, none was given"
    );
    assert_eq!(
        err(Vchan::server_init(
            control(),
            RingSetup::in_page(10),
            RingSetup::new(
                RingLayout {
                    order: 11,
                    grants: vec![]
                },
                Some(Box::new(page(1, Protection::ReadWrite)))
            ),
        )),
        "vchan right (server to client) ring: order 11 lives in the control page, but separate memory was given"
    );
    assert_eq!(
        err(Vchan::server_init(
            control(),
            RingSetup::in_page(10),
            RingSetup::pages(12, vec![1], page(1, Protection::ReadOnly)),
        )),
        "vchan right (server to client) ring: the server writes this ring, but its memory is mapped read-only"
    );
    assert_eq!(
        err(Vchan::server_init(
            rig.map(0, CONTROL_PAGE_SIZE, Protection::ReadOnly),
            RingSetup::in_page(10),
            RingSetup::in_page(11),
        )),
        "vchan control page: region is mapped read-only"
    );
    // A reader may map its ring read-only.
    Vchan::server_init(
        control(),
        RingSetup::pages(12, vec![1], page(1, Protection::ReadOnly)),
        RingSetup::in_page(11),
    )
    .unwrap();
}

// -------------------------------------------------------------- data paths

#[test]
fn every_order_carries_data_both_ways() {
    let mut rng = Rng(1);
    for order in 10u16..=20 {
        let (lo, ro) = match order {
            10 => (10, 11),
            11 => (11, 10),
            o => (o, o),
        };
        let rig = Rig::new(lo, ro);
        let (mut s, mut c) = rig.pair();
        // Exactly full, then empty, in each direction.
        assert_eq!(fill(&mut c, 0), 1 << lo, "left order {lo}");
        assert_eq!(c.writable().unwrap(), 0);
        assert_eq!(s.readable().unwrap(), 1 << lo);
        drain(&mut s, 0, 1 << lo);
        assert_eq!(fill(&mut s, 7), 1 << ro, "right order {ro}");
        drain(&mut c, 7, 1 << ro);
        // Traffic through several wraps: small rings many times over,
        // large ones a few MiB.
        let total = (4u64 << order).max(256 << 10);
        pump(&mut c, &mut s, 1 << lo, total, 64 << 10, &mut rng);
        pump(&mut s, &mut c, 7 + (1 << ro), total, 64 << 10, &mut rng);
    }
}

#[test]
fn wrap_around_with_exactly_two_bytes_free() {
    let rig = Rig::new(10, 11);
    let (mut s, mut c) = rig.pair();
    let raw = rig.raw();
    let mut pos = 0u64;
    let mut buf = [0u8; 2048];
    // Every starting offset in the ring, so the two free bytes sit at every
    // place, including straddling the end.
    for start in 0..1024u64 {
        // Move the indexes so that the ring is empty at offset `start`.
        let skip = (start + 1024 - pos % 1024) % 1024;
        if skip > 0 {
            assert_eq!(c.write(chunk(pos, skip as usize)).unwrap().0, skip as usize);
            assert_eq!(s.read(&mut buf[..skip as usize]).unwrap().0, skip as usize);
            pos += skip;
        }
        assert_eq!(pos % 1024, start);
        assert_eq!(c.write(chunk(pos, 1022)).unwrap().0, 1022);
        assert_eq!(c.writable().unwrap(), 2);
        // Three offered, two fit; then nothing.
        assert_eq!(c.write(chunk(pos + 1022, 3)).unwrap().0, 2);
        assert_eq!(c.writable().unwrap(), 0);
        assert_eq!(c.write(chunk(pos + 1024, 1)).unwrap().0, 0);
        // The last two bytes landed at the two places that were free.
        for k in 0..2u64 {
            let mut b = [0u8; 1];
            raw.read(1024 + ((start + 1022 + k) % 1024) as usize, &mut b);
            assert_eq!(b[0], chunk(pos + 1022 + k, 1)[0], "start {start}, byte {k}");
        }
        assert_eq!(s.readable().unwrap(), 1024);
        let (n, _) = s.read(&mut buf).unwrap();
        assert_eq!(n, 1024);
        assert!(buf[..1024] == *chunk(pos, 1024), "start {start}");
        pos += 1024;
    }
}

#[test]
fn indexes_cross_u32_max() {
    for (lo, ro) in [(10u16, 11u16), (12, 13)] {
        let rig = Rig::new(lo, ro);
        let (mut s, mut c) = rig.pair();
        let start = u32::MAX - 700;
        s.seek_for_test(start);
        c.seek_for_test(start);
        let mut rng = Rng(7);
        pump(&mut c, &mut s, 0, 256 << 10, 5000, &mut rng);
        pump(&mut s, &mut c, 0, 256 << 10, 5000, &mut rng);
        let raw = rig.raw();
        let ctrl = ControlPage::new(&raw).unwrap();
        let end = start.wrapping_add(256 << 10);
        assert!(end < start);
        for ring in [RingId::Left, RingId::Right] {
            assert_eq!(ctrl.cons(ring).load(Ordering::Relaxed), end);
            assert_eq!(ctrl.prod(ring).load(Ordering::Relaxed), end);
        }
    }
}

#[test]
fn off_by_one_sizes() {
    let rig = Rig::new(11, 12);
    let (mut s, mut c) = rig.pair();
    let mut buf = vec![0u8; 8192];
    // Right ring, 4096 bytes: exactly the free space goes in.
    assert_eq!(s.writable().unwrap(), 4096);
    assert_eq!(s.write(chunk(0, 4096)).unwrap().0, 4096);
    assert_eq!(s.writable().unwrap(), 0);
    // One more byte is refused.
    assert_eq!(s.write(chunk(4096, 1)).unwrap().0, 0);
    // One byte out makes room for exactly one byte in.
    assert_eq!(c.read(&mut buf[..1]).unwrap().0, 1);
    assert_eq!(s.writable().unwrap(), 1);
    assert_eq!(s.write(chunk(4096, 2)).unwrap().0, 1);
    assert_eq!(c.readable().unwrap(), 4096);
    // A buffer exactly the size of what waits.
    assert_eq!(c.read(&mut buf[..4096]).unwrap().0, 4096);
    assert!(buf[..4096] == *chunk(1, 4096));
    // One byte more than the ring, offered at once: a ring's worth goes in.
    assert_eq!(s.write(chunk(4097, 4097)).unwrap().0, 4096);
    // A bigger buffer gets what waits, no more.
    assert_eq!(c.read(&mut buf).unwrap().0, 4096);
    assert!(buf[..4096] == *chunk(4097, 4096));
    // Empty buffers move nothing and ask for nothing.
    assert_eq!(c.read(&mut []).unwrap(), (0, NotifyNeeded::No));
    assert_eq!(s.write(&[]).unwrap(), (0, NotifyNeeded::No));
    // Left ring, 2048 bytes: one less than full, then full.
    assert_eq!(c.write(chunk(0, 2047)).unwrap().0, 2047);
    assert_eq!(c.writable().unwrap(), 1);
    assert_eq!(c.write(chunk(2047, 1)).unwrap().0, 1);
    assert_eq!(s.readable().unwrap(), 2048);
    assert_eq!(s.read(&mut buf[..2047]).unwrap().0, 2047);
    assert_eq!(s.readable().unwrap(), 1);
    assert_eq!(s.read(&mut buf).unwrap().0, 1);
}

#[test]
fn random_chunks_through_many_wraps() {
    for (lo, ro, seed) in [(10u16, 11u16, 3u64), (13, 12, 4), (11, 14, 5)] {
        let rig = Rig::new(lo, ro);
        let (mut s, mut c) = rig.pair();
        let mut rng = Rng(seed);
        let (mut a, mut b) = (0u64, 0u64);
        // Interleave directions; chunks up to one and a half rings.
        for _ in 0..8 {
            let total = (8u64 << lo) + rng.upto(999) as u64;
            pump(&mut c, &mut s, a, total, (3 << lo) / 2, &mut rng);
            a += total;
            let total = (8u64 << ro) + rng.upto(999) as u64;
            pump(&mut s, &mut c, b, total, (3 << ro) / 2, &mut rng);
            b += total;
        }
    }
}

// ----------------------------------------------------------------- notify

#[test]
fn a_reader_that_asked_gets_exactly_one_notify() {
    let rig = Rig::new(10, 11);
    let (mut s, mut c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    let mut buf = [0u8; 64];
    // The server asked at init (cli_notify = WRITE): one event, then none.
    assert_eq!(c.write(b"a").unwrap(), (1, NotifyNeeded::Yes));
    assert_eq!(ctrl.notify(Side::Client).load(Ordering::Relaxed), 0);
    assert_eq!(c.write(b"b").unwrap(), (1, NotifyNeeded::No));
    // The client never asked to hear of reads.
    assert_eq!(s.read(&mut buf).unwrap(), (2, NotifyNeeded::No));
    // An empty read asks for an event on the next write.
    assert_eq!(s.read(&mut buf).unwrap(), (0, NotifyNeeded::No));
    assert_eq!(
        ctrl.notify(Side::Client).load(Ordering::Relaxed),
        VCHAN_NOTIFY_WRITE
    );
    assert_eq!(c.write(b"c").unwrap(), (1, NotifyNeeded::Yes));
    assert_eq!(c.write(b"d").unwrap(), (1, NotifyNeeded::No));
    assert_eq!(c.write(b"e").unwrap(), (1, NotifyNeeded::No));
    // Same on the right ring: the client asked at attach.
    assert_eq!(s.write(b"x").unwrap(), (1, NotifyNeeded::Yes));
    assert_eq!(s.write(b"y").unwrap(), (1, NotifyNeeded::No));
    assert_eq!(c.read(&mut buf).unwrap(), (2, NotifyNeeded::No));
    assert_eq!(c.read(&mut buf).unwrap(), (0, NotifyNeeded::No));
    assert_eq!(s.write(b"z").unwrap(), (1, NotifyNeeded::Yes));
    assert_eq!(s.write(b"z").unwrap(), (1, NotifyNeeded::No));

    let (_, ctx) = c.stats();
    assert_eq!(
        ctx,
        RingStats {
            bytes: 5,
            notifies_needed: 2,
            notifies_suppressed: 3,
            wakeups_requested: 0
        }
    );
    let (srx, _) = s.stats();
    assert_eq!(srx.wakeups_requested, 1);
}

#[test]
fn a_writer_on_a_full_ring_gets_exactly_one_notify() {
    let rig = Rig::new(11, 10);
    let (mut s, mut c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(fill(&mut c, 0), 2048);
    // The failed write asked the server to tell it of reads.
    assert_eq!(
        ctrl.notify(Side::Server).load(Ordering::Relaxed) & VCHAN_NOTIFY_READ,
        VCHAN_NOTIFY_READ
    );
    assert_eq!(s.read(&mut buf).unwrap(), (16, NotifyNeeded::Yes));
    assert_eq!(s.read(&mut buf).unwrap(), (16, NotifyNeeded::No));
    assert_eq!(c.write(chunk(2048, 40)).unwrap(), (32, NotifyNeeded::No));
    assert_eq!(s.read(&mut buf).unwrap(), (16, NotifyNeeded::No));
}

#[test]
fn no_notify_when_nobody_asked() {
    let rig = Rig::new(12, 10);
    let (mut s, mut c) = rig.pair();
    let mut buf = [0u8; 100];
    // Use up the requests each side made when it started.
    assert!(c.write(b"0").unwrap().1.is_needed());
    assert!(s.write(b"0").unwrap().1.is_needed());
    assert_eq!(s.read(&mut buf).unwrap().0, 1);
    assert_eq!(c.read(&mut buf).unwrap().0, 1);
    let mut pos = 0u64;
    for i in 0..1000usize {
        let len = 1 + i % 100;
        let steps = [
            c.write(chunk(pos, len)).unwrap(),
            s.read(&mut buf[..len]).unwrap(),
            s.write(chunk(pos, len)).unwrap(),
            c.read(&mut buf[..len]).unwrap(),
        ];
        for (n, notify) in steps {
            assert_eq!((n, notify), (len, NotifyNeeded::No), "round {i}");
        }
        pos += len as u64;
    }
    let ((crx, ctx), (srx, stx)) = (c.stats(), s.stats());
    for st in [crx, ctx, srx, stx] {
        assert_eq!(st.notifies_needed + st.notifies_suppressed, 1001);
        assert_eq!(st.wakeups_requested, 0);
    }
}

/// One side's event channel: a counter of events received.
#[derive(Default)]
struct Events {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Events {
    fn seen(&self) -> u64 {
        *self.count.lock().unwrap()
    }
    fn send(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
    /// Waits for an event after `seen`; a lost wakeup fails the test.
    fn wait(&self, seen: u64, who: &str) {
        let g = self.count.lock().unwrap();
        let (g, t) = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(20), |c| *c == seen)
            .unwrap();
        assert!(!t.timed_out(), "{who}: lost wakeup (no event in 20 s)");
        drop(g);
    }
}

#[test]
fn threads_waiting_only_on_events_lose_no_wakeup() {
    const TOTAL: u64 = 4 << 20;
    let rig = Rig::new(11, 12);
    let (s, c) = rig.pair();
    let (s_events, c_events) = (Arc::new(Events::default()), Arc::new(Events::default()));
    let (s_rx, s_tx) = s.into_split();
    let (c_rx, c_tx) = c.into_split();
    let writer = |mut tx: Producer, mine: Arc<Events>, peer: Arc<Events>, seed| {
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut pos = 0;
            while pos < TOTAL {
                let seen = mine.seen();
                let len = rng.upto(3000).min((TOTAL - pos) as usize);
                let (n, notify) = tx.write(chunk(pos, len)).unwrap();
                if notify.is_needed() {
                    peer.send();
                }
                if n == 0 {
                    mine.wait(seen, "writer");
                }
                pos += n as u64;
            }
        })
    };
    let reader = |mut rx: Consumer, mine: Arc<Events>, peer: Arc<Events>, seed| {
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut buf = vec![0u8; 3000];
            let mut pos = 0;
            while pos < TOTAL {
                let seen = mine.seen();
                let len = rng.upto(3000);
                let (n, notify) = rx.read(&mut buf[..len]).unwrap();
                assert!(buf[..n] == *chunk(pos, n), "bytes at {pos}");
                if notify.is_needed() {
                    peer.send();
                }
                if n == 0 {
                    mine.wait(seen, "reader");
                }
                pos += n as u64;
            }
            rx.stats()
        })
    };
    let threads = [
        writer(c_tx, c_events.clone(), s_events.clone(), 11),
        writer(s_tx, s_events.clone(), c_events.clone(), 12),
    ];
    let readers = [
        reader(s_rx, s_events.clone(), c_events.clone(), 13),
        reader(c_rx, c_events.clone(), s_events.clone(), 14),
    ];
    for t in threads {
        t.join().unwrap();
    }
    for t in readers {
        assert_eq!(t.join().unwrap().bytes, TOTAL);
    }
}

// ----------------------------------------------------------- hostile peer

#[test]
fn a_corrupt_index_is_an_error_on_every_ring_and_direction() {
    for ring in [RingId::Left, RingId::Right] {
        for ahead in [true, false] {
            for detector in [Side::Server, Side::Client] {
                corrupt_case(ring, ahead, detector);
            }
        }
    }
}

/// The peer of `detector` scribbles the one index of `ring` it owns, so
/// that `prod - cons` is `size + 1` (`ahead`) or wraps below zero.
fn corrupt_case(ring: RingId, ahead: bool, detector: Side) {
    let what = format!("{ring} ring, ahead {ahead}, seen by the {detector}");
    let (lo, ro) = if ahead { (10, 11) } else { (13, 12) };
    let rig = Rig::new(lo, ro);
    let (mut s, mut c) = rig.pair();
    // Some honest traffic first, leaving 10 bytes waiting on each ring.
    let mut rng = Rng(9);
    pump(&mut c, &mut s, 0, 5000, 700, &mut rng);
    pump(&mut s, &mut c, 0, 5000, 700, &mut rng);
    assert_eq!(c.write(chunk(5000, 10)).unwrap().0, 10);
    assert_eq!(s.write(chunk(5000, 10)).unwrap().0, 10);

    let size = 1u32 << if ring == RingId::Left { lo } else { ro };
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    let cons = ctrl.cons(ring).load(Ordering::Relaxed);
    let prod = ctrl.prod(ring).load(Ordering::Relaxed);
    let detector_is_producer = ring.producer() == detector;
    let (cons, prod) = if detector_is_producer {
        // The reader scribbles cons.
        let bad = if ahead {
            prod.wrapping_sub(size + 1)
        } else {
            prod.wrapping_add(1)
        };
        ctrl.cons(ring).store(bad, Ordering::Relaxed);
        (bad, prod)
    } else {
        // The writer scribbles prod.
        let bad = if ahead {
            cons.wrapping_add(size + 1)
        } else {
            cons.wrapping_sub(1)
        };
        ctrl.prod(ring).store(bad, Ordering::Relaxed);
        (cons, bad)
    };
    let want = StreamError::CorruptIndex {
        ring,
        cons,
        prod,
        size,
    };
    let (end, peer) = match detector {
        Side::Server => (&mut s, &mut c),
        Side::Client => (&mut c, &mut s),
    };
    let mut buf = [0xaau8; 64];
    let got = if detector_is_producer {
        end.write(b"more").map(|_| ())
    } else {
        end.read(&mut buf).map(|_| ())
    };
    assert_eq!(got, Err(want.clone()), "{what}");
    assert!(buf.iter().all(|&b| b == 0xaa), "{what}: data read");
    // Closed, abortively: our live byte is 0 but our marker stays 1, so the
    // peer sees a death, not a complete stream.
    assert_eq!(
        ctrl.live(detector).load(Ordering::Relaxed),
        0,
        "{what}: still live"
    );
    assert_eq!(peer.peer_state(), Ok(PeerState::Died), "{what}");
    // Every later call, on both halves, returns the same error.
    assert_eq!(end.read(&mut buf).unwrap_err(), want, "{what}");
    assert_eq!(end.write(b"x").unwrap_err(), want, "{what}");
    assert_eq!(end.readable().unwrap_err(), want, "{what}");
    assert_eq!(end.writable().unwrap_err(), want, "{what}");
    assert_eq!(end.peer_state().unwrap_err(), want, "{what}");
    assert_eq!(end.at_eof().unwrap_err(), want, "{what}");
    assert_eq!(end.close(), NotifyNeeded::No, "{what}");
    assert!(buf.iter().all(|&b| b == 0xaa), "{what}: data read later");
}

#[test]
fn a_corrupt_index_is_found_by_the_byte_counts_too() {
    let rig = Rig::new(10, 11);
    let (s, c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.prod(RingId::Left).store(1025, Ordering::Relaxed);
    let err = s.readable().unwrap_err();
    assert_eq!(
        err.to_string(),
        "vchan left (client to server) ring: corrupt indexes, cons 0 and prod 1025 are more than the ring's 1024 bytes apart"
    );
    // The client's own prod was the one scribbled: it sees that first.
    assert!(matches!(
        c.writable(),
        Err(StreamError::IndexChanged { .. })
    ));
    let rig = Rig::new(10, 11);
    let (_s, c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.cons(RingId::Left).store(1, Ordering::Relaxed);
    assert_eq!(
        c.writable(),
        Err(StreamError::CorruptIndex {
            ring: RingId::Left,
            cons: 1,
            prod: 0,
            size: 1024
        })
    );
    // The exact limit, a full ring, is not corrupt.
    let rig = Rig::new(10, 11);
    let (s, _c) = rig.pair();
    let raw = rig.raw();
    ControlPage::new(&raw)
        .unwrap()
        .prod(RingId::Left)
        .store(1024, Ordering::Relaxed);
    assert_eq!(s.readable(), Ok(1024));
}

#[test]
fn an_index_changed_behind_our_back_is_an_error() {
    let rig = Rig::new(12, 11);
    let (s, mut c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    assert_eq!(c.write(b"hello").unwrap().0, 5);
    ctrl.prod(RingId::Left).store(3, Ordering::Relaxed);
    assert_eq!(
        c.write(b"x").unwrap_err(),
        StreamError::IndexChanged {
            ring: RingId::Left,
            field: "prod",
            expected: 5,
            found: 3
        }
    );
    assert_eq!(s.peer_state(), Ok(PeerState::Died));

    let rig = Rig::new(12, 11);
    let (mut s, _c) = rig.pair();
    let raw = rig.raw();
    ControlPage::new(&raw)
        .unwrap()
        .cons(RingId::Left)
        .store(9, Ordering::Relaxed);
    let err = s.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vchan left (client to server) ring: our cons index changed under us, from 0 to 9"
    );
}

#[test]
fn a_client_refuses_corrupt_indexes_at_attach() {
    let rig = Rig::new(10, 11);
    let _s = rig.server();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.prod(RingId::Right).store(4000, Ordering::Relaxed);
    let control = rig.map(0, CONTROL_PAGE_SIZE, Protection::ReadWrite);
    let err =
        Vchan::client_attach(control, RingSetup::in_page(10), RingSetup::in_page(11)).unwrap_err();
    assert_eq!(
        err,
        StreamError::CorruptIndex {
            ring: RingId::Right,
            cons: 0,
            prod: 4000,
            size: 2048
        }
    );
    // It never said it was there.
    assert_eq!(ctrl.live(Side::Client).load(Ordering::Relaxed), 2);
}

#[test]
fn a_client_picks_up_bytes_the_server_wrote_before_it_came() {
    let rig = Rig::new(10, 11);
    let mut s = rig.server();
    assert_eq!(s.write(b"early").unwrap(), (5, NotifyNeeded::No));
    let mut c = rig.client();
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap().0, 5);
    assert_eq!(&buf[..5], b"early");
}

// ------------------------------------------------------------ live bytes

#[test]
fn close_and_live_bytes() {
    let rig = Rig::new(10, 11);
    let mut s = rig.server();
    assert_eq!(s.peer_state(), Ok(PeerState::NotYetConnected));
    assert_eq!(s.at_eof(), Ok(false));
    let mut c = rig.client();
    assert_eq!(s.peer_state(), Ok(PeerState::Connected));
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();

    assert_eq!(c.write(b"bye").unwrap().0, 3);
    assert_eq!(s.write(b"late").unwrap().0, 4);
    assert_eq!(c.close(), NotifyNeeded::Yes);
    assert_eq!(c.close(), NotifyNeeded::No);
    assert_eq!(ctrl.live(Side::Client).load(Ordering::Relaxed), 0);
    assert_eq!(
        c.write(b"x"),
        Err(StreamError::Closed { ring: RingId::Left })
    );
    // The closing end may still read what was already sent to it.
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap().0, 4);
    // The server sees the close, but only reports the end after the data.
    assert_eq!(s.peer_state(), Ok(PeerState::Closed));
    assert_eq!(s.at_eof(), Ok(false));
    assert_eq!(s.read(&mut buf).unwrap().0, 3);
    assert_eq!(&buf[..3], b"bye");
    assert_eq!(s.at_eof(), Ok(true));
    // The server closes too.
    assert_eq!(ctrl.live(Side::Server).load(Ordering::Relaxed), 1);
    assert_eq!(s.close(), NotifyNeeded::Yes);
    assert_eq!(ctrl.live(Side::Server).load(Ordering::Relaxed), 0);
    assert_eq!(c.peer_state(), Ok(PeerState::Closed));
    assert_eq!(c.at_eof(), Ok(true));
}

#[test]
fn a_live_byte_libxenvchan_never_writes_is_an_error() {
    let rig = Rig::new(10, 11);
    let (mut s, mut c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.live(Side::Server).store(7, Ordering::Relaxed);
    assert_eq!(c.peer_state(), Err(StreamError::BadLive { value: 7 }));
    assert_eq!(
        c.read(&mut [0u8; 4]),
        Err(StreamError::BadLive { value: 7 })
    );
    assert_eq!(c.write(b"x"), Err(StreamError::BadLive { value: 7 }));
    assert_eq!(ctrl.live(Side::Client).load(Ordering::Relaxed), 0);
    // The client gave up on a fault: not a clean close.
    assert_eq!(s.peer_state(), Ok(PeerState::Died));
    assert_eq!(
        s.at_eof(),
        Err(StreamError::PeerDied { ring: RingId::Left })
    );
    assert!(s.write(b"y").is_ok());
}

// ------------------------------------------------- the clean-close marker

/// The marker spot of a rig's layout.
fn spot(rig: &Rig) -> MarkerSpot {
    let raw = rig.raw();
    let layout = ControlPage::new(&raw).unwrap().read_layout().unwrap();
    MarkerSpot::for_layout(&layout).unwrap()
}

#[test]
fn an_orderly_close_sets_the_marker_then_the_live_byte_and_is_eof() {
    for (lo, ro) in [(10, 11), (12, 10), (20, 20)] {
        let rig = Rig::new(lo, ro);
        let (mut s, mut c) = rig.pair();
        let raw = rig.raw();
        let ctrl = ControlPage::new(&raw).unwrap();
        let at = spot(&rig);
        assert_eq!(ctrl.marker(at, Side::Server).load(Ordering::Relaxed), 1);
        assert_eq!(ctrl.marker(at, Side::Client).load(Ordering::Relaxed), 1);
        assert_eq!(s.write(b"done").unwrap().0, 4);
        assert_eq!(s.close(), NotifyNeeded::Yes);
        assert_eq!(ctrl.marker(at, Side::Server).load(Ordering::Relaxed), 2);
        assert_eq!(ctrl.live(Side::Server).load(Ordering::Relaxed), 0);
        assert_eq!(c.peer_state(), Ok(PeerState::Closed));
        assert_eq!(c.at_eof(), Ok(false), "data first");
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).unwrap().0, 4);
        assert_eq!(c.at_eof(), Ok(true), "orders {lo}/{ro}");
    }
}

#[test]
fn a_death_is_an_error_after_the_data() {
    let rig = Rig::new(13, 10);
    let (mut s, mut c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    assert_eq!(c.write(b"partial").unwrap().0, 7);
    // The client dies: its unmap notification clears its live byte; its
    // marker stays 1.
    ctrl.live(Side::Client).store(0, Ordering::Release);
    assert_eq!(s.peer_state(), Ok(PeerState::Died));
    assert_eq!(s.at_eof(), Ok(false), "data first");
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap().0, 7);
    let died = StreamError::PeerDied { ring: RingId::Left };
    assert_eq!(s.at_eof(), Err(died.clone()));
    assert_eq!(s.at_eof(), Err(died.clone()), "every time");
    assert_eq!(
        died.to_string(),
        "vchan left (client to server) ring: the peer went away without closing the channel (it died or aborted)"
    );
    // Not a protocol fault: the server stays open and may still write.
    assert!(s.write(b"x").is_ok());
}

#[test]
fn a_death_after_the_clean_close_marker_is_still_eof() {
    // The peer stored its 2 and died before its 0: the unmap notification
    // writes the 0, and everything it wrote before the 2 is there.
    let rig = Rig::new(10, 11);
    let (s, c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.marker(spot(&rig), Side::Client)
        .store(MARKER_CLOSED, Ordering::Release);
    assert_eq!(s.peer_state(), Ok(PeerState::Connected));
    ctrl.live(Side::Client).store(0, Ordering::Release);
    assert_eq!(s.at_eof(), Ok(true));
    drop(c);
}

#[test]
fn a_peer_that_showed_the_marker_and_then_cleared_it_died() {
    let rig = Rig::new(10, 11);
    let (s, _c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    assert_eq!(s.peer_state(), Ok(PeerState::Connected));
    ctrl.marker(spot(&rig), Side::Client)
        .store(0, Ordering::Release);
    ctrl.live(Side::Client).store(0, Ordering::Release);
    assert_eq!(s.peer_state(), Ok(PeerState::Died));
}

/// A libxenvchan client by hand: maps the page, sets `srv_notify` and
/// `cli_live` and nothing else, writes `data` to the left ring (order 10 at
/// 1024), then closes (or dies: the same bytes).
#[test]
fn a_libxenvchan_peer_that_never_writes_the_marker_ends_in_eof() {
    let rig = Rig::new(10, 11);
    let mut s = rig.server();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.notify(Side::Server)
        .store(VCHAN_NOTIFY_WRITE, Ordering::Relaxed);
    ctrl.live(Side::Client).store(1, Ordering::Release);
    assert_eq!(s.peer_state(), Ok(PeerState::Connected));
    raw.write(1024, b"from C");
    ctrl.prod(RingId::Left).store(6, Ordering::Release);
    ctrl.live(Side::Client).store(0, Ordering::Release);
    assert_eq!(s.peer_state(), Ok(PeerState::Closed));
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap().0, 6);
    assert_eq!(&buf[..6], b"from C");
    assert_eq!(s.at_eof(), Ok(true));
    // Our marker is the only byte of the page libxenvchan would not have
    // written: the server's, 1; the client's stays 0.
    let at = spot(&rig);
    assert_eq!(ctrl.marker(at, Side::Server).load(Ordering::Relaxed), 1);
    assert_eq!(ctrl.marker(at, Side::Client).load(Ordering::Relaxed), 0);
}

#[test]
fn a_libxenvchan_server_never_writes_the_marker_and_its_close_is_eof() {
    // A libxenvchan server's page: ours with the server's marker wiped.
    let rig = Rig::new(11, 10);
    let s = rig.server();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.marker(spot(&rig), Side::Server)
        .store(0, Ordering::Relaxed);
    let c = rig.client();
    assert_eq!(c.peer_state(), Ok(PeerState::Connected));
    // libxenvchan's close (or death): live 0, marker untouched.
    ctrl.live(Side::Server).store(0, Ordering::Release);
    assert_eq!(c.peer_state(), Ok(PeerState::Closed));
    assert_eq!(c.at_eof(), Ok(true));
    drop(s);
}

#[test]
fn a_marker_no_end_writes_is_an_error() {
    let rig = Rig::new(12, 12);
    let (mut s, mut c) = rig.pair();
    let raw = rig.raw();
    let ctrl = ControlPage::new(&raw).unwrap();
    ctrl.marker(spot(&rig), Side::Server)
        .store(9, Ordering::Release);
    let bad = StreamError::BadMarker { value: 9 };
    assert_eq!(c.peer_state(), Err(bad.clone()));
    assert_eq!(c.read(&mut [0u8; 4]), Err(bad.clone()));
    assert_eq!(c.write(b"x"), Err(bad));
    // The client closed abortively: the server sees a death.
    assert_eq!(s.peer_state(), Ok(PeerState::Died));
    assert!(s.read(&mut [0u8; 4]).is_ok());
}

#[test]
fn notify_needed_combines() {
    assert_eq!(NotifyNeeded::No | NotifyNeeded::No, NotifyNeeded::No);
    assert_eq!(NotifyNeeded::No | NotifyNeeded::Yes, NotifyNeeded::Yes);
    assert_eq!(NotifyNeeded::default(), NotifyNeeded::No);
    assert!(NotifyNeeded::from(true).is_needed());
}
