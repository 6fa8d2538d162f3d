//! `xenring-ctl`: what `xl` does for split devices, as dom0.
//!
//! ```text
//! xenring-ctl device add <KIND> --frontend N [--backend 0] [--devid N]
//!                        [--backend-param K=V]... [--frontend-param K=V]...
//!                        [--custom] [--wait [--timeout SECS]]
//! xenring-ctl device remove <KIND>/<FRONTEND>/<DEVID> [--backend N] [--timeout SECS] [--force]
//! xenring-ctl device list [--json]
//! xenring-ctl device show <KIND>/<FRONTEND>/<DEVID> [--backend N] [--json]
//! ```
//!
//! `add` checks what it can before writing anything: the kind (one of the
//! bundled daemons', unless `--custom`) and the keys their devices need
//! (`check.rs`). With `--wait` it waits, as `xl` does, until both ends are
//! Connected, and fails (exit 1) with the error nodes in full if an end
//! fails or closes, or with both states at the timeout.
//!
//! XenStore is `--xenstore PATH`, else `$XENSTORED_PATH`; else, with
//! `--platform sim` (the default), dom0's socket of the simulated host at
//! `--sim-socket` / `$XENRING_SIM_SOCKET` / the default control socket;
//! with `--platform xen`, `/run/xenstored/socket`.
//!
//! Exit status: 0 done, 1 failed (the message says why), 2 bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use xenring::sim::{default_socket_path, SimAdmin, ENV_SOCKET};
use xenring::xenbus::{
    create_device, device_keys, device_status, find_device, free_devid, list_devices,
    remove_device, wait_connected, DeviceId, DeviceSpec, DeviceStatus, NodeState, RemoveOptions,
    WaitOutcome, XenbusError,
};

mod check;
#[path = "../shared/json.rs"]
mod json;

use json::Json;
use xenring::xenstore::{XsClient, XsError, DEFAULT_XENSTORED_PATH, ENV_XENSTORED_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "xenring-ctl",
    version,
    about = "Create, remove and list xenring split devices in XenStore (what xl does), as dom0"
)]
struct Cli {
    /// Where the domains run: the simulated host or real Xen.
    #[arg(long, global = true, value_enum, default_value_t = Platform::Sim)]
    platform: Platform,
    /// The XenStore socket to use (dom0's).
    #[arg(long, global = true, env = ENV_XENSTORED_PATH, value_name = "PATH")]
    xenstore: Option<PathBuf>,
    /// The simulated host's control socket (to find its XenStore when
    /// --xenstore is not given).
    #[arg(long, global = true, env = ENV_SOCKET, value_name = "PATH")]
    sim_socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Platform {
    /// The simulated host (`xenring-sim run`).
    Sim,
    /// Real Xen.
    Xen,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Split devices.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Create a device: its frontend and backend directories, state
    /// Initialising, the backend online.
    Add {
        /// The device kind: chan, vbd, vif, ... ([a-z0-9_-]+).
        kind: String,
        /// The frontend (guest) domain.
        #[arg(long)]
        frontend: u16,
        /// The backend (driver) domain.
        #[arg(long, default_value_t = 0)]
        backend: u16,
        /// The device number (default: the lowest free one).
        #[arg(long)]
        devid: Option<u32>,
        /// An extra key for the backend directory (repeatable).
        #[arg(long = "backend-param", value_name = "KEY=VALUE", value_parser = key_value)]
        backend_params: Vec<(String, String)>,
        /// An extra key for the frontend directory (repeatable).
        #[arg(long = "frontend-param", value_name = "KEY=VALUE", value_parser = key_value)]
        frontend_params: Vec<(String, String)>,
        /// The kind is served by your own daemon: skip the checks of the
        /// built-in kinds' keys.
        #[arg(long)]
        custom: bool,
        /// Wait until both ends are Connected; fail with the error nodes
        /// if an end fails or closes first.
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 30.0, value_name = "SECS", value_parser = seconds, requires = "wait")]
        timeout: f64,
    },
    /// Remove a device: ask the backend to close, wait until it is Closed,
    /// remove both directories (--force: remove at once).
    Remove {
        /// The device, as KIND/FRONTEND/DEVID (e.g. chan/1/0).
        #[arg(value_parser = device_id)]
        device: DeviceId,
        /// The backend domain (default: what the frontend dir names).
        #[arg(long)]
        backend: Option<u16>,
        /// Seconds to wait for the backend to close.
        #[arg(long, default_value_t = 10.0, value_name = "SECS", value_parser = seconds)]
        timeout: f64,
        /// Remove at once without waiting for the backend.
        #[arg(long)]
        force: bool,
    },
    /// List every device with both states, online and errors.
    List {
        /// One JSON object per device, in a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One device: both states, online, both error messages in full, and
    /// every key of both directories.
    Show {
        /// The device, as KIND/FRONTEND/DEVID (e.g. vbd/1/0).
        #[arg(value_parser = device_id)]
        device: DeviceId,
        /// The backend domain (default: what the frontend dir names).
        #[arg(long)]
        backend: Option<u16>,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn device_id(s: &str) -> Result<DeviceId, String> {
    s.parse::<DeviceId>().map_err(|e| e.to_string())
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && Duration::try_from_secs_f64(v).is_ok() => Ok(v),
        _ => Err(format!("expected a number of seconds, got {s:?}")),
    }
}

fn main() -> ExitCode {
    xenring::xenbus::cli::init_logging_with("warn");
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenring-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The XenStore socket to use, and what to suggest if nothing answers there.
fn xenstore_path(cli: &Cli) -> Result<(PathBuf, &'static str)> {
    let hint = match cli.platform {
        Platform::Sim => "is the sim host running?",
        Platform::Xen => "is xenstored running (and are we dom0)?",
    };
    if let Some(p) = &cli.xenstore {
        return Ok((p.clone(), hint));
    }
    match cli.platform {
        Platform::Xen => Ok((PathBuf::from(DEFAULT_XENSTORED_PATH), hint)),
        Platform::Sim => {
            let control = cli.sim_socket.clone().unwrap_or_else(default_socket_path);
            let path = SimAdmin::connect(&control)
                .and_then(|a| a.xenstore_path(0))
                .map_err(|e| {
                    anyhow!(
                        "no XenStore (neither --xenstore nor {ENV_XENSTORED_PATH} is set, \
                         so asked the simulated host): {e}"
                    )
                })?;
            Ok((path, hint))
        }
    }
}

/// Says why a socket did not answer, in words.
fn why(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => "no such socket".into(),
        ConnectionRefused => "connection refused".into(),
        PermissionDenied => "permission denied".into(),
        TimedOut => "no answer".into(),
        _ => e.to_string(),
    }
}

async fn connect(path: &Path, hint: &str) -> Result<XsClient> {
    match XsClient::connect(path).await {
        Ok(xs) => Ok(xs),
        Err(XsError::Connect { source, .. }) => {
            bail!(
                "no XenStore at {}: {}; {hint}",
                path.display(),
                why(&source)
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn run(cli: Cli) -> Result<()> {
    let (path, hint) = xenstore_path(&cli)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let xs = connect(&path, hint).await?;
        let Cmd::Device { cmd } = cli.cmd;
        match cmd {
            DeviceCmd::Add {
                kind,
                frontend,
                backend,
                devid,
                backend_params,
                frontend_params,
                custom,
                wait,
                timeout,
            } => {
                // The kind's spelling first (its error names the character).
                DeviceId::new(&kind, frontend, backend, devid.unwrap_or(0))?;
                check::check(&check::Planned {
                    kind: &kind,
                    backend_params: &backend_params,
                    frontend_params: &frontend_params,
                    custom,
                    backend_local: cli.platform == Platform::Sim || backend == 0,
                })
                .map_err(|e| anyhow!("not added: {e}"))?;
                let id = add(
                    &xs,
                    &kind,
                    (frontend, backend, devid),
                    backend_params,
                    frontend_params,
                )
                .await?;
                println!("added {id} (backend domain {})", id.backend);
                if wait {
                    let limit = Duration::from_secs_f64(timeout);
                    match wait_connected(&xs, &id, limit).await? {
                        WaitOutcome::Connected(_) => println!("connected {id}"),
                        WaitOutcome::Failed(st) => bail!("{id} failed:\n{}", explain(&st)),
                        WaitOutcome::TimedOut(st) => {
                            bail!("{id} not connected within {timeout} s:\n{}", explain(&st))
                        }
                    }
                }
            }
            DeviceCmd::Remove {
                device,
                backend,
                timeout,
                force,
            } => {
                let id = named(&xs, &device, backend).await?.unwrap_or(device);
                let opts = RemoveOptions {
                    timeout: Duration::from_secs_f64(timeout),
                    force,
                };
                remove_device(&xs, &id, opts).await?;
                println!("removed {id}");
            }
            DeviceCmd::List { json } => {
                let all = list_devices(&xs).await?;
                if json {
                    println!(
                        "{}",
                        Json::List(all.iter().map(status_json).collect()).render()
                    );
                } else {
                    print!("{}", table(&all));
                }
            }
            DeviceCmd::Show {
                device,
                backend,
                json,
            } => {
                let id = named(&xs, &device, backend)
                    .await?
                    .ok_or_else(|| anyhow!("no device {device} in XenStore"))?;
                let st = device_status(&xs, id.clone()).await?;
                let be_keys = device_keys(&xs, &id.backend_dir()).await?;
                let fe_keys = device_keys(&xs, &id.frontend_dir()).await?;
                if json {
                    let keys = |v: Vec<(String, String)>| {
                        Json::Map(v.into_iter().map(|(k, v)| (k, Json::Str(v))).collect())
                    };
                    let mut o = status_fields(&st);
                    o.push(("backend_dir", Json::str(id.backend_dir())));
                    o.push(("frontend_dir", Json::str(id.frontend_dir())));
                    o.push(("backend_keys", keys(be_keys)));
                    o.push(("frontend_keys", keys(fe_keys)));
                    println!("{}", Json::Obj(o).render());
                } else {
                    println!("device:         {id} (backend domain {})", id.backend);
                    print!("{}", explain(&st));
                    for (side, dir, keys) in [
                        ("backend", id.backend_dir(), be_keys),
                        ("frontend", id.frontend_dir(), fe_keys),
                    ] {
                        println!("{side} dir: {dir}");
                        for (k, v) in keys {
                            println!("  {k} = {v:?}");
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

/// The device a command names: with `--backend`, that backend's; else the
/// one XenStore knows (`None` if it knows none, or several).
async fn named(xs: &XsClient, device: &DeviceId, backend: Option<u16>) -> Result<Option<DeviceId>> {
    Ok(match backend {
        Some(be) => Some(DeviceId {
            backend: be,
            ..device.clone()
        }),
        None => find_device(xs, &device.kind, device.frontend, device.devid).await?,
    })
}

/// Creates the device; without a device number, takes the lowest free one
/// (again if another toolstack took it first).
async fn add(
    xs: &XsClient,
    kind: &str,
    (frontend, backend, devid): (u16, u16, Option<u32>),
    backend_params: Vec<(String, String)>,
    frontend_params: Vec<(String, String)>,
) -> Result<DeviceId> {
    let mut attempts = 0;
    loop {
        let n = match devid {
            Some(n) => n,
            None => free_devid(xs, kind, frontend, backend).await?,
        };
        let id = DeviceId::new(kind, frontend, backend, n)?;
        let spec = DeviceSpec {
            id: id.clone(),
            backend_params: backend_params.clone(),
            frontend_params: frontend_params.clone(),
        };
        match create_device(xs, &spec).await {
            Ok(()) => return Ok(id),
            Err(XenbusError::Exists { .. }) if devid.is_none() && attempts < 5 => attempts += 1,
            Err(e) => return Err(e).context(format!("cannot add {id}")),
        }
    }
}

/// A state as JSON: its number and name, or null when the side's
/// directory is absent, or the text found when it is not a state.
fn state_json(s: &NodeState) -> Json {
    match s {
        NodeState::Absent => Json::Null,
        NodeState::State(x) => Json::Obj(vec![
            ("state", Json::Num(u64::from(x.raw()))),
            ("name", Json::str(x.name())),
        ]),
        NodeState::Bad(v) => Json::Obj(vec![("bad", Json::str(v.as_str()))]),
    }
}

/// One device's status as a JSON object.
fn status_json(d: &DeviceStatus) -> Json {
    Json::Obj(status_fields(d))
}

/// The fields of [`status_json`].
fn status_fields(d: &DeviceStatus) -> Vec<(&'static str, Json)> {
    vec![
        ("device", Json::str(d.id.to_string())),
        ("kind", Json::str(d.id.kind.as_str())),
        ("frontend", Json::Num(u64::from(d.id.frontend))),
        ("backend", Json::Num(u64::from(d.id.backend))),
        ("devid", Json::Num(u64::from(d.id.devid))),
        ("backend_state", state_json(&d.backend_state)),
        ("frontend_state", state_json(&d.frontend_state)),
        ("online", d.online.map_or(Json::Null, Json::Bool)),
        ("backend_error", Json::opt_str(d.backend_error.as_deref())),
        ("frontend_error", Json::opt_str(d.frontend_error.as_deref())),
        ("connected", Json::Bool(d.is_connected())),
    ]
}

/// Both states and both error messages in full, a line each.
fn explain(d: &DeviceStatus) -> String {
    let mut out = format!(
        "backend state:  {}\nfrontend state: {}\n",
        d.backend_state, d.frontend_state
    );
    for (side, e) in [
        ("backend", &d.backend_error),
        ("frontend", &d.frontend_error),
    ] {
        if let Some(e) = e {
            out.push_str(&format!("{side} error:  {e}\n"));
        }
    }
    out
}

/// At most 60 characters of an error message, on one line.
fn short(e: &str) -> String {
    let one: String = e.escape_debug().collect();
    match one.char_indices().nth(60) {
        Some((at, _)) => format!("{}...", &one[..at]),
        None => one,
    }
}

/// The device list as a table.
fn table(devices: &[DeviceStatus]) -> String {
    let head = [
        "DEVICE",
        "BACKEND",
        "BACKEND STATE",
        "FRONTEND STATE",
        "ONLINE",
        "ERROR",
    ];
    let mut rows: Vec<[String; 6]> = vec![head.map(String::from)];
    for d in devices {
        let mut errors = Vec::new();
        if let Some(e) = &d.backend_error {
            errors.push(format!("backend: {}", short(e)));
        }
        if let Some(e) = &d.frontend_error {
            errors.push(format!("frontend: {}", short(e)));
        }
        rows.push([
            d.id.to_string(),
            d.id.backend.to_string(),
            d.backend_state.to_string(),
            d.frontend_state.to_string(),
            match d.online {
                Some(true) => "1".into(),
                Some(false) => "0".into(),
                None => "-".into(),
            },
            if errors.is_empty() {
                "-".into()
            } else {
                errors.join("; ")
            },
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
