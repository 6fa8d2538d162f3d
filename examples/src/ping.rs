//! The demo's own ping: ICMP echo requests over a raw socket opened inside
//! a network namespace, so the demo's network part needs no `ping`
//! program (iputils-ping). The vif tests keep using the real `ping`
//! ([`crate::demo_vif::ping`]); one of them checks this one against the
//! same device.
//!
//! The socket is made on a thread of its own that first joins the
//! namespace (`setns` on `/run/netns/<name>`, as `ip netns exec` does):
//! a socket belongs to the namespace it was made in, and only that thread
//! moves. Needs root (raw sockets, `setns`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use crate::demo_vif::{NetNs, PingStats};

/// ICMP message types (RFC 792).
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
/// Bytes after the 8-byte ICMP header (as iputils' default 56).
const PAYLOAD: usize = 56;

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request with identifier `id` and sequence number `seq`.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 8 + PAYLOAD];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// If `packet` (an IPv4 datagram as a raw socket delivers it) is a
/// well-formed echo reply, its (identifier, sequence number).
pub fn parse_echo_reply(packet: &[u8]) -> Option<(u16, u16)> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let icmp = packet.get(ihl..)?;
    if icmp.len() < 8 || icmp[0] != ECHO_REPLY || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

/// Pings `addr` from inside `ns`: `count` echo requests `interval` apart,
/// each waited for at most 2 s. An error if none came back.
pub fn icmp_ping(
    ns: &NetNs,
    addr: Ipv4Addr,
    count: u16,
    interval: Duration,
) -> anyhow::Result<PingStats> {
    let path = format!("/run/netns/{}", ns.name());
    let run = move || -> anyhow::Result<PingStats> {
        let nsfd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&nsfd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("joining the network namespace {path} (needs root)"))?;
        let sock = rustix::net::socket(
            AddressFamily::INET,
            SocketType::RAW,
            Some(rustix::net::ipproto::ICMP),
        )
        .context("opening a raw ICMP socket (needs root)")?;
        let to = SocketAddrV4::new(addr, 0);
        // Our process id tells our replies from another ping's.
        let id = std::process::id() as u16;
        let mut received = 0u32;
        let mut total = Duration::ZERO;
        let mut buf = [0u8; 1500];
        for seq in 0..count {
            let sent = Instant::now();
            rustix::net::sendto(&sock, &echo_request(id, seq), SendFlags::empty(), &to)
                .with_context(|| format!("sending an echo request to {addr}"))?;
            let deadline = sent + Duration::from_secs(2);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                rustix::net::sockopt::set_socket_timeout(
                    &sock,
                    rustix::net::sockopt::Timeout::Recv,
                    Some(left),
                )?;
                match rustix::net::recvfrom(&sock, &mut buf, RecvFlags::empty()) {
                    Ok((n, _, _)) => {
                        if parse_echo_reply(&buf[..n]) == Some((id, seq)) {
                            received += 1;
                            total += sent.elapsed();
                            break;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e).context("receiving echo replies"),
                }
            }
            if seq + 1 < count {
                std::thread::sleep(interval.saturating_sub(sent.elapsed()));
            }
        }
        if received == 0 {
            bail!("no echo reply from {addr} to {count} requests");
        }
        Ok(PingStats {
            sent: count.into(),
            received,
            avg_ms: total.as_secs_f64() * 1e3 / f64::from(received),
        })
    };
    std::thread::spawn(run)
        .join()
        .map_err(|_| anyhow::anyhow!("the ping thread panicked"))?
        .with_context(|| format!("ping {addr} in {}", ns.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checksums_to_zero_and_carries_its_ids() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p.len(), 64);
        assert_eq!(p[0], ECHO_REQUEST);
        assert_eq!(checksum(&p), 0, "a correct checksum sums to zero");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn replies_are_read_and_damage_is_refused() {
        // An IPv4 header (20 bytes, IHL 5) followed by the reply.
        let mut reply = echo_request(0xbeef, 3);
        reply[0] = ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&reply);
        reply[2..4].copy_from_slice(&c.to_be_bytes());
        let mut pkt = vec![0x45u8];
        pkt.extend_from_slice(&[0; 19]);
        pkt.extend_from_slice(&reply);
        assert_eq!(parse_echo_reply(&pkt), Some((0xbeef, 3)));
        // A request is not a reply; a flipped byte fails the checksum; a
        // cut packet or a bad header length is refused.
        let mut req = pkt.clone();
        req[20] = ECHO_REQUEST;
        assert_eq!(parse_echo_reply(&req), None);
        let mut bad = pkt.clone();
        bad[40] ^= 1;
        assert_eq!(parse_echo_reply(&bad), None);
        assert_eq!(parse_echo_reply(&pkt[..25]), None);
        assert_eq!(parse_echo_reply(&[0x44; 40]), None);
        assert_eq!(parse_echo_reply(&[]), None);
    }

    #[test]
    fn the_checksum_matches_rfc_1071s_example() {
        // RFC 1071 section 3: the one's complement sum of these is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }
}
