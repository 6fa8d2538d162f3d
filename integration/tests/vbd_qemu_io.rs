//! Real NBD clients on a vbd device: `qemu-img info` sees the image's size
//! (over the Unix socket and the loopback TCP export), and `qemu-io`
//! writes patterns at many offsets and sizes (unaligned to 4 KiB and to
//! 512 bytes, direct and indirect requests up to 1 MiB and more) and
//! reads every one back verified with `-P`; the image file holds the
//! same bytes afterwards.

mod vbd_common;

use std::os::unix::fs::FileExt;

use vbd_common::{run, uri, Vbd};

const SIZE: u64 = 64 << 20;

/// (offset, length, pattern byte).
fn cases() -> Vec<(u64, u64, u8)> {
    let mut v = Vec::new();
    let mut p = 1u8;
    let mut off = 0u64;
    // Sizes from one sector to several indirect requests; offsets walk
    // through the disk with odd steps so many are not 4 KiB aligned.
    for len in [
        512u64,
        1024,
        3584,
        4096,
        4608,
        45056,
        49152,
        65536,
        131072,
        1 << 20,
        (1 << 20) + 4096,
        3 << 20,
    ] {
        for shift in [0u64, 512, 3584] {
            v.push((off + shift, len, p));
            p = p.wrapping_add(1).max(1);
            off += len + 8192;
        }
    }
    // Byte-unaligned ones (read-modify-write in the frontend).
    for (o, l) in [
        (SIZE - 700, 700),
        ((20 << 20) + 1, 3),
        ((20 << 20) + 4096 + 7, 5000),
        ((40 << 20) + 1, 70_001),
    ] {
        v.push((o, l, p));
        p = p.wrapping_add(1).max(1);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_info_and_qemu_io_patterns() -> anyhow::Result<()> {
    let v = Vbd::start_with(SIZE, false, &[("nbd-tcp", "127.0.0.1:0")]).await?;
    let u = uri(&v.sock);

    let info = run(
        "qemu-img",
        &["info".into(), "--output=json".into(), u.clone()],
    )
    .await?;
    assert!(
        info.contains(&format!("\"virtual-size\": {SIZE}")),
        "qemu-img info over the Unix socket:\n{info}"
    );
    // The loopback TCP export, at the address the frontend published.
    let addr = v
        .sys
        .xs()
        .read(&format!("{}/nbd-tcp-address", v.id.frontend_dir()))
        .await?;
    let tcp_uri = format!("nbd://{addr}");
    let info = run(
        "qemu-img",
        &["info".into(), "--output=json".into(), tcp_uri],
    )
    .await?;
    assert!(
        info.contains(&format!("\"virtual-size\": {SIZE}")),
        "over TCP:\n{info}"
    );

    let cases = cases();
    let mut args = vec!["-f".to_string(), "raw".into()];
    for (o, l, p) in &cases {
        args.push("-c".into());
        args.push(format!("write -P {p} {o} {l}"));
    }
    for (o, l, p) in &cases {
        args.push("-c".into());
        args.push(format!("read -P {p} {o} {l}"));
    }
    args.push(u.clone());
    let out = run("qemu-io", &args).await?;
    assert!(
        !out.contains("verification failed") && !out.contains("error") && !out.contains("failed"),
        "qemu-io:\n{out}\n{}",
        v.logs()
    );
    assert_eq!(
        out.matches("read ").count(),
        cases.len(),
        "every read ran:\n{out}"
    );
    // A wrong pattern is noticed (the check can fail).
    let (o, l, p) = cases[3];
    let out = run(
        "qemu-io",
        &[
            "-f".into(),
            "raw".into(),
            "-c".into(),
            format!("read -P {} {o} {l}", p.wrapping_add(1)),
            u.clone(),
        ],
    )
    .await
    .unwrap_or_else(|e| e.to_string());
    assert!(
        out.contains("verification failed"),
        "a wrong pattern passed:\n{out}"
    );

    // The image file itself holds the bytes.
    let f = std::fs::File::open(&v.image)?;
    for (o, l, p) in &cases {
        let mut buf = vec![0u8; *l as usize];
        f.read_exact_at(&mut buf, *o)?;
        assert!(
            buf.iter().all(|b| b == p),
            "image bytes at {o}+{l} are not {p}"
        );
    }
    v.finish().await
}
