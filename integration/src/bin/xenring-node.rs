//! The daemons for the integration tests: `xenring-node backend|frontend
//! [ARGS]` (the same entry the demo uses).

fn main() -> std::process::ExitCode {
    xenring_examples::system::node_main(std::env::args().collect())
}
