//! The one byte range a download may ask for (RFC 9110 §14.1.2): `bytes=a-b`, `bytes=a-` or
//! `bytes=-n`. Several ranges at once (a multipart answer) are not offered: such a request, or
//! a malformed one, gets the whole file, as RFC 9110 allows a server that ignores `Range`.

/// What to send of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Slice {
    /// No usable `Range`: the whole file (200).
    Whole,
    /// Bytes `start..=end` (206).
    Part { start: u64, end: u64 },
    /// A well-formed range outside the file (416).
    Unsatisfiable,
}

/// Reads the `Range` header `value` against a file of `size` bytes.
pub fn slice(value: Option<&str>, size: u64) -> Slice {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Slice::Whole;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Slice::Whole;
    };
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // The last n bytes.
        (true, _, Some(n)) if n > 0 && size > 0 => Slice::Part {
            start: size.saturating_sub(n),
            end: size - 1,
        },
        (true, _, Some(_)) => Slice::Unsatisfiable,
        (false, Some(start), _) if start >= size => Slice::Unsatisfiable,
        (false, Some(start), None) if last.trim().is_empty() => Slice::Part {
            start,
            end: size - 1,
        },
        (false, Some(start), Some(end)) if end >= start => Slice::Part {
            start,
            end: end.min(size - 1),
        },
        _ => Slice::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_are_cut_to_the_file() {
        let part = |start, end| Slice::Part { start, end };
        assert_eq!(slice(Some("bytes=0-9"), 100), part(0, 9));
        assert_eq!(slice(Some("bytes=90-"), 100), part(90, 99));
        assert_eq!(slice(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(slice(Some("bytes=-500"), 100), part(0, 99));
        assert_eq!(slice(Some("bytes=50-500"), 100), part(50, 99));
        assert_eq!(slice(Some("bytes=100-"), 100), Slice::Unsatisfiable);
        assert_eq!(slice(Some("bytes=-0"), 100), Slice::Unsatisfiable);
        assert_eq!(slice(Some("bytes=0-"), 0), Slice::Unsatisfiable);
        for ignored in [
            None,
            Some("bytes=0-1,5-6"),
            Some("items=0-1"),
            Some("bytes=9-1"),
            Some("bytes=x-"),
            Some("bytes=+1-2"),
        ] {
            assert_eq!(slice(ignored, 100), Slice::Whole, "{ignored:?}");
        }
    }
}
