//! The echo driver example, as `cargo run --example echo_driver` runs it:
//! every answer is checked (by the guest, against its script), both ends
//! count the same requests, and the host is left clean. One test per file:
//! the example's `System` sets this process's `XENSTORED_PATH`.

use std::path::PathBuf;

use xenring_examples::echo_driver::{run, BURST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_driver_example_runs() -> anyhow::Result<()> {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-examples-node"));
    let s = run(node).await?;
    let text = s.lines.join("\n");

    // Six scripted calls (two of them refused on purpose) and the burst.
    assert_eq!(s.guest.calls, 6 + BURST, "{text}");
    assert_eq!(s.guest.mismatches, 0, "{text}");
    assert_eq!(s.guest.refused, 2, "{text}");
    assert_eq!(s.guest.ok, 4 + BURST, "{text}");
    // The backend saw exactly what the guest sent.
    assert_eq!(s.backend_requests, s.guest.calls, "{}", s.backend);
    assert_eq!(s.backend_refused, 2, "{}", s.backend);
    // What the example prints.
    for want in [
        r#"#1 upper   "hello, xen" -> ok "HELLO, XEN""#,
        r#"#2 reverse "hello, xen" -> ok "nex ,olleh""#,
        r#"#3 sum     "hello, xen" -> ok 939"#,
        "refused: status -1 (unknown op)",
        "refused: status -2 (bad length)",
        "host reports no leaks",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("WRONG"), "{text}");
    assert!(s.leaks.is_empty(), "{:?}", s.leaks);
    Ok(())
}
