//! A dom0 service that embeds the backend library instead of running the
//! `xenring-backend` daemon: a small key-value store that guests reach
//! through a plain Unix socket inside the guest. The guests run the stock
//! `chan` frontend daemon and need no xenring code at all; the service
//! runs the backend [`Daemon`](xenring_backend::Daemon) in its own process
//! with its own device ([`KvDevice`]), next to its own work (the store
//! task, [`KvService`]), and stops it with a [`CancellationToken`].
//!
//! ```text
//!   this process: dom0                                   child processes
//!   -------------------------------------------          ------------------------------------
//!   KvService: one task owns the store and answers        domU 1: stock chan frontend daemon
//!      ^ Command (mpsc) + reply (oneshot)                    chan-0.sock <-- guest application
//!   KvDevice, one connection per guest device                 |
//!      one task per guest session: a line in, a line out      |
//!   Daemon (xenring_backend::daemon) <== vchan + chan mux ====+
//!      stopped by a CancellationToken                     domU 2: likewise
//! ```
//!
//! The protocol, one line each way (at most [`MAX_LINE`] bytes):
//!
//! ```text
//!   put KEY VALUE   ->  ok                   (VALUE is the rest of the line)
//!   get KEY         ->  value VALUE | none
//!   keys            ->  keys N
//!   anything else   ->  error: WHY           (a line too long also ends the session)
//! ```
//!
//! Each guest has its own keys. Which guest is speaking comes from the
//! device (the toolstack wrote its frontend domain in XenStore, where a
//! guest cannot change it), never from what the guest sends.
//!
//! In the simulation, the guests' sockets are files in the temporary
//! directory, so this process plays the guest applications too (in real
//! life they run inside the guests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context};
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xenring::chan::{Mux, MuxConfig, Role};
use xenring::platform::{DomId, Platform};
use xenring::sim::{HostConfig, SimDomain};
use xenring::xenbus::{create_device, DeviceId, DeviceSpec};
use xenring_backend::{BackendConn, BackendDevice, DeviceError, DeviceInfo};

use crate::system::System;

/// Longest line, newline included, in either direction.
pub const MAX_LINE: usize = 256;
/// Longest key.
pub const MAX_KEY: usize = 64;
/// Most keys one guest may store (a guest cannot fill dom0's memory).
pub const MAX_KEYS_PER_GUEST: usize = 100;

// ---------------------------------------------------------------------------
// The service's own work: the store (no xenring here)
// ---------------------------------------------------------------------------

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `put KEY VALUE`.
    Put {
        /// The key.
        key: String,
        /// The value (may contain spaces).
        value: String,
    },
    /// `get KEY`.
    Get {
        /// The key.
        key: String,
    },
    /// `keys`: how many keys this guest has.
    Keys,
}

/// Parses one line (its newline, and a `\r` before it, may be left on);
/// the error is what to answer after `error: `.
pub fn parse_line(line: &[u8]) -> Result<Request, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let key_of = |k: &str| -> Result<String, String> {
        let ok = !k.is_empty()
            && k.len() <= MAX_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(k.to_string())
        } else {
            Err(format!(
                "bad key {k:?} (1 to {MAX_KEY} of A-Z a-z 0-9 - _ .)"
            ))
        }
    };
    match cmd {
        "put" => {
            let (key, value) = rest
                .split_once(' ')
                .ok_or_else(|| "usage: put KEY VALUE".to_string())?;
            Ok(Request::Put {
                key: key_of(key)?,
                value: value.to_string(),
            })
        }
        "get" => Ok(Request::Get { key: key_of(rest)? }),
        "keys" if rest.is_empty() => Ok(Request::Keys),
        "" => Err("empty line".into()),
        other => Err(format!(
            "unknown command {:?} (put, get, keys)",
            other.chars().take(16).collect::<String>()
        )),
    }
}

/// The store: every guest's keys, and what was asked of it.
#[derive(Debug, Default, Clone)]
pub struct Store {
    values: BTreeMap<(DomId, String), String>,
    /// `put`s stored.
    pub puts: u64,
    /// `get`s answered.
    pub gets: u64,
    /// `get`s that found their key.
    pub hits: u64,
}

impl Store {
    /// Carries out `req` for `guest`; returns the answer line (without its
    /// newline).
    pub fn apply(&mut self, guest: DomId, req: Request) -> String {
        match req {
            Request::Put { key, value } => {
                let k = (guest, key);
                if !self.values.contains_key(&k) && self.count(guest) >= MAX_KEYS_PER_GUEST {
                    return format!("error: at most {MAX_KEYS_PER_GUEST} keys per guest");
                }
                self.values.insert(k, value);
                self.puts += 1;
                "ok".into()
            }
            Request::Get { key } => {
                self.gets += 1;
                match self.values.get(&(guest, key)) {
                    Some(v) => {
                        self.hits += 1;
                        format!("value {v}")
                    }
                    None => "none".into(),
                }
            }
            Request::Keys => format!("keys {}", self.count(guest)),
        }
    }

    /// How many keys `guest` has.
    pub fn count(&self, guest: DomId) -> usize {
        self.values.keys().filter(|(g, _)| *g == guest).count()
    }

    /// `guest`'s keys and values, in key order.
    pub fn entries(&self, guest: DomId) -> Vec<(String, String)> {
        self.values
            .iter()
            .filter(|((g, _), _)| *g == guest)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A request for the store task, and where its answer goes.
#[derive(Debug)]
pub struct Command {
    /// The guest asking (from the device, not from the guest).
    pub guest: DomId,
    /// What it asks.
    pub request: Request,
    /// The answer line.
    pub reply: oneshot::Sender<String>,
}

/// Counters of the service's guest-facing side, readable while it runs.
#[derive(Debug, Default)]
pub struct KvStats {
    /// Guest devices connected (handshakes completed).
    pub connections: AtomicU64,
    /// Guest sessions (connections to a guest's socket) served.
    pub sessions: AtomicU64,
    /// Lines answered.
    pub lines: AtomicU64,
    /// Lines answered with an error.
    pub errors: AtomicU64,
}

impl KvStats {
    /// One line of `key=value` pairs.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections={} sessions={} lines={} errors={}",
            g(&self.connections),
            g(&self.sessions),
            g(&self.lines),
            g(&self.errors)
        )
    }
}

/// The service: a task that owns the [`Store`] and answers [`Command`]s.
#[derive(Debug)]
pub struct KvService {
    commands: mpsc::Sender<Command>,
    stats: Arc<KvStats>,
    task: tokio::task::JoinHandle<Store>,
}

impl KvService {
    /// Starts the store task. Must be called inside a tokio runtime.
    pub fn start() -> KvService {
        let (commands, mut rx) = mpsc::channel::<Command>(64);
        let task = tokio::spawn(async move {
            let mut store = Store::default();
            while let Some(cmd) = rx.recv().await {
                let answer = store.apply(cmd.guest, cmd.request);
                // The session may have gone meanwhile; nothing to do then.
                let _ = cmd.reply.send(answer);
            }
            store
        });
        KvService {
            commands,
            stats: Arc::default(),
            task,
        }
    }

    /// The backend device that connects guests to this service.
    pub fn device(&self) -> Arc<KvDevice> {
        Arc::new(KvDevice {
            commands: self.commands.clone(),
            stats: self.stats.clone(),
        })
    }

    /// Counters of the guest-facing side.
    pub fn stats(&self) -> Arc<KvStats> {
        self.stats.clone()
    }

    /// Ends the store task once every device and session is gone (they hold
    /// senders: stop the daemon first), and returns the final store.
    pub async fn finish(self) -> anyhow::Result<Store> {
        drop(self.commands);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("the store task is still in use 10 s after the service stopped")?
            .context("the store task failed")
    }
}

// ---------------------------------------------------------------------------
// The device: guests' sessions in, commands out
// ---------------------------------------------------------------------------

/// The service's backend device. Its kind is `chan`, so that guests run
/// the stock chan frontend: each connection a guest application makes to
/// its socket arrives here as one channel, served by [`serve_session`].
#[derive(Debug)]
pub struct KvDevice {
    commands: mpsc::Sender<Command>,
    stats: Arc<KvStats>,
}

impl BackendDevice for KvDevice {
    fn kind(&self) -> &str {
        "chan"
    }

    fn features(&self, _info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        // What a chan backend announces.
        Ok(vec![("feature-chan-mux".into(), "1".into())])
    }

    fn connect(&self, mut conn: BackendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let commands = self.commands.clone();
        let stats = self.stats.clone();
        Box::pin(async move {
            let guest = conn.frontend();
            let stream = conn.connect_stream()?;
            conn.ready().await?;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let (_mux, mut incoming) = Mux::start(stream, MuxConfig::new(Role::Server));
            // Sessions are aborted when this future ends (the set drops).
            let mut sessions = JoinSet::new();
            loop {
                tokio::select! {
                    _ = conn.stopped() => return Ok(()),
                    channel = incoming.accept() => match channel {
                        Some(ch) => {
                            stats.sessions.fetch_add(1, Ordering::Relaxed);
                            let s = serve_session(ch, guest, commands.clone(), stats.clone());
                            sessions.spawn(s);
                        }
                        None => break,
                    },
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
            // The guest's end of the connection went away.
            match incoming.error() {
                None => Ok(()),
                Some(e) => Err(DeviceError::PeerGone(format!("device {}: {e}", conn.id()))),
            }
        })
    }
}

/// Serves one guest session: reads a line, asks the store, writes the
/// answer, until the guest closes its end (or sends a line longer than
/// [`MAX_LINE`], which ends the session after an error line).
pub async fn serve_session<S>(
    io: S,
    guest: DomId,
    commands: mpsc::Sender<Command>,
    stats: Arc<KvStats>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut rd = BufReader::new(rd);
    let mut line = Vec::with_capacity(MAX_LINE);
    loop {
        line.clear();
        // At most MAX_LINE + 1 bytes: whatever a guest sends, we hold little.
        let n = (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            break;
        }
        let too_long = n > MAX_LINE;
        let answer = if too_long {
            format!("error: line longer than {MAX_LINE} bytes")
        } else {
            match parse_line(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    let cmd = Command {
                        guest,
                        request,
                        reply,
                    };
                    match commands.send(cmd).await {
                        Ok(()) => answer.await.unwrap_or_else(|_| "error: stopping".into()),
                        Err(_) => "error: stopping".into(),
                    }
                }
                Err(why) => format!("error: {why}"),
            }
        };
        stats.lines.fetch_add(1, Ordering::Relaxed);
        if answer.starts_with("error") {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        wr.write_all(format!("{answer}\n").as_bytes()).await?;
        if too_long {
            break;
        }
    }
    wr.shutdown().await
}

// ---------------------------------------------------------------------------
// The whole system
// ---------------------------------------------------------------------------

/// The guests' domain ids.
pub const GUESTS: [u16; 2] = [1, 2];

/// The guest sessions [`run`] plays: a guest, and each line it sends with
/// the answer it must get.
type Session = (u16, &'static [(&'static str, &'static str)]);

const SESSIONS: [Session; 3] = [
    (
        1,
        &[
            ("put color blue", "ok"),
            ("put shape round", "ok"),
            ("get color", "value blue"),
            ("get size", "none"),
            ("keys", "keys 2"),
            (
                "frobnicate",
                r#"error: unknown command "frobnicate" (put, get, keys)"#,
            ),
        ],
    ),
    // Guest 2 has keys of its own; it cannot see guest 1's.
    (
        2,
        &[
            ("put color green", "ok"),
            ("get color", "value green"),
            ("get shape", "none"),
            ("keys", "keys 1"),
        ],
    ),
    // A second session of guest 1 finds what the first stored.
    (
        1,
        &[("get color", "value blue"), ("get shape", "value round")],
    ),
];

/// What [`run`] saw.
#[derive(Debug, Clone)]
pub struct ServiceSummary {
    /// The lines to print.
    pub lines: Vec<String>,
    /// Lines sent by the guest applications.
    pub sent: u64,
    /// Answers that were not the expected ones (each listed in `lines`).
    pub mismatches: u64,
    /// The service's counters while it ran ([`KvStats::line`]).
    pub stats: String,
    /// Guest devices connected.
    pub connections: u64,
    /// Lines the service answered.
    pub answered: u64,
    /// The store once the service stopped.
    pub store: Store,
    /// What the simulated host still held at the end (empty: nothing).
    pub leaks: Vec<String>,
}

/// One guest application session: connects to `sock`, sends each line and
/// reads its answer.
async fn talk(sock: &Path, lines: &[&str]) -> anyhow::Result<Vec<String>> {
    let s = UnixStream::connect(sock)
        .await
        .with_context(|| format!("connecting to {}", sock.display()))?;
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd).lines();
    let mut answers = Vec::new();
    for line in lines {
        wr.write_all(format!("{line}\n").as_bytes()).await?;
        let answer = rd
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("the service ended the session after {line:?}"))?;
        answers.push(answer);
    }
    wr.shutdown().await?;
    ensure!(rd.next_line().await?.is_none(), "more output than answers");
    Ok(answers)
}

/// Runs the example: a simulated host in a temporary directory; this
/// process as dom0 with the service and its embedded backend daemon; the
/// stock chan frontend daemon (`node frontend`, see
/// [`crate::system::node_main`]) in each of [`GUESTS`]; guest sessions
/// through their sockets. Returns once the devices are removed, the
/// service stopped and the host clean.
pub async fn run(node: PathBuf) -> anyhow::Result<ServiceSummary> {
    let dir = tempfile::tempdir()?;
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;

    // The service: its own work, then the daemon it embeds, as dom0.
    let service = KvService::start();
    let dom0: Arc<dyn Platform> = Arc::new(SimDomain::connect(sys.host().control_path(), 0)?);
    let daemon = xenring_backend::daemon(sys.xs().clone(), dom0, vec![service.device()]);
    let stop = CancellationToken::new();
    let daemon_task = tokio::spawn({
        let stop = stop.clone();
        async move { daemon.run(stop).await }
    });

    // The guests, each with the stock frontend daemon and one chan device.
    let mut frontends = Vec::new();
    let mut devices = Vec::new();
    for domid in GUESTS {
        sys.create_domain(domid)?;
        frontends.push(sys.spawn_frontend(domid, &[])?);
        let id = DeviceId {
            kind: "chan".into(),
            frontend: domid,
            backend: 0,
            devid: 0,
        };
        create_device(sys.xs(), &DeviceSpec::new(id.clone())).await?;
        devices.push(id);
    }
    for (id, fe) in devices.iter().zip(&frontends) {
        sys.wait_connected(id, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!("{e}\n{} log:\n{}", fe.name, fe.log()))?;
    }

    let mut lines = vec![
        "embedded service: a key-value store in dom0 (this process) with the backend daemon inside"
            .to_string(),
        format!(
            "  guests {GUESTS:?} run the stock chan frontend; their applications use a Unix socket"
        ),
    ];
    let (mut sent, mut mismatches) = (0u64, 0u64);
    for (guest, script) in SESSIONS {
        let send: Vec<&str> = script.iter().map(|(line, _)| *line).collect();
        let answers = talk(&sys.chan_socket(guest, 0), &send).await?;
        for ((line, want), got) in script.iter().zip(&answers) {
            sent += 1;
            let mark = if got == want {
                ""
            } else {
                mismatches += 1;
                "   <-- WRONG"
            };
            lines.push(format!("  domU {guest} | {line:<16} -> {got}{mark}"));
        }
    }
    let stats = service.stats();
    lines.push(format!("  service, running | {}", stats.line()));

    // Tear down: the toolstack detaches the devices (the embedded daemon
    // closes them), the guests stop, then the service stops its daemon
    // with the token and its store task after it.
    for id in &devices {
        sys.remove(id, Duration::from_secs(10)).await?;
    }
    for fe in frontends {
        let name = fe.name.clone();
        let status = fe.terminate(Duration::from_secs(10))?;
        ensure!(status.success(), "the {name} daemon exited with {status}");
    }
    stop.cancel();
    let daemon_stats = daemon_task.await??;
    let store = service.finish().await?;
    let report = sys.wait_clean(Duration::from_secs(5)).await?;

    for domid in GUESTS {
        let kv: Vec<String> = store
            .entries(domid)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(format!("  store, stopped | domU {domid}: {}", kv.join(" ")));
    }
    lines.push(format!(
        "  store, stopped | puts={} gets={} hits={}",
        store.puts, store.gets, store.hits
    ));
    lines.push(format!(
        "  teardown: devices removed, guests stopped, daemon stopped by its token \
         ({} device task(s) run), host reports no leaks",
        daemon_stats.started
    ));
    let summary = ServiceSummary {
        lines,
        sent,
        mismatches,
        stats: stats.line(),
        connections: stats.connections.load(Ordering::Relaxed),
        answered: stats.lines.load(Ordering::Relaxed),
        store,
        leaks: report.leaks(),
    };
    sys.shutdown();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        assert_eq!(
            parse_line(b"put color dark blue\n"),
            Ok(Request::Put {
                key: "color".into(),
                value: "dark blue".into()
            })
        );
        assert_eq!(
            parse_line(b"get color\r\n"),
            Ok(Request::Get {
                key: "color".into()
            })
        );
        assert_eq!(parse_line(b"keys"), Ok(Request::Keys));
        for bad in [
            &b""[..],
            b"\n",
            b"put color",
            b"get",
            b"get a/b",
            b"keys now",
            b"PUT a b",
            b"\xff\xfe",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
        assert!(parse_line(format!("get {}", "k".repeat(MAX_KEY + 1)).as_bytes()).is_err());
    }

    #[test]
    fn guests_have_their_own_keys() {
        let mut s = Store::default();
        let put = |k: &str, v: &str| Request::Put {
            key: k.into(),
            value: v.into(),
        };
        let get = |k: &str| Request::Get { key: k.into() };
        assert_eq!(s.apply(1, put("a", "x")), "ok");
        assert_eq!(s.apply(2, get("a")), "none");
        assert_eq!(s.apply(1, get("a")), "value x");
        assert_eq!(s.apply(2, Request::Keys), "keys 0");
        for i in 0..MAX_KEYS_PER_GUEST {
            let _ = s.apply(2, put(&format!("k{i}"), "v"));
        }
        assert!(s.apply(2, put("one-more", "v")).starts_with("error"));
        // Replacing a key is fine at the limit.
        assert_eq!(s.apply(2, put("k0", "w")), "ok");
        assert_eq!(s.count(2), MAX_KEYS_PER_GUEST);
        assert_eq!(s.entries(1), vec![("a".to_string(), "x".to_string())]);
    }

    #[tokio::test]
    async fn a_session_answers_each_line_and_stops_at_a_long_one() {
        let service = KvService::start();
        let stats = service.stats();
        let (ours, theirs) = tokio::io::duplex(4096);
        let session = tokio::spawn(serve_session(
            theirs,
            7,
            service.commands.clone(),
            stats.clone(),
        ));
        let (rd, mut wr) = tokio::io::split(ours);
        let long = "x".repeat(MAX_LINE + 10);
        wr.write_all(format!("put a 1\nget a\nnope\n{long}\nget a\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        BufReader::new(rd).read_to_string(&mut out).await.unwrap();
        session.await.unwrap().unwrap();
        assert_eq!(
            out,
            format!(
                "ok\nvalue 1\nerror: unknown command \"nope\" (put, get, keys)\n\
                 error: line longer than {MAX_LINE} bytes\n"
            )
        );
        assert_eq!(stats.lines.load(Ordering::Relaxed), 4);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 2);
        let store = service.finish().await.unwrap();
        assert_eq!(store.entries(7), vec![("a".to_string(), "1".to_string())]);
    }
}
