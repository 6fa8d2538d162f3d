//! The `xenring-backend` daemon's command line: serve the built-in backend
//! devices as this domain until SIGTERM/SIGINT, then close every device
//! (Closing, Closed) and exit 0. Exit 1 (with a message saying what is
//! wrong) when it cannot start or fails; 2 for bad usage.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use xenring::xenbus::cli::{daemon_main, shutdown_on_signals, CommonArgs};

use crate::chan::ChanBackend;
use crate::device::{daemon, BackendDevice};
use crate::vbd::VbdBackend;
use crate::vif::VifBackend;

/// Command-line options.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "xenring-backend",
    version,
    about = "Serve xenring backend devices (chan, vbd, vif) as this domain"
)]
pub struct Args {
    /// Platform, domain and XenStore.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Device kinds to serve, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "chan,vbd")]
    pub devices: Vec<String>,
    /// How long a stopping device may take before it is dropped, in ms.
    #[arg(long, default_value_t = 5000)]
    pub grace_ms: u64,
}

/// Runs the daemon; returns the process's exit code.
pub fn main_with(args: Args) -> ExitCode {
    daemon_main("xenring-backend", run(args))
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(other) = args
        .devices
        .iter()
        .find(|k| !["chan", "vbd", "vif"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown device kind {other:?} (built in: chan, vbd, vif)"
        ));
    }
    let shutdown = shutdown_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;
    let (platform, xs) = args.common.connect().await.map_err(|e| e.to_string())?;
    let chan = Arc::new(ChanBackend::new());
    let vbd = Arc::new(VbdBackend::new());
    let mut vif = None;
    let mut devices: Vec<Arc<dyn BackendDevice>> = Vec::new();
    for kind in &args.devices {
        match kind.as_str() {
            "chan" => devices.push(chan.clone()),
            "vbd" => devices.push(vbd.clone()),
            "vif" => {
                let flip = xenring::rxpool::transfer_supported(platform.as_ref());
                let v = vif.get_or_insert_with(|| Arc::new(VifBackend::new(flip)));
                devices.push(v.clone());
            }
            _ => unreachable!("device kinds are checked above"),
        }
    }
    let d = daemon(xs, platform, devices)
        .with_grace(Duration::from_millis(args.grace_ms))
        .with_lock_dir(args.common.lock_dir());
    let stats = d.run(shutdown).await.map_err(|e| e.to_string())?;
    tracing::info!(?stats, "backend daemon stopped");
    // The summary on stdout, for whoever started us (the demo reads it).
    println!("chan {}", chan.stats().line());
    println!("vbd {}", vbd.stats().line());
    if let Some(v) = vif {
        println!("vif {}", v.stats().line());
    }
    Ok(())
}
