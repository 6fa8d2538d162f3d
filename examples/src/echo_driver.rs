//! An echo split driver with a request/response protocol of its own, from
//! the bytes on the ring to the program that uses it. Read it top to
//! bottom:
//!
//! 1. **The protocol** (in `echo_driver/protocol.rs`, [`protocol`]):
//!    [`EchoRequest`] and [`EchoResponse`], 64 bytes each, as
//!    [`RingEntry`](xenring::ring::RingEntry) +
//!    [`Tagged`](xenring::ring::Tagged) types, and [`answer`], what the
//!    backend computes.
//! 2. **The backend device** ([`EchoBackend`], dom0): publishes the ops it
//!    knows (`feature-ops`), maps the ring the frontend shares, answers
//!    until the daemon stops it.
//! 3. **The frontend device** ([`EchoFrontend`], the guest): reads
//!    `feature-ops`, shares a one-page ring, and hands the ring's client to
//!    the application ([`EchoSession`]).
//! 4. **The whole thing running** ([`run`]): a simulated host, dom0 with the
//!    backend daemon, domU 1 with the frontend daemon and an application
//!    that makes calls and checks every answer.
//!
//! ```text
//!   this process: dom0                           child process: domU 1
//!   --------------------------------             ---------------------------------
//!   SimHost (memory, grants, XenStore)
//!   toolstack: create_device(echo/1/0)
//!   backend daemon                               frontend daemon
//!     EchoBackend::connect                         EchoFrontend::connect
//!       map_ring, ready()  <==== 1 ring page + event channel ====>  share_ring(1), ready()
//!       answer() each request                      EchoSession --mpsc--> application:
//!                                                    call(UPPER "hello, xen") ...
//! ```
//!
//! Why two processes: a real guest is another program in another domain
//! (the XenStore socket a client connects to says which domain is
//! speaking; the guest reads its socket from `XENSTORED_PATH` at start-up). So dom0 (the
//! host, the toolstack and the backend) runs in this process and the guest
//! is this same program started again with a hidden first argument
//! ([`GUEST_ROLE`]); it joins domain 1 through the three environment
//! variables a guest program needs ([`run`] shows them). The host, the
//! toolstack and the waiting come from [`System`], the harness the demo
//! and the integration tests use.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use xenring::platform::Platform;
use xenring::ring::RingClient;
use xenring::sim::{HostConfig, SimDomain, ENV_DOMID, ENV_SOCKET};
use xenring::xenbus::{create_device, DeviceId, DeviceSpec};
use xenring::xenstore::{XsClient, ENV_XENSTORED_PATH};
use xenring_backend::{BackendConn, BackendDevice, DeviceError, DeviceInfo};
use xenring_frontend::{FrontendConn, FrontendDevice};

use crate::system::System;

// ---------------------------------------------------------------------------
// 1. The protocol (its own file)
// ---------------------------------------------------------------------------

pub mod protocol;
pub use protocol::{
    answer, EchoRequest, EchoResponse, Op, FEATURE_OPS, KIND, PAYLOAD, STATUS_BAD_LEN,
    STATUS_BAD_OP, STATUS_OK,
};

// ---------------------------------------------------------------------------
// 2. The backend device (dom0)
// ---------------------------------------------------------------------------

/// Counters of every connection of an [`EchoBackend`].
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Connections (handshakes completed).
    pub connections: AtomicU64,
    /// Requests answered, refusals included.
    pub requests: AtomicU64,
    /// Requests refused (bad op or length).
    pub refused: AtomicU64,
    /// Payload bytes received in requests that were answered.
    pub bytes_in: AtomicU64,
}

impl EchoStats {
    /// One line of `key=value` pairs.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections={} requests={} refused={} bytes_in={}",
            g(&self.connections),
            g(&self.requests),
            g(&self.refused),
            g(&self.bytes_in)
        )
    }

    fn count(&self, req: &EchoRequest, rsp: &EchoResponse) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if rsp.status == STATUS_OK {
            let n = req.payload().map_or(0, <[u8]>::len) as u64;
            self.bytes_in.fetch_add(n, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The echo backend: one per daemon, serving every echo device.
#[derive(Debug, Default)]
pub struct EchoBackend {
    stats: Arc<EchoStats>,
}

impl EchoBackend {
    /// A backend with zeroed counters.
    pub fn new() -> EchoBackend {
        EchoBackend::default()
    }

    /// Counters of every connection so far.
    pub fn stats(&self) -> Arc<EchoStats> {
        self.stats.clone()
    }
}

impl BackendDevice for EchoBackend {
    fn kind(&self) -> &str {
        KIND
    }

    fn features(&self, _info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        let ops: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        Ok(vec![(FEATURE_OPS.into(), ops.join(","))])
    }

    fn connect(&self, mut conn: BackendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let stats = self.stats.clone();
        Box::pin(async move {
            // The frontend published ring-ref, event-channel and protocol:
            // map its page and bind its port, then tell the daemon.
            let mut ring = conn.map_ring::<EchoRequest, EchoResponse>()?;
            conn.ready().await?;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            loop {
                let req = tokio::select! {
                    _ = conn.stopped() => break,
                    next = ring.next() => match next {
                        Some(req) => req?,
                        // The frontend closed the ring in order.
                        None => break,
                    },
                };
                // `req` is a private copy: checking it and using it cannot
                // race with the peer rewriting the slot.
                let rsp = answer(&req);
                stats.count(&req, &rsp);
                ring.respond(&rsp)?;
            }
            ring.close().await;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------
// 3. The frontend device (the guest)
// ---------------------------------------------------------------------------

/// What the frontend hands the application once a connection is up.
#[derive(Debug)]
pub struct EchoSession {
    /// The device.
    pub device: DeviceId,
    /// The ops the backend offered ([`FEATURE_OPS`]); never empty (the
    /// frontend refuses a backend that offers none it knows).
    pub ops: Vec<Op>,
    /// The ring: `call` sends a request and waits for its answer.
    pub client: RingClient<EchoRequest, EchoResponse>,
}

/// The echo frontend: shares a one-page ring per device and sends an
/// [`EchoSession`] for each connection to whoever holds the receiver.
///
/// The connection lasts until the daemon stops it (the device is removed,
/// the backend closes, or the daemon shuts down); the ring is closed then,
/// and the application's calls fail with the reason. A backend that dies
/// without closing is seen by the application first (its calls fail: the
/// ring reports the peer gone); the daemon ends the connection when the
/// backend's side is closed or restarted in XenStore.
#[derive(Debug)]
pub struct EchoFrontend {
    sessions: mpsc::Sender<EchoSession>,
}

impl EchoFrontend {
    /// A frontend handing its sessions to `sessions`.
    pub fn new(sessions: mpsc::Sender<EchoSession>) -> EchoFrontend {
        EchoFrontend { sessions }
    }
}

impl FrontendDevice for EchoFrontend {
    fn kind(&self) -> &str {
        KIND
    }

    fn connect(&self, mut conn: FrontendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let sessions = self.sessions.clone();
        Box::pin(async move {
            // Feature negotiation: the backend's keys are already read.
            let ops = Op::parse_list(conn.peer_key(FEATURE_OPS)?);
            if ops.is_empty() {
                return Err(DeviceError::failed(format!(
                    "device {}: the backend offers no op this frontend knows",
                    conn.id()
                )));
            }
            let client = conn.share_ring::<EchoRequest, EchoResponse>(1)?;
            conn.ready().await?;
            let session = EchoSession {
                device: conn.id().clone(),
                ops,
                client: client.clone(),
            };
            // An application that has gone away is not an error of the
            // device: keep the connection until the daemon ends it.
            let _ = sessions.send(session).await;
            conn.stopped().await;
            // Ends the application's calls too, and releases the grants.
            client.close().await;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------
// 4. The guest program and the whole system
// ---------------------------------------------------------------------------

/// The hidden first argument that makes the example's program the guest.
pub const GUEST_ROLE: &str = "echo-guest";

/// The guest's domain id.
pub const GUEST: u16 = 1;

/// Calls made in one go to show many requests in flight on the ring.
pub const BURST: u64 = 256;

/// What the guest application did; its last line of output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestCounts {
    /// Calls made.
    pub calls: u64,
    /// Answers with [`STATUS_OK`].
    pub ok: u64,
    /// Answers refusing the request (as the script expected).
    pub refused: u64,
    /// Answers that were not what the script expected.
    pub mismatches: u64,
}

impl GuestCounts {
    fn line(&self) -> String {
        format!(
            "summary calls={} ok={} refused={} mismatches={}",
            self.calls, self.ok, self.refused, self.mismatches
        )
    }

    fn parse(line: &str) -> Option<GuestCounts> {
        let rest = line.strip_prefix("summary ")?;
        let mut c = GuestCounts::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "calls" => c.calls = v,
                "ok" => c.ok = v,
                "refused" => c.refused = v,
                "mismatches" => c.mismatches = v,
                _ => return None,
            }
        }
        Some(c)
    }

    fn record(&mut self, rsp: &EchoResponse, good: bool) {
        self.calls += 1;
        if rsp.status == STATUS_OK {
            self.ok += 1;
        } else {
            self.refused += 1;
        }
        if !good {
            self.mismatches += 1;
        }
    }
}

/// What a scripted call must get back.
enum Want {
    Data(&'static [u8]),
    Sum(u64),
    Refused(i16),
}

/// The scripted calls: (op byte, `len` to claim if not the payload's,
/// payload, expected answer).
const SCRIPT: [(u8, Option<u8>, &[u8], Want); 6] = [
    (UPPER, None, b"hello, xen", Want::Data(b"HELLO, XEN")),
    (REVERSE, None, b"hello, xen", Want::Data(b"nex ,olleh")),
    (SUM, None, b"hello, xen", Want::Sum(939)),
    (
        UPPER,
        None,
        b"grant tables & event channels",
        Want::Data(b"GRANT TABLES & EVENT CHANNELS"),
    ),
    // A hostile or buggy frontend: an op nobody offered, and a length
    // past the payload. The backend answers both with a status.
    (0x7f, None, b"hello", Want::Refused(STATUS_BAD_OP)),
    (UPPER, Some(200), b"hello", Want::Refused(STATUS_BAD_LEN)),
];
const UPPER: u8 = Op::Upper.code();
const REVERSE: u8 = Op::Reverse.code();
const SUM: u8 = Op::Sum.code();

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

fn show_answer(op: u8, rsp: &EchoResponse) -> String {
    match (rsp.status, rsp.payload()) {
        (STATUS_OK, Some(p)) if op == Op::Sum.code() && p.len() == 8 => {
            let mut v = [0u8; 8];
            v.copy_from_slice(p);
            format!("ok {}", u64::from_le_bytes(v))
        }
        (STATUS_OK, Some(p)) => format!("ok {}", show(p)),
        (STATUS_BAD_OP, _) => format!("refused: status {STATUS_BAD_OP} (unknown op)"),
        (STATUS_BAD_LEN, _) => format!("refused: status {STATUS_BAD_LEN} (bad length)"),
        (s, _) => format!("status {s}"),
    }
}

fn matches(want: &Want, rsp: &EchoResponse) -> bool {
    match want {
        Want::Data(d) => rsp.status == STATUS_OK && rsp.payload() == Some(*d),
        Want::Sum(s) => rsp.status == STATUS_OK && rsp.payload() == Some(&s.to_le_bytes()[..]),
        Want::Refused(st) => rsp.status == *st && rsp.len == 0,
    }
}

/// The guest application: the scripted calls one by one, then [`BURST`]
/// calls at once; checks every answer and prints one line per scripted
/// call, then its [`GuestCounts`].
pub async fn application(session: &EchoSession) -> anyhow::Result<GuestCounts> {
    let names: Vec<&str> = session.ops.iter().map(|op| op.name()).collect();
    println!(
        "device {} connected; the backend offers {}",
        session.device,
        names.join(", ")
    );
    let mut counts = GuestCounts::default();
    for (n, (op, len, payload, want)) in SCRIPT.iter().enumerate() {
        let mut req = EchoRequest::new(Op::Upper, payload).context("payload too long")?;
        req.op = *op;
        if let Some(len) = len {
            req.len = *len;
        }
        let rsp = session.client.call(req).await?;
        let good = matches(want, &rsp);
        counts.record(&rsp, good);
        let what = Op::from_code(*op).map_or(format!("op {op}"), |o| o.name().to_string());
        let claim = len.map_or(String::new(), |l| format!(" (len {l})"));
        println!(
            "#{} {what:<7} {}{claim} -> {}{}",
            n + 1,
            show(payload),
            show_answer(*op, &rsp),
            if good { "" } else { "   <-- WRONG" }
        );
    }

    // Many calls in flight at once: the ring holds what fits, the rest
    // wait for a free slot; each answer finds its caller by id.
    let t0 = Instant::now();
    let calls = (0..BURST).map(|i| {
        let op = session.ops[i as usize % session.ops.len()];
        let text = format!("burst call {i}");
        let client = session.client.clone();
        async move {
            let req = EchoRequest::new(op, text.as_bytes()).expect("short payload");
            (op, text, client.call(req).await)
        }
    });
    let results = futures::future::join_all(calls).await;
    let elapsed = t0.elapsed();
    for (op, text, rsp) in results {
        let rsp = rsp?;
        let want: Vec<u8> = match op {
            Op::Upper => text.to_uppercase().into_bytes(),
            Op::Reverse => text.chars().rev().collect::<String>().into_bytes(),
            Op::Sum => text
                .bytes()
                .map(u64::from)
                .sum::<u64>()
                .to_le_bytes()
                .to_vec(),
        };
        counts.record(
            &rsp,
            rsp.status == STATUS_OK && rsp.payload() == Some(&want[..]),
        );
    }
    let ring = session.client.stats();
    println!(
        "burst: {BURST} calls at once, every answer checked, in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    println!(
        "ring: {} requests sent, {} responses taken, {} notifications sent, {} suppressed",
        ring.produced, ring.consumed, ring.notifications, ring.suppressed
    );
    Ok(counts)
}

/// The guest program: joins domain [`GUEST`] (from the environment [`run`]
/// sets), runs the frontend daemon with an [`EchoFrontend`], runs
/// [`application`] on the first session, then stops the daemon (which
/// closes the device) and exits: 0 if every answer was right.
pub fn guest_main() -> ExitCode {
    xenring::xenbus::cli::init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo guest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(guest()) {
        Ok(c) if c.mismatches == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("echo guest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn guest() -> anyhow::Result<GuestCounts> {
    let platform: Arc<dyn Platform> =
        Arc::new(SimDomain::from_env().context("joining the guest's domain")?);
    // A binary: the environment is read here, once, at start-up.
    let xs_path = std::env::var_os(ENV_XENSTORED_PATH)
        .with_context(|| format!("{ENV_XENSTORED_PATH} is not set"))?;
    let xs = XsClient::connect(xs_path)
        .await
        .context("connecting to XenStore")?;
    let (tx, mut sessions) = mpsc::channel(1);
    let daemon = xenring_frontend::daemon(xs, platform, vec![Arc::new(EchoFrontend::new(tx))]);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { daemon.run(stop).await }
    });

    let session = tokio::time::timeout(Duration::from_secs(30), sessions.recv())
        .await
        .context("no echo device connected within 30 s")?
        .context("the frontend daemon ended")?;
    let counts = application(&session).await;
    drop(session);

    // Close the device in order (Closing, Closed), then leave.
    stop.cancel();
    running.await??;
    let counts = counts?;
    println!("{}", counts.line());
    Ok(counts)
}

/// What [`run`] saw.
#[derive(Debug, Clone)]
pub struct EchoSummary {
    /// The lines to print.
    pub lines: Vec<String>,
    /// The guest application's counts.
    pub guest: GuestCounts,
    /// The backend's counters (`key=value`).
    pub backend: String,
    /// Requests the backend answered.
    pub backend_requests: u64,
    /// Requests the backend refused.
    pub backend_refused: u64,
    /// What the simulated host still held at the end (empty: nothing).
    pub leaks: Vec<String>,
}

/// Runs the example: a simulated host in a temporary directory; dom0 here,
/// with the backend daemon; the guest as `node` [`GUEST_ROLE`] in domain
/// [`GUEST`]; an echo device between them. Returns once the guest is done,
/// the device removed, the backend stopped and the host clean.
pub async fn run(node: PathBuf) -> anyhow::Result<EchoSummary> {
    let dir = tempfile::tempdir()?;
    let sys = System::start(dir.path(), node.clone(), HostConfig::default()).await?;
    sys.create_domain(GUEST)?;

    // dom0's backend daemon, in this process: a session of domain 0 for
    // grants and event channels, XenStore through the toolstack's client.
    let dom0: Arc<dyn Platform> = Arc::new(SimDomain::connect(sys.host().control_path(), 0)?);
    let backend = Arc::new(EchoBackend::new());
    let daemon = xenring_backend::daemon(sys.xs().clone(), dom0, vec![backend.clone()]);
    let stop = CancellationToken::new();
    let daemon_task = tokio::spawn({
        let stop = stop.clone();
        async move { daemon.run(stop).await }
    });

    // The toolstack creates the device, as `xl` would.
    let id = DeviceId {
        kind: KIND.into(),
        frontend: GUEST,
        backend: 0,
        devid: 0,
    };
    create_device(sys.xs(), &DeviceSpec::new(id.clone())).await?;

    // The guest: this program again, told which host, domain and XenStore
    // socket are its own.
    let log = dir.path().join(format!("guest-dom{GUEST}.log"));
    let mut guest = tokio::process::Command::new(&node)
        .arg(GUEST_ROLE)
        .env(ENV_SOCKET, sys.host().control_path())
        .env(ENV_DOMID, GUEST.to_string())
        .env(ENV_XENSTORED_PATH, sys.host().xenstore_path(GUEST)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", node.display()))?;
    let guest_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut lines = vec![format!(
        "echo driver: backend in dom0 (this process), frontend and application in domU {GUEST}"
    )];
    let mut counts = None;
    let mut out = BufReader::new(guest.stdout.take().context("the guest's stdout")?).lines();
    let read_all = async {
        while let Some(line) = out.next_line().await? {
            match GuestCounts::parse(&line) {
                Some(c) => counts = Some(c),
                None => lines.push(format!("  domU {GUEST} | {line}")),
            }
        }
        anyhow::Ok(())
    };
    if tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .is_err()
    {
        bail!(
            "the guest did not finish within 60 s; its log:\n{}",
            guest_log()
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(10), guest.wait())
        .await
        .context("the guest did not exit")??;
    ensure!(
        status.success(),
        "the guest exited with {status}; its log:\n{}",
        guest_log()
    );
    let guest_counts = counts.context("the guest printed no summary")?;

    // Tear down in order: detach the device, stop the backend daemon, and
    // check that nothing is left on the host.
    sys.remove(&id, Duration::from_secs(10)).await?;
    stop.cancel();
    let daemon_stats = daemon_task.await??;
    let report = sys.wait_clean(Duration::from_secs(5)).await?;

    let stats = backend.stats();
    lines.push(format!("  dom0 backend | {}", stats.line()));
    lines.push(format!(
        "  guest: {} calls, {} answered ok, {} refused as expected, {} wrong",
        guest_counts.calls, guest_counts.ok, guest_counts.refused, guest_counts.mismatches
    ));
    lines.push(format!(
        "  teardown: device removed, backend daemon stopped ({} device task(s) run), host reports no leaks",
        daemon_stats.started
    ));
    let summary = EchoSummary {
        lines,
        guest: guest_counts,
        backend: stats.line(),
        backend_requests: stats.requests.load(Ordering::Relaxed),
        backend_refused: stats.refused.load(Ordering::Relaxed),
        leaks: report.leaks(),
    };
    sys.shutdown();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_checks_what_it_should() {
        // The hard-coded answers are right (939 is the byte sum).
        assert_eq!(
            b"hello, xen".iter().map(|&b| u64::from(b)).sum::<u64>(),
            939
        );
        for (op, len, payload, want) in &SCRIPT {
            let mut req = EchoRequest::new(Op::Upper, payload).unwrap();
            req.op = *op;
            if let Some(l) = len {
                req.len = *l;
            }
            assert!(matches(want, &answer(&req)), "{payload:?}");
        }
    }

    #[test]
    fn guest_counts_round_trip() {
        let c = GuestCounts {
            calls: 262,
            ok: 260,
            refused: 2,
            mismatches: 0,
        };
        assert_eq!(GuestCounts::parse(&c.line()), Some(c));
        assert_eq!(GuestCounts::parse("summary calls=x"), None);
        assert_eq!(GuestCounts::parse("#1 upper"), None);
    }
}
