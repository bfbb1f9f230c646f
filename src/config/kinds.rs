//! How a setting's text becomes a value and back: one `Kind` per way of reading a setting, so a
//! setting's declaration (in `config/mod.rs`) says how it is parsed and validated by naming one.

use std::{fmt::Display, marker::PhantomData, net::SocketAddr, time::Duration};

use super::values::{AppEnv, DirectoryPolicy, ForwardedHeader, LogFormat, Secret, redact_url};

/// A way of reading a setting. `parse` gets the raw text (never empty for a required value: an
/// empty variable counts as unset); its error says what is wrong, without the setting's name,
/// which the caller adds with where the value came from.
pub trait Kind {
    type Value;
    /// True when the raw text must not be repeated in an error message.
    const SECRET: bool = false;
    fn parse(raw: &str) -> Result<Self::Value, String>;
    /// The value as `check-config` prints it, secrets redacted.
    fn show(value: &Self::Value) -> String;
}

/// What `check-config` prints for an unset optional setting.
pub const NONE: &str = "(none)";

fn number(raw: &str) -> Result<u64, String> {
    raw.trim().parse().map_err(|e| format!("{e}"))
}

fn positive(raw: &str) -> Result<u64, String> {
    match number(raw)? {
        0 => Err("must be greater than zero".to_owned()),
        n => Ok(n),
    }
}

/// A count greater than zero, of the integer type the code uses.
pub struct Count<T>(PhantomData<T>);

impl<T: TryFrom<u64> + Display> Kind for Count<T> {
    type Value = T;
    fn parse(raw: &str) -> Result<T, String> {
        T::try_from(positive(raw)?).map_err(|_| "is too large".to_owned())
    }
    fn show(value: &T) -> String {
        value.to_string()
    }
}

/// Seconds, greater than zero.
pub struct Seconds;

impl Kind for Seconds {
    type Value = Duration;
    fn parse(raw: &str) -> Result<Duration, String> {
        positive(raw).map(Duration::from_secs)
    }
    fn show(value: &Duration) -> String {
        value.as_secs().to_string()
    }
}

/// Seconds, zero allowed (zero turns the feature off).
pub struct SecondsOrZero;

impl Kind for SecondsOrZero {
    type Value = Duration;
    fn parse(raw: &str) -> Result<Duration, String> {
        number(raw).map(Duration::from_secs)
    }
    fn show(value: &Duration) -> String {
        value.as_secs().to_string()
    }
}

/// Milliseconds, greater than zero.
pub struct Millis;

impl Kind for Millis {
    type Value = Duration;
    fn parse(raw: &str) -> Result<Duration, String> {
        positive(raw).map(Duration::from_millis)
    }
    fn show(value: &Duration) -> String {
        value.as_millis().to_string()
    }
}

/// Milliseconds, zero allowed (zero turns the feature off).
pub struct MillisOrZero;

impl Kind for MillisOrZero {
    type Value = Duration;
    fn parse(raw: &str) -> Result<Duration, String> {
        number(raw).map(Duration::from_millis)
    }
    fn show(value: &Duration) -> String {
        value.as_millis().to_string()
    }
}

/// Hours, zero allowed.
pub struct Hours;

impl Kind for Hours {
    type Value = Duration;
    fn parse(raw: &str) -> Result<Duration, String> {
        number(raw).map(|h| Duration::from_secs(h.saturating_mul(3600)))
    }
    fn show(value: &Duration) -> String {
        (value.as_secs() / 3600).to_string()
    }
}

/// Days something is kept, `0` meaning forever (`None`).
pub struct DaysOrForever;

impl Kind for DaysOrForever {
    type Value = Option<Duration>;
    fn parse(raw: &str) -> Result<Option<Duration>, String> {
        let days = number(raw)?;
        Ok((days > 0).then(|| Duration::from_secs(days.saturating_mul(86_400))))
    }
    fn show(value: &Option<Duration>) -> String {
        value.map_or(0, |d| d.as_secs() / 86_400).to_string()
    }
}

/// Text taken as it is.
pub struct Text;

impl Kind for Text {
    type Value = String;
    fn parse(raw: &str) -> Result<String, String> {
        Ok(raw.to_owned())
    }
    fn show(value: &String) -> String {
        value.clone()
    }
}

/// `host:port` to listen on.
pub struct Address;

impl Kind for Address {
    type Value = SocketAddr;
    fn parse(raw: &str) -> Result<SocketAddr, String> {
        raw.trim().parse().map_err(|e| format!("{e}"))
    }
    fn show(value: &SocketAddr) -> String {
        value.to_string()
    }
}

/// `sqlite:...` or `postgres://...` (the engines `store::Engine::of_url` knows); printed without
/// its password.
pub struct DatabaseUrl;

impl Kind for DatabaseUrl {
    type Value = String;
    const SECRET: bool = true;
    fn parse(raw: &str) -> Result<String, String> {
        if raw.starts_with("sqlite:")
            || raw.starts_with("postgres://")
            || raw.starts_with("postgresql://")
        {
            Ok(raw.to_owned())
        } else {
            Err("must start with sqlite: or postgres://".to_owned())
        }
    }
    fn show(value: &String) -> String {
        redact_url(value)
    }
}

/// An optional `redis://` or `rediss://` (TLS) URL; printed without its password.
pub struct RedisUrl;

impl Kind for RedisUrl {
    type Value = Option<Secret>;
    const SECRET: bool = true;
    fn parse(raw: &str) -> Result<Option<Secret>, String> {
        if raw.is_empty() {
            return Ok(None);
        }
        if !(raw.starts_with("redis://") || raw.starts_with("rediss://")) {
            return Err("must start with redis:// (or rediss:// for TLS)".to_owned());
        }
        redis::Client::open(raw).map_err(|e| format!("{e}"))?;
        Ok(Some(Secret::new(raw)))
    }
    fn show(value: &Option<Secret>) -> String {
        value.as_ref().map_or_else(
            || NONE.to_owned(),
            |u| redact_url(&String::from_utf8_lossy(u.expose())),
        )
    }
}

/// A key never printed.
pub struct Key;

impl Kind for Key {
    type Value = Secret;
    const SECRET: bool = true;
    fn parse(raw: &str) -> Result<Secret, String> {
        Ok(Secret::new(raw))
    }
    fn show(_: &Secret) -> String {
        "<redacted>".to_owned()
    }
}

/// An optional token (surrounding blanks dropped), never printed.
pub struct Token;

impl Kind for Token {
    type Value = Option<Secret>;
    const SECRET: bool = true;
    fn parse(raw: &str) -> Result<Option<Secret>, String> {
        let raw = raw.trim();
        Ok((!raw.is_empty()).then(|| Secret::new(raw)))
    }
    fn show(value: &Option<Secret>) -> String {
        if value.is_some() { "<redacted>" } else { NONE }.to_owned()
    }
}

/// A list as it is written in a setting, or `NONE`.
fn comma_separated(items: &[String]) -> String {
    if items.is_empty() {
        NONE.to_owned()
    } else {
        items.join(",")
    }
}

/// Comma-separated `scheme://host[:port]` origins, or `*` (refused in production, by
/// `Config::check`).
pub struct Origins;

impl Kind for Origins {
    type Value = Vec<String>;
    fn parse(raw: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for origin in raw
            .split(',')
            .map(|o| o.trim().trim_end_matches('/'))
            .filter(|o| !o.is_empty())
        {
            if origin != "*" {
                let rest = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                let valid = rest.is_some_and(|host| {
                    !host.is_empty()
                        && !host.contains('/')
                        && host.chars().all(|c| c.is_ascii_graphic())
                });
                if !valid {
                    return Err(format!(
                        "{origin:?} is not an origin (expected http(s)://host[:port], no path)"
                    ));
                }
            }
            out.push(origin.to_owned());
        }
        Ok(out)
    }
    fn show(value: &Vec<String>) -> String {
        comma_separated(value)
    }
}

/// Comma-separated STUN/TURN URIs (RFC 7064, RFC 7065): `turn:host[:port][?transport=udp|tcp]`,
/// `turns:`, `stun:` or `stuns:`, handed to clients as they are.
pub struct TurnUris;

impl Kind for TurnUris {
    type Value = Vec<String>;
    fn parse(raw: &str) -> Result<Vec<String>, String> {
        const SCHEMES: [&str; 4] = ["turn:", "turns:", "stun:", "stuns:"];
        let mut out = Vec::new();
        for uri in raw.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let rest = SCHEMES.iter().find_map(|s| {
                uri.get(..s.len())
                    .filter(|p| p.eq_ignore_ascii_case(s))
                    .map(|_| &uri[s.len()..])
            });
            // `turn://host` is a common slip: these URIs have no authority part.
            let valid = rest.is_some_and(|host| {
                !host.is_empty()
                    && !host.starts_with('/')
                    && host.chars().all(|c| c.is_ascii_graphic())
            });
            if !valid {
                return Err(format!(
                    "{uri:?} is not a TURN/STUN URI (expected turn:host[:port][?transport=udp|tcp], \
                     turns:, stun: or stuns:)"
                ));
            }
            out.push(uri.to_owned());
        }
        Ok(out)
    }
    fn show(value: &Vec<String>) -> String {
        comma_separated(value)
    }
}

/// Comma-separated CIDRs (`10.0.0.0/8`) or single addresses (`10.0.0.2`).
pub struct Networks;

impl Kind for Networks {
    type Value = Vec<ipnet::IpNet>;
    fn parse(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{p:?} is not an address or a CIDR"))
            })
            .collect()
    }
    fn show(value: &Vec<ipnet::IpNet>) -> String {
        if value.is_empty() {
            return NONE.to_owned();
        }
        let nets: Vec<String> = value.iter().map(ToString::to_string).collect();
        nets.join(",")
    }
}

/// One word out of a few, case-insensitive.
fn choice<T: Copy>(raw: &str, words: &[(&str, T)], expected: &str) -> Result<T, String> {
    let word = raw.trim().to_ascii_lowercase();
    words
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("must be {expected}"))
}

impl Kind for AppEnv {
    type Value = Self;
    fn parse(raw: &str) -> Result<Self, String> {
        choice(
            raw,
            &[
                ("development", Self::Development),
                ("dev", Self::Development),
                ("test", Self::Development),
                ("production", Self::Production),
                ("prod", Self::Production),
            ],
            "development or production",
        )
    }
    fn show(value: &Self) -> String {
        format!("{value:?}").to_ascii_lowercase()
    }
}

impl Kind for LogFormat {
    type Value = Self;
    fn parse(raw: &str) -> Result<Self, String> {
        choice(
            raw,
            &[("text", Self::Text), ("json", Self::Json)],
            "text or json",
        )
    }
    fn show(value: &Self) -> String {
        format!("{value:?}").to_ascii_lowercase()
    }
}

impl Kind for ForwardedHeader {
    type Value = Self;
    fn parse(raw: &str) -> Result<Self, String> {
        choice(
            raw,
            &[
                ("x-forwarded-for", Self::XForwardedFor),
                ("forwarded", Self::Forwarded),
            ],
            "x-forwarded-for or forwarded",
        )
    }
    fn show(value: &Self) -> String {
        match value {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
        .to_owned()
    }
}

impl Kind for DirectoryPolicy {
    type Value = Self;
    fn parse(raw: &str) -> Result<Self, String> {
        choice(
            raw,
            &[
                ("open", Self::Open),
                ("search", Self::Search),
                ("contacts", Self::Contacts),
            ],
            "open, search or contacts",
        )
    }
    fn show(value: &Self) -> String {
        format!("{value:?}").to_ascii_lowercase()
    }
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`).
pub struct Flag;

impl Kind for Flag {
    type Value = bool;
    fn parse(raw: &str) -> Result<bool, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err("must be true or false".to_owned()),
        }
    }
    fn show(value: &bool) -> String {
        value.to_string()
    }
}

/// Optional text (a path, an id), surrounding blanks dropped.
pub struct OptionalText;

impl Kind for OptionalText {
    type Value = Option<String>;
    fn parse(raw: &str) -> Result<Option<String>, String> {
        let raw = raw.trim();
        Ok((!raw.is_empty()).then(|| raw.to_owned()))
    }
    fn show(value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| NONE.to_owned())
    }
}

/// An optional `http://` or `https://` URL of a host, with a port maybe, and no path (a trailing
/// slash is dropped).
pub struct OptionalUrl;

impl Kind for OptionalUrl {
    type Value = Option<String>;
    fn parse(raw: &str) -> Result<Option<String>, String> {
        let url = raw.trim().trim_end_matches('/');
        if url.is_empty() {
            return Ok(None);
        }
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let valid = host.is_some_and(|h| {
            !h.is_empty()
                && !h.contains(['/', '?', '#', '@'])
                && h.chars().all(|c| c.is_ascii_graphic())
        });
        if !valid {
            return Err(format!(
                "{url:?} is not a URL of a host (expected http(s)://host[:port], no path)"
            ));
        }
        Ok(Some(url.to_owned()))
    }
    fn show(value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| NONE.to_owned())
    }
}
