//! The backend daemon; see `xenring_backend::cli`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    xenring_backend::cli::main_with(xenring_backend::cli::Args::parse())
}
