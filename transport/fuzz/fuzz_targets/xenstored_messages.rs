//! Fuzzes the embedded xenstored's message handling: arbitrary bytes are
//! framed with the xs_wire codec and fed, message by message, to one store
//! from three connections (dom0, domain 1, domain 2), with domains
//! introduced and released along the way. Every message must get exactly
//! the reply the protocol promises (its req_id and tx_id echoed), and
//! nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenring::xenstore::codec::decode;
use xenring::xenstore::{ConnId, Quotas, Store, XsMsg};

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new(Quotas {
        nodes: 40,
        watches: 8,
        transactions: 4,
        ..Quotas::default()
    });
    store.introduce(1);
    let mut rest = data;
    let mut step = 0u32;
    while !rest.is_empty() {
        // The first byte picks the sender (and sometimes a domain event),
        // the rest is the wire stream.
        let sel = rest[0];
        rest = &rest[1..];
        match sel % 16 {
            14 => {
                let _ = store.introduce(u16::from(sel >> 4) % 3);
                continue;
            }
            15 => {
                let _ = store.release(u16::from(sel >> 4) % 3);
                continue;
            }
            _ => {}
        }
        let msg: XsMsg = match decode(rest) {
            Ok(Some((m, used))) => {
                rest = &rest[used..];
                m
            }
            Ok(None) | Err(_) => break,
        };
        let conn = u64::from(sel % 3);
        let domid = conn as u16;
        let out = store.handle(ConnId(conn), domid, &msg);
        assert_eq!(out.reply.req_id, msg.req_id, "reply echoes req_id");
        assert_eq!(out.reply.tx_id, msg.tx_id, "reply echoes tx_id");
        assert!(
            out.reply.payload.len() <= 4096,
            "reply within the payload limit"
        );
        for ev in &out.events {
            assert!(
                ev.to_msg().payload.len() <= 4096,
                "event within the payload limit"
            );
        }
        step += 1;
        if step % 7 == 0 {
            store.disconnect(ConnId(conn));
        }
    }
});
