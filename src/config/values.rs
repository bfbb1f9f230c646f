//! The values settings take that the rest of the server reads: a secret, the enums, and the
//! redaction of a URL's password.

use std::fmt;

/// A secret that never shows up in `Debug` or `Display` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An S3-compatible object store for attachments (`ATTACHMENT_S3_*`, all checked together).
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// `http(s)://host[:port]`, for a store that is not AWS; plain http only when allowed.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

impl S3Settings {
    /// The size of every part of a multipart upload but the last: S3's minimum, so that an
    /// upload holds at most this much in memory. Every part is the same size, as R2 requires.
    pub const PART_BYTES: usize = 5 * 1024 * 1024;
    /// The most parts S3 takes in one multipart upload.
    pub const MAX_PARTS: u64 = 10_000;
}

/// The header trusted reverse proxies append the client address to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...`
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    Forwarded,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the server runs: development tolerates a generated secret, production does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// Who `GET /api/users/search` may find (`USER_DIRECTORY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectoryPolicy {
    /// Any user, with an empty query too (the app's "new chat" screen lists everyone).
    Open,
    /// Only with a query of at least 3 characters, on username and name, a few results.
    Search,
    /// Only users one already shares a conversation with.
    Contacts,
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}
