//! A dom0 key-value service that embeds the backend daemon (see
//! `xenring_examples::embedded_service`); two guests run the stock chan
//! frontend daemon (this program started again as `frontend`) on a
//! simulated Xen host.
//!
//!     cargo run -p xenring-examples --example embedded_service

use std::process::ExitCode;

use xenring_examples::{embedded_service, system};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("frontend") {
        return system::node_main(args);
    }
    let run = async {
        let me = std::env::current_exe()?;
        embedded_service::run(me).await
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
            eprintln!("embedded_service: {e:#}");
            ExitCode::FAILURE
        }
    }
}
