//! The embedded service example, as `cargo run --example embedded_service`
//! runs it: every answer the guests get is the expected one, the service
//! counted both guests and every line, its store holds each guest's keys
//! apart, and the host is left clean. One test per file: the example's
//! `System` sets this process's `XENSTORED_PATH`.

use std::path::PathBuf;

use xenring_examples::embedded_service::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_service_example_runs() -> anyhow::Result<()> {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-examples-node"));
    let s = run(node).await?;
    let text = s.lines.join("\n");

    assert_eq!(s.mismatches, 0, "{text}");
    assert_eq!(s.sent, 12, "{text}");
    assert_eq!(s.answered, s.sent, "{}", s.stats);
    assert_eq!(s.connections, 2, "{}", s.stats);
    assert!(s.stats.contains("sessions=3"), "{}", s.stats);
    assert!(s.stats.contains("errors=1"), "{}", s.stats);
    // The store after the service stopped: each guest's keys, apart.
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        s.store.entries(1),
        vec![kv("color", "blue"), kv("shape", "round")]
    );
    assert_eq!(s.store.entries(2), vec![kv("color", "green")]);
    assert_eq!((s.store.puts, s.store.gets, s.store.hits), (3, 6, 4));
    assert!(
        text.contains("domU 2 | get color        -> value green"),
        "{text}"
    );
    assert!(text.contains("host reports no leaks"), "{text}");
    assert!(s.leaks.is_empty(), "{:?}", s.leaks);
    Ok(())
}
