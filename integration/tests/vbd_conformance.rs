//! NBD conformance of the vbd export with real clients, and devices that
//! fail their setup:
//! - an export name that is not the export's is refused (`qemu-img info`
//!   of `nbd+unix:///nosuch` fails naming it; the default name works);
//! - an image of 1000 bytes is exported as 1000 bytes (`nbdinfo --size`;
//!   qemu rounds sizes up to 512), `qemu-io` writes and reads back its
//!   last partial sector, I/O past the end is refused to the byte, and
//!   the file stays 1000 bytes with the data;
//! - holes are seen through the export: `qemu-img map` and `nbdinfo
//!   --map` (structured replies, `base:allocation` block status from the
//!   backend's `SEEK_DATA`/`SEEK_HOLE`) report data where it was written
//!   and holes elsewhere; `qemu-io write -z -u` deallocates (the file's
//!   blocks go), `write -z` zeroes in place (the blocks stay), `write -z -n` (FAST_ZERO)
//!   works, `discard` punches a hole;
//! - a device whose setup fails (a bad `pool-pages`, a non-loopback
//!   `nbd-tcp`) reports the error and leaves no NBD socket file.
//!
//! One test function runs the scenarios in turn: a process holds one
//! simulated host at a time (its XenStore path is in the environment).

mod vbd_common;

use std::path::PathBuf;
use std::time::Duration;

use vbd_common::{make_image, run, run_status, uri, Vbd};
use xenring::sim::HostConfig;
use xenring::xenbus::{read_error, Side};
use xenring_examples::system::System;
use xenring_frontend::nbd::proto::{EINVAL, ENOSPC};
use xenring_frontend::nbd::{ClientError, NbdClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vbd_conformance() -> anyhow::Result<()> {
    unknown_export_name_is_refused().await?;
    an_odd_sized_image_is_exported_to_the_byte().await?;
    holes_are_seen_and_made().await?;
    a_device_that_fails_setup_leaves_no_socket().await
}

async fn unknown_export_name_is_refused() -> anyhow::Result<()> {
    let v = Vbd::start(1 << 20, false).await?;
    let bad = format!("nbd+unix:///nosuch?socket={}", v.sock.display());
    let (ok, out) = run_status("qemu-img", &["info".into(), "--output=json".into(), bad]).await?;
    assert!(!ok, "qemu-img opened export \"nosuch\":\n{out}");
    assert!(
        out.contains("nosuch"),
        "the refusal does not name the export:\n{out}"
    );
    // The default export is still served on the same socket.
    let info = run(
        "qemu-img",
        &["info".into(), "--output=json".into(), uri(&v.sock)],
    )
    .await?;
    assert!(info.contains("\"virtual-size\": 1048576"), "{info}");
    v.finish().await
}

async fn an_odd_sized_image_is_exported_to_the_byte() -> anyhow::Result<()> {
    let v = Vbd::start(1000, false).await?;
    std::fs::write(&v.image, vec![1u8; 1000])?;
    let u = uri(&v.sock);
    // qemu rounds every size up to 512 bytes; nbdinfo shows the export's.
    let size = run("nbdinfo", &["--size".into(), u.clone()]).await?;
    assert_eq!(size.trim(), "1000", "nbdinfo --size");
    let q = |cmd: &str| ["-f", "raw", "-c", cmd, &u].map(String::from);
    run("qemu-io", &q("write -P 5 900 100")).await?;
    run("qemu-io", &q("write -P 6 500 20")).await?;
    let out = run("qemu-io", &q("read -P 5 900 100")).await?;
    assert!(out.contains("read 100/100"), "{out}");
    let out = run("qemu-io", &q("read -P 6 500 20")).await?;
    assert!(out.contains("read 20/20"), "{out}");
    // Past the end, to the byte: refused.
    let c = NbdClient::connect_unix(&v.sock).await?;
    assert_eq!(c.size(), 1000);
    assert_eq!(c.read(999, 1).await?, vec![5]);
    assert!(matches!(
        c.read(999, 2).await,
        Err(ClientError::Errno(EINVAL))
    ));
    assert!(matches!(
        c.write(1000, &[7], false).await,
        Err(ClientError::Errno(ENOSPC))
    ));
    assert!(matches!(
        c.write(990, &[7; 11], false).await,
        Err(ClientError::Errno(ENOSPC))
    ));
    c.write(999, &[8], true).await?;
    c.write_zeroes(996, 3).await?;
    c.disconnect().await?;
    let data = std::fs::read(&v.image)?;
    assert_eq!(data.len(), 1000, "the image changed size");
    assert!(data[..500].iter().all(|&b| b == 1), "{:?}", &data[..500]);
    assert!(data[500..520].iter().all(|&b| b == 6));
    assert!(data[520..900].iter().all(|&b| b == 1));
    assert!(data[900..996].iter().all(|&b| b == 5));
    assert_eq!(data[996..], [0, 0, 0, 8]);
    v.finish().await
}

/// `qemu-img map --output=json` as (start, length, data) triples.
async fn qemu_map(u: &str) -> anyhow::Result<Vec<(u64, u64, bool)>> {
    let out = run(
        "qemu-img",
        &["map".into(), "--output=json".into(), u.into()],
    )
    .await?;
    let num = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(&format!("\"{key}\": "))? + key.len() + 4;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Ok(out
        .lines()
        .filter_map(|l| {
            Some((
                num(l, "start")?,
                num(l, "length")?,
                l.contains("\"data\": true"),
            ))
        })
        .collect())
}

/// Whether `map` says [start, start + len) is data (`true`) or not.
fn mapped(map: &[(u64, u64, bool)], start: u64, len: u64, data: bool) -> bool {
    (start..start + len).step_by(4096).all(|b| {
        map.iter()
            .any(|&(s, l, d)| (s..s + l).contains(&b) && d == data)
    })
}

fn allocated(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

async fn holes_are_seen_and_made() -> anyhow::Result<()> {
    const M: u64 = 1 << 20;
    let v = Vbd::start(8 * M, false).await?;
    let u = uri(&v.sock);
    let q = |cmd: &str| ["-f", "raw", "-c", cmd, &u].map(String::from);
    run("qemu-io", &q("write -P 9 1M 1M")).await?;
    run("qemu-io", &q("write -P 9 5M 64k")).await?;
    run("qemu-io", &q("write -P 9 7M 1M")).await?;
    let map = qemu_map(&u).await?;
    assert!(
        mapped(&map, M, M, true)
            && mapped(&map, 5 * M, 64 << 10, true)
            && mapped(&map, 0, M, false)
            && mapped(&map, 2 * M, 3 * M, false)
            && mapped(&map, 5 * M + (64 << 10), M - (64 << 10), false),
        "qemu-img map: {map:?}\n{}",
        v.logs()
    );
    // What libnbd negotiates and reads back from the handshake.
    let info = run("nbdinfo", std::slice::from_ref(&u)).await?;
    for want in [
        "base:allocation",
        "can_cache: true",
        "can_df: true",
        "can_fast_zero: true",
        "can_zero: true",
        "can_trim: true",
        "can_multi_conn: true",
    ] {
        assert!(info.contains(want), "nbdinfo lacks {want:?}:\n{info}");
    }
    let out = run("nbdinfo", &["--map".into(), u.clone()]).await?;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r[..] == ["0", "1048576", "3", "hole,zero"])
            && rows
                .iter()
                .any(|r| r[..] == ["1048576", "1048576", "0", "data"]),
        "nbdinfo --map:\n{out}"
    );
    // Write zeroes that may unmap: the blocks go, a hole shows.
    let before = allocated(&v.image)?;
    run("qemu-io", &q("write -z -u 1M 1M")).await?;
    let after = allocated(&v.image)?;
    assert!(
        after + M <= before,
        "write -z -u kept the blocks: {before} -> {after} bytes"
    );
    assert!(
        mapped(&qemu_map(&u).await?, M, M, false),
        "no hole after write -z -u"
    );
    // Without unmap (NO_HOLE): zeroed in place, the blocks stay (ext4
    // may then report them as unwritten, as qemu's own map does).
    run("qemu-io", &q("write -z 5M 64k")).await?;
    assert_eq!(allocated(&v.image)?, after, "write -z deallocated");
    run("qemu-io", &q("read -P 0 5M 64k")).await?;
    // Fast zeroes (NBD_CMD_FLAG_FAST_ZERO) and discard.
    run("qemu-io", &q("write -z -u -n 7M 512k")).await?;
    run("qemu-io", &q("discard 7680k 512k")).await?;
    run("qemu-io", &q("read -P 0 7M 1M")).await?;
    assert!(
        mapped(&qemu_map(&u).await?, 7 * M, M, false),
        "no hole after fast zero + discard"
    );
    assert!(
        allocated(&v.image)? + M <= after,
        "the last MiB stayed allocated"
    );
    v.finish().await
}

async fn a_device_that_fails_setup_leaves_no_socket() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    make_image(&image, 1 << 20)?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let backend = sys.spawn_backend(0, &["--devices", "vbd"])?;
    let frontend = sys.spawn_frontend(1, &["--devices", "vbd"])?;
    let cases: [(&str, &str, &str); 2] = [
        ("pool-pages", "1", "pool-pages"),
        ("nbd-tcp", "192.0.2.1:10809", "loopback"),
    ];
    for (devid, (key, value, needle)) in cases.into_iter().enumerate() {
        let devid = devid as u32;
        let id = sys
            .add_vbd_with(1, devid, &image, false, &[(key, value)])
            .await?;
        let mut err = None;
        for _ in 0..1000 {
            err = read_error(sys.xs(), &id, Side::Frontend).await?;
            if err.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err =
            err.unwrap_or_else(|| panic!("{key} = {value}: no error node\n{}", frontend.log()));
        assert!(
            err.contains(needle),
            "{key} = {value}: error node says {err:?}"
        );
        let sock = sys.vbd_socket(1, devid);
        assert!(
            !sock.exists(),
            "{key} = {value}: the failed device left its socket {}",
            sock.display()
        );
        sys.remove(&id, Duration::from_secs(10)).await?;
    }
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
