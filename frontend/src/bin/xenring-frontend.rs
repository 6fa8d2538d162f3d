//! The frontend daemon; see `xenring_frontend::cli`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    xenring_frontend::cli::main_with(xenring_frontend::cli::Args::parse())
}
