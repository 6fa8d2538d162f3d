//! Block device vs qemu-nbd (issue 6): the same NBD clients against
//! (a) `qemu-nbd` serving an image file directly and (b) our export:
//! NBD -> vbd frontend daemon (domU 1) -> blkif rings -> vbd backend
//! daemon (dom0) -> the same image file, in one run, side by side.
//!
//! Rows: 4 KiB reads and writes at queue depth 32 (IOPS), 1 MiB
//! sequential reads and writes (MB/s). Clients: `qemu-img bench` (its
//! offsets advance by a fixed step, so the "random" 4 KiB rows use a step
//! of 1 MiB + 4 KiB that scatters them over the image), and `fio` with
//! its `nbd` engine when fio is installed (truly random offsets). Both
//! servers go through the page cache: `qemu-nbd --cache=writeback` and
//! our backend's plain `pread`/`pwrite`; the image is written in full
//! first so reads hit data.
//!
//! `cargo bench -p xenring-integration --bench vbd` prints the table and
//! writes `target/xenring-bench/vbd.json` (and `vbd.csv` for
//! `integration/benches/vbd/plot.py`). Knobs: `XENRING_BENCH_VBD_MIB`
//! (image size, default 512), `XENRING_BENCH_VBD_SECS` (fio run time per
//! row, default 5), `XENRING_BENCH_VBD_COUNT4K` / `_COUNT1M` (qemu-img
//! bench requests per row, defaults 100000 / 2000), `XENRING_BENCH_VBD_ONLY`
//! (run only the rows whose `client row` contains this text),
//! `XENRING_BENCH_VBD_REPS` (runs per side and row, alternating; the
//! median is reported; default 3).

#[allow(dead_code)]
#[path = "../../../transport/benches/transport/common.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use xenring::sim::HostConfig;
use xenring_examples::system::System;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// One row: what, unit, qemu-nbd's figure, ours.
struct Row {
    client: &'static str,
    name: &'static str,
    unit: &'static str,
    qemu: f64,
    ours: f64,
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{text}");
    }
    Ok(text)
}

/// `qemu-img bench`; returns requests per second.
fn qemu_img_bench(
    uri: &str,
    size: u64,
    step: u64,
    depth: u32,
    count: u64,
    write: bool,
) -> anyhow::Result<f64> {
    let mut c = Command::new("qemu-img");
    c.args(["bench", "-f", "raw", "-q"])
        .args(["-c", &count.to_string(), "-d", &depth.to_string()])
        .args(["-s", &size.to_string(), "-S", &step.to_string()]);
    if write {
        c.arg("-w");
    }
    c.arg(uri);
    let t = Instant::now();
    output(&mut c)?;
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

/// `fio --ioengine=nbd`; returns (IOPS, bytes/s).
fn fio(
    uri: &str,
    rw: &str,
    bs: &str,
    depth: u32,
    secs: u64,
    size_mib: u64,
) -> anyhow::Result<(f64, f64)> {
    let text = output(Command::new("fio").args([
        "--name=xenring",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        &format!("--iodepth={depth}"),
        &format!("--size={size_mib}M"),
        &format!("--runtime={secs}"),
        "--time_based",
        "--output-format=json",
    ]))?;
    let json = &text[text.find('{').context("fio printed no JSON")?..];
    // The section, not the job option `"rw" : "write"`.
    let part = if rw.contains("read") {
        "\"read\" : {"
    } else {
        "\"write\" : {"
    };
    let at = json.find(part).context("no read/write section")?;
    let num = |key: &str| -> anyhow::Result<f64> {
        let k = json[at..]
            .find(&format!("\"{key}\""))
            .context(key.to_string())?
            + at;
        let rest = &json[k + key.len() + 2..];
        let rest = rest.trim_start_matches([':', ' ']);
        let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
        Ok(rest[..end].trim().parse()?)
    };
    Ok((num("iops")?, num("bw_bytes")?))
}

fn fill_image(path: &Path, mib: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct QemuNbd(Child);

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_socket(p: &Path) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if p.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("no socket {}", p.display())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches: nothing to list.
        return Ok(());
    }
    for t in ["qemu-img", "qemu-nbd"] {
        if tool(t).is_none() {
            bail!("{t} not found: install Debian's qemu-utils");
        }
    }
    let machine = common::machine();
    let mib = env_u64("XENRING_BENCH_VBD_MIB", 512);
    let secs = env_u64("XENRING_BENCH_VBD_SECS", 5);
    let c4k = env_u64("XENRING_BENCH_VBD_COUNT4K", 100_000);
    let c1m = env_u64("XENRING_BENCH_VBD_COUNT1M", 2000);
    let reps = env_u64("XENRING_BENCH_VBD_REPS", 3);
    println!("xenring block device vs qemu-nbd on {machine}: {mib} MiB image");

    let dir = tempfile::tempdir()?;
    let image = dir.path().join("bench.img");
    fill_image(&image, mib)?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let backend = sys.spawn_backend(0, &["--devices", "vbd"])?;
    let frontend = sys.spawn_frontend(1, &["--devices", "vbd"])?;
    let id = sys.add_vbd(1, 0, &image, false).await?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    let ours_sock = sys.vbd_socket(1, 0);
    wait_socket(&ours_sock)?;
    let qemu_sock = dir.path().join("qemu-nbd.sock");
    let qemu = QemuNbd(
        Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-t",
                "--cache=writeback",
                "--aio=threads",
                "-e",
                "4",
                "-k",
            ])
            .arg(&qemu_sock)
            .arg(&image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-nbd")?,
    );
    wait_socket(&qemu_sock)?;
    let q_uri = format!("nbd+unix:///?socket={}", qemu_sock.display());
    let o_uri = format!("nbd+unix:///?socket={}", ours_sock.display());

    let mut rows = Vec::new();
    let step4k = (1 << 20) + 4096;
    let run = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Row>> {
        type Bench = Box<dyn Fn(&str) -> anyhow::Result<f64>>;
        let mut list: Vec<(&'static str, &'static str, &'static str, Bench)> = vec![
            (
                "qemu-img bench",
                "4 KiB read, QD32",
                "IOPS",
                Box::new(move |u| qemu_img_bench(u, 4096, step4k, 32, c4k, false)),
            ),
            (
                "qemu-img bench",
                "4 KiB write, QD32",
                "IOPS",
                Box::new(move |u| qemu_img_bench(u, 4096, step4k, 32, c4k, true)),
            ),
            (
                "qemu-img bench",
                "1 MiB seq read, QD8",
                "MB/s",
                Box::new(move |u| {
                    Ok(qemu_img_bench(u, 1 << 20, 1 << 20, 8, c1m, false)? * 1.048576)
                }),
            ),
            (
                "qemu-img bench",
                "1 MiB seq write, QD8",
                "MB/s",
                Box::new(
                    move |u| Ok(qemu_img_bench(u, 1 << 20, 1 << 20, 8, c1m, true)? * 1.048576),
                ),
            ),
        ];
        if tool("fio").is_some() {
            list.extend([
                (
                    "fio nbd",
                    "4 KiB randread, QD32",
                    "IOPS",
                    Box::new(move |u: &str| Ok(fio(u, "randread", "4k", 32, secs, mib)?.0))
                        as Bench,
                ),
                (
                    "fio nbd",
                    "4 KiB randwrite, QD32",
                    "IOPS",
                    Box::new(move |u: &str| Ok(fio(u, "randwrite", "4k", 32, secs, mib)?.0)),
                ),
                (
                    "fio nbd",
                    "1 MiB seq read, QD8",
                    "MB/s",
                    Box::new(move |u: &str| Ok(fio(u, "read", "1M", 8, secs, mib)?.1 / 1e6)),
                ),
                (
                    "fio nbd",
                    "1 MiB seq write, QD8",
                    "MB/s",
                    Box::new(move |u: &str| Ok(fio(u, "write", "1M", 8, secs, mib)?.1 / 1e6)),
                ),
            ]);
        } else {
            println!("(fio not installed: its rows are left out)");
        }
        let only = std::env::var("XENRING_BENCH_VBD_ONLY").unwrap_or_default();
        let mut rows = Vec::new();
        for (client, name, unit, f) in list {
            if !format!("{client} {name}").contains(&only) {
                continue;
            }
            // Alternating runs (q o o q q o ...), the median of each side:
            // the machine is shared and noisy.
            let (mut qs, mut os) = (Vec::new(), Vec::new());
            for rep in 0..reps {
                if rep % 2 == 0 {
                    qs.push(f(&q_uri)?);
                    os.push(f(&o_uri)?);
                } else {
                    os.push(f(&o_uri)?);
                    qs.push(f(&q_uri)?);
                }
            }
            let (qemu, ours) = (median(qs), median(os));
            println!("  {client:15} {name:22} qemu-nbd {qemu:>10.0} {unit:4}  ours {ours:>10.0} {unit:4}  ratio {:.2}", ours / qemu);
            rows.push(Row {
                client,
                name,
                unit,
                qemu,
                ours,
            });
        }
        Ok(rows)
    });
    rows.extend(run.await??);
    drop(qemu);

    println!("\n| client | row | qemu-nbd | xenring vbd | ratio |\n|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} {} | {:.0} {} | {:.2} |",
            r.client,
            r.name,
            r.qemu,
            r.unit,
            r.ours,
            r.unit,
            r.ours / r.qemu
        );
    }
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xenring-bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut csv = String::from("client,row,unit,qemu_nbd,xenring\n");
    let mut json =
        format!("{{\n  \"machine\": {machine:?},\n  \"image_mib\": {mib},\n  \"rows\": [\n");
    for (i, r) in rows.iter().enumerate() {
        csv += &format!(
            "{:?},{:?},{},{:.1},{:.1}\n",
            r.client, r.name, r.unit, r.qemu, r.ours
        );
        json += &format!(
            "    {{\"client\": {:?}, \"row\": {:?}, \"unit\": {:?}, \"qemu_nbd\": {:.1}, \"xenring\": {:.1}, \"ratio\": {:.3}}}{}\n",
            r.client, r.name, r.unit, r.qemu, r.ours, r.ours / r.qemu,
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    json += "  ]\n}\n";
    std::fs::write(out_dir.join("vbd.csv"), csv)?;
    std::fs::write(out_dir.join("vbd.json"), json)?;
    println!("\nwritten: {}", out_dir.join("vbd.json").display());

    sys.remove(&id, Duration::from_secs(10)).await?;
    let be_out = backend.log_path().with_extension("out");
    frontend.terminate(Duration::from_secs(10))?;
    backend.terminate(Duration::from_secs(10))?;
    if let Ok(s) = std::fs::read_to_string(&be_out) {
        println!(
            "backend: {}",
            s.lines().find(|l| l.starts_with("vbd")).unwrap_or("")
        );
    }
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
