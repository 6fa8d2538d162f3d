//! Devices at scale (issue 5): 256 chan devices on one backend daemon
//! (dom0), their frontends spread over several frontend domains (64 each),
//! in one simulated system (`xenring_examples::system::System`, the
//! daemons being child processes).
//!
//! * Setup time, create -> both ends Connected: 64 devices one at a time
//!   (p50/p90/p99/max, split into the toolstack's part and the daemons'),
//!   and 256 created in a burst (time until all are Connected, per-device
//!   mean, and each device's own create -> Connected time), with the CPU
//!   time the daemons and the host spent on the burst and the
//!   notifications; removal times beside them.
//! * Resident memory per idle device: VmRSS and Pss (smaps_rollup) of the
//!   backend daemon, the frontend daemons and this process (which embeds
//!   the simulated host and its xenstored, and is the toolstack) with no
//!   device and with 256 Connected idle devices; also after 64 KiB went
//!   through each device both ways, and after every device was removed
//!   (with what the host says is still held).
//! * The comparison: 256 idle Unix-socket connection pairs in a tokio
//!   process (`baseline.rs`), measured the same way in the same run.
//!
//! `cargo bench -p xenring-integration --bench devices` prints the tables
//! and writes `target/xenring-bench/devices.json`. No figure is asserted;
//! the run ends by removing the devices, stopping the daemons and checking
//! that the simulated host is left clean. Knobs (environment):
//! `XENRING_BENCH_DEVICES` (default 256), `XENRING_BENCH_SETTLE_MS` (idle
//! period before each memory reading, default 2000),
//! `XENRING_BENCH_CREATE_AT_ONCE=1` / `XENRING_BENCH_REMOVE_AT_ONCE=1`
//! (the burst's creates / removals concurrently rather than one after
//! another), `XENRING_BENCH_KEEP_LOGS=1` (keep the daemons' logs and smaps
//! in `target/xenring-bench/devices-logs`).

/// The transport benches' shared helpers (`machine()`, naming the machine
/// the same way in every result).
#[allow(dead_code)]
#[path = "../../../transport/benches/transport/common.rs"]
mod common;
use common::machine;

mod baseline;
mod mem;
mod run;
mod tracker;

use std::path::PathBuf;
use std::time::Duration;

use mem::Mem;
use run::{Held, Measured, Snap, SEQUENTIAL, TRAFFIC};

/// Environment variable telling a child process its role.
const ROLE: &str = "XENRING_BENCH_ROLE";

/// One measured figure.
#[derive(Debug, Clone)]
struct Row {
    group: String,
    name: String,
    value: f64,
    unit: &'static str,
}

#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn push(&mut self, group: &str, name: &str, value: f64, unit: &'static str) {
        self.0.push(Row {
            group: group.into(),
            name: name.into(),
            value,
            unit,
        });
    }

    /// p50, p90, p99 and max of `v`, in ms.
    fn distribution(&mut self, group: &str, v: &[Duration]) {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            self.push(group, name, ms(quantile(v, q)), "ms");
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether to keep the daemons' logs and smaps (`XENRING_BENCH_KEEP_LOGS`).
fn keep_logs() -> bool {
    env_or("XENRING_BENCH_KEEP_LOGS", 0) != 0
}

/// `target/xenring-bench/devices-logs`, created.
fn logs_dir() -> anyhow::Result<PathBuf> {
    let dir = out_dir().join("devices-logs");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xenring-bench")
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        match role.as_str() {
            baseline::ROLE_PAIRS => baseline::child(),
            other => panic!("unknown benchmark role {other}"),
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_or("XENRING_BENCH_DEVICES", 256).max(1) as usize;
    let settle = Duration::from_millis(env_or("XENRING_BENCH_SETTLE_MS", 2000));
    let machine = machine();
    println!("xenring device benchmarks on {machine}: {n} chan devices");
    let pairs = baseline::measure(ROLE, baseline::Kind::Plain, n, settle);
    let muxes = baseline::measure(ROLE, baseline::Kind::Mux, n, settle);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let m = rt
        .block_on(run::run(n, settle))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut rows = Rows::default();
    setup_rows(&m, &mut rows);
    memory_rows(&m, &mut rows);
    comparison_rows(&m, &pairs, &muxes, &mut rows);
    report(&machine, &m, &rows.0);
}

fn setup_rows(m: &Measured, rows: &mut Rows) {
    let n = m.n;
    let nf = n as f64;
    let g = format!("Setup, one at a time ({SEQUENTIAL} creates, each waited for)");
    rows.distribution(&format!("{g}: create -> both Connected"), &m.seq_setup);
    rows.distribution(
        &format!("{g}: the toolstack's create_device"),
        &m.seq_create,
    );
    rows.distribution(&format!("{g}: created -> both Connected"), &m.seq_connect);
    let how = if m.create_at_once {
        "concurrent creates"
    } else {
        "one create after another"
    };
    let g = format!(
        "Setup, burst of {n} over {} frontend domains ({how})",
        m.frontends
    );
    rows.push(
        &g,
        "all created (toolstack done)",
        ms(m.burst_created),
        "ms",
    );
    rows.push(&g, "all both Connected", ms(m.burst_connected), "ms");
    rows.push(
        &g,
        "per device (all Connected / n)",
        ms(m.burst_connected) / nf,
        "ms",
    );
    rows.distribution(
        &format!("Setup, burst of {n}: each device's create -> Connected"),
        &m.burst_each,
    );
    let g = format!("CPU time per device during the burst of {n}");
    let who = [
        "backend daemon",
        "frontend daemons",
        "this process (host, xenstored, toolstack)",
    ];
    for (k, name) in who.iter().enumerate() {
        rows.push(&g, name, m.burst_cpu[k] / nf, "ms");
    }
    let g = "Per Connected device: host resources and XenStore";
    let h = m.held_connected;
    rows.push(
        g,
        "frames owned by the frontend domain",
        h.fe_frames as f64 / nf,
        "pages",
    );
    rows.push(g, "frames owned by dom0", h.be_frames as f64 / nf, "pages");
    rows.push(g, "grants valid", h.grants as f64 / nf, "");
    rows.push(
        g,
        "pages mapped (by the backend)",
        h.mapped as f64 / nf,
        "pages",
    );
    rows.push(
        g,
        "event-channel ports (both ends)",
        h.ports as f64 / nf,
        "",
    );
    rows.push(g, "XenStore nodes (both directories)", m.nodes as f64, "");
    rows.push(
        g,
        "device task future (run_device), per daemon",
        m.task_size as f64 / 1024.0,
        "KiB",
    );
    let total = (n + SEQUENTIAL) as f64;
    let g = format!(
        "Event-channel notifications per device, whole run ({} devices, {} KiB through {n})",
        n + SEQUENTIAL,
        TRAFFIC >> 10
    );
    rows.push(&g, "sent by the backend", m.events[0] / total, "");
    rows.push(&g, "sent by the frontends", m.events[2] / total, "");
    let how = if m.remove_at_once {
        "concurrent"
    } else {
        "one after another"
    };
    let g = format!("Removal of the {n} ({how})");
    rows.push(&g, "all removed", ms(m.removal_total), "ms");
    rows.push(&g, "per device", ms(m.removal_total) / nf, "ms");
    if !m.removal_each.is_empty() {
        rows.distribution(&format!("Removal of the {n}: each device"), &m.removal_each);
    }
    rows.distribution(
        &format!("Removal, one at a time ({SEQUENTIAL})"),
        &m.seq_remove,
    );
    held_rows(rows, &format!("after removing the {n}"), m.held_removed);
    held_rows(rows, "after the sequential phase too", m.held_cycled);
}

/// What the host says is still held, all domains together: nothing
/// should be once the devices are gone, daemons running or not.
fn held_rows(rows: &mut Rows, when: &str, h: Held) {
    let g = format!("Host resources still held {when} (daemons running)");
    rows.push(
        &g,
        "frames owned (frontend domains)",
        h.fe_frames as f64,
        "pages",
    );
    rows.push(&g, "grants valid", h.grants as f64, "");
    rows.push(&g, "pages mapped", h.mapped as f64, "pages");
    rows.push(&g, "event-channel ports", h.ports as f64, "");
}

/// Picks one kind of process out of a [`Snap`].
type Pick = fn(&Snap) -> Mem;

/// The three kinds of process, by name.
const PROCS: [(&str, Pick); 3] = [
    ("backend daemon", |s| s.backend),
    ("frontend daemons (sum)", |s| s.frontends),
    ("this process (host, xenstored, toolstack)", |s| s.host),
];

fn memory_rows(m: &Measured, rows: &mut Rows) {
    let n = m.n;
    let idle_name = format!("{n} idle");
    let phases = [
        ("no device", m.idle0),
        (idle_name.as_str(), m.idle),
        ("after traffic", m.traffic),
        ("all removed", m.removed),
        ("after the sequential phase", m.cycled),
    ];
    for (pname, get) in PROCS {
        let g = format!("Memory per device: {pname}");
        let d = |a: &Snap, f: fn(&Mem) -> u64| {
            (f(&get(a)) as f64 - f(&get(&m.idle0)) as f64) / n as f64
        };
        rows.push(&g, "RSS, idle", d(&m.idle, |x| x.rss), "KiB");
        rows.push(&g, "Pss, idle", d(&m.idle, |x| x.pss), "KiB");
        rows.push(&g, "  of which RssAnon", d(&m.idle, |x| x.anon), "KiB");
        rows.push(
            &g,
            "  of which memfd (shared pages)",
            d(&m.idle, |x| x.memfd_rss),
            "KiB",
        );
        rows.push(&g, "fds, idle", d(&m.idle, |x| x.fds), "");
        rows.push(&g, "mappings, idle", d(&m.idle, |x| x.vmas), "");
        rows.push(&g, "RSS, after traffic", d(&m.traffic, |x| x.rss), "KiB");
        rows.push(&g, "Pss, after traffic", d(&m.traffic, |x| x.pss), "KiB");
        rows.push(&g, "  of which RssAnon", d(&m.traffic, |x| x.anon), "KiB");
        rows.push(
            &g,
            "  of which memfd (shared pages)",
            d(&m.traffic, |x| x.memfd_rss),
            "KiB",
        );
        rows.push(
            &g,
            "RSS kept after removal",
            d(&m.removed, |x| x.rss),
            "KiB",
        );
        rows.push(&g, "  of which RssAnon", d(&m.removed, |x| x.anon), "KiB");
        rows.push(
            &g,
            "  of which memfd (shared pages)",
            d(&m.removed, |x| x.memfd_rss),
            "KiB",
        );
        let g = format!("Memory readings: {pname}");
        for (phase, snap) in &phases {
            for (field, v, unit) in get(snap).fields() {
                rows.push(&g, &format!("{phase}: {field}"), v, unit);
            }
        }
    }
}

/// Devices against Unix-socket pairs.
fn comparison_rows(
    m: &Measured,
    pairs: &baseline::PairsResult,
    muxes: &baseline::PairsResult,
    rows: &mut Rows,
) {
    let n = m.n;
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    let g = format!("Comparison: {n} idle Unix-socket pairs in one tokio process");
    rows.push(&g, "no connection: RSS", pairs.before.rss as f64, "KiB");
    let pair_rss = per(pairs.idle.rss, pairs.before.rss);
    let pair_pss = per(pairs.idle.pss, pairs.before.pss);
    rows.push(&g, "per pair: RSS", pair_rss, "KiB");
    rows.push(&g, "per pair: Pss", pair_pss, "KiB");
    rows.push(
        &g,
        "per pair: fds",
        per(pairs.idle.fds, pairs.before.fds),
        "",
    );
    rows.distribution(
        "Comparison: setting up one pair (connect + accept)",
        &pairs.setup,
    );
    let g = format!("Comparison: the same {n} pairs with a chan Mux on each end");
    let mux_rss = per(muxes.idle.rss, muxes.before.rss);
    let mux_pss = per(muxes.idle.pss, muxes.before.pss);
    rows.push(&g, "per pair: RSS", mux_rss, "KiB");
    rows.push(&g, "per pair: Pss", mux_pss, "KiB");
    let (a, b) = (&m.idle, &m.idle0);
    let dev_rss = per(a.backend.rss, b.backend.rss) + per(a.frontends.rss, b.frontends.rss);
    let dev_pss = per(a.backend.pss, b.backend.pss) + per(a.frontends.pss, b.frontends.pss);
    let g = "Ratios: idle device (both daemons) / idle Unix-socket pair";
    rows.push(g, "device RSS (backend + frontend)", dev_rss, "KiB");
    rows.push(g, "device Pss (backend + frontend)", dev_pss, "KiB");
    rows.push(g, "ratio RSS", dev_rss / pair_rss, "x");
    rows.push(g, "ratio Pss", dev_pss / pair_pss, "x");
    rows.push(g, "ratio RSS, device / Mux pair", dev_rss / mux_rss, "x");
    rows.push(
        g,
        "ratio RSS, Mux pair / Unix-socket pair",
        mux_rss / pair_rss,
        "x",
    );
    let dev = quantile(&m.seq_setup, 0.5);
    let pair = quantile(&pairs.setup, 0.5);
    rows.push(
        g,
        "ratio setup p50 (one at a time)",
        dev.as_secs_f64() / pair.as_secs_f64(),
        "x",
    );
}

/// The raw memory readings, one table per kind of process: a column per
/// phase.
fn readings_table(m: &Measured) {
    let phases = [m.idle0, m.idle, m.traffic, m.removed, m.cycled];
    for (pname, get) in PROCS {
        println!("\nMemory readings, {pname}:");
        println!(
            "  {:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "",
            "no device",
            format!("{} idle", m.n),
            "traffic",
            "removed",
            "sequential"
        );
        let cols: Vec<Mem> = phases.iter().map(get).collect();
        for (k, (field, _, unit)) in cols[0].fields().iter().enumerate() {
            let label = if unit.is_empty() {
                field.to_string()
            } else {
                format!("{field} ({unit})")
            };
            print!("  {label:<18}");
            for c in &cols {
                print!(" {:>10.0}", c.fields()[k].1);
            }
            println!();
        }
    }
    println!();
}

/// Prints the tables and writes JSON.
fn report(machine: &str, m: &Measured, rows: &[Row]) {
    let mut group = "";
    for r in rows
        .iter()
        .filter(|r| !r.group.starts_with("Memory readings"))
    {
        if r.group != group {
            group = &r.group;
            println!("{group}:");
        }
        println!("  {:<52} {:>10.2} {}", r.name, r.value, r.unit);
    }
    readings_table(m);
    let out = out_dir();
    std::fs::create_dir_all(&out).expect("create target/xenring-bench");
    let json_rows: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "    {{\"group\": {:?}, \"name\": {:?}, \"value\": {:.3}, \"unit\": {:?}}}",
                r.group, r.name, r.value, r.unit
            )
        })
        .collect();
    let json = format!(
        "{{\n  \"machine\": {machine:?},\n  \"devices\": {},\n  \"frontend_domains\": {},\n  \"rows\": [\n{}\n  ]\n}}\n",
        m.n,
        m.frontends,
        json_rows.join(",\n")
    );
    std::fs::write(out.join("devices.json"), json).expect("write devices.json");
    println!("\nwritten to {}/devices.json", out.display());
}
