//! `xenring-demo`: the project's main job. Starts a simulated Xen host, a
//! backend daemon (dom0) and a frontend daemon (domU 1) as processes,
//! creates a `chan` device, pushes data through it, checks it, prints a
//! summary and shuts everything down. `xenring-demo backend|frontend ...`
//! runs one of the daemons (that is how the demo starts them).

use std::process::ExitCode;

use clap::Parser;

/// Run the xenring demo.
#[derive(Debug, Parser)]
#[command(name = "xenring-demo", version)]
struct Args {
    /// MiB to push through the chan device (and get back).
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Concurrent connections through the device.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if matches!(
        argv.get(1).map(String::as_str),
        Some("backend" | "frontend")
    ) {
        return xenring_examples::system::node_main(argv);
    }
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenring-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xenring-demo: cannot find its own program: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = xenring_examples::demo::DemoOptions {
        bytes: args.mib << 20,
        connections: args.connections.max(1),
    };
    match rt.block_on(xenring_examples::demo::run(node, opts)) {
        Ok(summary) => {
            for l in summary.lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenring-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
