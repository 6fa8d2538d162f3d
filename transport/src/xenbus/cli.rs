//! What every daemon binary shares: the platform and XenStore options
//! (flags with environment fallbacks), logging, and signals.
//!
//! ```text
//!   --platform sim|xen      (XENRING_PLATFORM, default sim)
//!   --domid N               (XENRING_DOMID; sim: the domain to join;
//!                            xen: default XenStore's `domid` key)
//!   --sim-socket PATH       (XENRING_SIM_SOCKET; sim: the host's control socket)
//!   --xenstore PATH         (XENSTORED_PATH; the XenStore socket; xen: default
//!                            /run/xenstored/socket or /var/run/xenstored/socket
//!                            in dom0, /dev/xen/xenbus through a bridge in a guest)
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::platform::xen::{own_domid, XenPlatform};
use crate::platform::{DomId, Platform};
use crate::sim::SimDomain;
use crate::xenstore::xenbus_dev::{XenbusBridge, XENBUS_DEVICE};
use crate::xenstore::XsClient;

/// Which platform to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformKind {
    /// The simulated host (`xenring-sim`).
    Sim,
    /// Real Xen through /dev/xen.
    Xen,
}

/// The options every daemon takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Platform to run on.
    #[arg(long, value_enum, env = "XENRING_PLATFORM", default_value = "sim")]
    pub platform: PlatformKind,
    /// This domain's id (sim: the domain to join).
    #[arg(long, env = "XENRING_DOMID")]
    pub domid: Option<DomId>,
    /// The simulated host's control socket.
    #[arg(long, env = "XENRING_SIM_SOCKET")]
    pub sim_socket: Option<PathBuf>,
    /// The XenStore socket.
    #[arg(long = "xenstore", env = "XENSTORED_PATH")]
    pub xenstore: Option<PathBuf>,
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A required option is missing.
    #[error("{0}")]
    Missing(String),
    /// The platform could not be opened.
    #[error("{0}")]
    Platform(String),
    /// XenStore could not be reached.
    #[error("{0}")]
    Xenstore(String),
}

impl CommonArgs {
    /// Where the daemons keep their instance locks
    /// ([`Daemon::with_lock_dir`](super::daemon::Daemon::with_lock_dir)):
    /// on the simulated host, `locks/` beside its control socket (so one
    /// host's domains never meet another's); on Xen, `/run/xenring` (one
    /// operating system per domain).
    pub fn lock_dir(&self) -> PathBuf {
        match (self.platform, &self.sim_socket) {
            (PlatformKind::Sim, Some(s)) => s
                .parent()
                .unwrap_or_else(|| std::path::Path::new("."))
                .join("locks"),
            _ => PathBuf::from("/run/xenring"),
        }
    }

    /// Opens the platform and XenStore (at `--xenstore`, which clap took
    /// from `XENSTORED_PATH` when the flag is absent).
    pub async fn connect(&self) -> Result<(Arc<dyn Platform>, XsClient), StartError> {
        if self.platform == PlatformKind::Xen {
            return self.connect_xen().await;
        }
        let platform: Arc<dyn Platform> = {
            let socket = self.sim_socket.clone().ok_or_else(|| {
                StartError::Missing(
                    "no simulated host named: pass --sim-socket PATH or set XENRING_SIM_SOCKET \
                     (xenring-sim exec sets it)"
                        .into(),
                )
            })?;
            let domid = self.domid.ok_or_else(|| {
                StartError::Missing("no domain named: pass --domid N or set XENRING_DOMID".into())
            })?;
            let d = SimDomain::connect(&socket, domid).map_err(|e| {
                StartError::Platform(format!(
                    "cannot join the simulated host at {} as domain {domid}: {e}",
                    socket.display()
                ))
            })?;
            Arc::new(d)
        };
        let path = self.xenstore.clone().ok_or_else(|| {
            StartError::Missing(
                "no XenStore named: pass --xenstore PATH or set XENSTORED_PATH".into(),
            )
        })?;
        let xs = XsClient::connect(&path).await.map_err(|e| {
            StartError::Xenstore(format!(
                "no XenStore at {}: {}; is the sim host running?",
                path.display(),
                root_cause(&e)
            ))
        })?;
        Ok((platform, xs))
    }

    /// Real Xen: XenStore first (`--xenstore`, else xenstored's socket in
    /// dom0, else `/dev/xen/xenbus` through a bridge in a guest), then the
    /// domain id (`--domid`, else XenStore's `domid` key), then the devices.
    async fn connect_xen(&self) -> Result<(Arc<dyn Platform>, XsClient), StartError> {
        let (xs, _bridge) = connect_xen_xenstore(self.xenstore.clone())
            .await
            .map_err(|e| StartError::Xenstore(format!("platform xen: {e}")))?;
        let domid = match self.domid {
            Some(d) => d,
            None => own_domid(&xs).await.map_err(|e| {
                StartError::Xenstore(format!(
                    "platform xen: cannot read this domain's id from XenStore (key `domid`): {e}; \
                     pass --domid N"
                ))
            })?,
        };
        let platform = XenPlatform::open(domid)
            .map_err(|e| StartError::Platform(format!("platform xen, domain {domid}: {e}")))?;
        Ok((Arc::new(platform), xs))
    }
}

/// Connects to XenStore on real Xen: `path` if given, else the first of
/// xenstored's sockets that exists (dom0), else `/dev/xen/xenbus` through a
/// [`XenbusBridge`] (a guest). The bridge, if one was started, is kept
/// running for the rest of the process (the client reconnects through it),
/// and also returned for callers that want to end it.
pub async fn connect_xen_xenstore(
    path: Option<PathBuf>,
) -> Result<(XsClient, Option<&'static XenbusBridge>), StartError> {
    let candidates = ["/run/xenstored/socket", "/var/run/xenstored/socket"];
    let mut bridge = None;
    let path = match path {
        Some(p) => p,
        None => match candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
            Some(p) => p,
            None => {
                let b = XenbusBridge::start(std::path::Path::new(XENBUS_DEVICE))
                    .await
                    .map_err(|e| {
                        StartError::Xenstore(format!(
                            "no XenStore: neither {} exists, and {e}",
                            candidates.join(" nor ")
                        ))
                    })?;
                // One bridge per process, alive as long as the process.
                let b: &'static XenbusBridge = Box::leak(Box::new(b));
                bridge = Some(b);
                b.path().to_path_buf()
            }
        },
    };
    let xs = XsClient::connect(&path).await.map_err(|e| {
        StartError::Xenstore(format!(
            "no XenStore at {}: {}",
            path.display(),
            root_cause(&e)
        ))
    })?;
    Ok((xs, bridge))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        last = s.to_string();
        cur = s.source();
    }
    last
}

/// What the daemons log without `RUST_LOG`: xenring's own crates at
/// `info`, everything else (tokio, the TAP crate, ...) only when it warns.
pub const DEFAULT_LOG: &str =
    "warn,xenring=info,xenring_frontend=info,xenring_backend=info,xenring_examples=info";

/// Logs to stderr, filtered by `RUST_LOG` (default [`DEFAULT_LOG`]).
pub fn init_logging() {
    init_logging_with(DEFAULT_LOG);
}

/// Logs to stderr, filtered by `RUST_LOG`, else by `default`; in colour
/// only when stderr is a terminal (never escape codes in a file or pipe).
pub fn init_logging_with(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

/// A daemon binary's `main`: logging, a multi-threaded runtime, `run`;
/// prints `<name>: <error>` and returns exit code 1 when it fails.
pub fn daemon_main<F>(name: &str, run: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
