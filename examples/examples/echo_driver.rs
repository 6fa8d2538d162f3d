//! The echo split driver (see `xenring_examples::echo_driver`): a backend
//! in dom0 (this process) and a frontend with its application in domU 1
//! (this program started again as the guest), on a simulated Xen host.
//!
//!     cargo run -p xenring-examples --example echo_driver

use std::process::ExitCode;

use xenring_examples::echo_driver;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(echo_driver::GUEST_ROLE) {
        return echo_driver::guest_main();
    }
    let run = async {
        let me = std::env::current_exe()?;
        echo_driver::run(me).await
    };
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match rt.block_on(run) {
        Ok(summary) => {
            for line in summary.lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo_driver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
