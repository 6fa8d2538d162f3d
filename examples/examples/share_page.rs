//! Two domains on an embedded simulated host share a page and an event
//! channel: `cargo run -p xenring-examples --example share_page`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("xenring-example-{}", std::process::id()));
    let msg = xenring_examples::share_a_page(&dir).await?;
    println!("domain 0 read: {msg}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
