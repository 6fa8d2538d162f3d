//! Fuzzes the sans-IO vchan byte ring ([`Vchan`], its [`Consumer`] and
//! [`Producer`] halves) against a hostile peer that scribbles the control
//! page (indexes, live and notify bytes, markers, grants) and the ring
//! bytes between steps.
//!
//! The first input byte chooses the honest end (server or client), the
//! ring orders (left 10 or 12, right 11 or 12: in the control page or in
//! pages of their own) and, for a client, whether the page's indexes start
//! near `u32::MAX` (wrap-around). The rest is a script of steps of the
//! honest end (read, write, readable, writable, at_eof, peer_state, close)
//! and scribbles of the peer (a `u32` into one of the four index fields,
//! often near the honest end's own counters; a byte into a live or notify
//! byte; arbitrary bytes anywhere in the control page or a ring).
//!
//! Asserted after every step, against a model of the honest end:
//! * nothing panics, and nothing reads or writes outside the mapped memory
//!   (the sanitizer would say so);
//! * a read returns exactly `min(prod - cons, buf.len())` bytes when the
//!   peer's `prod` is within a ring's worth of our `cons`, and those bytes
//!   are the ring's bytes at `cons`: it never yields more than the peer
//!   could have written; a write puts exactly `min(free, len)` bytes at
//!   `prod` and publishes `prod`;
//! * a peer index more than the ring size away is
//!   [`StreamError::CorruptIndex`], our own index changed by someone else
//!   is [`StreamError::IndexChanged`], a bad live or marker byte is
//!   `BadLive`/`BadMarker`; the first such fault sticks: every later step
//!   on either half returns the same error, and our live byte was set to 0
//!   when it was found;
//! * a write after our own close is [`StreamError::Closed`].
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xenring::abi::vchan::CONTROL_PAGE_SIZE;
use xenring::shm::Region;
use xenring::stream::{ControlPage, MappedMemory, RingId, RingSetup, Side, StreamError, Vchan};

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

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A mapping the fuzzer keeps a handle to after the honest end took it.
#[derive(Debug)]
struct Mem(Arc<Region>);

impl MappedMemory for Mem {
    fn region(&self) -> &Region {
        &self.0
    }
}

/// Offsets of the index fields and live bytes in the control page.
const LEFT_CONS: usize = 0;
const LEFT_PROD: usize = 4;
const RIGHT_CONS: usize = 8;
const RIGHT_PROD: usize = 12;
const CLI_LIVE: usize = 20;
const SRV_LIVE: usize = 21;

fn get_u32(r: &Region, off: usize) -> u32 {
    let mut b = [0u8; 4];
    r.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// One ring as the model sees it: where its bytes are and its index fields.
struct RingModel {
    mem: Arc<Region>,
    base: usize,
    size: u32,
    cons_off: usize,
    prod_off: usize,
}

impl RingModel {
    fn new(ring: RingId, order: u16, control: &Arc<Region>, own: &Option<Arc<Region>>) -> Self {
        let (cons_off, prod_off) = match ring {
            RingId::Left => (LEFT_CONS, LEFT_PROD),
            RingId::Right => (RIGHT_CONS, RIGHT_PROD),
        };
        let (mem, base) = match own {
            Some(m) => (m.clone(), 0),
            None => (control.clone(), 1usize << order),
        };
        RingModel {
            mem,
            base,
            size: 1 << order,
            cons_off,
            prod_off,
        }
    }

    /// The ring's `n` bytes starting at stream index `at`.
    fn bytes(&self, at: u32, n: usize) -> Vec<u8> {
        let n = n.min(self.size as usize);
        let mut out = vec![0u8; n];
        let start = (at & (self.size - 1)) as usize;
        let first = n.min(self.size as usize - start);
        self.mem.read(self.base + start, &mut out[..first]);
        self.mem.read(self.base, &mut out[first..]);
        out
    }
}

fn is_fault(e: &StreamError) -> bool {
    matches!(
        e,
        StreamError::CorruptIndex { .. }
            | StreamError::IndexChanged { .. }
            | StreamError::BadLive { .. }
            | StreamError::BadMarker { .. }
    )
}

/// The honest end's model: its own indexes and the sticky fault.
struct Model {
    control: Arc<Region>,
    side: Side,
    rx: RingModel,
    tx: RingModel,
    cons: u32,
    prod: u32,
    fault: Option<StreamError>,
    closed: bool,
}

impl Model {
    /// Checks an error against the sticky fault; returns the value on Ok.
    fn check<T>(&mut self, r: Result<T, StreamError>) -> Option<T> {
        match (&self.fault, r) {
            (Some(f), Ok(_)) => panic!("faulted channel ({f}) accepted a step"),
            (Some(f), Err(e)) => {
                assert_eq!(&e, f, "a fault sticks");
                None
            }
            (None, Ok(v)) => Some(v),
            (None, Err(e)) if is_fault(&e) => {
                // (After our own close, the fault's close is a no-op and
                // the peer may have scribbled our live byte since.)
                let live = match self.side {
                    Side::Server => SRV_LIVE,
                    Side::Client => CLI_LIVE,
                };
                let mut b = [0u8; 1];
                self.control.read(live, &mut b);
                if !self.closed {
                    assert_eq!(b[0], 0, "a fault closes our live byte");
                }
                self.fault = Some(e);
                None
            }
            (None, Err(e)) => {
                assert!(
                    matches!(e, StreamError::PeerDied { .. } | StreamError::Closed { .. }),
                    "unexpected error {e:?}"
                );
                None
            }
        }
    }

    /// What the first fault of a step touching `ring` through our own
    /// index `own_off` (expected `own`) and the peer's `peer_off` would be.
    fn expect_fault(&self, ring: &RingModel, own_off: usize, own: u32, reading: bool) -> bool {
        if get_u32(&self.control, own_off) != own {
            return true;
        }
        let (cons, prod) = if reading {
            (own, get_u32(&self.control, ring.prod_off))
        } else {
            (get_u32(&self.control, ring.cons_off), own)
        };
        prod.wrapping_sub(cons) > ring.size
    }
}

fn scribble(m: &Model, op: u8, s: &mut Script<'_>) {
    let c = &m.control;
    match op % 4 {
        0 => {
            // An index field set near one of our counters or anywhere.
            let field = [LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD][usize::from(s.byte() % 4)];
            let sel = s.byte();
            let v = match sel % 4 {
                0 => s.u32(),
                1 => m.cons.wrapping_add_signed(i32::from(s.u16() as i16)),
                _ => m.prod.wrapping_add_signed(i32::from(s.u16() as i16)),
            };
            c.write(field, &v.to_le_bytes());
        }
        1 => {
            // A live or notify byte, or a marker (just after the grants).
            let off = 20 + usize::from(s.byte() % 4);
            let off = if op & 0x40 != 0 {
                24 + usize::from(s.byte() % 16)
            } else {
                off
            };
            c.write(off, &[s.byte() % 4]);
        }
        2 => {
            // Bytes into the ring we read (the peer's data).
            let at = s.u32();
            let len = usize::from(s.byte() % 32);
            for i in 0..len {
                let off = m.rx.base + (at.wrapping_add(i as u32) & (m.rx.size - 1)) as usize;
                m.rx.mem.write(off, &[s.byte()]);
            }
        }
        _ => {
            // Raw bytes anywhere in the control page.
            let off = usize::from(s.u16()) % CONTROL_PAGE_SIZE;
            let len = usize::from(s.byte() % 16).min(CONTROL_PAGE_SIZE - off);
            for i in 0..len {
                c.write(off + i, &[s.byte()]);
            }
        }
    }
}

fn run(data: &[u8]) {
    let mut s = Script(data);
    let mode = s.byte();
    let side = if mode & 1 == 0 {
        Side::Server
    } else {
        Side::Client
    };
    let left_order = if mode & 2 == 0 { 10 } else { 12 };
    let right_order = if mode & 4 == 0 { 11 } else { 12 };
    let control = Arc::new(Region::anonymous(CONTROL_PAGE_SIZE).expect("memory"));
    let own = |order: u16| {
        (order >= 12).then(|| Arc::new(Region::anonymous(1 << order).expect("memory")))
    };
    let left_mem = own(left_order);
    let right_mem = own(right_order);
    let setup = |order: u16, mem: &Option<Arc<Region>>, grant: u32| match mem {
        None => RingSetup::in_page(order),
        Some(m) => RingSetup::pages(order, vec![grant], Mem(m.clone())),
    };
    let server = Vchan::server_init(
        Mem(control.clone()),
        setup(left_order, &left_mem, 8),
        setup(right_order, &right_mem, 9),
    )
    .expect("server init");
    let (mut end, cons, prod) = match side {
        Side::Server => (server, 0, 0),
        Side::Client => {
            drop(server);
            let start = if mode & 8 != 0 { s.u32() } else { 0 };
            for off in [LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD] {
                control.write(off, &start.to_le_bytes());
            }
            let layout = ControlPage::new(&control)
                .expect("page")
                .read_layout()
                .expect("layout the server wrote");
            let setup = |l: xenring::stream::RingLayout, mem: &Option<Arc<Region>>| {
                RingSetup::new(
                    l,
                    mem.as_ref()
                        .map(|m| Box::new(Mem(m.clone())) as Box<dyn MappedMemory>),
                )
            };
            let client = Vchan::client_attach(
                Mem(control.clone()),
                setup(layout.left, &left_mem),
                setup(layout.right, &right_mem),
            )
            .expect("client attach over consistent indexes");
            (client, start, start)
        }
    };
    let left = RingModel::new(RingId::Left, left_order, &control, &left_mem);
    let right = RingModel::new(RingId::Right, right_order, &control, &right_mem);
    let (rx, tx) = match side {
        Side::Server => (left, right),
        Side::Client => (right, left),
    };
    let mut m = Model {
        control,
        side,
        rx,
        tx,
        cons,
        prod,
        fault: None,
        closed: false,
    };
    let mut buf = vec![0u8; 1 << 13];
    let mut out = Vec::new();
    while !s.is_empty() {
        let op = s.byte();
        match op % 12 {
            0 | 1 => {
                let len = usize::from(s.u16()) % buf.len();
                let peer_prod = get_u32(&m.control, m.rx.prod_off);
                let faults = len > 0 && m.expect_fault(&m.rx, m.rx.cons_off, m.cons, true);
                let was_faulted = m.fault.is_some();
                let expect = m.rx.bytes(m.cons, len);
                let r = end.read(&mut buf[..len]);
                if !was_faulted {
                    assert_eq!(
                        r.is_err(),
                        faults,
                        "read fails iff the indexes are bad: {r:?}"
                    );
                }
                if let Some((n, _)) = m.check(r) {
                    if len == 0 {
                        // An empty read checks and stores nothing.
                        assert_eq!(n, 0);
                        continue;
                    }
                    let ready = peer_prod.wrapping_sub(m.cons);
                    assert!(ready <= m.rx.size);
                    assert_eq!(n, (ready as usize).min(len), "read all that is ready");
                    assert_eq!(&buf[..n], &expect[..n], "read the ring's bytes");
                    m.cons = m.cons.wrapping_add(n as u32);
                    assert_eq!(get_u32(&m.control, m.rx.cons_off), m.cons);
                }
            }
            2 | 3 => {
                let len = usize::from(s.u16()) % buf.len();
                out.clear();
                out.extend((0..len).map(|i| (i as u8) ^ op));
                let peer_cons = get_u32(&m.control, m.tx.cons_off);
                let faults =
                    !m.closed && len > 0 && m.expect_fault(&m.tx, m.tx.prod_off, m.prod, false);
                let was_faulted = m.fault.is_some();
                let r = end.write(&out);
                if !was_faulted {
                    if m.closed {
                        assert!(matches!(r, Err(StreamError::Closed { .. })), "{r:?}");
                    } else {
                        assert_eq!(
                            r.is_err(),
                            faults,
                            "write fails iff the indexes are bad: {r:?}"
                        );
                    }
                }
                if let Some((n, _)) = m.check(r) {
                    if len == 0 {
                        assert_eq!(n, 0);
                        continue;
                    }
                    let used = m.prod.wrapping_sub(peer_cons);
                    assert!(used <= m.tx.size);
                    assert_eq!(
                        n,
                        ((m.tx.size - used) as usize).min(len),
                        "write all that fits"
                    );
                    assert_eq!(m.tx.bytes(m.prod, n), out[..n], "wrote the bytes at prod");
                    m.prod = m.prod.wrapping_add(n as u32);
                    assert_eq!(get_u32(&m.control, m.tx.prod_off), m.prod);
                }
            }
            4 => {
                if let Some(n) = m.check(end.readable()) {
                    assert!(n <= m.rx.size as usize);
                }
            }
            5 => {
                if let Some(n) = m.check(end.writable()) {
                    assert!(n <= m.tx.size as usize);
                }
            }
            6 => {
                let _ = m.check(end.at_eof());
            }
            7 => {
                let _ = m.check(end.peer_state());
            }
            8 => {
                if op & 0x80 != 0 {
                    let _ = end.close();
                    m.closed = true;
                }
            }
            _ => scribble(&m, op >> 4, &mut s),
        }
    }
    // The halves split keep working on the same state.
    let (mut rx, mut tx) = end.into_split();
    let mut one = [0u8; 1];
    let _ = m.check(rx.read(&mut one).map(|_| ()));
    let _ = m.check(tx.write(&[1]).map(|_| ()));
}

fuzz_target!(|data: &[u8]| run(data));
