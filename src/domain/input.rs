//! Input rules shared by the domain: optional texts, links, page sizes.

use crate::error::{Error, Result};

/// Page size of list endpoints when the client gives none, and the most it may ask for.
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

const MAX_URL_LEN: usize = 2048;

/// A page size: `DEFAULT_PAGE` when absent, otherwise clamped to `1..=MAX_PAGE`.
pub fn page_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// Trimmed text, `None` when absent or blank; longer than `max` characters is invalid.
pub fn optional_text(raw: Option<String>, field: &str, max: usize) -> Result<Option<String>> {
    let text = raw.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if text.as_ref().is_some_and(|t| t.chars().count() > max) {
        return Err(Error::invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(text)
}

/// An optional absolute `http(s)://host...` link; blank is `None`, anything else is invalid
/// (the app would otherwise be told to load `file:`, `javascript:` or `data:` URLs).
pub fn optional_http_url(raw: Option<String>, field: &str) -> Result<Option<String>> {
    let Some(url) = raw.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if is_http_url(&url) {
        Ok(Some(url))
    } else {
        Err(Error::invalid(format!(
            "{field} must be an http or https URL of at most {MAX_URL_LEN} bytes"
        )))
    }
}

fn is_http_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Userinfo (`user@host`) is refused: it only serves to disguise the real host.
    let host_ok = !host.is_empty() && !host.contains('@') && !host.starts_with(':');
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && host_ok
        && url.len() <= MAX_URL_LEN
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_links_pass() {
        for good in [
            "https://cdn.example.com/a.jpg",
            "http://example.com",
            "HTTPS://example.com:8443/x?y=1#z",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "ftp://example.com/a",
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "file:///etc/passwd",
            "https://",
            "https:///path",
            "https://user@evil.example/x",
            "https://exa mple.com",
            "example.com/a.jpg",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
        assert!(!is_http_url(&format!("https://e.com/{}", "a".repeat(3000))));
    }

    #[test]
    fn page_limits_are_clamped() {
        assert_eq!(page_limit(None), DEFAULT_PAGE);
        assert_eq!(page_limit(Some(-5)), 1);
        assert_eq!(page_limit(Some(0)), 1);
        assert_eq!(page_limit(Some(i64::MAX)), MAX_PAGE);
        assert_eq!(page_limit(Some(7)), 7);
    }

    #[test]
    fn blank_texts_are_absent() {
        assert_eq!(optional_text(Some("  ".into()), "x", 5).ok(), Some(None));
        assert_eq!(
            optional_text(Some(" hi ".into()), "x", 5).ok(),
            Some(Some("hi".into()))
        );
        assert!(optional_text(Some("toolong".into()), "x", 5).is_err());
    }
}
