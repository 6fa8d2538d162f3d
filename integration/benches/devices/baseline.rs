//! The comparison points: what `n` idle Unix-socket connections cost a
//! tokio program, measured the same way as the daemons (RSS/Pss of a
//! process before and after, and the time to set one up); and the same
//! connections with a chan multiplexer ([`xenring::chan::Mux`]) on each
//! end, which isolates the multiplexer's share of a device's cost.
//!
//! A child process (this binary again, role [`ROLE_PAIRS`]) runs a
//! multi-threaded tokio runtime, as the daemons do, and a listener. On
//! "go" it sets up `n` connections one at a time (connect, accept), and
//! then, by [`Kind`]:
//!
//! * `Plain`: each end gets a task that waits to read into an 8 KiB
//!   buffer (the buffer `tokio::io::copy` uses);
//! * `Mux`: each end becomes a multiplexer (the accepting end a server
//!   whose `Incoming` a task waits on, as the backend's proxy does; the
//!   connecting end a client whose handle is kept, as the frontend does),
//!   (the setup time is still connect + accept: the multiplexers start
//!   without waiting).
//!
//! Both ends of a pair live in this one process: one pair stands for one
//! device's two daemons. The child prints the setup times, and "idle"; on
//! "quit" it closes everything and exits.
//!
//! What RSS does not show: the kernel's socket buffers and structures
//! (a few KiB per socket of slab, charged to no process's RSS).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use xenring::chan::{Mux, MuxConfig, Role};

use crate::mem::Mem;

/// The child's role.
pub const ROLE_PAIRS: &str = "unix-pairs";

/// What each end of a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A task reading into an 8 KiB buffer.
    Plain,
    /// A chan multiplexer.
    Mux,
}

/// What the comparison measured.
#[derive(Debug, Clone, Default)]
pub struct PairsResult {
    /// The process before any connection.
    pub before: Mem,
    /// With `n` idle pairs.
    pub idle: Mem,
    /// Connect + accept of each pair, in order.
    pub setup: Vec<Duration>,
}

/// Runs the child with `n` pairs of `kind`, waiting `settle` before each
/// reading.
pub fn measure(role_var: &str, kind: Kind, n: usize, settle: Duration) -> PairsResult {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(role_var, ROLE_PAIRS)
        .env("XENRING_BENCH_PAIRS", n.to_string())
        .env("XENRING_BENCH_PAIR_KIND", format!("{kind:?}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the Unix-socket child");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("child stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let mut next = || lines.next().expect("child output").expect("child output");
    assert_eq!(next(), "ready");
    std::thread::sleep(settle);
    let before = Mem::read(pid);
    writeln!(stdin, "go").expect("tell the child");
    let times = next();
    let setup = times
        .split_whitespace()
        .map(|w| Duration::from_nanos(w.parse().expect("a duration")))
        .collect();
    assert_eq!(next(), "idle");
    std::thread::sleep(settle);
    let idle = Mem::read(pid);
    writeln!(stdin, "quit").expect("tell the child");
    let st = child.wait().expect("wait for the child");
    assert!(st.success(), "the Unix-socket child failed: {st}");
    PairsResult {
        before,
        idle,
        setup,
    }
}

/// Keeps one end idle until `stop`.
async fn plain_end(mut s: tokio::net::UnixStream, mut stop: tokio::sync::broadcast::Receiver<()>) {
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => if !matches!(r, Ok(k) if k > 0) { break },
            _ = stop.recv() => break,
        }
    }
}

/// The child's body.
pub fn child() {
    let n: usize = std::env::var("XENRING_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let kind = match std::env::var("XENRING_BENCH_PAIR_KIND").as_deref() {
        Ok("Mux") => Kind::Mux,
        _ => Kind::Plain,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pairs.sock");
    let listener = rt
        .block_on(async { tokio::net::UnixListener::bind(&path) })
        .expect("bind");
    let mut stdin = BufReader::new(std::io::stdin()).lines();
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .expect("stdout");
    assert_eq!(stdin.next().expect("go").expect("go"), "go");
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut handles = Vec::new();
    let times = rt.block_on(async {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let (a, b) = tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
            let (a, (b, _)) = (a.expect("connect"), b.expect("accept"));
            times.push(t0.elapsed());
            match kind {
                Kind::Plain => {
                    tokio::spawn(plain_end(a, stop.subscribe()));
                    tokio::spawn(plain_end(b, stop.subscribe()));
                }
                Kind::Mux => {
                    let (client, incoming) = Mux::start(a, MuxConfig::new(Role::Client));
                    drop(incoming);
                    let (server, mut incoming) = Mux::start(b, MuxConfig::new(Role::Server));
                    drop(server);
                    let mut stop = stop.subscribe();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = async { while incoming.accept().await.is_some() {} } => {}
                            _ = stop.recv() => {}
                        }
                    });
                    handles.push(client);
                }
            }
        }
        times
    });
    let line: Vec<String> = times.iter().map(|t| t.as_nanos().to_string()).collect();
    writeln!(out, "{}", line.join(" ")).expect("stdout");
    writeln!(out, "idle")
        .and_then(|()| out.flush())
        .expect("stdout");
    let _ = stdin.next();
    let _ = stop.send(());
    drop(handles);
    rt.shutdown_timeout(Duration::from_secs(5));
}
