//! `qemu-img convert` copies a 256 MiB random image through the whole
//! path (NBD -> frontend -> blkif rings -> backend -> image file), and
//! `qemu-img compare` finds the copy identical to the source, read back
//! through the same path; the image file itself is byte-identical too.

mod vbd_common;

use std::io::Write;

use vbd_common::{run, uri, Vbd};

const SIZE: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_and_compare_256mib() -> anyhow::Result<()> {
    let v = Vbd::start(SIZE, false).await?;
    let src = v.dir.path().join("source.img");
    {
        // Random bytes (xorshift), with a few zero runs so sparse handling
        // is exercised too.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..(SIZE >> 20) {
            if i % 37 == 5 {
                chunk.fill(0);
            } else {
                for w in chunk.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
            }
            f.write_all(&chunk)?;
        }
        f.flush()?;
    }
    let u = uri(&v.sock);
    let s = src.display().to_string();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", &s, &u].map(String::from),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", v.logs()))?;
    let out = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s, &u].map(String::from),
    )
    .await?;
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare:\n{out}"
    );
    // The image file itself holds the same bytes.
    let img = v.image.display().to_string();
    let out = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s, &img].map(String::from),
    )
    .await?;
    assert!(
        out.contains("Images are identical"),
        "image file:
{out}"
    );
    // A difference is noticed (the comparison can fail).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"x", 12345))?;
    let (same, out) = vbd_common::run_status(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s, &u].map(String::from),
    )
    .await?;
    assert!(!same && out.contains("Content mismatch"), "{out}");
    v.finish().await
}
