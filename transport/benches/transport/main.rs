//! The transport benchmarks of issue 4, side by side in one run, each
//! figure next to what a user would pick instead:
//!
//! * P1 stream throughput, 64 KiB writes through a 1 MiB vchan ring between
//!   two domain processes, against a Unix-domain socket stream and against
//!   single-core memcpy bandwidth (the ceiling) — `p1_stream.rs`;
//! * P2 pipelined 64-byte request/response rate through a ring.h ring,
//!   against a Unix socket doing the same — `p2_p3_ring.rs`;
//! * P3 one-in-flight round-trip latency through a ring, against a Unix
//!   socket ping-pong — `p2_p3_ring.rs`;
//! * notifications per request (suppression at work).
//!
//! `cargo bench -p xenring --bench transport` prints a table and writes
//! `target/xenring-bench/transport.json` and `transport.svg`. Child
//! processes are this binary again, told their role by
//! `XENRING_BENCH_ROLE` (each module handles its own roles in `child`).

mod common;
mod p1_stream;
mod p2_p3_ring;

use common::Row;

fn main() {
    if let Ok(role) = std::env::var(common::ROLE) {
        if p1_stream::child(&role) || p2_p3_ring::child(&role) {
            return;
        }
        panic!("unknown benchmark role {role}");
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let machine = common::machine();
    println!("xenring transport benchmarks on {machine}");
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(p1_stream::run());
    rows.extend(p2_p3_ring::run());
    common::report(&machine, &rows);
}
