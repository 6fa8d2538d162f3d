//! A checksummed TCP source and sink for the vif tests and benchmark, run
//! inside network namespaces: `xenring-tcp sink ADDR:PORT` or
//! `xenring-tcp source ADDR:PORT BYTES`.

fn main() -> std::process::ExitCode {
    xenring_examples::demo_vif::tcp_tool_main(std::env::args().collect())
}
