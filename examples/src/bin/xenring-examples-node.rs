//! The guest programs of the examples, for their tests (an example's own
//! program starts itself again instead):
//!
//! ```text
//! xenring-examples-node echo-guest                  the echo driver's guest
//! xenring-examples-node backend|frontend [ARGS]     the stock daemons
//! ```

use std::process::ExitCode;

use xenring_examples::{echo_driver, system};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(echo_driver::GUEST_ROLE) => echo_driver::guest_main(),
        Some("backend" | "frontend") => system::node_main(args),
        _ => {
            eprintln!(
                "usage: xenring-examples-node {}|backend|frontend [ARGS]",
                echo_driver::GUEST_ROLE
            );
            ExitCode::from(2)
        }
    }
}
