//! 256 MiB by TCP through the vif device in transfer mode (the receive
//! pool's accept-transfer slots), checksummed at both ends: see
//! vif_common.

mod vif_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_256_mib_in_transfer_mode() -> anyhow::Result<()> {
    vif_common::tcp_256_mib("transfer").await
}
