//! xenring on a real Xen 4.17 hypervisor, booted under QEMU (software
//! emulation) by the project's harness `integration/xen-vm/run-vm-tests.sh`:
//! the image is built once and cached, the jobs' programs are built
//! statically, and two boots run the jobs (C xenstored, then oxenstored).
//!
//! The harness runs once per test binary (the first test to ask runs it,
//! the others wait for its output); each test then asserts on its part of
//! the output: the `=== STEP <name> rc=<n>` lines and the `PASS`/`FAIL`
//! lines of the checks. Missing tools (qemu-system-x86_64, debootstrap) or
//! no root make every test FAIL with the harness's message, never skip.
//!
//! They run in CI (the test command `./test.sh` installs qemu-system-x86,
//! debootstrap and e2fsprogs); alone: `cargo test -p xenring-integration --test xen_vm`
//! (root).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The harness's stdout+stderr and exit code.
struct Run {
    out: String,
    code: Option<i32>,
}

/// The whole VM run must finish within this (image build ~2 min on a cold
/// cache, static build, two boots); then the harness's process group is
/// killed, QEMU with it. Only a last resort: inside the VM every exchange
/// is judged by its progress (no byte moved for `scenarios::STALL`), so a
/// slow run on a busy machine passes and a stall fails fast; each boot
/// has a 30-minute net of its own (`run-vm-tests.sh`).
const LIMIT: Duration = Duration::from_secs(4200);

fn run() -> &'static Run {
    static R: OnceLock<Run> = OnceLock::new();
    R.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("integration/xen-vm/run-vm-tests.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: on timeout the whole group (harness,
            // cargo, QEMU) is killed.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let pgid = child.id() as i32;
        let mut so = child.stdout.take().expect("piped");
        let mut se = child.stderr.take().expect("piped");
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for the harness") {
                break Some(st);
            }
            if start.elapsed() > LIMIT {
                if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let out = t_out.join().unwrap_or_default();
        let err = t_err.join().unwrap_or_default();
        eprintln!("{out}\n--- harness stderr\n{err}");
        Run {
            out: format!("{out}\n{err}"),
            code: status.and_then(|s| s.code()),
        }
    })
}

/// Asserts that step `name` ran and exited 0, and that `passes` lines
/// (`PASS <prefix>...`) are all there.
fn assert_step(name: &str, passes: &[&str]) {
    let r = run();
    let ok = format!("=== STEP {name} rc=0");
    assert!(
        r.out.lines().any(|l| l.trim_end() == ok),
        "step {name} did not pass on real Xen (harness exit {:?}); its lines:\n{}",
        r.code,
        r.out
            .lines()
            .filter(|l| l.contains("FAIL") || l.contains("=== ") || l.contains("error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for p in passes {
        assert!(
            r.out.lines().any(|l| l.contains(&format!("PASS {p}"))),
            "no `PASS {p}` line in the VM output"
        );
    }
}

#[test]
fn the_platform_scenarios_pass_in_dom0_talking_to_itself() {
    assert_step(
        "platform",
        &[
            "platform/share_and_map",
            "platform/refused_maps",
            "platform/grant_copy",
            "platform/events",
            "platform/unmap_notify",
            "platform/transfer_unsupported",
            "platform/vchan_in_page",
            "platform/vchan_pages",
        ],
    );
}

#[test]
fn the_xenstore_client_tests_pass_against_c_xenstored() {
    assert_step("xs_client_xenstored", &[]);
}

#[test]
fn the_xenstore_client_tests_pass_against_oxenstored() {
    assert_step("xs_client_oxenstored", &[]);
}

#[test]
fn our_vchan_talks_to_libxenvchan_both_ways() {
    assert_step(
        "vchan_interop",
        &[
            "vchan_interop/ours_server_libxenvchan_client",
            "vchan_interop/libxenvchan_server_ours_client",
        ],
    );
}

#[test]
fn libxenvchan_against_itself_across_domains_is_sound() {
    // The reference: Xen's own library between dom0 and the domU.
    assert_step("c_vchan_domu", &["c-verify"]);
}

#[test]
fn our_vchan_moves_verified_bytes_between_dom0_and_the_domu() {
    assert_step(
        "vchan_domu",
        &[
            "vchan_domU/dom0_client_16_16",
            "vchan_domU/dom0_client_10_11",
        ],
    );
}

#[test]
fn a_chan_device_moves_64_mib_between_dom0_backend_and_domu_frontend() {
    assert_step(
        "chan",
        &["chan/64MiB_dom0_backend_domU_frontend", "chan/teardown"],
    );
    assert_step("domu_agent", &["chan/domU"]);
}

#[test]
fn a_vbd_device_serves_the_domu_a_disk_checked_through_nbd_and_in_the_file() {
    assert_step("vbd", &["vbd/dom0_backend_domU_frontend", "vbd/teardown"]);
    assert_step("domu_agent", &["vbd/domU"]);
}

#[test]
fn the_benchmark_runs_between_dom0_and_the_domu() {
    assert_step("bench", &["bench/dom0"]);
    assert_step("bench_c", &[]);
    // The domU's side of it (and nothing failed there): its verdict
    // comes through XenStore.
    assert_step("domu_agent", &[]);
    assert!(
        run()
            .out
            .lines()
            .any(|l| l.trim_end() == "domU agent verdict: ok"),
        "the domU agent did not report ok"
    );
    let r = run();
    assert!(
        r.out.lines().any(|l| l.starts_with("BENCH ")),
        "no BENCH lines in the VM output"
    );
}

#[test]
fn both_boots_ended_cleanly() {
    let r = run();
    for boot in ["xenstored", "oxenstored"] {
        let ok = format!("=== BOOT {boot} rc=0");
        assert!(
            r.out.lines().any(|l| l.trim_end() == ok),
            "boot {boot} did not end with rc=0 (harness exit {:?})",
            r.code
        );
    }
    assert_eq!(r.code, Some(0), "the harness failed");
}
