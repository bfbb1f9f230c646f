//! Who the client is behind reverse proxies: the address per-address limits count.
//!
//! Only a peer in `TRUSTED_PROXIES` is believed about who it forwards for, and only in the one
//! header it is configured to write. Each proxy appends the address it saw, so the header is
//! read from the right: the first address that is not a trusted proxy is the client. Anything
//! to its left was written by the client itself and is ignored (a client cannot pick its
//! bucket by sending `X-Forwarded-For: 1.2.3.4`).

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

use crate::config::ForwardedHeader;

/// The client's address for a request that came from `peer`.
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match header {
        ForwardedHeader::XForwardedFor => forwarded_list(headers, "x-forwarded-for", parse_node),
        ForwardedHeader::Forwarded => {
            forwarded_list(headers, header::FORWARDED.as_str(), forwarded_for)
        }
    };
    // `nearest` is the closest hop known so far, a trusted proxy; it answers for the next one.
    let mut nearest = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(&ip) => nearest = ip,
            Some(ip) => return ip,
            // A hop that is hidden or garbled: the proxy that wrote it is the best we know.
            None => return nearest,
        }
    }
    nearest
}

/// Every comma-separated entry of every `name` header, in order, each parsed by `parse`.
fn forwarded_list(
    headers: &HeaderMap,
    name: &str,
    parse: fn(&str) -> Option<IpAddr>,
) -> Vec<Option<IpAddr>> {
    headers
        .get_all(name)
        .iter()
        // Split before decoding: a client's unreadable bytes make its own entries unreadable
        // hops, not the readable ones a proxy appended to the same line.
        .flat_map(|value| {
            value
                .as_bytes()
                .split(|byte| *byte == b',')
                .map(|entry| std::str::from_utf8(entry).ok().and_then(parse))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One RFC 7239 element (`for=...;proto=https;by=...`): its `for` node. Quotes are not parsed
/// for commas on purpose: an unclosed quote written by the client must not swallow the
/// elements the proxies appended after it.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))?
    })
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`; `None`
/// for `unknown`, obfuscated identifiers (`_hidden`) and anything else.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let ip = node
        .parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            node.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        let trusted = nets(&["10.0.0.0/8"]);
        for kind in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            assert_eq!(
                resolve(ip("192.0.2.9"), &h, &trusted, kind),
                ip("192.0.2.9")
            );
            assert_eq!(resolve(ip("192.0.2.9"), &h, &[], kind), ip("192.0.2.9"));
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let xff = ForwardedHeader::XForwardedFor;
        // The client's own (spoofed) entry is left of the one the proxy appended.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.0.0.7")]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, xff),
            ip("203.0.113.5")
        );
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.5:4711"),
        ]);
        assert_eq!(
            resolve(ip("10.1.1.1"), &h, &trusted, xff),
            ip("203.0.113.5")
        );
        // Only proxies on the way: the farthest of them.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.7")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, xff), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("127.0.0.1"), &HeaderMap::new(), &trusted, xff),
            ip("127.0.0.1")
        );
        // Garbage where the client should be: the proxy that wrote it.
        let h = headers(&[("x-forwarded-for", "203.0.113.5, nonsense, 10.0.0.7")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, xff), ip("10.0.0.7"));
        // Bytes that are not text, before the entry a proxy appended on the same line, do not
        // hide that entry (the client would pick the proxy's bucket).
        let mut h = HeaderMap::new();
        let raw = axum::http::HeaderValue::from_bytes(b"\xff, 203.0.113.5").expect("header value");
        h.append("x-forwarded-for", raw);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, xff),
            ip("203.0.113.5")
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.5")]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &h, &trusted, xff),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn rfc_7239_forwarded_is_read_only_when_configured() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.7;by=10.0.0.1"#,
            ),
        ]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            resolve(
                ip("127.0.0.1"),
                &h,
                &trusted,
                ForwardedHeader::XForwardedFor
            ),
            ip("6.6.6.6")
        );
        // An obfuscated or unknown client: the proxy that reported it.
        let h = headers(&[("forwarded", "for=_hidden, for=unknown, for=10.0.0.7")]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            ip("10.0.0.7")
        );
        // A client's unclosed quote does not swallow the proxy's element.
        let h = headers(&[("forwarded", r#"for="6.6.6.6, for=203.0.113.5"#)]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            ip("203.0.113.5")
        );
    }
}
