//! The `xenring-frontend` daemon's command line: run the built-in frontend
//! devices as this domain until SIGTERM/SIGINT, then close every device
//! (Closing, Closed) and exit 0. Exit 1 (with a message saying what is
//! wrong) when it cannot start or fails; 2 for bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use xenring::xenbus::cli::{daemon_main, shutdown_on_signals, CommonArgs};

use crate::chan::ChanFrontend;
use crate::device::{daemon, FrontendDevice};
use crate::vbd::VbdFrontend;
use crate::vif::VifFrontend;

/// Command-line options.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "xenring-frontend",
    version,
    about = "Run xenring frontend devices (chan, vbd, vif) as this domain"
)]
pub struct Args {
    /// Platform, domain and XenStore.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Device kinds to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "chan,vbd")]
    pub devices: Vec<String>,
    /// Directory of the devices' Unix sockets (`chan-<devid>.sock`,
    /// `vbd-<devid>.sock`).
    #[arg(long, env = "XENRING_SOCKET_DIR")]
    pub socket_dir: Option<PathBuf>,
    /// How long a stopping device may take before it is dropped, in ms.
    #[arg(long, default_value_t = 5000)]
    pub grace_ms: u64,
}

/// Runs the daemon; returns the process's exit code.
pub fn main_with(args: Args) -> ExitCode {
    daemon_main("xenring-frontend", run(args))
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(other) = args
        .devices
        .iter()
        .find(|k| !matches!(k.as_str(), "chan" | "vbd" | "vif"))
    {
        return Err(format!(
            "unknown device kind {other:?} (built in: chan, vbd, vif)"
        ));
    }
    let shutdown = shutdown_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;
    let (platform, xs) = args.common.connect().await.map_err(|e| e.to_string())?;
    let socket_dir = match &args.socket_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("xenring-dom{}", platform.domid())),
    };
    let chan = Arc::new(ChanFrontend::new(&socket_dir).map_err(|e| e.to_string())?);
    let vbd = Arc::new(VbdFrontend::new(&socket_dir).map_err(|e| e.to_string())?);
    let vif = Arc::new(VifFrontend::new());
    let mut devices: Vec<Arc<dyn FrontendDevice>> = Vec::new();
    for kind in &args.devices {
        match kind.as_str() {
            "chan" => devices.push(chan.clone()),
            "vbd" => devices.push(vbd.clone()),
            "vif" => devices.push(vif.clone()),
            other => {
                return Err(format!(
                    "unknown device kind {other:?} (built in: chan, vbd, vif)"
                ))
            }
        }
    }
    let d = daemon(xs, platform, devices)
        .with_grace(Duration::from_millis(args.grace_ms))
        .with_lock_dir(args.common.lock_dir());
    let stats = d.run(shutdown).await.map_err(|e| e.to_string())?;
    tracing::info!(?stats, "frontend daemon stopped");
    // The summary on stdout, for whoever started us (the demo reads it).
    println!("chan {}", chan.stats().line());
    println!("vbd {}", vbd.stats().line());
    if args.devices.iter().any(|k| k == "vif") {
        println!("vif {}", vif.stats().line());
    }
    Ok(())
}
