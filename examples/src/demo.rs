//! The one-command demo: a simulated Xen host, a backend daemon as dom0 and
//! a frontend daemon as domU 1 (separate processes), a `chan` device
//! between them, data pushed through it and checked; a `vbd` block device
//! written and read back through its NBD export ([`crate::demo_vbd`]); a
//! `vif` network device between two network namespaces, pinged both ways
//! (as root; [`crate::demo_vif`]); a readable summary, and a clean
//! shutdown (the host must report no leak).
//!
//! ```text
//!   client --unix--> [frontend daemon, dom1] ==vchan== [backend daemon, dom0] --tcp--> echo
//!          <-------------------------------- same bytes back ----------------------------
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use xenring::sim::HostConfig;

use crate::system::{echo_server, push, System};

/// What the demo moves.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Bytes sent (and echoed back) in all.
    pub bytes: u64,
    /// Concurrent client connections through the one device.
    pub connections: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            bytes: 64 << 20,
            connections: 4,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The lines printed.
    pub lines: Vec<String>,
    /// Bytes sent and verified back.
    pub bytes: u64,
    /// Create to both ends Connected.
    pub setup: Duration,
    /// Time to push and get back every byte.
    pub transfer: Duration,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Runs the demo in a fresh temporary directory; `node` is the program
/// that runs the daemons (see [`crate::system::node_main`]).
pub async fn run(node: PathBuf, opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    let dir = tempfile::tempdir()?;
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let (target, echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontend = sys.spawn_frontend(1, &[])?;

    let t0 = Instant::now();
    let id = sys.add_chan(1, 0, &target).await?;
    if let Err(e) = sys.wait_connected(&id, Duration::from_secs(30)).await {
        bail!(
            "{e}\nbackend log:\n{}\nfrontend log:\n{}",
            backend.log(),
            frontend.log()
        );
    }
    let setup = t0.elapsed();
    let (bs, fs) = sys.states(&id).await?;

    let per = opts.bytes / opts.connections.max(1) as u64;
    let sock = sys.chan_socket(1, id.devid);
    let t1 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.connections.max(1) {
        tasks.push(tokio::spawn(push(sock.clone(), c, per)));
    }
    for t in tasks {
        t.await??;
    }
    let transfer = t1.elapsed();
    let moved = per * opts.connections.max(1) as u64;
    let block_lines = crate::demo_vbd::run_vbd_demo(&sys, 1, dir.path()).await?;

    sys.remove(&id, Duration::from_secs(10)).await?;
    let fe_status = frontend.terminate(Duration::from_secs(10))?;
    let fe_out = std::fs::read_to_string(dir.path().join("frontend-dom1.out")).unwrap_or_default();
    let be_status = backend.terminate(Duration::from_secs(10))?;
    let be_out = std::fs::read_to_string(dir.path().join("backend-dom0.out")).unwrap_or_default();
    if !fe_status.success() || !be_status.success() {
        bail!("daemons exited with frontend {fe_status}, backend {be_status}");
    }
    let report = sys.wait_clean(Duration::from_secs(5)).await?;
    echo.abort();

    let stat = |out: &str, key: &str| -> String {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    let secs = transfer.as_secs_f64();
    let mut lines = vec![
        "xenring demo: simulated Xen host; backend daemon in dom0, frontend daemon in domU 1"
            .to_string(),
        format!("  {:<10} {:<10} {:<10} {}", "device", "backend", "frontend", "create->connected"),
        format!(
            "  {:<10} {:<10} {:<10} {:.1} ms",
            id.to_string(),
            bs.name(),
            fs.name(),
            setup.as_secs_f64() * 1e3
        ),
        format!(
            "  data: {:.1} MiB sent and {:.1} MiB echoed back over {} concurrent channels, every byte checked ({target})",
            mib(moved),
            mib(moved),
            opts.connections
        ),
        format!(
            "  throughput: {:.1} MiB/s each way ({:.2} s)",
            mib(moved) / secs,
            secs
        ),
        format!(
            "  notifications: frontend sent {} received {}; backend sent {} received {}",
            stat(&fe_out, "events_sent"),
            stat(&fe_out, "events_received"),
            stat(&be_out, "events_sent"),
            stat(&be_out, "events_received"),
        ),
        format!(
            "  teardown: device removed, daemons exited 0, host reports no leaks ({} domains left, {} frames free)",
            report.domains.len(),
            report.free_frames
        ),
    ];
    // The network device (needs root: it says so and carries on without).
    let (net_lines, net) = crate::demo_vif::run_vif_demo(&sys).await?;
    if net.is_some() {
        sys.wait_clean(Duration::from_secs(5)).await?;
    }
    // The block and network devices' lines go before the teardown line.
    let last = lines.len() - 1;
    lines.splice(last..last, block_lines.into_iter().chain(net_lines));
    sys.shutdown();
    Ok(DemoSummary {
        lines,
        bytes: moved,
        setup,
        transfer,
    })
}
