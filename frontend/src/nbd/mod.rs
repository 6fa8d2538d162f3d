//! NBD (the Network Block Device protocol), written from the protocol
//! document: the server the `vbd` frontend exports its disk with, and a
//! small client for tests, the demo and the benchmark.
//!
//! | file | what |
//! |---|---|
//! | `proto.rs` | wire constants, the request header, the simple reply |
//! | `handshake.rs` | option haggling: export names, structured replies, meta contexts |
//! | `server.rs` | [`Export`] (what is served) and [`serve`] (one connection) |
//! | `client.rs` | [`NbdClient`] |
//!
//! Structured replies and the `base:allocation` metadata context are
//! offered (`NBD_CMD_BLOCK_STATUS`), as are `NBD_CMD_CACHE` and
//! `NBD_CMD_FLAG_FAST_ZERO`; any alignment is accepted
//! (`NBD_INFO_BLOCK_SIZE` says minimum 1, preferred 4096, maximum 32 MiB).

mod client;
mod handshake;
pub mod proto;
mod server;

pub use client::{ClientError, NbdClient};
pub use handshake::{BASE_ALLOCATION, BASE_ALLOCATION_ID, MAX_OPTION};
pub use server::{
    serve, Errno, Export, ExportInfo, Extent, Zeroes, MAX_EXTENTS, MAX_INFLIGHT_BYTES,
    MAX_IN_FLIGHT, MAX_REQUEST, WORK_CHUNK,
};

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::{Arc, Mutex};

    #[derive(Debug)]
    struct Mem {
        data: Mutex<Vec<u8>>,
        readonly: bool,
        flush: bool,
    }

    impl Export for Mem {
        fn info(&self) -> BoxFuture<'_, Result<ExportInfo, Errno>> {
            Box::pin(async move {
                Ok(ExportInfo {
                    size: self.data.lock().unwrap().len() as u64,
                    readonly: self.readonly,
                    flush: self.flush,
                    trim: true,
                    fast_zero: true,
                })
            })
        }
        fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>, Errno>> {
            Box::pin(async move {
                let d = self.data.lock().unwrap();
                Ok(d[offset as usize..offset as usize + len].to_vec())
            })
        }
        fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async move {
                let mut d = self.data.lock().unwrap();
                d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                Ok(())
            })
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn trim(&self, _o: u64, _l: u64) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn write_zeroes(
            &self,
            offset: u64,
            len: u64,
            how: Zeroes,
        ) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async move {
                if how.fast {
                    return Err(ENOTSUP);
                }
                let mut d = self.data.lock().unwrap();
                d[offset as usize..(offset + len) as usize].fill(0);
                Ok(())
            })
        }
        /// Zeroed 4 KiB blocks are holes.
        fn block_status(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<Extent>, Errno>> {
            Box::pin(async move {
                let d = self.data.lock().unwrap();
                let mut out: Vec<Extent> = Vec::new();
                let (mut at, end) = (offset as usize, offset as usize + len as usize);
                while at < end {
                    let stop = ((at / 4096 + 1) * 4096).min(end);
                    let hole = d[at..stop].iter().all(|&b| b == 0);
                    let flags = if hole { STATE_HOLE | STATE_ZERO } else { 0 };
                    match out.last_mut() {
                        Some(l) if l.flags == flags => l.length += (stop - at) as u32,
                        _ => out.push(Extent {
                            length: (stop - at) as u32,
                            flags,
                        }),
                    }
                    at = stop;
                }
                Ok(out)
            })
        }
    }

    async fn pair(readonly: bool) -> (NbdClient, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let export: Arc<dyn Export> = Arc::new(Mem {
            data: Mutex::new(vec![0u8; 1 << 20]),
            readonly,
            flush: true,
        });
        let server = tokio::spawn(serve(a, export));
        (NbdClient::handshake(b).await.unwrap(), server)
    }

    #[tokio::test]
    async fn round_trip_concurrent_requests() {
        let (c, server) = pair(false).await;
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.flags() & FLAG_READ_ONLY, 0);
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let data = vec![i as u8 + 1; 1000 + i as usize];
                c.write(i * 8192 + 3, &data, i % 2 == 0).await.unwrap();
                assert_eq!(c.read(i * 8192 + 3, data.len() as u32).await.unwrap(), data);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        c.flush().await.unwrap();
        c.write_zeroes(3, 10).await.unwrap();
        assert_eq!(c.read(0, 16).await.unwrap()[3..13], [0u8; 10]);
        // Out of bounds: an error reply, the connection goes on.
        assert!(matches!(
            c.read((1 << 20) - 1, 2).await,
            Err(ClientError::Errno(EINVAL))
        ));
        assert!(matches!(
            c.write(1 << 20, &[1], false).await,
            Err(ClientError::Errno(ENOSPC))
        ));
        c.trim(0, 4096).await.unwrap();
        Arc::try_unwrap(c).unwrap().disconnect().await.unwrap();
        server.await.unwrap().unwrap();
    }

    async fn option(c: &mut tokio::io::DuplexStream, opt: u32, data: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        c.write_all(&b).await.unwrap();
    }

    /// Reads one option reply: (option, type, data).
    async fn reply(c: &mut tokio::io::DuplexStream) -> (u32, u32, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        assert_eq!(c.read_u64().await.unwrap(), REPLY_MAGIC);
        let opt = c.read_u32().await.unwrap();
        let kind = c.read_u32().await.unwrap();
        let mut d = vec![0u8; c.read_u32().await.unwrap() as usize];
        c.read_exact(&mut d).await.unwrap();
        (opt, kind, d)
    }

    /// An export of zeroes that counts its reads.
    #[derive(Debug, Default)]
    struct Counting {
        reads: std::sync::atomic::AtomicUsize,
    }

    impl Export for Counting {
        fn info(&self) -> BoxFuture<'_, Result<ExportInfo, Errno>> {
            Box::pin(async {
                Ok(ExportInfo {
                    size: 1 << 30,
                    readonly: false,
                    flush: true,
                    trim: true,
                    fast_zero: false,
                })
            })
        }
        fn read(&self, _offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>, Errno>> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move { Ok(vec![0u8; len]) })
        }
        fn write(&self, _offset: u64, _data: Vec<u8>) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn trim(&self, _o: u64, _l: u64) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn write_zeroes(&self, _o: u64, _l: u64, _h: Zeroes) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// A client that pipelines 1 MiB reads and never reads a reply gets
    /// no more than the connection's bounds served: the server stops
    /// reading its requests. (Before, a slot was freed when its reply was
    /// queued, on an unbounded queue, so every request was read and
    /// served and its MiB held: 2 GiB for 2,000 requests.)
    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_no_replies_is_not_served_without_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const REQUESTS: u64 = 100;
        // A small pipe, as a socket's buffer is small next to 2,000 requests.
        let (a, mut c) = tokio::io::duplex(1024);
        let export = Arc::new(Counting::default());
        let server = tokio::spawn(serve(a, export.clone() as Arc<dyn Export>));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await
            .unwrap();
        option(&mut c, OPT_EXPORT_NAME, &[]).await;
        let mut info = [0u8; 10];
        c.read_exact(&mut info).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(c);
        let sender = tokio::spawn(async move {
            for i in 0..REQUESTS {
                let req = proto::Request {
                    flags: 0,
                    kind: CMD_READ,
                    handle: i,
                    offset: i << 20,
                    length: 1 << 20,
                };
                if wr.write_all(&req.encode()).await.is_err() {
                    break;
                }
            }
        });
        // Paused time advances only once every task is idle: the server
        // has then read all it will read.
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let served = export.reads.load(std::sync::atomic::Ordering::Relaxed);
        let bound = (MAX_INFLIGHT_BYTES as usize >> 20).min(MAX_IN_FLIGHT);
        assert!(
            served <= bound + 1,
            "{served} reads of 1 MiB served to a client that reads no reply \
             (bound: {bound} MiB in flight)"
        );
        assert!(!sender.is_finished(), "the server stopped reading requests");
        // Once the client reads, everything is answered.
        let mut buf = vec![0u8; 1 << 20];
        let mut answered = 0;
        while answered < REQUESTS {
            let mut head = [0u8; 16];
            rd.read_exact(&mut head).await.unwrap();
            rd.read_exact(&mut buf).await.unwrap();
            answered += 1;
        }
        sender.await.unwrap();
        assert_eq!(
            export.reads.load(std::sync::atomic::Ordering::Relaxed) as u64,
            REQUESTS
        );
        drop((rd, server));
    }

    /// Raw handshakes: unknown options, LIST, INFO (with block sizes),
    /// ABORT, and EXPORT_NAME with and without the 124 zero bytes.
    #[tokio::test]
    async fn handshake_options() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for no_zeroes in [false, true] {
            let (a, mut c) = tokio::io::duplex(1 << 16);
            let export: Arc<dyn Export> = Arc::new(Mem {
                data: Mutex::new(vec![0u8; 8192]),
                readonly: false,
                flush: true,
            });
            let server = tokio::spawn(serve(a, export));
            assert_eq!(c.read_u64().await.unwrap(), NBDMAGIC);
            assert_eq!(c.read_u64().await.unwrap(), IHAVEOPT);
            assert_eq!(
                c.read_u16().await.unwrap(),
                FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
            );
            let flags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
            c.write_u32(flags).await.unwrap();
            option(&mut c, 99, &[]).await; // an unknown option
            assert_eq!(reply(&mut c).await, (99, REP_ERR_UNSUP, vec![]));
            option(&mut c, OPT_LIST, &[]).await;
            assert_eq!(reply(&mut c).await.1, REP_SERVER);
            assert_eq!(reply(&mut c).await.1, REP_ACK);
            // INFO for "", asking for block sizes.
            option(&mut c, OPT_INFO, &[0, 0, 0, 0, 0, 1, 0, 3]).await;
            let (_, k, d) = reply(&mut c).await;
            assert_eq!(
                (k, &d[..2], &d[2..10]),
                (REP_INFO, &[0u8, 0][..], &8192u64.to_be_bytes()[..])
            );
            let (_, k, d) = reply(&mut c).await;
            assert_eq!((k, &d[..2]), (REP_INFO, &[0u8, 3][..]));
            assert_eq!(u32::from_be_bytes(d[6..10].try_into().unwrap()), 4096);
            assert_eq!(reply(&mut c).await.1, REP_ACK);
            option(&mut c, OPT_INFO, &[0, 0, 0, 9]).await; // name longer than the data
            assert_eq!(reply(&mut c).await.1, REP_ERR_INVALID);
            option(&mut c, OPT_EXPORT_NAME, b"").await;
            assert_eq!(c.read_u64().await.unwrap(), 8192);
            let tflags = c.read_u16().await.unwrap();
            assert_ne!(tflags & FLAG_SEND_FLUSH, 0);
            if !no_zeroes {
                let mut z = [1u8; 124];
                c.read_exact(&mut z).await.unwrap();
                assert_eq!(z, [0u8; 124]);
            }
            // Transmission: one read, then DISC.
            let r = Request {
                flags: 0,
                kind: CMD_READ,
                handle: 77,
                offset: 0,
                length: 4,
            };
            c.write_all(&r.encode()).await.unwrap();
            let mut head = [0u8; 16];
            c.read_exact(&mut head).await.unwrap();
            assert_eq!(head, simple_reply(0, 77));
            let mut d = [1u8; 4];
            c.read_exact(&mut d).await.unwrap();
            assert_eq!(d, [0; 4]);
            let r = Request {
                kind: CMD_DISC,
                ..r
            };
            c.write_all(&r.encode()).await.unwrap();
            server.await.unwrap().unwrap();
        }
        // ABORT ends the negotiation with an ACK.
        let (a, mut c) = tokio::io::duplex(1 << 16);
        let export: Arc<dyn Export> = Arc::new(Mem {
            data: Mutex::new(vec![0u8; 512]),
            readonly: false,
            flush: true,
        });
        let server = tokio::spawn(serve(a, export));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_u32(FLAG_C_FIXED_NEWSTYLE).await.unwrap();
        option(&mut c, OPT_ABORT, &[]).await;
        assert_eq!(reply(&mut c).await, (OPT_ABORT, REP_ACK, vec![]));
        server.await.unwrap().unwrap();
    }

    /// Connects raw to an export of 64 KiB (flush offered or not) and
    /// negotiates with `NBD_OPT_GO` for the default export.
    async fn raw_transmission(flush: bool) -> tokio::io::DuplexStream {
        use tokio::io::AsyncReadExt;
        let (a, mut c) = tokio::io::duplex(1 << 20);
        let export: Arc<dyn Export> = Arc::new(Mem {
            data: Mutex::new(vec![0u8; 65536]),
            readonly: false,
            flush,
        });
        tokio::spawn(serve(a, export));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        use tokio::io::AsyncWriteExt;
        c.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await
            .unwrap();
        option(&mut c, OPT_GO, &[0, 0, 0, 0, 0, 0]).await;
        loop {
            let (_, k, _) = reply(&mut c).await;
            if k == REP_ACK {
                break;
            }
            assert_eq!(k, REP_INFO);
        }
        c
    }

    /// Sends one request (and `payload`), reads its simple reply's error
    /// (and `data` bytes when it succeeded).
    async fn raw_request(
        c: &mut tokio::io::DuplexStream,
        kind: u16,
        flags: u16,
        length: u32,
        payload: &[u8],
        data: usize,
    ) -> u32 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let r = Request {
            flags,
            kind,
            handle: 0x1234,
            offset: 0,
            length,
        };
        c.write_all(&r.encode()).await.unwrap();
        c.write_all(payload).await.unwrap();
        let mut head = [0u8; 16];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(head[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(head[8..], 0x1234u64.to_be_bytes());
        let err = u32::from_be_bytes(head[4..8].try_into().unwrap());
        if err == 0 {
            let mut d = vec![0u8; data];
            c.read_exact(&mut d).await.unwrap();
        }
        err
    }

    /// Command flags not defined for a command, or not advertised, get
    /// EINVAL and touch nothing; the connection goes on (a write's payload
    /// is still consumed). FUA is valid on every command once advertised.
    #[tokio::test]
    async fn unknown_or_inapplicable_command_flags_get_einval() {
        let mut c = raw_transmission(true).await;
        // FUA is advertised (flush is offered): fine on any command.
        assert_eq!(
            raw_request(&mut c, CMD_READ, CMD_FLAG_FUA, 8, &[], 8).await,
            0
        );
        assert_eq!(
            raw_request(&mut c, CMD_WRITE, CMD_FLAG_FUA, 4, &[9; 4], 0).await,
            0
        );
        assert_eq!(
            raw_request(&mut c, CMD_FLUSH, CMD_FLAG_FUA, 0, &[], 0).await,
            0
        );
        for (kind, flags, payload) in [
            (CMD_READ, CMD_FLAG_NO_HOLE, &[][..]),
            (CMD_READ, CMD_FLAG_DF, &[]), // DF not advertised (no structured replies)
            (CMD_CACHE, CMD_FLAG_NO_HOLE, &[]),
            (CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, &[]), // no context selected
            (CMD_READ, CMD_FLAG_FAST_ZERO, &[]),
            (CMD_READ, 1 << 15, &[]),
            (CMD_WRITE, CMD_FLAG_NO_HOLE, &[7u8; 4]),
            (CMD_WRITE, CMD_FLAG_REQ_ONE, &[7u8; 4]),
            (CMD_WRITE_ZEROES, CMD_FLAG_REQ_ONE, &[]),
            (CMD_WRITE_ZEROES, CMD_FLAG_DF, &[]),
            (CMD_TRIM, CMD_FLAG_NO_HOLE, &[]),
            (CMD_FLUSH, 1 << 9, &[]),
            (99, 0, &[]), // an unknown command
        ] {
            let len = if payload.is_empty() {
                4
            } else {
                payload.len() as u32
            };
            assert_eq!(
                raw_request(&mut c, kind, flags, len, payload, 4).await,
                EINVAL,
                "command {kind} with flags {flags:#x}"
            );
        }
        // The writes with bad flags wrote nothing; the good one did.
        assert_eq!(raw_request(&mut c, CMD_READ, 0, 4, &[], 4).await, 0);
        let mut c2 = c;
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let r = Request {
                flags: 0,
                kind: CMD_READ,
                handle: 5,
                offset: 0,
                length: 4,
            };
            c2.write_all(&r.encode()).await.unwrap();
            let mut head = [0u8; 16];
            c2.read_exact(&mut head).await.unwrap();
            let mut d = [0u8; 4];
            c2.read_exact(&mut d).await.unwrap();
            assert_eq!(d, [9; 4]);
        }
        // Without flush there is no FUA, and no FLUSH command.
        let mut c = raw_transmission(false).await;
        assert_eq!(
            raw_request(&mut c, CMD_READ, CMD_FLAG_FUA, 8, &[], 8).await,
            EINVAL
        );
        assert_eq!(raw_request(&mut c, CMD_FLUSH, 0, 0, &[], 0).await, EINVAL);
        assert_eq!(raw_request(&mut c, CMD_WRITE, 0, 4, &[1; 4], 0).await, 0);
    }

    /// A name that is not the export's is refused: `NBD_REP_ERR_UNKNOWN`
    /// with a message for INFO and GO (the negotiation goes on), a closed
    /// connection for EXPORT_NAME (it cannot answer an error).
    #[tokio::test]
    async fn unknown_export_names_are_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut c) = tokio::io::duplex(1 << 16);
        let export: Arc<dyn Export> = Arc::new(Mem {
            data: Mutex::new(vec![0u8; 4096]),
            readonly: false,
            flush: true,
        });
        let server = tokio::spawn(serve(a, export));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await
            .unwrap();
        for opt in [OPT_INFO, OPT_GO] {
            option(&mut c, opt, &[0, 0, 0, 3, b'f', b'o', b'o', 0, 0]).await;
            let (o, k, msg) = reply(&mut c).await;
            assert_eq!((o, k), (opt, REP_ERR_UNKNOWN));
            assert!(String::from_utf8_lossy(&msg).contains("\"foo\""), "{msg:?}");
        }
        // The default export is still there.
        option(&mut c, OPT_INFO, &[0, 0, 0, 0, 0, 0]).await;
        assert_eq!(reply(&mut c).await.1, REP_INFO);
        assert_eq!(reply(&mut c).await.1, REP_ACK);
        option(&mut c, OPT_EXPORT_NAME, b"foo").await;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "EXPORT_NAME foo was answered: {rest:?}");
        let err = server.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("\"foo\""), "{err}");
    }

    /// Reads one structured chunk: (flags, type, handle, payload).
    async fn chunk(c: &mut tokio::io::DuplexStream) -> (u16, u16, u64, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        assert_eq!(c.read_u32().await.unwrap(), STRUCTURED_REPLY_MAGIC);
        let flags = c.read_u16().await.unwrap();
        let kind = c.read_u16().await.unwrap();
        let handle = c.read_u64().await.unwrap();
        let mut d = vec![0u8; c.read_u32().await.unwrap() as usize];
        c.read_exact(&mut d).await.unwrap();
        (flags, kind, handle, d)
    }

    fn meta_query(queries: &[&str]) -> Vec<u8> {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Structured replies and `base:allocation`: meta contexts need
    /// structured replies first and the default export; LIST and SET
    /// answer `base:allocation`; reads come as one OFFSET_DATA chunk,
    /// errors as an ERROR chunk with a message, block status as one
    /// BLOCK_STATUS chunk with holes where the export has them (REQ_ONE:
    /// one extent); BLOCK_STATUS without a context, and FAST_ZERO
    /// without it advertised, are EINVAL; CACHE is served.
    #[tokio::test]
    async fn structured_replies_and_block_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut c) = tokio::io::duplex(1 << 20);
        let mem = Arc::new(Mem {
            data: Mutex::new(vec![0u8; 65536]),
            readonly: false,
            flush: true,
        });
        mem.data.lock().unwrap()[8192..12288].fill(7);
        let export: Arc<dyn Export> = mem.clone();
        tokio::spawn(serve(a, export));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await
            .unwrap();
        let q = meta_query(&["base:allocation"]);
        option(&mut c, OPT_SET_META_CONTEXT, &q).await;
        assert_eq!(
            reply(&mut c).await.1,
            REP_ERR_INVALID,
            "before structured replies"
        );
        option(&mut c, OPT_STRUCTURED_REPLY, &[1]).await;
        assert_eq!(reply(&mut c).await.1, REP_ERR_INVALID, "with data");
        option(&mut c, OPT_STRUCTURED_REPLY, &[]).await;
        assert_eq!(reply(&mut c).await, (OPT_STRUCTURED_REPLY, REP_ACK, vec![]));
        let mut named = q.clone();
        named.splice(0..4, [0, 0, 0, 1, b'x']);
        option(&mut c, OPT_SET_META_CONTEXT, &named).await;
        assert_eq!(reply(&mut c).await.1, REP_ERR_UNKNOWN);
        for (query, listed) in [
            (vec![], true),
            (vec!["base:"], true),
            (vec!["x-other:thing"], false),
        ] {
            option(&mut c, OPT_LIST_META_CONTEXT, &meta_query(&query)).await;
            if listed {
                let (_, k, d) = reply(&mut c).await;
                assert_eq!((k, &d[4..]), (REP_META_CONTEXT, BASE_ALLOCATION.as_bytes()));
            }
            assert_eq!(reply(&mut c).await.1, REP_ACK);
        }
        option(&mut c, OPT_SET_META_CONTEXT, &q).await;
        let (_, k, d) = reply(&mut c).await;
        assert_eq!(k, REP_META_CONTEXT);
        assert_eq!(d[..4], BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(&d[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(reply(&mut c).await.1, REP_ACK);
        option(&mut c, OPT_GO, &[0, 0, 0, 0, 0, 0]).await;
        let (_, k, d) = reply(&mut c).await;
        assert_eq!(k, REP_INFO);
        let tflags = u16::from_be_bytes([d[10], d[11]]);
        assert_ne!(tflags & FLAG_SEND_DF, 0);
        assert_ne!(tflags & FLAG_SEND_CACHE, 0);
        assert_ne!(tflags & FLAG_SEND_FAST_ZERO, 0);
        assert_eq!(reply(&mut c).await.1, REP_ACK);

        let send = |kind: u16, flags: u16, handle: u64, offset: u64, length: u32| {
            Request {
                flags,
                kind,
                handle,
                offset,
                length,
            }
            .encode()
        };
        c.write_all(&send(CMD_READ, CMD_FLAG_DF, 1, 8190, 4))
            .await
            .unwrap();
        let (f, t, h, d) = chunk(&mut c).await;
        assert_eq!((f, t, h), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1));
        assert_eq!(d, [0, 0, 0, 0, 0, 0, 0x1f, 0xfe, 0, 0, 7, 7]);
        c.write_all(&send(CMD_READ, 0, 2, 65535, 2)).await.unwrap();
        let (f, t, h, d) = chunk(&mut c).await;
        assert_eq!((f, t, h), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 2));
        assert_eq!(d[..4], EINVAL.to_be_bytes());
        let n = u16::from_be_bytes([d[4], d[5]]) as usize;
        assert!(n > 0 && d.len() == 6 + n, "an error message: {d:?}");
        c.write_all(&send(CMD_BLOCK_STATUS, 0, 3, 4096, 16384))
            .await
            .unwrap();
        let (f, t, h, d) = chunk(&mut c).await;
        assert_eq!((f, t, h), (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 3));
        let words: Vec<u32> = d
            .chunks(4)
            .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words, [BASE_ALLOCATION_ID, 4096, 3, 4096, 0, 8192, 3]);
        c.write_all(&send(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 4, 4096, 16384))
            .await
            .unwrap();
        let (_, t, _, d) = chunk(&mut c).await;
        assert_eq!((t, d.len()), (REPLY_TYPE_BLOCK_STATUS, 12));
        // Past the end, empty, a bad flag: errors, in ERROR chunks.
        for (i, (flags, offset, length)) in [(0, 65536, 1), (0, 0, 0), (CMD_FLAG_NO_HOLE, 0, 1)]
            .into_iter()
            .enumerate()
        {
            c.write_all(&send(
                CMD_BLOCK_STATUS,
                flags,
                10 + i as u64,
                offset,
                length,
            ))
            .await
            .unwrap();
            let (_, t, _, d) = chunk(&mut c).await;
            assert_eq!((t, &d[..4]), (REPLY_TYPE_ERROR, &EINVAL.to_be_bytes()[..]));
        }
        // Other commands keep simple replies.
        c.write_all(&send(CMD_CACHE, 0, 20, 0, 4096)).await.unwrap();
        let mut head = [0u8; 16];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(head, simple_reply(0, 20));
        c.write_all(&send(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 21, 8192, 4096))
            .await
            .unwrap();
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(
            head,
            simple_reply(ENOTSUP, 21),
            "the export cannot zero fast"
        );
        assert_eq!(
            mem.data.lock().unwrap()[8192],
            7,
            "a failed fast zero wrote"
        );
        c.write_all(&send(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 22, 8192, 4096))
            .await
            .unwrap();
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(head, simple_reply(0, 22));
        assert_eq!(mem.data.lock().unwrap()[8192], 0);
    }

    /// Without a selected context, BLOCK_STATUS is EINVAL; without
    /// structured replies no DF; FAST_ZERO only when advertised.
    #[tokio::test]
    async fn block_status_needs_a_context_and_fast_zero_its_flag() {
        let mut c = raw_transmission(true).await;
        assert_eq!(
            raw_request(&mut c, CMD_BLOCK_STATUS, 0, 4096, &[], 0).await,
            EINVAL
        );
        assert_eq!(raw_request(&mut c, CMD_CACHE, 0, 4096, &[], 0).await, 0);
        assert_eq!(
            raw_request(&mut c, CMD_READ, CMD_FLAG_DF, 4, &[], 4).await,
            EINVAL
        );
        // Mem advertises fast zeroes (fast_zero: true) but cannot do them.
        assert_eq!(
            raw_request(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 4096, &[], 0).await,
            ENOTSUP
        );
        assert_eq!(
            raw_request(&mut c, CMD_WRITE_ZEROES, 0, 4096, &[], 0).await,
            0
        );
    }

    #[tokio::test]
    async fn readonly_export_refuses_writes_with_eperm() {
        let (c, _server) = pair(true).await;
        assert_ne!(c.flags() & FLAG_READ_ONLY, 0);
        assert!(matches!(
            c.write(0, &[1; 512], false).await,
            Err(ClientError::Errno(EPERM))
        ));
        assert!(matches!(
            c.trim(0, 512).await,
            Err(ClientError::Errno(EPERM))
        ));
        assert_eq!(c.read(0, 4).await.unwrap(), vec![0; 4]);
    }
}
