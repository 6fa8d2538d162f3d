//! The simulated system's part of the benchmark: start it, run the phases,
//! take the readings, stop it and check it is clean. Figures are made of
//! the readings in `main.rs`.
//!
//! Phases, in order: readings with no device; a burst of `n` creates
//! (round robin over the frontend domains); readings with `n` idle
//! devices; 64 KiB through each device both ways and readings again;
//! removal of the `n`, one after another, and readings; then 64 creates
//! one at a time on the first frontend domain, their removal one at a
//! time, and readings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use xenring::platform::Platform;
use xenring::sim::{DomainReport, HostConfig, HostReport, SimDomain};
use xenring::xenbus::device::{DeviceError, DeviceInfo};
use xenring::xenbus::task::{run_device, Conn, Driver, TaskConfig};
use xenring::xenbus::{DeviceId, Side};
use xenring::xenstore::XsClient;
use xenring_examples::system::{echo_server, push, Daemon, System};

use crate::mem::{self, Mem};
use crate::tracker::Tracker;
use crate::{env_or, keep_logs, logs_dir};

/// Devices per frontend domain (a frontend daemon needs one XenStore watch
/// per device + 1; C xenstored's default quota is 128 per domain).
pub const PER_FRONTEND: usize = 64;
/// Devices created one at a time.
pub const SEQUENTIAL: usize = 64;
/// Bytes pushed through each device (both ways) in the traffic phase.
pub const TRAFFIC: u64 = 64 << 10;
/// Longest wait for any one step.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Memory of the three kinds of process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snap {
    /// The backend daemon.
    pub backend: Mem,
    /// The frontend daemons, summed.
    pub frontends: Mem,
    /// This process: the embedded host and xenstored, the toolstack, the
    /// echo server.
    pub host: Mem,
}

impl Snap {
    fn read(backend: &Daemon, frontends: &[Daemon]) -> Snap {
        let fes: Vec<Mem> = frontends.iter().map(|d| Mem::read(d.pid())).collect();
        Snap {
            backend: Mem::read(backend.pid()),
            frontends: Mem::sum(&fes),
            host: Mem::read(std::process::id()),
        }
    }
}

/// What the host says all domains hold, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    /// Frames owned by the frontend domains.
    pub fe_frames: u64,
    /// Frames owned by dom0.
    pub be_frames: u64,
    /// Valid grant entries.
    pub grants: u64,
    /// Pages mapped (by anyone).
    pub mapped: u64,
    /// Event-channel ports open.
    pub ports: u64,
}

impl Held {
    fn of(r: &HostReport) -> Held {
        let sum = |f: &dyn Fn(&DomainReport) -> u64| r.domains.iter().map(f).sum::<u64>();
        Held {
            fe_frames: sum(&|d| if d.domid == 0 { 0 } else { d.frames_owned }),
            be_frames: sum(&|d| if d.domid == 0 { d.frames_owned } else { 0 }),
            grants: sum(&|d| d.grants_valid.into()),
            mapped: sum(&|d| d.mapped_pages.into()),
            ports: sum(&|d| d.ports.into()),
        }
    }
}

/// Everything the system part measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Devices in the burst.
    pub n: usize,
    /// Frontend domains (and daemons).
    pub frontends: usize,
    /// Whether the burst's creates ran concurrently.
    pub create_at_once: bool,
    /// Whether the burst's devices were removed concurrently.
    pub remove_at_once: bool,
    /// Memory with no device.
    pub idle0: Snap,
    /// With `n` idle devices.
    pub idle: Snap,
    /// After traffic through each.
    pub traffic: Snap,
    /// After the `n` were removed.
    pub removed: Snap,
    /// After the sequential phase.
    pub cycled: Snap,
    /// Burst: until the last create returned.
    pub burst_created: Duration,
    /// Burst: until the last device was Connected.
    pub burst_connected: Duration,
    /// Burst: each device's create -> Connected.
    pub burst_each: Vec<Duration>,
    /// CPU ms spent during the burst: backend, frontends, this process.
    pub burst_cpu: [f64; 3],
    /// Held with `n` Connected devices.
    pub held_connected: Held,
    /// Held after the `n` were removed (daemons running).
    pub held_removed: Held,
    /// Held after the sequential phase (daemons running).
    pub held_cycled: Held,
    /// XenStore nodes of one device (both directories).
    pub nodes: u64,
    /// Removal of the `n`: total.
    pub removal_total: Duration,
    /// Removal of the `n`: each (empty when concurrent).
    pub removal_each: Vec<Duration>,
    /// Sequential creates: create -> both Connected.
    pub seq_setup: Vec<Duration>,
    /// Of which the toolstack's create_device.
    pub seq_create: Vec<Duration>,
    /// Of which created -> both Connected.
    pub seq_connect: Vec<Duration>,
    /// Sequential removals.
    pub seq_remove: Vec<Duration>,
    /// Bytes of one device task's future (one per device per daemon).
    pub task_size: usize,
    /// Event-channel notifications over the whole run: sent by the
    /// backend, received by it, sent by the frontends, received by them.
    pub events: [f64; 4],
}

fn logs(backend: &Daemon, frontends: &[Daemon]) -> String {
    let mut s = format!("backend log:\n{}", backend.log());
    for d in frontends {
        s.push_str(&format!("\n{} log:\n{}", d.name, d.log()));
    }
    s
}

async fn wait_started(d: &Daemon) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while !d.log().contains("daemon started") {
        if Instant::now() > deadline {
            anyhow::bail!("the {} daemon did not start; its log:\n{}", d.name, d.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn chan_id(fe: u16, devid: u32) -> DeviceId {
    DeviceId {
        kind: "chan".into(),
        frontend: fe,
        backend: 0,
        devid,
    }
}

fn cpu(backend: &Daemon, frontends: &[Daemon]) -> [f64; 3] {
    [
        mem::cpu_ms(backend.pid()),
        frontends.iter().map(|d| mem::cpu_ms(d.pid())).sum(),
        mem::cpu_ms(std::process::id()),
    ]
}

/// Nodes at and below `path`.
async fn count_nodes(xs: &XsClient, path: &str) -> anyhow::Result<u64> {
    let mut stack = vec![path.to_string()];
    let mut n = 0;
    while let Some(p) = stack.pop() {
        n += 1;
        for k in xs.directory(&p).await? {
            stack.push(format!("{p}/{k}"));
        }
    }
    Ok(n)
}

/// A counter of the `chan key=value ...` line a daemon prints on stdout
/// when it stops (beside its log, as `.out`).
fn counter(log: &Path, key: &str) -> f64 {
    let out = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("chan "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Copies the smaps of the backend and the first frontend daemon into the
/// kept logs, named after `phase`.
fn keep_smaps(backend: &Daemon, frontends: &[Daemon], phase: &str) -> anyhow::Result<()> {
    if keep_logs() {
        let dir = logs_dir()?;
        for (name, pid) in [
            ("backend", backend.pid()),
            ("frontend-1", frontends[0].pid()),
        ] {
            let _ = std::fs::copy(
                format!("/proc/{pid}/smaps"),
                dir.join(format!("{name}.{phase}.smaps")),
            );
        }
    }
    Ok(())
}

/// A driver that does nothing, to size a device task's future.
struct Probe;

impl Driver for Probe {
    fn side(&self) -> Side {
        Side::Backend
    }
    fn features(&self, _: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        Ok(Vec::new())
    }
    fn start(&self, _: Conn) -> BoxFuture<'static, Result<(), DeviceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Bytes of the future a daemon spawns per device (`run_device`), which
/// lives as long as the device: built, measured and dropped, never run.
fn device_task_size(sys: &System) -> anyhow::Result<usize> {
    let platform: Arc<dyn Platform> = Arc::new(SimDomain::connect(sys.host().control_path(), 0)?);
    let cfg = TaskConfig {
        xs: sys.xs().clone(),
        platform,
        id: chan_id(1, 0),
        grace: Duration::from_secs(1),
    };
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let fut = run_device(cfg, Arc::new(Probe), rx, Default::default());
    Ok(std::mem::size_of_val(&fut))
}

/// Runs the whole system part with `n` devices, waiting `settle` before
/// each reading.
pub async fn run(n: usize, settle: Duration) -> anyhow::Result<Measured> {
    let n_fe = n.div_ceil(PER_FRONTEND);
    let fes: Vec<u16> = (1..=n_fe as u16).collect();
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    for fe in &fes {
        sys.create_domain(*fe)?;
    }
    let (target, echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontends = fes
        .iter()
        .map(|fe| sys.spawn_frontend(*fe, &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_started(&backend).await?;
    for d in &frontends {
        wait_started(d).await?;
    }
    let (tracker, tracking) = Tracker::start(&sys.host().xenstore_path(0)?, &fes).await?;
    let task_size = device_task_size(&sys)?;
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e:#}\n{}", logs(&backend, &frontends));
    let mut m = Measured {
        n,
        frontends: n_fe,
        create_at_once: env_or("XENRING_BENCH_CREATE_AT_ONCE", 0) != 0,
        remove_at_once: env_or("XENRING_BENCH_REMOVE_AT_ONCE", 0) != 0,
        task_size,
        ..Measured::default()
    };

    println!("settling, then reading memory with no device");
    tokio::time::sleep(settle).await;
    m.idle0 = Snap::read(&backend, &frontends);

    // The burst, round robin over the frontend domains: one create after
    // another as a toolstack script would, or all at once.
    println!("creating {n} devices in a burst");
    let ids: Vec<DeviceId> = (0..n)
        .map(|k| chan_id(fes[k % n_fe], 1000 + (k / n_fe) as u32))
        .collect();
    for id in &ids {
        tracker.add(id);
    }
    let cpu0 = cpu(&backend, &frontends);
    let t0 = Instant::now();
    let mut created = Vec::with_capacity(n);
    if m.create_at_once {
        let add = |id: &DeviceId| sys.add_chan(id.frontend, id.devid, &target);
        for r in futures::future::join_all(ids.iter().map(add)).await {
            r.map_err(fail)?;
            created.push(t0);
        }
    } else {
        for id in &ids {
            created.push(Instant::now());
            sys.add_chan(id.frontend, id.devid, &target)
                .await
                .map_err(fail)?;
        }
    }
    m.burst_created = t0.elapsed();
    let mut last = t0;
    for (id, c) in ids.iter().zip(&created) {
        let t = tracker.connected(id, TIMEOUT).await.map_err(fail)?;
        m.burst_each.push(t - *c);
        last = last.max(t);
    }
    m.burst_connected = last - t0;
    let cpu1 = cpu(&backend, &frontends);
    m.burst_cpu = [0, 1, 2].map(|k| cpu1[k] - cpu0[k]);
    m.held_connected = Held::of(&sys.report());
    m.nodes = count_nodes(sys.xs(), &ids[0].frontend_dir()).await?
        + count_nodes(sys.xs(), &ids[0].backend_dir()).await?;

    println!("settling, then reading memory with {n} idle devices");
    tokio::time::sleep(settle).await;
    m.idle = Snap::read(&backend, &frontends);
    keep_smaps(&backend, &frontends, "idle")?;

    println!("pushing {} KiB through each device", TRAFFIC >> 10);
    let pushes: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(c, id)| tokio::spawn(push(sys.chan_socket(id.frontend, id.devid), c, TRAFFIC)))
        .collect();
    for p in pushes {
        p.await?.map_err(fail)?;
    }
    tokio::time::sleep(settle).await;
    m.traffic = Snap::read(&backend, &frontends);
    keep_smaps(&backend, &frontends, "traffic")?;

    // Removal of the n, one after another (`xl device-detach` in a loop),
    // or all at once.
    println!("removing the {n} devices");
    let t0 = Instant::now();
    if m.remove_at_once {
        let all = futures::future::join_all(ids.iter().map(|id| sys.remove(id, TIMEOUT))).await;
        for r in all {
            r.map_err(fail)?;
        }
    } else {
        for id in &ids {
            let t = Instant::now();
            sys.remove(id, TIMEOUT).await.map_err(fail)?;
            m.removal_each.push(t.elapsed());
        }
    }
    m.removal_total = t0.elapsed();
    for id in &ids {
        tracker.forget(id);
    }
    tokio::time::sleep(settle).await;
    m.removed = Snap::read(&backend, &frontends);
    m.held_removed = Held::of(&sys.report());
    keep_smaps(&backend, &frontends, "removed")?;

    // One at a time, on the first frontend domain.
    println!("creating {SEQUENTIAL} devices one at a time, then removing them");
    let mut seq_ids = Vec::with_capacity(SEQUENTIAL);
    for devid in 0..SEQUENTIAL as u32 {
        let id = chan_id(fes[0], devid);
        tracker.add(&id);
        let t0 = Instant::now();
        sys.add_chan(id.frontend, id.devid, &target)
            .await
            .map_err(fail)?;
        let made = Instant::now();
        let t = tracker.connected(&id, TIMEOUT).await.map_err(fail)?;
        m.seq_setup.push(t - t0);
        m.seq_create.push(made - t0);
        m.seq_connect.push(t.saturating_duration_since(made));
        seq_ids.push(id);
    }
    for id in &seq_ids {
        let t0 = Instant::now();
        sys.remove(id, TIMEOUT).await.map_err(fail)?;
        m.seq_remove.push(t0.elapsed());
        tracker.forget(id);
    }
    tokio::time::sleep(settle).await;
    m.cycled = Snap::read(&backend, &frontends);
    m.held_cycled = Held::of(&sys.report());

    // Stop everything; the daemons print their counters as they stop.
    println!("stopping the daemons");
    tracking.abort();
    let logs_before = logs(&backend, &frontends);
    let be_log = backend.log_path().to_path_buf();
    let fe_logs: Vec<PathBuf> = frontends
        .iter()
        .map(|d| d.log_path().to_path_buf())
        .collect();
    for d in frontends {
        let name = d.name.clone();
        let st = d.terminate(Duration::from_secs(30))?;
        anyhow::ensure!(st.success(), "{name} exited with {st}\n{logs_before}");
    }
    let st = backend.terminate(Duration::from_secs(30))?;
    anyhow::ensure!(st.success(), "the backend exited with {st}\n{logs_before}");
    if keep_logs() {
        let keep = logs_dir()?;
        for p in std::iter::once(&be_log).chain(&fe_logs) {
            for f in [p.clone(), p.with_extension("out")] {
                std::fs::copy(&f, keep.join(f.file_name().unwrap_or_default()))?;
            }
        }
        println!("daemon logs kept in {}", keep.display());
    }
    let fe_sum = |key: &str| fe_logs.iter().map(|p| counter(p, key)).sum::<f64>();
    m.events = [
        counter(&be_log, "events_sent"),
        counter(&be_log, "events_received"),
        fe_sum("events_sent"),
        fe_sum("events_received"),
    ];
    echo.abort();
    sys.wait_clean(Duration::from_secs(30)).await?;
    sys.shutdown();
    Ok(m)
}
