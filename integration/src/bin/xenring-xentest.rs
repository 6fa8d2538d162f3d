//! The programs the real-Xen VM jobs run (integration/xen-vm/): built
//! statically, shipped into dom0 and into the busybox PV domU.
//!
//! ```text
//!   xenring-xentest platform            dom0 alone: the platform's unit scenarios, domid 0 to itself
//!   xenring-xentest backend|frontend .. the daemons (as xenring-node)
//!   xenring-xentest chan-dom0 --domu D  dom0: backend daemon + toolstack for a chan device of domU D,
//!                                       waits for the domU's verdict
//!   xenring-xentest domu                the domU's agent: frontend daemon, 64 MiB through the chan
//!                                       device, then the benchmark peers
//!   xenring-xentest vchan-interop --proxy PATH
//!                                       dom0: our vchan against libxenvchan's vchan-socket-proxy, both ways
//!   xenring-xentest bench-dom0 --domu D dom0: the benchmark's dom0 side
//!   xenring-xentest vbd-dom0 --domu D   hook for the vbd device (issue 6)
//! ```
//!
//! Every check prints one line `PASS <name>: ...` or `FAIL <name>: ...`;
//! the exit code is the number of failures (capped), so the VM harness and
//! the Rust test on the host can assert on both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenring::platform::xen::{own_domid, scenarios, XenPlatform};
use xenring::platform::{DomId, Platform};
use xenring::stream::{connect, connect_at, VchanAddress, VchanServer};
use xenring::xenbus::cli::connect_xen_xenstore;
use xenring::xenbus::{create_device, remove_device, DeviceId, DeviceSpec, RemoveOptions};
use xenring::xenstore::XsClient;

#[derive(Parser, Debug)]
#[command(name = "xenring-xentest", about = "xenring's checks on real Xen")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The platform's unit scenarios, this domain talking to itself.
    Platform,
    /// dom0 side of the chan test: backend daemon, toolstack, verdict.
    ChanDom0 {
        /// The frontend domain.
        #[arg(long)]
        domu: DomId,
        /// How long the domU may show no progress (no verdict, no new
        /// progress note), in seconds.
        #[arg(long, default_value_t = 120)]
        stall: u64,
    },
    /// The domU's agent (chan frontend + benchmark peers).
    Domu {
        /// Bytes through the chan device (echoed back).
        #[arg(long, default_value_t = 64 << 20)]
        chan_bytes: u64,
        /// Bytes of the vchan benchmark.
        #[arg(long, default_value_t = 64 << 20)]
        bench_bytes: u64,
        /// Event-channel round trips of the benchmark.
        #[arg(long, default_value_t = 2000)]
        rounds: u32,
        /// Also run the cross-domain stream checks (verified vchans, the
        /// chan device), as dom0-job.sh does.
        #[arg(long)]
        streams: bool,
    },
    /// dom0: the vchan stream against libxenvchan (vchan-socket-proxy).
    VchanInterop {
        /// The proxy program.
        #[arg(long, default_value = "/usr/lib/xen-4.17/bin/vchan-socket-proxy")]
        proxy: PathBuf,
        /// Bytes each way (libxenvchan's default rings are 1 and 2 KiB
        /// in the control page: an event per ring-full, slow under TCG).
        #[arg(long, default_value_t = 512 << 10)]
        bytes: usize,
    },
    /// dom0: verified vchan exchanges with the domU agent (its server, our
    /// client), multi-page and in-page rings.
    VchanDom0 {
        /// The domU.
        #[arg(long)]
        domu: DomId,
        /// Bytes each way.
        #[arg(long, default_value_t = 8 << 20)]
        bytes: usize,
    },
    /// One end of a verified two-way vchan exchange at a XenStore path
    /// (`data/NAME` of the server's home), e.g. against xen-c-bench's
    /// libxenvchan end: the server sends pattern 1, the client pattern 2.
    VchanPeer {
        /// `server` or `client`.
        #[arg(long)]
        role: String,
        /// The other domain.
        #[arg(long)]
        peer: DomId,
        /// The name under the server's `data/`.
        #[arg(long)]
        name: String,
        /// Bytes each way.
        #[arg(long, default_value_t = 8 << 20)]
        bytes: usize,
        /// Ring orders (server).
        #[arg(long, default_value_t = 16)]
        order: u16,
    },
    /// dom0: the benchmark's dom0 side against the domU agent.
    BenchDom0 {
        /// The domU.
        #[arg(long)]
        domu: DomId,
        /// The vchan bytes (as the domU's --bench-bytes).
        #[arg(long, default_value_t = 64 << 20)]
        bytes: u64,
        /// Round trips (as the domU's --rounds).
        #[arg(long, default_value_t = 2000)]
        rounds: u32,
    },
    /// dom0: the vbd device check (backend daemon here, NBD checks in the domU).
    VbdDom0 {
        /// The frontend domain.
        #[arg(long)]
        domu: DomId,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if matches!(
        args.get(1).map(String::as_str),
        Some("backend" | "frontend")
    ) {
        return xenring_examples::system::node_main(args);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let fails = rt.block_on(async {
        match run(cli.cmd).await {
            Ok(f) => f,
            Err(e) => {
                println!("FAIL xentest: {e:#}");
                1
            }
        }
    });
    ExitCode::from(fails.min(100) as u8)
}

async fn run(cmd: Cmd) -> anyhow::Result<usize> {
    match cmd {
        Cmd::Platform => {
            let (xs, _b) = xenstore().await?;
            let domid = own_domid(&xs).await?;
            let p = XenPlatform::open(domid)?;
            println!("platform xen, domain {domid}");
            Ok(scenarios::run_all(&p).await)
        }
        Cmd::ChanDom0 { domu, stall } => chan_dom0(domu, Duration::from_secs(stall)).await,
        Cmd::Domu {
            chan_bytes,
            bench_bytes,
            rounds,
            streams,
        } => domu_agent(chan_bytes, bench_bytes, rounds, streams).await,
        Cmd::VchanInterop { proxy, bytes } => vchan_interop(&proxy, bytes).await,
        Cmd::BenchDom0 {
            domu,
            bytes,
            rounds,
        } => bench_dom0(domu, bytes, rounds).await,
        Cmd::VbdDom0 { domu } => vbd_dom0(domu).await,
        Cmd::VchanDom0 { domu, bytes } => vchan_dom0(domu, bytes).await,
        Cmd::VchanPeer {
            role,
            peer,
            name,
            bytes,
            order,
        } => vchan_peer(&role, peer, &name, bytes, order).await,
    }
}

async fn xenstore() -> anyhow::Result<(
    XsClient,
    Option<&'static xenring::xenstore::xenbus_dev::XenbusBridge>,
)> {
    connect_xen_xenstore(std::env::var_os("XENSTORED_PATH").map(PathBuf::from))
        .await
        .map_err(|e| anyhow!("{e}"))
}

fn verdict(name: &str, r: anyhow::Result<String>) -> usize {
    match r {
        Ok(what) => {
            println!("PASS {name}: {what}");
            0
        }
        Err(e) => {
            println!("FAIL {name}: {e:#}");
            1
        }
    }
}

/// A child process killed (SIGKILL) if still running when dropped.
struct Kid(Child, &'static str);

impl Kid {
    fn spawn(role: &'static str, args: &[&str], log: &Path) -> anyhow::Result<Kid> {
        let exe = std::env::current_exe()?;
        let f = std::fs::File::create(log)?;
        let child = Command::new(exe)
            .arg(role)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting the {role} daemon"))?;
        Ok(Kid(child, role))
    }

    /// SIGTERM, then wait (at most `patience`, then SIGKILL).
    fn stop(mut self, patience: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let t = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait()? {
                return Ok(st);
            }
            if t.elapsed() > patience {
                let _ = self.0.kill();
                bail!("the {} daemon did not stop within {patience:?}", self.1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------ chan

const CHAN_RESULT: &str = "data/xentest/chan";
/// The domU agent's progress note (for dom0's log).
const CHAN_NOTE: &str = "data/xentest/note";

async fn chan_dom0(domu: DomId, stall: Duration) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let (target, echo) = xenring_examples::system::echo_server().await?;
    let log = PathBuf::from("/tmp/xenring-backend.log");
    let backend = Kid::spawn("backend", &["--platform", "xen", "--devices", "chan"], &log)?;
    let id = DeviceId {
        kind: "chan".into(),
        frontend: domu,
        backend: 0,
        devid: 0,
    };
    let mut spec = DeviceSpec::new(id.clone());
    spec.backend_params.push(("target".into(), target.clone()));
    create_device(&xs, &spec).await?;
    println!("chan: device {id} created (target {target}), waiting for domain {domu}'s verdict");
    let key = format!("/local/domain/{domu}/{CHAN_RESULT}");
    let note = format!("/local/domain/{domu}/{CHAN_NOTE}");
    let r = {
        // Progress every 30 s: the device's states and the domU's agent notes.
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let st = |d: String| {
                    let xs = &xs;
                    async move { xs.read_opt(&format!("{d}/state")).await.ok().flatten() }
                };
                let note = xs
                    .read_opt(&format!("/local/domain/{domu}/{CHAN_NOTE}"))
                    .await
                    .ok()
                    .flatten();
                println!(
                    "chan: waiting; backend state {:?}, frontend state {:?}, domU: {:?}",
                    st(id.backend_dir()).await,
                    st(id.frontend_dir()).await,
                    note
                );
            }
        };
        tokio::select! {
            r = wait_key_unless_stalled(&xs, &key, &note, stall) => r,
            _ = progress => unreachable!(),
        }
    };
    let verdict_r = match r {
        Ok(v) if v.starts_with("ok") => Ok(format!("domU {domu}: {v}")),
        Ok(v) => Err(anyhow!("domU {domu}: {v}")),
        Err(e) => Err(e),
    };
    let fails = finish_device(
        &xs,
        &id,
        backend,
        &log,
        "chan/64MiB_dom0_backend_domU_frontend",
        verdict_r,
    )
    .await;
    echo.abort();
    Ok(fails)
}

/// The end of a dom0 device check: removes device `id`, stops the backend
/// daemon, reports the check as `name` and the teardown as
/// `<kind>/teardown`, and prints the backend's log if either failed.
async fn finish_device(
    xs: &XsClient,
    id: &DeviceId,
    backend: Kid,
    log: &Path,
    name: &str,
    check: anyhow::Result<String>,
) -> usize {
    let rm = remove_device(
        xs,
        id,
        RemoveOptions {
            timeout: Duration::from_secs(30),
            force: false,
        },
    )
    .await;
    let st = backend.stop(Duration::from_secs(20));
    let mut fails = verdict(name, check);
    fails += verdict(
        &format!("{}/teardown", id.kind),
        match (rm, st) {
            (Ok(()), Ok(s)) if s.success() => Ok("device removed, backend exited 0".into()),
            (rm, st) => Err(anyhow!("remove: {rm:?}, backend: {st:?}")),
        },
    );
    if fails > 0 {
        println!(
            "--- backend log\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    fails
}

/// Waits for `key` to appear, as long as the node `note` keeps changing:
/// fails when neither happens for `stall` (a slow run passes, a stalled one
/// fails within `stall`).
async fn wait_key_unless_stalled(
    xs: &XsClient,
    key: &str,
    note: &str,
    stall: Duration,
) -> anyhow::Result<String> {
    let mut last = xs.read_opt(note).await?;
    let mut since = Instant::now();
    loop {
        if let Some(v) = xs.read_opt(key).await? {
            return Ok(v);
        }
        let now = xs.read_opt(note).await?;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= stall {
            bail!("{key} did not appear, and {note} stayed {last:?} for {stall:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How long dom0 waits for a domU check that shows no progress.
const STALL_DOM0: Duration = Duration::from_secs(120);

/// Runs a domU check to its end unless `progress` stands still for
/// [`scenarios::STALL`]; meanwhile writes the count to the progress note
/// every 5 s, so dom0 ([`wait_key_unless_stalled`]) sees it moving.
async fn unless_stalled_noted<T>(
    xs: &XsClient,
    progress: &scenarios::Progress,
    what: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let notes = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let note = format!("{what}: {} bytes", progress.get());
            let _ = xs.write(CHAN_NOTE, &note).await;
        }
    };
    tokio::select! {
        r = scenarios::unless_stalled(progress, scenarios::STALL, what, work) => r,
        _ = notes => unreachable!(),
    }
}

async fn wait_key(xs: &XsClient, key: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut w = xs.watch(key).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = xs.read_opt(key).await? {
            return Ok(v);
        }
        if tokio::time::timeout_at(deadline, w.next()).await.is_err() {
            bail!("{key} did not appear within {timeout:?}");
        }
    }
}

async fn domu_agent(
    chan_bytes: u64,
    bench_bytes: u64,
    rounds: u32,
    streams: bool,
) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let me = own_domid(&xs).await?;
    println!("domU agent: domain {me}");
    let mut fails = 0;
    if streams {
        fails += domu_streams(&xs, me, chan_bytes).await?;
    } else {
        println!("SKIP vchan_domU, chan/domU: not asked for (--streams)");
    }
    // 2. the benchmark peers.
    let p = XenPlatform::open(me)?;
    let bench = domu_bench(&p, &xs, bench_bytes, rounds).await;
    let ok = bench.is_ok();
    fails += verdict("bench/domU", bench);
    // The verdict for dom0, through XenStore: the domU's console can lag
    // behind or lose its last lines when the domain is torn down.
    let line = if ok && fails == 0 {
        "ok".to_string()
    } else {
        format!("fail: {fails} failed checks (see the domU console)")
    };
    xs.write(AGENT_RESULT, &line).await?;
    Ok(fails)
}

/// A check's outcome as the domU leaves it in XenStore for dom0:
/// `ok <what>` or `fail <why>`.
fn outcome_line(r: &anyhow::Result<String>) -> String {
    match r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e:#}"),
    }
}

/// Where the domU agent leaves its verdict (relative to its home).
const AGENT_RESULT: &str = "data/xentest/agent";

/// The cross-domain stream checks: verified vchans with dom0 (our server),
/// then the chan device's frontend.
async fn domu_streams(xs: &XsClient, me: DomId, chan_bytes: u64) -> anyhow::Result<usize> {
    // 0. verified vchans with dom0 (our server, dom0's client).
    let p0 = XenPlatform::open(me)?;
    let mut fails = 0;
    for (port, left, right) in VCHAN_CASES {
        let r = async {
            let addr = VchanAddress {
                server: me,
                client: 0,
                port,
            };
            let server = VchanServer::listen(&p0, xs, addr, left, right).await?;
            let s = tokio::time::timeout(Duration::from_secs(300), server.accept(xs))
                .await
                .map_err(|_| anyhow!("dom0 did not connect"))??;
            // Judged by progress (scenarios::STALL), not by its total time.
            scenarios::pump(s, VCHAN_BYTES, 1).await?;
            anyhow::Ok(format!(
                "orders {left}/{right}: {VCHAN_BYTES} bytes each way verified"
            ))
        }
        .await;
        fails += verdict(&format!("vchan_domU/server_{left}_{right}"), r);
    }
    // 1. chan: the frontend daemon; 4 connections through chan-0.
    let r = domu_chan(xs, chan_bytes).await;
    if r.is_err() {
        let log = std::fs::read_to_string("/tmp/xenring-frontend.log").unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        println!("--- frontend log (last 40 lines)");
        for l in tail.iter().rev() {
            println!("{l}");
        }
    }
    let line = outcome_line(&r);
    xs.write(CHAN_RESULT, &line).await?;
    fails += verdict("chan/domU", r);
    // 2. vbd: the frontend daemon's NBD export, written and read back.
    let r = domu_vbd(xs).await;
    let line = outcome_line(&r);
    xs.write(VBD_RESULT, &line).await?;
    fails += verdict("vbd/domU", r);
    Ok(fails)
}

async fn domu_chan(xs: &XsClient, bytes: u64) -> anyhow::Result<String> {
    let dir = PathBuf::from("/tmp/chan");
    let log = PathBuf::from("/tmp/xenring-frontend.log");
    let fe = Kid::spawn(
        "frontend",
        &[
            "--platform",
            "xen",
            "--devices",
            "chan",
            "--socket-dir",
            "/tmp/chan",
        ],
        &log,
    )?;
    let sock = dir.join("chan-0.sock");
    let _ = xs.write(CHAN_NOTE, "frontend started").await;
    let t = Instant::now();
    while !sock.exists() {
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "{} did not appear; frontend log:\n{}",
                sock.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = xs.write(CHAN_NOTE, "socket up, pushing").await;
    let conns = 4u64;
    let per = bytes / conns;
    let t = Instant::now();
    let progress = scenarios::Progress::default();
    let mut tasks = Vec::new();
    for c in 0..conns as usize {
        tasks.push(tokio::spawn(xenring_examples::system::push_counted(
            sock.clone(),
            c,
            per,
            progress.0.clone(),
        )));
    }
    let all = async {
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    };
    unless_stalled_noted(xs, &progress, "the chan transfer", all).await?;
    let secs = t.elapsed().as_secs_f64();
    let st = fe.stop(Duration::from_secs(20))?;
    if !st.success() {
        bail!(
            "frontend exited {st}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Ok(format!(
        "{} bytes sent and echoed back over {conns} connections, every byte checked, \
         {:.2} s ({:.1} MiB/s each way); frontend exited 0",
        per * conns,
        secs,
        (per * conns) as f64 / (1 << 20) as f64 / secs
    ))
}

// ---------------------------------------------------------- vchan domU

/// The cross-domain vchans: (service port, left order, right order).
const VCHAN_CASES: [(u32, u16, u16); 2] = [(21, 16, 16), (22, 10, 11)];
/// Bytes each way (the domU agent's side; dom0's `--bytes` must match).
const VCHAN_BYTES: usize = 8 << 20;

async fn vchan_dom0(domu: DomId, bytes: usize) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let p = XenPlatform::open(0)?;
    let mut fails = 0;
    for (port, left, right) in VCHAN_CASES {
        let r = async {
            let addr = VchanAddress {
                server: domu,
                client: 0,
                port,
            };
            let s = tokio::time::timeout(Duration::from_secs(300), connect(&p, &xs, addr))
                .await
                .map_err(|_| anyhow!("no vchan from domain {domu}"))??;
            let t = Instant::now();
            scenarios::pump(s, bytes, 2).await?;
            anyhow::Ok(format!(
                "orders {left}/{right}: {bytes} bytes each way verified in {:.2} s",
                t.elapsed().as_secs_f64()
            ))
        }
        .await;
        fails += verdict(&format!("vchan_domU/dom0_client_{left}_{right}"), r);
    }
    Ok(fails)
}

async fn vchan_peer(
    role: &str,
    peer: DomId,
    name: &str,
    bytes: usize,
    order: u16,
) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let me = own_domid(&xs).await?;
    let p = XenPlatform::open(me)?;
    let r = async {
        let t = Instant::now();
        match role {
            "server" => {
                let addr = VchanAddress {
                    server: me,
                    client: peer,
                    port: 0,
                };
                let dir = format!("/local/domain/{me}/data/{name}");
                let (l, r) = if order < 12 { (10, 11) } else { (order, order) };
                let server = VchanServer::listen_at(&p, &xs, addr, &dir, l, r).await?;
                let s = tokio::time::timeout(Duration::from_secs(300), server.accept(&xs))
                    .await
                    .map_err(|_| anyhow!("no client"))??;
                scenarios::pump(s, bytes, 1).await?;
            }
            "client" => {
                let addr = VchanAddress {
                    server: peer,
                    client: me,
                    port: 0,
                };
                let dir = format!("/local/domain/{peer}/data/{name}");
                let s =
                    tokio::time::timeout(Duration::from_secs(300), connect_at(&p, &xs, addr, &dir))
                        .await
                        .map_err(|_| anyhow!("no server at {dir}"))??;
                scenarios::pump(s, bytes, 2).await?;
            }
            other => bail!("--role {other:?}: server or client"),
        }
        anyhow::Ok(format!(
            "{bytes} bytes each way verified in {:.2} s",
            t.elapsed().as_secs_f64()
        ))
    }
    .await;
    Ok(verdict(&format!("vchan_peer/{role}/{name}"), r))
}

// ----------------------------------------------------------------- bench

const BENCH_PORT: u32 = 7;
const EVPORT_KEY: &str = "data/xentest/evport";
/// Written by dom0 when its event round trips are done (the domU's echo
/// stops then).
const EVDONE_KEY: &str = "data/xentest/evdone";

async fn domu_bench(
    p: &dyn Platform,
    xs: &XsClient,
    bytes: u64,
    rounds: u32,
) -> anyhow::Result<String> {
    let me = p.domid();
    // vchan: we serve, dom0 reads `bytes` and closes.
    let addr = VchanAddress {
        server: me,
        client: 0,
        port: BENCH_PORT,
    };
    let server = VchanServer::listen(p, xs, addr, 16, 16).await?;
    let mut s = server.accept(xs).await?;
    let buf = vec![0x5au8; 64 << 10];
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).await?;
        off += n as u64;
    }
    s.flush().await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    drop(s);
    // event channel: an unbound port for dom0, echo every event until dom0
    // says it is done (count-free: Xen marks a port pending when it is
    // bound, so dom0 may see one event more than it sent pings).
    let port = p.alloc_unbound_port(0)?;
    xs.write(EVPORT_KEY, &port.local_port().to_string()).await?;
    let started = Instant::now();
    let mut echoed = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), port.wait()).await {
            Ok(r) => {
                r?;
                port.notify()?;
                echoed += 1;
            }
            Err(_) => {
                if xs.read_opt(EVDONE_KEY).await?.is_some() {
                    break;
                }
                if started.elapsed() > Duration::from_secs(300) {
                    bail!("dom0 did not finish its {rounds} pings within 300 s ({echoed} echoed)");
                }
            }
        }
    }
    port.close()?;
    Ok(format!(
        "served {bytes} vchan bytes and echoed {echoed} events (dom0 sent {rounds} pings)"
    ))
}

async fn bench_dom0(domu: DomId, bytes: u64, rounds: u32) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let p = XenPlatform::open(0)?;
    let r = async {
        let addr = VchanAddress {
            server: domu,
            client: 0,
            port: BENCH_PORT,
        };
        let mut s = tokio::time::timeout(Duration::from_secs(180), connect(&p, &xs, addr))
            .await
            .map_err(|_| anyhow!("no vchan from domain {domu}"))??;
        let t = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                bail!("vchan ended after {got} of {bytes} bytes");
            }
            got += n as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        s.shutdown().await?;
        drop(s);
        let key = format!("/local/domain/{domu}/{EVPORT_KEY}");
        let rport: u32 = wait_key(&xs, &key, Duration::from_secs(120))
            .await?
            .parse()?;
        let ch = p.bind_interdomain(domu, rport)?;
        // Xen marks a port pending when it is bound: one warm-up round
        // trip, then that stray event is drained before the timing.
        ch.notify()?;
        tokio::time::timeout(Duration::from_secs(30), ch.wait())
            .await
            .map_err(|_| anyhow!("no warm-up pong from domain {domu}"))??;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::time::timeout(Duration::from_millis(10), ch.wait()).await;
        let t = Instant::now();
        for i in 0..rounds {
            ch.notify()?;
            tokio::time::timeout(Duration::from_secs(30), ch.wait())
                .await
                .map_err(|_| anyhow!("no pong {i} from domain {domu}"))??;
        }
        let rtt = t.elapsed() / rounds.max(1);
        ch.close()?;
        xs.write(&format!("/local/domain/{domu}/{EVDONE_KEY}"), "1")
            .await?;
        println!(
            "BENCH xenring vchan domU->dom0: {bytes} bytes in {secs:.3} s = {:.1} MiB/s",
            bytes as f64 / (1 << 20) as f64 / secs
        );
        println!(
            "BENCH xenring evtchn dom0<->domU round trip: mean {:.1} us over {rounds}",
            rtt.as_secs_f64() * 1e6
        );
        Ok(format!("vchan {bytes} bytes, {rounds} event round trips"))
    }
    .await;
    Ok(verdict("bench/dom0", r))
}

// ---------------------------------------------------------------- interop

/// Our vchan against libxenvchan's `vchan-socket-proxy` in dom0 (domain 0
/// talking to itself): theirs as client of our server, then ours as client
/// of theirs; each time `bytes` go each way through the proxy's
/// stdin/stdout and are checked.
async fn vchan_interop(proxy: &Path, bytes: usize) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let p = XenPlatform::open(0)?;
    let addr = VchanAddress {
        server: 0,
        client: 0,
        port: 0,
    };
    let mut fails = 0;
    // 1. ours serves, libxenvchan connects.
    let path = "/local/domain/0/data/xentest-vchan-a";
    let r = async {
        if !proxy.exists() {
            bail!("{} is missing (Debian's xen-utils-4.17)", proxy.display());
        }
        let server = VchanServer::listen_at(&p, &xs, addr, path, 12, 12).await?;
        let mut child = tokio::process::Command::new(proxy)
            .args(["-m", "client", "0", path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", proxy.display()))?;
        let stream = tokio::time::timeout(Duration::from_secs(60), server.accept(&xs))
            .await
            .map_err(|_| anyhow!("libxenvchan's client did not connect"))??;
        exchange(stream, &mut child, bytes).await
    }
    .await;
    fails += verdict("vchan_interop/ours_server_libxenvchan_client", r);
    // 2. libxenvchan serves, ours connects.
    let path = "/local/domain/0/data/xentest-vchan-b";
    let r = async {
        let mut child = tokio::process::Command::new(proxy)
            .args(["-m", "server", "0", path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", proxy.display()))?;
        let stream = tokio::time::timeout(Duration::from_secs(60), connect_at(&p, &xs, addr, path))
            .await
            .map_err(|_| anyhow!("libxenvchan's server never appeared at {path}"))??;
        exchange(stream, &mut child, bytes).await
    }
    .await;
    fails += verdict("vchan_interop/libxenvchan_server_ours_client", r);
    Ok(fails)
}

/// `bytes` from us through the vchan out of the proxy's stdout, and
/// `bytes` into its stdin through the vchan to us, concurrently, checked;
/// then stdin closes and the proxy must exit 0 with our side seeing the
/// end of the stream.
async fn exchange(
    stream: xenring::stream::VchanStream,
    child: &mut tokio::process::Child,
    bytes: usize,
) -> anyhow::Result<String> {
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let (mut vr, mut vw) = stream.into_split();
    let t = Instant::now();
    let to_them = async {
        let mut buf = vec![0u8; 32 << 10];
        let mut off = 0;
        while off < bytes {
            let n = (bytes - off).min(buf.len());
            scenarios::fill_stream(&mut buf[..n], off, 0x11);
            vw.write_all(&buf[..n]).await?;
            off += n;
        }
        vw.flush().await?;
        anyhow::Ok(())
    };
    let from_them = async {
        let mut buf = vec![0u8; 32 << 10];
        let mut off = 0;
        while off < bytes {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                bail!("the proxy's stdout ended after {off} of {bytes} bytes");
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != scenarios::stream_byte(off + k, 0x11) {
                    bail!(
                        "byte {} from us arrived wrong at libxenvchan's side",
                        off + k
                    );
                }
            }
            off += n;
        }
        anyhow::Ok(())
    };
    let feed = async {
        let mut buf = vec![0u8; 32 << 10];
        let mut off = 0;
        while off < bytes {
            let n = (bytes - off).min(buf.len());
            scenarios::fill_stream(&mut buf[..n], off, 0x77);
            stdin.write_all(&buf[..n]).await?;
            off += n;
        }
        anyhow::Ok(())
    };
    let from_proxy = async {
        let mut buf = vec![0u8; 32 << 10];
        let mut off = 0;
        while off < bytes {
            let n = vr.read(&mut buf).await?;
            if n == 0 {
                bail!("our vchan ended after {off} of {bytes} bytes from libxenvchan");
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != scenarios::stream_byte(off + k, 0x77) {
                    bail!("byte {} from libxenvchan arrived wrong at ours", off + k);
                }
            }
            off += n;
        }
        anyhow::Ok(())
    };
    let all = async { tokio::try_join!(to_them, from_them, feed, from_proxy) };
    tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .map_err(|_| anyhow!("exchange did not finish within 300 s"))??;
    let secs = t.elapsed().as_secs_f64();
    // Close: stdin EOF makes the proxy close its vchan and exit.
    drop(stdin);
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(30), vr.read_to_end(&mut rest)).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    match eof {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => bail!("{n} unexpected bytes after the data"),
        Ok(Err(e)) => bail!("our end saw an error instead of the end of the stream: {e}"),
        Err(_) => bail!("our end did not see the end of the stream after the proxy closed"),
    }
    match status {
        Ok(Ok(s)) if s.success() => {}
        other => bail!("the proxy did not exit 0: {other:?}"),
    }
    drop(vw);
    Ok(format!(
        "{bytes} bytes each way verified in {secs:.2} s; libxenvchan's close seen as end of stream; proxy exited 0"
    ))
}

// ------------------------------------------------------------------- vbd

/// Where the domU agent leaves the vbd check's verdict (relative to its home).
const VBD_RESULT: &str = "data/xentest/vbd";
/// The vbd's device id (xvda's, as `xl` would number it).
const VBD_DEVID: u32 = 51712;
/// The disk's size.
const VBD_BYTES: u64 = 64 << 20;
/// The regions the domU writes through NBD and dom0 then finds in the
/// image file: (offset, length), unaligned and aligned, small and large
/// (several indirect requests), at the disk's start and end.
const VBD_REGIONS: [(u64, usize); 8] = [
    (0, 512),
    (3 * 4096 + 17, 3),
    (8191, 2),
    ((1 << 20) + 100, 70_000),
    (5 << 20, 1 << 20),
    ((9 << 20) + 4095, (3 << 20) + 2),
    (VBD_BYTES - 5000, 5000),
    ((33 << 20) - 5, 4096),
];
/// Untouched: zeros in the image file and through NBD.
const VBD_UNTOUCHED: (u64, usize) = (40 << 20, 1 << 20);

/// The bytes of a written region: the stream checks' pattern at the disk
/// offset (side 0x5b), so a misplaced sector shows.
fn vbd_region(offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    scenarios::fill_stream(&mut v, offset as usize, 0x5b);
    v
}

/// The domU's side of the vbd check: the frontend daemon exports the disk
/// dom0's backend serves as `vbd-<devid>.sock`; the regions are written,
/// flushed, read back and compared, and an untouched range reads zeros.
async fn domu_vbd(xs: &XsClient) -> anyhow::Result<String> {
    use xenring_frontend::nbd::NbdClient;
    let dir = PathBuf::from("/tmp/vbd");
    std::fs::create_dir_all(&dir)?;
    let log = PathBuf::from("/tmp/xenring-frontend-vbd.log");
    let fe = Kid::spawn(
        "frontend",
        // Only vbd: a chan frontend here would take the chan device up
        // again while dom0 removes it.
        &[
            "--platform",
            "xen",
            "--devices",
            "vbd",
            "--socket-dir",
            "/tmp/vbd",
        ],
        &log,
    )?;
    let _ = xs.write(CHAN_NOTE, "vbd frontend started").await;
    let sock = dir.join(format!("vbd-{VBD_DEVID}.sock"));
    let t = Instant::now();
    let c = loop {
        if sock.exists() {
            if let Ok(c) = NbdClient::connect_unix(&sock).await {
                break c;
            }
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "no NBD export at {} within 300 s; frontend log:\n{}",
                sock.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if c.size() != VBD_BYTES {
        bail!("the export is {} bytes, the disk {VBD_BYTES}", c.size());
    }
    let t = Instant::now();
    let progress = scenarios::Progress::default();
    let check = async {
        for (off, len) in VBD_REGIONS {
            c.write(off, &vbd_region(off, len), false)
                .await
                .with_context(|| format!("writing {len} bytes at {off}"))?;
            progress.add(len as u64);
        }
        c.flush().await.context("flush")?;
        for (off, len) in VBD_REGIONS {
            let got = c
                .read(off, len as u32)
                .await
                .with_context(|| format!("reading {len} bytes at {off}"))?;
            let want = vbd_region(off, len);
            if let Some(k) = (0..len).find(|&k| got[k] != want[k]) {
                bail!(
                    "byte {} read back wrong (region {off}+{len})",
                    off + k as u64
                );
            }
            progress.add(len as u64);
        }
        let (off, len) = VBD_UNTOUCHED;
        let got = c
            .read(off, len as u32)
            .await
            .context("reading the untouched range")?;
        if let Some(k) = got.iter().position(|b| *b != 0) {
            bail!("untouched byte {} is not zero", off + k as u64);
        }
        anyhow::Ok(())
    };
    unless_stalled_noted(xs, &progress, "the vbd check", check).await?;
    let secs = t.elapsed().as_secs_f64();
    c.disconnect().await?;
    let st = fe.stop(Duration::from_secs(20))?;
    if !st.success() {
        bail!(
            "frontend exited {st}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let bytes: usize = VBD_REGIONS.iter().map(|r| r.1).sum();
    Ok(format!(
        "{} regions ({bytes} bytes, 3 B to 3 MiB, unaligned) written through NBD, \
         flushed and read back equal, untouched range zero, {secs:.2} s; frontend exited 0",
        VBD_REGIONS.len()
    ))
}

/// dom0's side of the vbd check: a 64 MiB raw image served by the backend
/// daemon (`--platform xen`) as vbd `VBD_DEVID` of the domU; after the
/// domU's verdict the image file itself must hold the regions it wrote.
/// dom0-job.sh unloads the kernel's xen-blkback first, which would claim
/// `backend/vbd` too.
async fn vbd_dom0(domu: DomId) -> anyhow::Result<usize> {
    let (xs, _b) = xenstore().await?;
    let image = PathBuf::from("/tmp/xentest-vbd.img");
    std::fs::File::create(&image)?.set_len(VBD_BYTES)?;
    let log = PathBuf::from("/tmp/xenring-backend-vbd.log");
    let backend = Kid::spawn("backend", &["--platform", "xen", "--devices", "vbd"], &log)?;
    let id = DeviceId {
        kind: "vbd".into(),
        frontend: domu,
        backend: 0,
        devid: VBD_DEVID,
    };
    let mut spec = DeviceSpec::new(id.clone());
    spec.backend_params
        .push(("params".into(), image.display().to_string()));
    spec.backend_params.push(("mode".into(), "w".into()));
    create_device(&xs, &spec).await?;
    println!(
        "vbd: device {id} created ({}), waiting for domain {domu}'s verdict",
        image.display()
    );
    let key = format!("/local/domain/{domu}/{VBD_RESULT}");
    let note = format!("/local/domain/{domu}/{CHAN_NOTE}");
    let r = match wait_key_unless_stalled(&xs, &key, &note, STALL_DOM0).await {
        Ok(v) if v.starts_with("ok") => {
            // The bytes must be in the file, where the domU cannot look.
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&image)?;
            let mut bad = None;
            for (off, len) in VBD_REGIONS {
                let mut got = vec![0u8; len];
                f.read_exact_at(&mut got, off)?;
                if got != vbd_region(off, len) {
                    bad = Some(format!("region {off}+{len} differs in the image file"));
                    break;
                }
            }
            let (off, len) = VBD_UNTOUCHED;
            let mut got = vec![0u8; len];
            f.read_exact_at(&mut got, off)?;
            if bad.is_none() && got.iter().any(|b| *b != 0) {
                bad = Some("the untouched range is not zero in the image file".into());
            }
            match bad {
                None => Ok(format!(
                    "domU {domu}: {v}; the image file holds every region"
                )),
                Some(b) => Err(anyhow!("domU {domu} said {v}, but {b}")),
            }
        }
        Ok(v) => Err(anyhow!("domU {domu}: {v}")),
        Err(e) => Err(e),
    };
    Ok(finish_device(&xs, &id, backend, &log, "vbd/dom0_backend_domU_frontend", r).await)
}
