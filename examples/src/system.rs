//! A whole simulated system in one process tree: a simulated host embedded
//! in this process, domains created up front (as a toolstack would), the
//! backend and frontend daemons as child processes joined to their
//! domains, and this process acting as dom0's toolstack through XenStore.
//! The demo (`xenring-demo`) and the integration tests are built on it.
//!
//! ```text
//!   this process: SimHost (control socket, xenstored) + toolstack (dom0)
//!     |-- child: backend daemon   (domain 0)
//!     `-- child: frontend daemon  (domain N) -- chan sockets in <dir>/dom<N>/
//! ```
//!
//! XenStore: this process's client is dom0's, on the host's dom0 socket;
//! the daemons get their domain's socket in `XENSTORED_PATH`. Several
//! [`System`]s can live in one process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use xenring::abi::xenbus::XenbusState;
use xenring::sim::{HostConfig, HostReport, SimHost};
use xenring::xenbus::{
    create_device, read_state, remove_device, DeviceId, DeviceSpec, RemoveOptions,
};
use xenring::xenstore::XsClient;

/// Runs the daemon named by `args[1]` (`backend` or `frontend`) with the
/// rest of `args`, or a host in a process of its own (`host`); the
/// programs a [`System`] spawns call this.
pub fn node_main(args: Vec<String>) -> std::process::ExitCode {
    use clap::Parser;
    let mut it = args.into_iter();
    let prog = it.next().unwrap_or_default();
    let role = it.next().unwrap_or_default();
    if role == "host" {
        return host_main(it.collect());
    }
    let rest = std::iter::once(format!("{prog} {role}")).chain(it);
    match role.as_str() {
        "backend" => xenring_backend::cli::main_with(xenring_backend::cli::Args::parse_from(rest)),
        "frontend" => {
            xenring_frontend::cli::main_with(xenring_frontend::cli::Args::parse_from(rest))
        }
        other => {
            eprintln!("{prog}: unknown role {other:?} (backend, frontend or host)");
            std::process::ExitCode::from(2)
        }
    }
}

/// `host SOCKET DOMID...`: a simulated host in a process of its own (so a
/// test can `kill -9` it), with the domains named created; prints `ready`
/// and serves until killed.
fn host_main(args: Vec<String>) -> std::process::ExitCode {
    let Some((socket, domids)) = args.split_first() else {
        eprintln!("usage: host SOCKET DOMID...");
        return std::process::ExitCode::from(2);
    };
    let host = match SimHost::start(socket, HostConfig::default()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("host: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    for d in domids {
        if let Err(e) = d
            .parse::<u16>()
            .map_err(|e| e.to_string())
            .and_then(|d| host.create_domain(d).map(|_| d).map_err(|e| e.to_string()))
            .and_then(|d| host.xenstore_path(d).map_err(|e| e.to_string()))
        {
            eprintln!("host: domain {d}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// A daemon process.
#[derive(Debug)]
pub struct Daemon {
    /// `backend` or `frontend`, and its domain.
    pub name: String,
    child: Child,
    log: PathBuf,
    out: Option<PathBuf>,
}

impl Daemon {
    /// A daemon this process started itself (`child`, logging to `log`).
    pub fn from_child(name: String, child: Child, log: PathBuf) -> Daemon {
        Daemon {
            name,
            child,
            log,
            out: None,
        }
    }

    /// What it printed on stdout so far (its summary lines on exit).
    pub fn out(&self) -> String {
        self.out
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits for it to exit (at most `timeout`; killed after that).
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the {} daemon did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its stderr (logs) goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: rustix::process::Signal) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32)
            .ok_or_else(|| anyhow!("bad pid"))?;
        rustix::process::kill_process(pid, sig)
            .with_context(|| format!("signalling the {} daemon", self.name))
    }

    /// SIGKILL, and reap it.
    pub fn kill9(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(rustix::process::Signal::KILL)?;
        Ok(self.child.wait()?)
    }

    /// SIGTERM, and wait for it to exit (at most `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the {} daemon did not exit within {timeout:?} of SIGTERM; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A simulated host with its toolstack.
#[derive(Debug)]
pub struct System {
    host: SimHost,
    dir: PathBuf,
    node: PathBuf,
    xs: XsClient,
}

impl System {
    /// Starts a host with its sockets in `dir`, creates domain 0, and
    /// connects this process to XenStore as dom0. `node` is the program
    /// whose `backend`/`frontend` roles run the daemons (see
    /// [`node_main`]).
    pub async fn start(dir: &Path, node: PathBuf, cfg: HostConfig) -> anyhow::Result<System> {
        let host = SimHost::start(dir.join("sim.sock"), cfg).context("starting the sim host")?;
        host.create_domain(0)
            .map_err(|e| anyhow!("creating domain 0: {e}"))?;
        let xs_path = host.xenstore_path(0)?;
        let xs = XsClient::connect(&xs_path)
            .await
            .context("connecting to XenStore as dom0")?;
        Ok(System {
            host,
            dir: dir.to_path_buf(),
            node,
            xs,
        })
    }

    /// The embedded host.
    pub fn host(&self) -> &SimHost {
        &self.host
    }

    /// This process's XenStore client (dom0, privileged).
    pub fn xs(&self) -> &XsClient {
        &self.xs
    }

    /// Creates domain `domid` (it lives until destroyed).
    pub fn create_domain(&self, domid: u16) -> anyhow::Result<()> {
        self.host
            .create_domain(domid)
            .map_err(|e| anyhow!("creating domain {domid}: {e}"))
    }

    /// Destroys domain `domid` and everything in it.
    pub fn destroy_domain(&self, domid: u16) -> anyhow::Result<()> {
        self.host
            .destroy_domain(domid)
            .map_err(|e| anyhow!("destroying domain {domid}: {e}"))
    }

    /// The directory of domain `domid`'s chan sockets.
    pub fn socket_dir(&self, domid: u16) -> PathBuf {
        self.dir.join(format!("dom{domid}"))
    }

    /// The Unix socket of chan device `devid` in frontend domain `domid`.
    pub fn chan_socket(&self, domid: u16, devid: u32) -> PathBuf {
        self.socket_dir(domid).join(format!("chan-{devid}.sock"))
    }

    fn spawn(&self, role: &str, domid: u16, extra: &[&str]) -> anyhow::Result<Daemon> {
        self.spawn_with(None, role, domid, extra)
    }

    fn spawn_with(
        &self,
        netns: Option<&str>,
        role: &str,
        domid: u16,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        let name = format!("{role}-dom{domid}");
        // A restarted daemon gets new files: name.log, name.1.log, ...
        let mut n = 0;
        let file_name = |n: usize, ext: &str| match n {
            0 => self.dir.join(format!("{name}.{ext}")),
            n => self.dir.join(format!("{name}.{n}.{ext}")),
        };
        while file_name(n, "log").exists() {
            n += 1;
        }
        let log_path = file_name(n, "log");
        let file = std::fs::File::create(&log_path)?;
        let out_path = file_name(n, "out");
        let out = std::fs::File::create(&out_path)?;
        let mut cmd = match netns {
            None => Command::new(&self.node),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.node);
                c
            }
        };
        cmd.arg(role)
            .args(extra)
            .env("XENRING_PLATFORM", "sim")
            .env("XENRING_SIM_SOCKET", self.host.control_path())
            .env("XENRING_DOMID", domid.to_string())
            .env("XENSTORED_PATH", self.host.xenstore_path(domid)?)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| xenring::xenbus::cli::DEFAULT_LOG.into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file);
        if role == "frontend" {
            cmd.env("XENRING_SOCKET_DIR", self.socket_dir(domid));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.node.display()))?;
        Ok(Daemon {
            name,
            child,
            log: log_path,
            out: Some(out_path),
        })
    }

    /// Starts a backend daemon as domain `domid`.
    pub fn spawn_backend(&self, domid: u16, extra: &[&str]) -> anyhow::Result<Daemon> {
        self.spawn("backend", domid, extra)
    }

    /// Starts a frontend daemon as domain `domid` (sockets in
    /// [`System::socket_dir`]).
    pub fn spawn_frontend(&self, domid: u16, extra: &[&str]) -> anyhow::Result<Daemon> {
        self.spawn("frontend", domid, extra)
    }

    /// Starts a backend daemon as domain `domid` inside network namespace
    /// `netns` (through `ip netns exec`; the host is reached by its Unix
    /// sockets, which work across namespaces).
    pub fn spawn_backend_in(
        &self,
        netns: &str,
        domid: u16,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        self.spawn_with(Some(netns), "backend", domid, extra)
    }

    /// Starts a frontend daemon as domain `domid` inside network namespace
    /// `netns`.
    pub fn spawn_frontend_in(
        &self,
        netns: &str,
        domid: u16,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        self.spawn_with(Some(netns), "frontend", domid, extra)
    }

    /// Writes the nodes of device `kind`/`fe`/`devid` (backend dom0) with
    /// these backend and frontend keys, as the toolstack does.
    async fn add_device(
        &self,
        kind: &str,
        fe: u16,
        devid: u32,
        backend_params: &[(&str, &str)],
        frontend_params: &[(&str, &str)],
    ) -> anyhow::Result<DeviceId> {
        let id = DeviceId {
            kind: kind.into(),
            frontend: fe,
            backend: 0,
            devid,
        };
        let own = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut spec = DeviceSpec::new(id.clone());
        spec.backend_params = own(backend_params);
        spec.frontend_params = own(frontend_params);
        create_device(&self.xs, &spec).await?;
        Ok(id)
    }

    /// Adds vif (network) device `devid` of frontend domain `fe` (backend
    /// dom0) with extra backend keys (`tap`, `mtu`) and frontend keys
    /// (`tap`, `mtu`, `rx-mode`).
    pub async fn add_vif(
        &self,
        fe: u16,
        devid: u32,
        backend_params: &[(&str, &str)],
        frontend_params: &[(&str, &str)],
    ) -> anyhow::Result<DeviceId> {
        self.add_device("vif", fe, devid, backend_params, frontend_params)
            .await
    }

    /// Adds chan device `devid` of frontend domain `fe` (backend dom0)
    /// whose channels go to `target` (`unix:/path` or `tcp:host:port`).
    pub async fn add_chan(&self, fe: u16, devid: u32, target: &str) -> anyhow::Result<DeviceId> {
        self.add_device("chan", fe, devid, &[("target", target)], &[])
            .await
    }

    /// Adds vbd device `devid` of frontend domain `fe` (backend dom0)
    /// serving the raw image `image` (`params`), read-only if `readonly`
    /// (`mode` = `r`, else `w`), as `xl block-attach` writes it.
    pub async fn add_vbd(
        &self,
        fe: u16,
        devid: u32,
        image: &Path,
        readonly: bool,
    ) -> anyhow::Result<DeviceId> {
        self.add_vbd_with(fe, devid, image, readonly, &[]).await
    }

    /// [`System::add_vbd`] with extra frontend keys (e.g. `nbd-tcp` =
    /// `127.0.0.1:0` for an NBD export on loopback TCP too).
    pub async fn add_vbd_with(
        &self,
        fe: u16,
        devid: u32,
        image: &Path,
        readonly: bool,
        frontend_keys: &[(&str, &str)],
    ) -> anyhow::Result<DeviceId> {
        let image = image.display().to_string();
        let mode = if readonly { "r" } else { "w" };
        self.add_device(
            "vbd",
            fe,
            devid,
            &[("params", &image), ("mode", mode)],
            frontend_keys,
        )
        .await
    }

    /// The NBD socket of vbd device `devid` in frontend domain `domid`.
    pub fn vbd_socket(&self, domid: u16, devid: u32) -> PathBuf {
        self.socket_dir(domid).join(format!("vbd-{devid}.sock"))
    }

    /// Removes a device as `xl device-detach` would (waits for the backend
    /// to close, at most `timeout`).
    pub async fn remove(&self, id: &DeviceId, timeout: Duration) -> anyhow::Result<()> {
        remove_device(
            &self.xs,
            id,
            RemoveOptions {
                timeout,
                force: false,
            },
        )
        .await?;
        Ok(())
    }

    /// The two ends' states.
    pub async fn states(&self, id: &DeviceId) -> anyhow::Result<(XenbusState, XenbusState)> {
        Ok((
            read_state(&self.xs, &id.backend_dir()).await?,
            read_state(&self.xs, &id.frontend_dir()).await?,
        ))
    }

    /// Waits until both ends of `id` are Connected.
    pub async fn wait_connected(&self, id: &DeviceId, timeout: Duration) -> anyhow::Result<()> {
        self.wait_states(id, XenbusState::Connected, XenbusState::Connected, timeout)
            .await
    }

    /// Waits until the backend is `be` and the frontend `fe`.
    pub async fn wait_states(
        &self,
        id: &DeviceId,
        be: XenbusState,
        fe: XenbusState,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        let mut wb = self
            .xs
            .watch(&format!("{}/state", id.backend_dir()))
            .await?;
        let mut wf = self
            .xs
            .watch(&format!("{}/state", id.frontend_dir()))
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.states(id).await?;
            if now == (be, fe) {
                return Ok(());
            }
            let wait = async {
                tokio::select! {
                    _ = wb.next() => {}
                    _ = wf.next() => {}
                }
            };
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                bail!(
                    "device {id}: still backend {} / frontend {} after {timeout:?} \
                     (waiting for {} / {})",
                    now.0.name(),
                    now.1.name(),
                    be.name(),
                    fe.name()
                );
            }
        }
    }

    /// The host's report now.
    pub fn report(&self) -> HostReport {
        self.host.report()
    }

    /// Waits until the host reports no leak (resources are released
    /// asynchronously as processes exit), at most `timeout`.
    pub async fn wait_clean(&self, timeout: Duration) -> anyhow::Result<HostReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.report();
            if r.leaks().is_empty() {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "the simulated host still reports leaks after {timeout:?}:\n  {}",
                    r.leaks().join("\n  ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the host.
    pub fn shutdown(self) {
        self.host.shutdown()
    }
}

/// The byte at offset `i` of connection `c`'s data.
fn pattern(c: usize, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(c as u64 * 7) % 251) as u8
}

/// A TCP echo server on loopback; returns its `tcp:` target and task.
pub async fn echo_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok((format!("tcp:{addr}"), task))
}

/// Sends `n` bytes of connection `c`'s pattern through `sock` and checks
/// that the same bytes come back.
pub async fn push(sock: PathBuf, c: usize, n: u64) -> anyhow::Result<()> {
    push_counted(sock, c, n, Default::default()).await
}

/// [`push`], adding the bytes that came back to `echoed` as they arrive
/// (for a caller that judges a slow transfer by its progress).
pub async fn push_counted(
    sock: PathBuf,
    c: usize,
    n: u64,
    echoed: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<()> {
    let s = UnixStream::connect(&sock)
        .await
        .with_context(|| format!("connecting to {}", sock.display()))?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        while off < n {
            let len = (n - off).min(buf.len() as u64) as usize;
            for (k, b) in buf[..len].iter_mut().enumerate() {
                *b = pattern(c, off + k as u64);
            }
            w.write_all(&buf[..len]).await?;
            off += len as u64;
        }
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0u64;
    while off < n {
        let got = r.read(&mut buf).await?;
        if got == 0 {
            bail!("connection {c}: the channel closed after {off} of {n} bytes");
        }
        for (k, b) in buf[..got].iter().enumerate() {
            let want = pattern(c, off + k as u64);
            if *b != want {
                bail!(
                    "connection {c}: byte {} came back as {b:#04x}, sent {want:#04x}",
                    off + k as u64
                );
            }
        }
        off += got as u64;
        echoed.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
    }
    writer.await??;
    Ok(())
}
