//! Image locks, compatible with qemu's: while a writable vbd device
//! serves an image, `qemu-io` and `qemu-nbd` cannot open it read-write
//! (they say "lock"), `qemu-img info` still reads it, and a second device
//! on the image fails with an error node naming this daemon as the
//! holder; once the device is removed the image is free. A device on an
//! image `qemu-nbd` serves fails naming qemu-nbd. Read-only devices share
//! an image with each other, and no writer may join them.

mod vbd_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use vbd_common::{make_image, run, run_status, tool, Vbd};
use xenring::xenbus::{read_error, DeviceId, Side};
use xenring_examples::system::System;

async fn wait_error(sys: &System, id: &DeviceId, side: Side) -> anyhow::Result<String> {
    for _ in 0..1000 {
        if let Some(e) = read_error(sys.xs(), id, side).await? {
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("device {id}: no error node")
}

fn raw(cmd: &str, image: &std::path::Path) -> Vec<String> {
    ["-f", "raw", "-c", cmd, &image.display().to_string()]
        .map(String::from)
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_locked_as_qemu_locks_them() -> anyhow::Result<()> {
    let v = Vbd::start(4 << 20, false).await?;
    let img = v.image.clone();

    let (ok, out) = run_status("qemu-io", &raw("write -P 1 0 512", &img)).await?;
    assert!(
        !ok && out.contains("lock"),
        "qemu-io wrote an image a device serves:\n{out}"
    );
    let qsock = v.dir.path().join("q.sock");
    let (ok, out) = run_status(
        "timeout",
        &[
            "20",
            "qemu-nbd",
            "-f",
            "raw",
            "-k",
            &qsock.display().to_string(),
            &img.display().to_string(),
        ]
        .map(String::from),
    )
    .await?;
    assert!(
        !ok && out.contains("lock"),
        "qemu-nbd served an image a device serves:\n{out}"
    );
    run("qemu-img", &["info".into(), img.display().to_string()]).await?;

    // A second device on the same image.
    let second = v.sys.add_vbd(1, 1, &img, false).await?;
    let err = wait_error(&v.sys, &second, Side::Backend).await?;
    assert!(
        err.contains("in use") && err.contains("this daemon (pid"),
        "second device's error: {err:?}"
    );
    v.sys.remove(&second, Duration::from_secs(10)).await?;

    // qemu-nbd serves another image: a device on it fails naming it.
    let img2 = v.dir.path().join("qemu.img");
    make_image(&img2, 1 << 20)?;
    let qsock2 = v.dir.path().join("q2.sock");
    let mut qnbd = Command::new(tool("qemu-nbd")?)
        .args(["-f", "raw", "-k"])
        .arg(&qsock2)
        .arg(&img2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    for _ in 0..500 {
        if qsock2.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = v.sys.add_vbd(1, 2, &img2, false).await?;
    let err = wait_error(&v.sys, &third, Side::Backend).await;
    qnbd.kill()?;
    qnbd.wait()?;
    let err = err?;
    assert!(
        err.contains("qemu-nbd (pid"),
        "device on qemu-nbd's image: {err:?}"
    );
    v.sys.remove(&third, Duration::from_secs(10)).await?;

    // Read-only devices share an image; a writer may not join.
    let img3 = v.dir.path().join("shared.img");
    make_image(&img3, 1 << 20)?;
    let ro1 = v.sys.add_vbd(1, 3, &img3, true).await?;
    let ro2 = v.sys.add_vbd(1, 4, &img3, true).await?;
    for id in [&ro1, &ro2] {
        v.sys
            .wait_connected(id, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", v.logs()))?;
    }
    let (ok, out) = run_status("qemu-io", &raw("write -P 1 0 512", &img3)).await?;
    assert!(
        !ok && out.contains("lock"),
        "qemu-io wrote a read-only device's image:\n{out}"
    );
    v.sys.remove(&ro1, Duration::from_secs(10)).await?;
    v.sys.remove(&ro2, Duration::from_secs(10)).await?;

    // Removed: the image is free again (once the last request let go).
    v.sys.remove(&v.id, Duration::from_secs(10)).await?;
    let mut out = String::new();
    for _ in 0..100 {
        let (ok, o) = run_status("qemu-io", &raw("write -P 1 0 512", &img)).await?;
        if ok {
            out.clear();
            break;
        }
        out = o;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        out.is_empty(),
        "the image stayed locked after removal:\n{out}"
    );
    let Vbd {
        sys,
        backend,
        frontend,
        ..
    } = v;
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend
        .expect("backend")
        .terminate(Duration::from_secs(10))?
        .success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
