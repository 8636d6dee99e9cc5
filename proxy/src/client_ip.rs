//! The client's address: the TCP peer, or — when the peer is a trusted proxy — the last
//! address in `X-Forwarded-For` that is not itself a trusted proxy.

use std::net::IpAddr;

use ipnet::IpNet;
use pingora::http::RequestHeader;

/// The address a record should show for this request.
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    request: &RequestHeader,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    // An IPv4 peer on a dual-stack socket (`::ffff:a.b.c.d`) is matched as IPv4.
    let peer = peer?.to_canonical();
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    // Walk the chain from the nearest hop outwards; the first untrusted hop is the client.
    // A malformed header cannot be believed: then the peer is all that is known.
    let mut client = peer;
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in request.headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for hop in text.split(',') {
            match parse_hop(hop.trim()) {
                Some(ip) => hops.push(ip),
                None => return Some(client),
            }
        }
    }
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(hop, trusted) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` hop: an address, or an address with a port as some proxies write it
/// (`203.0.113.7:5555`, `[2001:db8::1]:443`, `[2001:db8::1]`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(xff: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            r.append_header("x-forwarded-for", *v).unwrap();
        }
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let got = client_ip(Some(ip("203.0.113.9")), &request(&["1.2.3.4"]), &trusted);
        assert_eq!(got, Some(ip("203.0.113.9")));
    }

    #[test]
    fn a_trusted_peer_passes_on_the_first_untrusted_hop() {
        let trusted = [
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let got = client_ip(
            Some(ip("127.0.0.1")),
            &request(&["198.51.100.1, 203.0.113.7", "10.1.2.3"]),
            &trusted,
        );
        assert_eq!(
            got,
            Some(ip("203.0.113.7")),
            "spoofed 198.51.100.1 is ignored"
        );
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &request(&[]), &trusted),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &request(&["not-an-ip"]), &trusted),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn hops_with_ports_and_mapped_addresses_are_read() {
        let trusted = ["127.0.0.1/32".parse().unwrap()];
        let from = |xff: &str| client_ip(Some(ip("::ffff:127.0.0.1")), &request(&[xff]), &trusted);
        assert_eq!(from("203.0.113.7:5555"), Some(ip("203.0.113.7")));
        assert_eq!(from("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(from("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(from("::ffff:198.51.100.77"), Some(ip("198.51.100.77")));
    }
}
