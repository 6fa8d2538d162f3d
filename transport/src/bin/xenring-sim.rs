//! `xenring-sim`: the simulated Xen host.
//!
//! ```text
//! xenring-sim run                       # the host, as a daemon (until SIGINT/SIGTERM)
//! xenring-sim create --domid N          # create a persistent domain (no process in it yet)
//! xenring-sim exec --domid N -- CMD     # run CMD in domain N of that host (XENSTORED_PATH set)
//! xenring-sim domains                   # list domains: state, persistent or not, sessions
//! xenring-sim report [--check]          # what each domain still holds
//! xenring-sim destroy --domid N         # destroy a domain and every process's session in it
//! xenring-sim smoke                     # two domain processes share, map and ping-pong
//! ```
//!
//! The control socket is `--socket`, else `$XENRING_SIM_SOCKET`, else
//! `$XDG_RUNTIME_DIR/xenring-sim/control.sock` (or under /tmp).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use xenring::platform::Platform;
use xenring::sim::selftest::{self, Offer};
use xenring::sim::{
    default_socket_path, DomainState, HostConfig, HostReport, SimAdmin, SimDomain, SimHost,
    ENV_DOMID, ENV_SOCKET,
};
use xenring::xenstore::ENV_XENSTORED_PATH;

#[path = "shared/json.rs"]
mod json;

use json::Json;

#[derive(Parser, Debug)]
#[command(
    name = "xenring-sim",
    version,
    about = "The simulated Xen host of xenring"
)]
struct Cli {
    /// Control socket of the host.
    #[arg(long, global = true, env = ENV_SOCKET)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the host until SIGINT or SIGTERM.
    Run {
        /// Machine memory, in 4 KiB frames.
        #[arg(long, default_value_t = HostConfig::default().machine_frames)]
        machine_frames: u64,
        /// Entries per grant table.
        #[arg(long, default_value_t = HostConfig::default().gnttab_entries)]
        gnttab_entries: u32,
    },
    /// Create a persistent domain: it exists (and is in XenStore) with no
    /// process in it, processes join it with `exec` and may die and be
    /// restarted; it lives until `destroy`.
    Create {
        /// The domain.
        #[arg(long)]
        domid: u16,
    },
    /// Run a command in a domain of the host (with XENRING_SIM_SOCKET,
    /// XENRING_DOMID and XENSTORED_PATH set for it): a program that joins
    /// the domain is one more session of it, creating the domain if it does
    /// not exist (then the domain goes when its last process does). The
    /// domain's XenStore socket exists only while the domain does: a tool
    /// that only speaks XenStore (xenstore-read) needs a created domain.
    Exec {
        /// The domain id it joins as.
        #[arg(long)]
        domid: u16,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// List the domains: id, state, persistent or implicit, sessions.
    Domains {
        /// As a JSON array of objects.
        #[arg(long)]
        json: bool,
    },
    /// Print what every domain still holds.
    Report {
        /// Exit with status 1 if anything is held.
        #[arg(long)]
        check: bool,
        /// As one JSON object (with `leaks`, the lines `--check` counts).
        #[arg(long)]
        json: bool,
    },
    /// Destroy a domain: every session in it ends (its processes' calls
    /// fail from then on) and what they held is released.
    Destroy {
        /// The domain.
        #[arg(long)]
        domid: u16,
    },
    /// Two domain processes share pages, map them and ping-pong events; the
    /// host must report nothing left afterwards. Uses an embedded host
    /// unless --socket (or XENRING_SIM_SOCKET) names a running one.
    Smoke {
        /// Event round trips.
        #[arg(long, default_value_t = 10_000)]
        rounds: u32,
        /// Pages shared.
        #[arg(long, default_value_t = 4)]
        pages: usize,
    },
    /// One side of the smoke test, run by `smoke` inside `exec`.
    #[command(hide = true)]
    Domain {
        #[command(subcommand)]
        role: Role,
    },
}

#[derive(Subcommand, Debug)]
enum Role {
    Sharer {
        #[arg(long)]
        peer: u16,
        #[arg(long)]
        pages: usize,
        #[arg(long)]
        rounds: u32,
        /// After offering, wait to be killed (the death test).
        #[arg(long)]
        linger: bool,
    },
    Mapper {
        #[arg(long)]
        offer: String,
        #[arg(long)]
        rounds: u32,
    },
    /// Map the offer and wait for the sharer's death notification.
    Outlive {
        #[arg(long)]
        offer: String,
        #[arg(long, default_value_t = 30)]
        patience_secs: u64,
    },
    // ---- async ring roles (issue 4, ring tests; see ring_roles below) ----
    /// Ring frontend: share a ring with `peer`, print the offer, pipeline
    /// `requests` echo requests and check every answer. Without
    /// `--requests`, pipeline until the ring fails (the peer-death test):
    /// print `ring front flowing` once answers come, and exit with the
    /// ring's error.
    RingFront {
        #[arg(long)]
        peer: u16,
        #[arg(long, default_value_t = 1)]
        pages: usize,
        #[arg(long)]
        requests: Option<u64>,
    },
    /// Ring backend: map the offered ring and answer with the echo backend
    /// until the frontend closes.
    RingBack {
        #[arg(long)]
        offer: String,
    },
}

fn main() -> ExitCode {
    xenring::xenbus::cli::init_logging_with("warn");
    let cli = Cli::parse();
    match run(cli.cmd, cli.socket) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xenring-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn admin(socket: &Path) -> Result<SimAdmin> {
    SimAdmin::connect(socket).with_context(|| format!("no simulated host at {}", socket.display()))
}

fn run(cmd: Cmd, given: Option<PathBuf>) -> Result<ExitCode> {
    let socket = &given.clone().unwrap_or_else(default_socket_path);
    match cmd {
        Cmd::Run {
            machine_frames,
            gnttab_entries,
        } => {
            let cfg = HostConfig {
                machine_frames,
                gnttab_entries,
                ..HostConfig::default()
            };
            let host = SimHost::start(socket, cfg)
                .with_context(|| format!("cannot start the host at {}", socket.display()))?;
            println!("xenring-sim: listening on {}", socket.display());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r,
                    _ = term.recv() => Ok(()),
                }
            })?;
            host.shutdown();
            // Whoever started us may have closed our stdout by now.
            let _ = writeln!(std::io::stdout(), "xenring-sim: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { domid, command } => {
            // Fail early, with the reason, rather than in the child.
            let xenstore = admin(socket)?
                .xenstore_path(domid)
                .with_context(|| format!("no xenstore socket for domain {domid}"))?;
            let err = Command::new(&command[0])
                .args(&command[1..])
                .env(ENV_SOCKET, socket)
                .env(ENV_DOMID, domid.to_string())
                .env(ENV_XENSTORED_PATH, &xenstore)
                .exec();
            bail!("cannot run {:?}: {err}", command[0])
        }
        Cmd::Create { domid } => {
            admin(socket)?.create_domain(domid)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Domains { json } => {
            let report = admin(socket)?.report()?;
            if json {
                let all = report.domains.iter().map(domain_json).collect();
                println!("{}", Json::List(all).render());
            } else {
                print!("{}", domain_table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { check, json } => {
            let report = admin(socket)?.report()?;
            if json {
                println!("{}", report_json(&report).render());
            } else {
                print!("{report}");
            }
            let leaks = report.leaks();
            if check && !leaks.is_empty() {
                eprintln!(
                    "xenring-sim: {} leaks (domains holding resources, orphaned frames)",
                    leaks.len()
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Destroy { domid } => {
            admin(socket)?.destroy_domain(domid)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Smoke { rounds, pages } => smoke(given, rounds, pages),
        Cmd::Domain { role } => domain(role),
    }
}

fn state_name(s: DomainState) -> &'static str {
    match s {
        DomainState::Running => "running",
        DomainState::Dying => "dying",
    }
}

/// One domain, as `domains --json` and `report --json` show it.
fn domain_json(d: &xenring::sim::DomainReport) -> Json {
    let n = |v: u32| Json::Num(u64::from(v));
    Json::Obj(vec![
        ("domid", Json::Num(u64::from(d.domid))),
        ("state", Json::str(state_name(d.state))),
        ("persistent", Json::Bool(d.persistent)),
        ("sessions", n(d.sessions)),
        ("frames_owned", Json::Num(d.frames_owned)),
        ("grants_valid", n(d.grants_valid)),
        ("grants_mapped_by_peers", n(d.grants_mapped_by_peers)),
        ("mappings", n(d.mappings)),
        ("mapped_pages", n(d.mapped_pages)),
        ("ports", n(d.ports)),
        ("notifies", n(d.notifies)),
        ("clean", Json::Bool(d.is_clean())),
    ])
}

/// `report --json`.
fn report_json(r: &HostReport) -> Json {
    let lines = |v: Vec<String>| Json::List(v.into_iter().map(Json::Str).collect());
    Json::Obj(vec![
        ("free_frames", Json::Num(r.free_frames)),
        ("orphan_frames", Json::Num(r.orphan_frames)),
        (
            "domains",
            Json::List(r.domains.iter().map(domain_json).collect()),
        ),
        ("xenstore", lines(r.xenstore.clone())),
        ("leaks", lines(r.leaks())),
    ])
}

/// `xenring-sim domains`: one line per domain under a header.
fn domain_table(report: &HostReport) -> String {
    let mut out = format!(
        "{:<6} {:<8} {:<11} {}\n",
        "DOMID", "STATE", "KIND", "SESSIONS"
    );
    for d in &report.domains {
        let state = state_name(d.state);
        let kind = if d.persistent {
            "persistent"
        } else {
            "implicit"
        };
        out += &format!("{:<6} {state:<8} {kind:<11} {}\n", d.domid, d.sessions);
    }
    out
}

fn domain(role: Role) -> Result<ExitCode> {
    let dom = SimDomain::from_env()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let role = match ring_roles::run(role, &dom, &rt)? {
        Some(role) => role,
        None => return Ok(ExitCode::SUCCESS),
    };
    let summary = match role {
        Role::Sharer {
            peer,
            pages,
            rounds,
            linger,
        } => {
            let (offer, st) = selftest::sharer_start(&dom, peer, pages)?;
            println!("{offer}");
            if linger {
                std::io::Write::flush(&mut std::io::stdout())?;
                loop {
                    std::thread::park();
                }
            }
            rt.block_on(selftest::sharer_finish(st, rounds))?
        }
        Role::Outlive {
            offer,
            patience_secs,
        } => {
            let offer: Offer = offer.parse()?;
            rt.block_on(selftest::mapper_outlives_sharer(
                &dom,
                &offer,
                Duration::from_secs(patience_secs),
            ))?;
            let _ = writeln!(
                std::io::stdout(),
                "notified: domain {} is gone",
                offer.domid
            );
            return Ok(ExitCode::SUCCESS);
        }
        Role::Mapper { offer, rounds } => {
            let offer: Offer = offer.parse()?;
            rt.block_on(selftest::mapper(&dom, &offer, rounds))?
        }
        Role::RingFront { .. } | Role::RingBack { .. } => unreachable!("handled by ring_roles"),
    };
    // The reader of our stdout may be gone; the exit status tells the rest.
    let _ = writeln!(
        std::io::stdout(),
        "summary domid={} rounds={} elapsed_ns={}",
        dom.domid(),
        summary.rounds,
        summary.elapsed.as_nanos()
    );
    Ok(ExitCode::SUCCESS)
}

fn smoke(given: Option<PathBuf>, rounds: u32, pages: usize) -> Result<ExitCode> {
    let (embedded, socket) = match given {
        Some(s) => (None, s),
        None => {
            let s = tempdir()?.join("control.sock");
            (Some(SimHost::start(&s, HostConfig::default())?), s)
        }
    };
    println!("xenring-sim smoke test");
    match &embedded {
        Some(_) => println!("  host: embedded, control socket {}", socket.display()),
        None => println!("  host: running daemon at {}", socket.display()),
    }
    let me = std::env::current_exe()?;
    let spawn = |domid: u16, args: &[String]| -> Result<std::process::Child> {
        Command::new(&me)
            .arg("--socket")
            .arg(&socket)
            .args(["exec", "--domid", &domid.to_string(), "--"])
            .arg(&me)
            .arg("domain")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a domain process")
    };
    let mut sharer = spawn(
        1,
        &[
            "sharer".into(),
            "--peer=0".into(),
            format!("--pages={pages}"),
            format!("--rounds={rounds}"),
        ],
    )?;
    let mut out1 = BufReader::new(sharer.stdout.take().expect("piped"));
    let mut line = String::new();
    out1.read_line(&mut line)?;
    let offer: Offer = line
        .parse()
        .with_context(|| format!("domain 1 (pid {}) did not offer", sharer.id()))?;
    println!(
        "  domain 1 (pid {}): shared {pages} pages (refs {:?}) and port {} with domain 0",
        sharer.id(),
        offer.refs,
        offer.port
    );
    let mut mapper = spawn(
        0,
        &[
            "mapper".into(),
            format!("--offer={}", line.trim()),
            format!("--rounds={rounds}"),
        ],
    )?;
    let out0 = BufReader::new(mapper.stdout.take().expect("piped"));
    let s0 = mapper.wait()?;
    let s1 = sharer.wait()?;
    let summary0: Vec<String> = out0.lines().map_while(|l| l.ok()).collect();
    if !s0.success() || !s1.success() {
        bail!("domain processes failed: domain 0 {s0}, domain 1 {s1}");
    }
    let ns: u64 = summary0
        .iter()
        .find_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("elapsed_ns=")))
        .and_then(|v| v.parse().ok())
        .context("domain 0 printed no summary")?;
    let mean = Duration::from_nanos(ns) / rounds.max(1);
    println!(
        "  domain 0 (pid {}): mapped them, bound the port, {rounds} event round trips across processes, mean {:.1} us",
        mapper.id(),
        mean.as_secs_f64() * 1e6
    );
    let admin = admin(&socket)?;
    // Our two processes' domains go with them, unless a toolstack created
    // them (persistent domains stay, idle).
    let ours_left = |r: &HostReport| -> Vec<u16> {
        r.domains
            .iter()
            .filter(|d| d.domid <= 1 && !(d.persistent && d.sessions == 0))
            .map(|d| d.domid)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let r = admin.report()?;
        if ours_left(&r).is_empty() || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let leaks = report.leaks();
    let left = ours_left(&report);
    if !left.is_empty() {
        bail!("the host still has domains {left:?} after their processes exited:\n{report}");
    }
    println!(
        "  host report after exit: {} leaks, {} free frames",
        leaks.len(),
        report.free_frames
    );
    if let Some(h) = embedded {
        h.shutdown();
        let _ = std::fs::remove_dir_all(socket.parent().expect("in tmp"));
    }
    println!("OK");
    Ok(ExitCode::SUCCESS)
}

fn tempdir() -> Result<PathBuf> {
    // SimHost::start makes it, private (mode 0700).
    Ok(std::env::temp_dir().join(format!("xenring-smoke-{}", std::process::id())))
}

/// The async ring roles: a pipelining frontend that checks every answer,
/// and an echo backend.
mod ring_roles {
    use std::io::Write;
    use std::time::Instant;

    use anyhow::{bail, Context, Result};
    use futures::{SinkExt, StreamExt};
    use xenring::platform::Platform;
    use xenring::ring::echo::{serve_echo, Msg64};
    use xenring::ring::{RingClient, RingEndpoint, RingServer};
    use xenring::sim::selftest::Offer;
    use xenring::sim::SimDomain;

    use super::Role;

    /// Runs a ring role; gives any other role back.
    pub fn run(role: Role, dom: &SimDomain, rt: &tokio::runtime::Runtime) -> Result<Option<Role>> {
        match role {
            Role::RingFront {
                peer,
                pages,
                requests,
            } => {
                rt.block_on(front(dom, peer, pages, requests))?;
                Ok(None)
            }
            Role::RingBack { offer } => {
                let offer: Offer = offer.parse()?;
                let ep = RingEndpoint {
                    domid: offer.domid,
                    port: offer.port,
                    refs: offer.refs,
                };
                let n = rt.block_on(async {
                    let server = RingServer::<Msg64, Msg64>::connect(dom, &ep)?;
                    serve_echo(server).await
                })?;
                let _ = writeln!(std::io::stdout(), "ring back answered={n}");
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Answers checked before an endless frontend says it is flowing.
    const FLOWING_AFTER: u64 = 10_000;

    async fn front(dom: &SimDomain, peer: u16, pages: usize, limit: Option<u64>) -> Result<()> {
        let requests = limit.unwrap_or(u64::MAX);
        let (client, ep) = RingClient::<Msg64, Msg64>::share(dom, peer, pages)?;
        let offer = Offer {
            domid: dom.domid(),
            port: ep.port,
            refs: ep.refs,
        };
        println!("{offer}");
        std::io::stdout().flush()?;
        let (mut sink, mut stream) = client.split();
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for seq in 0..requests {
                sink.feed(Msg64::request(seq)).await?;
                if seq % 32 == 31 {
                    sink.flush().await?;
                }
            }
            sink.flush().await?;
            Ok::<_, xenring::ring::AsyncRingError>(sink)
        });
        for seq in 0..requests {
            let rsp = match stream.next().await {
                Some(r) => r.with_context(|| format!("ring front after {seq} responses"))?,
                None => bail!("ring front: ring closed after {seq} responses"),
            };
            if limit.is_none() && seq == FLOWING_AFTER {
                println!("ring front flowing");
                std::io::stdout().flush()?;
            }
            if rsp.data != Msg64::answer(&Msg64::request(seq)).data {
                bail!("response {seq} does not carry its request's data: {rsp:?}");
            }
        }
        let elapsed = start.elapsed();
        drop(writer.await??);
        drop(stream);
        let stats = client.stats();
        client.close().await;
        let _ = writeln!(
            std::io::stdout(),
            "ring front requests={requests} elapsed_ns={} notifications={} suppressed={}",
            elapsed.as_nanos(),
            stats.notifications,
            stats.suppressed
        );
        Ok(())
    }
}
