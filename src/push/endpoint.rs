//! Server-side request forgery guard: a push endpoint is a URL a user chose, and this server
//! will POST to it. Unless `PUSH_ALLOW_INSECURE_ENDPOINTS` is set, only `https://` URLs whose
//! host resolves to public addresses only are accepted: checked at registration, checked again
//! before each request, and enforced at connect time by resolving names through [`PublicOnly`]
//! (so a name re-pointed at a private address after the check still cannot be reached).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::LazyLock,
};

use ipnet::IpNet;
use reqwest::Url;

/// Longest endpoint accepted (real push services use a few hundred bytes).
pub const MAX_LEN: usize = 2048;

/// Why an endpoint is refused; the message never repeats the URL (endpoints are not logged).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsafe(&'static str);

/// Ranges a push must never reach: this host, private and shared networks, link-local (cloud
/// metadata services live at 169.254.169.254 and fd00:ec2::254), multicast, reserved space.
static FORBIDDEN: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|net| net.parse().expect("a valid CIDR"))
    .collect()
});

/// Whether a push may go to `ip`. An IPv6 address that embeds an IPv4 one (mapped, NAT64) is
/// judged by the IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    !FORBIDDEN.iter().any(|net| net.contains(&ip))
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    // 64:ff9b::/96, the NAT64 well-known prefix.
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// Checks that `url` may receive pushes (see the module's doc): its shape, then, unless
/// `allow_insecure`, its scheme and every address its host resolves to.
pub async fn check(url: &str, allow_insecure: bool) -> Result<Url, Unsafe> {
    if url.len() > MAX_LEN {
        return Err(Unsafe("the push endpoint is too long"));
    }
    let parsed = Url::parse(url).map_err(|_| Unsafe("the push endpoint is not a URL"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Unsafe("the push endpoint must not carry credentials"));
    }
    let https = parsed.scheme() == "https";
    if !(https || allow_insecure && parsed.scheme() == "http") {
        return Err(Unsafe("the push endpoint must be an https:// URL"));
    }
    let host = parsed
        .host_str()
        .ok_or(Unsafe("the push endpoint has no host"))?;
    if allow_insecure {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Unsafe("the push endpoint's host does not resolve"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addresses.is_empty() || !addresses.into_iter().all(is_public) {
        return Err(Unsafe(
            "the push endpoint must not be on a loopback, private, link-local or metadata address",
        ));
    }
    Ok(parsed)
}

/// Resolves names for the push client, keeping public addresses only: a name that resolves to
/// none fails to connect.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err("the push endpoint resolves to no public address".into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn only_public_https_endpoints_pass_by_default() {
        for url in [
            "http://8.8.8.8/push",
            "https://127.0.0.1/push",
            "https://[::1]:8443/push",
            "https://localhost/push",
            "https://169.254.169.254/latest",
            "https://user:pw@8.8.8.8/push",
            "ftp://8.8.8.8/push",
            "not a url",
        ] {
            assert!(check(url, false).await.is_err(), "{url}");
        }
        assert!(check("https://8.8.8.8/push", false).await.is_ok());
        assert!(check("http://127.0.0.1:9/push", true).await.is_ok());
        assert!(check("ftp://127.0.0.1/push", true).await.is_err());
    }
}
