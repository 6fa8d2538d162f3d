//! XenBus: the device handshake over XenStore.
pub mod machine;
