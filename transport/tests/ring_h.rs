//! Differential test of `xenring::ring` against the C macros of Xen's
//! `public/io/ring.h` (Debian's libxen-dev ships it as
//! /usr/include/xen/io/ring.h).
//!
//! `tests/c/ring_harness.c` drives the C macros on a ring in a shared file,
//! one command per line. The same script of commands runs on four rings,
//! each in its own pages of one file:
//!
//! | ring | front end | back end |
//! |---|---|---|
//! | reference | C macros | C macros (one harness process) |
//! | rust | `FrontRing` | `BackRing` |
//! | rust front, c back | `FrontRing` | C harness process |
//! | c front, rust back | C harness process | `BackRing` |
//!
//! After every command the answers (notify decisions, final-check results,
//! the bytes of every entry taken, free and unconsumed counts, private
//! indexes) must be the same for all four, the answers to puts and takes
//! must match a simple queue model, and the four rings' pages must be
//! byte-identical. Scripts start from index 0 and from indexes just below
//! u32::MAX (so they wrap), on 1, 4 and 16 pages, with blkif (112-byte
//! slots) and netif tx (12-byte slots) entries.
//!
//! The C side is a separate program (the crate denies `unsafe`, so no FFI),
//! compiled here with `cc`. A missing compiler or header fails the test
//! with a message saying what to install; it is never skipped.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use xenring::abi::blkif::{BlkifRequest, BlkifResponse, BlkifSegment};
use xenring::abi::netif::{NetifTxRequest, NetifTxResponse};
use xenring::ring::{BackRing, FrontRing, RingEntry, RingError};
use xenring::shm::{Protection, Region, PAGE_SIZE};

const RING_H: &str = "/usr/include/xen/io/ring.h";
const INSTALL: &str = "install a C compiler and Xen's headers: `./test.sh` installs them (`apt-get install -y gcc libxen-dev`)";

/// The two entry types, built from an id the same way as the C harness.
trait Entries {
    type Req: RingEntry;
    type Rsp: RingEntry;
    /// `-D` flags selecting the type in the harness, and a name.
    const DEFINES: &'static [&'static str];
    const NAME: &'static str;
    fn req(id: u64) -> Self::Req;
    fn rsp(id: u64) -> Self::Rsp;
}

struct Blkif;
impl Entries for Blkif {
    type Req = BlkifRequest<[u8; 112]>;
    type Rsp = BlkifResponse<[u8; 16]>;
    const DEFINES: &'static [&'static str] = &[];
    const NAME: &'static str = "blkif";
    fn req(id: u64) -> Self::Req {
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
    fn rsp(id: u64) -> Self::Rsp {
        let mut r = BlkifResponse::new_unchecked([0u8; 16]);
        r.set_id(id);
        r.set_operation((id % 2) as u8);
        r.set_status(if id % 3 == 0 { -1 } else { 0 });
        r
    }
}

struct NetifTx;
impl Entries for NetifTx {
    type Req = NetifTxRequest<[u8; 12]>;
    type Rsp = NetifTxResponse<[u8; 4]>;
    const DEFINES: &'static [&'static str] = &["-DRING_NETIF_TX"];
    const NAME: &'static str = "netif_tx";
    fn req(id: u64) -> Self::Req {
        let mut r = NetifTxRequest::new_unchecked([0u8; 12]);
        r.set_gref(id as u32);
        r.set_offset((id % 4096) as u16);
        r.set_flags((id & 0xf) as u16);
        r.set_id(id as u16);
        r.set_size(id.wrapping_mul(3) as u16);
        r
    }
    fn rsp(id: u64) -> Self::Rsp {
        let mut r = NetifTxResponse::new_unchecked([0u8; 4]);
        r.set_id(id as u16);
        r.set_status(if id % 3 == 0 { -1 } else { 0 });
        r
    }
}

fn hex_of<T: RingEntry>(tag: &str, entry: &T) -> String {
    let mut b = vec![0u8; T::SIZE];
    entry.encode(&mut b);
    let mut s = format!("{tag} ");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Compiles the harness for `E` once per test process.
fn harness<E: Entries>() -> &'static Path {
    static BINS: OnceLock<std::sync::Mutex<Vec<(&'static str, &'static Path)>>> = OnceLock::new();
    let bins = BINS.get_or_init(Default::default);
    // A panic while holding it (ring.h missing) must not turn every later
    // test into a "poisoned mutex" failure: each says what is missing.
    let mut bins = bins.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = bins.iter().find(|(n, _)| *n == E::NAME) {
        return p;
    }
    assert!(
        Path::new(RING_H).exists(),
        "{RING_H} is missing: the differential test against Xen's ring.h needs it; {INSTALL}"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/ring_harness.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join(format!("ring_harness_{}", E::NAME));
    // Build under a private name, then rename: concurrent test runs never
    // execute a half-written binary.
    let tmp = dir.join(format!(
        "ring_harness_{}.{}.tmp",
        E::NAME,
        std::process::id()
    ));
    let built = Command::new("cc")
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .args(E::DEFINES)
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output();
    match built {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("no C compiler (`cc`) for the ring.h differential test: {INSTALL}")
        }
        Err(e) => panic!("running cc: {e}; {INSTALL}"),
        Ok(o) if !o.status.success() => panic!(
            "compiling {} failed ({}); is libxen-dev installed? {INSTALL}\n{}",
            src.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
    std::fs::rename(&tmp, &out).unwrap();
    let out: &'static Path = Box::leak(out.into_boxed_path());
    bins.push((E::NAME, out));
    out
}

/// One C harness process on pages `first..first + pages` of `file`.
struct CRing {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl CRing {
    fn spawn(bin: &Path, file: &Path, first: usize, pages: usize) -> CRing {
        let mut child = Command::new(bin)
            .arg(file)
            .arg(first.to_string())
            .arg(pages.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        CRing {
            child,
            stdin,
            stdout,
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        let n = self.stdout.read_line(&mut answer).unwrap();
        assert!(n > 0, "the C harness exited at command {line:?}");
        answer.trim_end().to_string()
    }
}

impl Drop for CRing {
    fn drop(&mut self) {
        // End of input ends the harness.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn is_front_cmd(word: &str) -> bool {
    matches!(
        word,
        "init-front"
            | "put-req"
            | "push-req"
            | "take-rsp"
            | "final-rsp"
            | "free-req"
            | "unconsumed-rsp"
            | "front-indexes"
    )
}

/// A ring whose front and back ends are each C or Rust.
struct Pair<E: Entries> {
    name: &'static str,
    c: Option<CRing>,
    c_front: bool,
    c_back: bool,
    file: File,
    first: usize,
    pages: usize,
    front: Option<FrontRing<E::Req, E::Rsp>>,
    back: Option<BackRing<E::Req, E::Rsp>>,
}

impl<E: Entries> Pair<E> {
    fn new(
        name: &'static str,
        c_front: bool,
        c_back: bool,
        path: &Path,
        first: usize,
        pages: usize,
    ) -> Self {
        let c = (c_front || c_back).then(|| CRing::spawn(harness::<E>(), path, first, pages));
        let file = File::options().read(true).write(true).open(path).unwrap();
        Pair {
            name,
            c,
            c_front,
            c_back,
            file,
            first,
            pages,
            front: None,
            back: None,
        }
    }

    fn map(&self) -> Region {
        Region::map_fd(
            std::os::fd::AsFd::as_fd(&self.file),
            (self.first * PAGE_SIZE) as u64,
            self.pages * PAGE_SIZE,
            Protection::ReadWrite,
        )
        .unwrap()
    }

    fn run(&mut self, line: &str) -> String {
        let mut words = line.split_whitespace();
        let word = words.next().unwrap();
        let arg: u64 = words.next().map(|a| a.parse().unwrap()).unwrap_or(0);
        let on_c = if is_front_cmd(word) {
            self.c_front
        } else {
            self.c_back
        };
        if on_c {
            return self.c.as_mut().unwrap().cmd(line);
        }
        let notify = |n: xenring::ring::NotifyNeeded| format!("notify {}", n.needed() as u8);
        let work = |w: bool| format!("work {}", w as u8);
        match word {
            "init-front" => {
                let ring = FrontRing::init_at(self.map(), arg as u32).unwrap();
                let size = ring.size();
                self.front = Some(ring);
                format!("size {size}")
            }
            "attach-back" => {
                let ring = BackRing::attach(self.map(), arg as u32).unwrap();
                let size = ring.size();
                self.back = Some(ring);
                format!("size {size}")
            }
            "put-req" => match self.front().put_request(&E::req(arg)) {
                Ok(()) => "ok".into(),
                Err(RingError::Full { .. }) => "full".into(),
                Err(e) => panic!("{}: {line}: {e}", self.name),
            },
            "push-req" => notify(self.front().push_requests().unwrap()),
            "take-rsp" => match self.front().take_response().unwrap() {
                Some(r) => hex_of("rsp", &r),
                None => "none".into(),
            },
            "final-rsp" => work(self.front().final_check_for_responses().unwrap()),
            "free-req" => format!("free {}", self.front().free_requests()),
            "unconsumed-rsp" => format!(
                "unconsumed {}",
                self.front().unconsumed_responses().unwrap()
            ),
            "front-indexes" => {
                let f = self.front();
                format!("front {} {}", f.req_prod_pvt(), f.rsp_cons())
            }
            "take-req" => match self.back().take_request().unwrap() {
                Some(r) => hex_of("req", &r),
                None => "none".into(),
            },
            "put-rsp" => match self.back().put_response(&E::rsp(arg)) {
                Ok(()) => "ok".into(),
                Err(RingError::NothingToAnswer { .. }) => "nothing".into(),
                Err(e) => panic!("{}: {line}: {e}", self.name),
            },
            "push-rsp" => notify(self.back().push_responses().unwrap()),
            "final-req" => work(self.back().final_check_for_requests().unwrap()),
            "unconsumed-req" => {
                format!("unconsumed {}", self.back().unconsumed_requests().unwrap())
            }
            "back-indexes" => {
                let b = self.back();
                format!("back {} {}", b.rsp_prod_pvt(), b.req_cons())
            }
            _ => panic!("unknown command {line:?}"),
        }
    }

    fn front(&mut self) -> &mut FrontRing<E::Req, E::Rsp> {
        self.front.as_mut().expect("front not initialised")
    }

    fn back(&mut self) -> &mut BackRing<E::Req, E::Rsp> {
        self.back.as_mut().expect("back not attached")
    }
}

/// A queue model of the ring that generates a script and predicts the
/// answers to puts and takes.
struct Model<E: Entries> {
    size: u32,
    next_id: u64,
    unpushed_req: VecDeque<u64>,
    pushed_req: VecDeque<u64>,
    /// Requests taken by the back and not yet answered, oldest first.
    owed: VecDeque<u64>,
    unpushed_rsp: VecDeque<u64>,
    pushed_rsp: VecDeque<u64>,
    /// Requests put and whose responses the front has not taken.
    outstanding: u32,
    rng: u64,
    _e: std::marker::PhantomData<E>,
}

impl<E: Entries> Model<E> {
    fn new(size: u32, seed: u64) -> Self {
        Model {
            size,
            next_id: 1,
            unpushed_req: VecDeque::new(),
            pushed_req: VecDeque::new(),
            owed: VecDeque::new(),
            unpushed_rsp: VecDeque::new(),
            pushed_rsp: VecDeque::new(),
            outstanding: 0,
            rng: seed | 1,
            _e: std::marker::PhantomData,
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    /// Applies `cmd` to the model; returns the answer it predicts, for the
    /// commands whose answer it knows.
    fn apply(&mut self, cmd: &str) -> Option<String> {
        let mut words = cmd.split_whitespace();
        let word = words.next().unwrap();
        let arg: u64 = words.next().map(|a| a.parse().unwrap()).unwrap_or(0);
        match word {
            "put-req" if self.outstanding == self.size => Some("full".into()),
            "put-req" => {
                self.outstanding += 1;
                self.unpushed_req.push_back(arg);
                Some("ok".into())
            }
            "push-req" => {
                self.pushed_req.extend(self.unpushed_req.drain(..));
                None
            }
            "take-req" => Some(match self.pushed_req.pop_front() {
                Some(id) => {
                    self.owed.push_back(id);
                    hex_of("req", &E::req(id))
                }
                None => "none".into(),
            }),
            "put-rsp" => Some(match self.owed.pop_front() {
                Some(_) => {
                    self.unpushed_rsp.push_back(arg);
                    "ok".into()
                }
                None => "nothing".into(),
            }),
            "push-rsp" => {
                self.pushed_rsp.extend(self.unpushed_rsp.drain(..));
                None
            }
            "take-rsp" => Some(match self.pushed_rsp.pop_front() {
                Some(id) => {
                    self.outstanding -= 1;
                    hex_of("rsp", &E::rsp(id))
                }
                None => "none".into(),
            }),
            "free-req" => Some(format!("free {}", self.size - self.outstanding)),
            _ => None,
        }
    }

    /// The next random command(s): bursts of puts (sometimes past full),
    /// takes, pushes, final checks and queries.
    fn next_cmds(&mut self) -> Vec<String> {
        // Mostly short bursts; now and then one longer than the ring (to
        // fill it, or drain it).
        let burst = |m: &mut Self| match m.rand(12) {
            0 => m.size as u64 + 2,
            _ => 1 + m.rand(8),
        };
        match self.rand(100) {
            0..=19 => {
                let n = burst(self);
                (0..n)
                    .map(|_| {
                        self.next_id += 1;
                        format!("put-req {}", self.next_id)
                    })
                    .collect()
            }
            20..=29 => vec!["push-req".into()],
            30..=44 => {
                let n = burst(self);
                vec!["take-req".to_string(); n as usize]
            }
            45..=59 => {
                let n = burst(self);
                // Answer with the id of the request answered (or a stray
                // id when nothing is owed: refused either way).
                (0..n as usize)
                    .map(|i| {
                        let id = self.owed.get(i).copied().unwrap_or(7);
                        format!("put-rsp {id}")
                    })
                    .collect()
            }
            60..=69 => vec!["push-rsp".into()],
            70..=84 => {
                let n = burst(self);
                vec!["take-rsp".to_string(); n as usize]
            }
            85..=89 => vec!["final-req".into()],
            90..=94 => vec!["final-rsp".into()],
            95 => vec!["free-req".into()],
            96 => vec!["unconsumed-req".into()],
            97 => vec!["unconsumed-rsp".into()],
            98 => vec!["front-indexes".into()],
            _ => vec!["back-indexes".into()],
        }
    }
}

/// Runs a fixed opening and `steps` random commands on the four rings
/// (`pages` pages each, indexes starting at `start`), checking answers and
/// pages after every command. Returns how often each answer kind came up.
fn differential<E: Entries>(pages: usize, start: u32, steps: usize, seed: u64) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rings");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len((4 * pages * PAGE_SIZE) as u64).unwrap();
    let mut pairs: Vec<Pair<E>> = vec![
        Pair::new("reference (C front, C back)", true, true, &path, 0, pages),
        Pair::new("rust front, rust back", false, false, &path, pages, pages),
        Pair::new("rust front, C back", false, true, &path, 2 * pages, pages),
        Pair::new("C front, rust back", true, false, &path, 3 * pages, pages),
    ];
    let all = Region::map_fd(
        std::os::fd::AsFd::as_fd(&file),
        0,
        4 * pages * PAGE_SIZE,
        Protection::ReadOnly,
    )
    .unwrap();

    let mut tally = Tally::default();
    let mut model: Option<Model<E>> = None;
    let mut script: VecDeque<String> = [
        format!("init-front {start}"),
        format!("attach-back {start}"),
        // The back asks to be notified, the front pushes a batch: one
        // notification; more pushes while the back is busy: none.
        "final-req".into(),
        "put-req 1".into(),
        "put-req 2".into(),
        "put-req 3".into(),
        "push-req".into(),
        "put-req 4".into(),
        "push-req".into(),
        "take-req".into(),
        "final-rsp".into(),
        "put-rsp 1".into(),
        "push-rsp".into(),
        "push-rsp".into(),
        "take-rsp".into(),
        "take-rsp".into(),
        "final-req".into(),
        "take-req".into(),
        "take-req".into(),
        "take-req".into(),
        "take-req".into(),
        "final-req".into(),
        "put-rsp 2".into(),
        "put-rsp 3".into(),
        "put-rsp 4".into(),
        "put-rsp 5".into(),
        "push-rsp".into(),
        "final-rsp".into(),
        "take-rsp".into(),
        "take-rsp".into(),
        "take-rsp".into(),
        "take-rsp".into(),
        "final-rsp".into(),
        "free-req".into(),
        "front-indexes".into(),
        "back-indexes".into(),
    ]
    .into();
    let mut step = 0;
    while step < steps {
        let cmd = match script.pop_front() {
            Some(c) => c,
            None => {
                let m = model.as_mut().unwrap();
                script.extend(m.next_cmds());
                continue;
            }
        };
        step += 1;
        let answers: Vec<String> = pairs.iter_mut().map(|p| p.run(&cmd)).collect();
        let reference = &answers[0];
        for (p, a) in pairs.iter().zip(&answers).skip(1) {
            assert_eq!(
                a, reference,
                "step {step} {cmd:?}: {} answered differently from {}",
                p.name, pairs[0].name
            );
        }
        if cmd.starts_with("init-front") {
            let size = reference.strip_prefix("size ").unwrap().parse().unwrap();
            model = Some(Model::new(size, seed));
        }
        if let Some(want) = model.as_mut().and_then(|m| m.apply(&cmd)) {
            assert_eq!(
                reference, &want,
                "step {step} {cmd:?}: not what the model says"
            );
        }
        tally.count(reference);
        // Byte-identical pages.
        let mut want = vec![0u8; pages * PAGE_SIZE];
        all.read(0, &mut want);
        let mut got = vec![0u8; pages * PAGE_SIZE];
        for (i, p) in pairs.iter().enumerate().skip(1) {
            all.read(i * pages * PAGE_SIZE, &mut got);
            if got != want {
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                panic!(
                    "step {step} {cmd:?}: pages of {} differ from {} at byte {at} \
                     ({:#04x} vs {:#04x})",
                    p.name, pairs[0].name, got[at], want[at]
                );
            }
        }
    }
    // Where the indexes ended up, per side.
    tally.front_indexes = pairs[0].run("front-indexes");
    tally.back_indexes = pairs[0].run("back-indexes");
    assert_eq!(pairs[1].run("front-indexes"), tally.front_indexes);
    assert_eq!(pairs[1].run("back-indexes"), tally.back_indexes);
    tally
}

#[derive(Debug, Default)]
struct Tally {
    notify: [u32; 2],
    work: [u32; 2],
    full: u32,
    nothing: u32,
    taken: u32,
    front_indexes: String,
    back_indexes: String,
}

impl Tally {
    fn count(&mut self, answer: &str) {
        match answer {
            "notify 0" => self.notify[0] += 1,
            "notify 1" => self.notify[1] += 1,
            "work 0" => self.work[0] += 1,
            "work 1" => self.work[1] += 1,
            "full" => self.full += 1,
            "nothing" => self.nothing += 1,
            a if a.starts_with("req ") || a.starts_with("rsp ") => self.taken += 1,
            _ => {}
        }
    }

    /// Every kind of answer came up, so the script exercised the notify
    /// rule both ways, the final checks both ways, and a full ring.
    fn assert_varied(&self) {
        assert!(self.notify[0] > 0 && self.notify[1] > 0, "{self:?}");
        assert!(self.work[0] > 0 && self.work[1] > 0, "{self:?}");
        assert!(
            self.full > 0 && self.nothing > 0 && self.taken > 100,
            "{self:?}"
        );
    }

    /// The front's private request producer.
    fn req_prod_pvt(&self) -> u32 {
        self.front_indexes
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[test]
fn blkif_one_page_from_zero() {
    let t = differential::<Blkif>(1, 0, 5000, 1);
    t.assert_varied();
}

#[test]
fn blkif_one_page_wraps_past_u32_max() {
    let start = 0xFFFF_FFF0;
    let t = differential::<Blkif>(1, start, 5000, 2);
    t.assert_varied();
    assert!(t.req_prod_pvt() < start, "indexes must wrap: {t:?}");
}

#[test]
fn blkif_four_pages_wraps_past_u32_max() {
    let start = u32::MAX - 200;
    let t = differential::<Blkif>(4, start, 6000, 3);
    t.assert_varied();
    assert!(t.req_prod_pvt() < start, "indexes must wrap: {t:?}");
}

#[test]
fn blkif_sixteen_pages() {
    let t = differential::<Blkif>(16, 0x7FFF_FF00, 6000, 4);
    t.assert_varied();
}

#[test]
fn netif_tx_one_page_wraps_past_u32_max() {
    let start = u32::MAX - 500;
    let t = differential::<NetifTx>(1, start, 8000, 5);
    t.assert_varied();
    assert!(t.req_prod_pvt() < start, "indexes must wrap: {t:?}");
}
