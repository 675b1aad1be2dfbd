//! Entity tags and the conditional headers (RFC 9110 §8.8.3, §13.1).
//!
//! A project's ETag is its `version` as a strong entity tag: `"3"`. The version changes with
//! every change of the project, so two representations with the same tag are identical.
//!
//! * `If-Match` (required on `PATCH` and `DELETE`) uses the strong comparison: a weak tag
//!   (`W/"3"`) never matches; `*` matches whatever version exists.
//! * `If-None-Match` (optional on `GET`) uses the weak comparison: `W/"3"` and `"3"` both match
//!   version 3; `*` matches any.
//!
//! Several header lines, or a comma-separated list, match when any listed tag matches.

use axum::http::header::{IF_MATCH, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The `ETag` of `version`: `"<version>"`.
pub fn of(version: i64) -> HeaderValue {
    // Digits and quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// One entity tag of a conditional header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    /// `W/` was given.
    pub weak: bool,
    /// The opaque text between the quotes.
    pub tag: String,
}

/// The value of `If-Match` or `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `*`: any current representation.
    Any,
    /// A list of entity tags.
    Tags(Vec<EntityTag>),
}

impl Condition {
    /// The strong comparison of `If-Match`: does `version` match?
    pub fn matches_strong(&self, version: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => {
                let v = version.to_string();
                tags.iter().any(|t| !t.weak && t.tag == v)
            }
        }
    }

    /// The weak comparison of `If-None-Match`: does `version` match?
    pub fn matches_weak(&self, version: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => {
                let v = version.to_string();
                tags.iter().any(|t| t.tag == v)
            }
        }
    }

    /// The tags as a client sent them, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Any => "*".to_owned(),
            Self::Tags(tags) => tags
                .iter()
                .map(|t| format!("{}\"{}\"", if t.weak { "W/" } else { "" }, t.tag))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Why a conditional header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The header, as it is usually spelled (`If-Match`).
    pub header: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not a valid list of entity tags ({}): send the ETag exactly as the server gave it, quotes included, e.g. {}: \"3\"",
            self.header, self.reason, self.header
        )
    }
}

/// `If-Match` of `headers`: `None` when absent.
pub fn if_match(headers: &HeaderMap) -> Result<Option<Condition>, Malformed> {
    condition(headers, IF_MATCH, "If-Match")
}

/// `If-None-Match` of `headers`: `None` when absent.
pub fn if_none_match(headers: &HeaderMap) -> Result<Option<Condition>, Malformed> {
    condition(headers, IF_NONE_MATCH, "If-None-Match")
}

fn condition(
    headers: &HeaderMap,
    name: HeaderName,
    spelled: &'static str,
) -> Result<Option<Condition>, Malformed> {
    let malformed = |reason: &str| Malformed {
        header: spelled,
        reason: reason.to_owned(),
    };
    let mut values = Vec::new();
    for value in headers.get_all(&name) {
        values.push(
            value
                .to_str()
                .map_err(|_| malformed("it is not visible ASCII"))?,
        );
    }
    if values.is_empty() {
        return Ok(None);
    }
    let joined = values.join(",");
    parse(&joined)
        .map(Some)
        .map_err(|reason| malformed(&reason))
}

/// Parses `* | #entity-tag` (empty list elements are allowed and skipped, as RFC 9110 §5.6.1
/// asks of a recipient).
pub fn parse(value: &str) -> Result<Condition, String> {
    if value.trim() == "*" {
        return Ok(Condition::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value.trim_start_matches([' ', '\t']);
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some(body) = after.strip_prefix('"') else {
            return Err(format!("expected a quoted tag at {rest:?}"));
        };
        let Some(end) = body.find('"') else {
            return Err("a tag's closing quote is missing".to_owned());
        };
        let tag = &body[..end];
        // etagc: %x21 / %x23-7E / obs-text (the header is ASCII here, so no obs-text).
        if !tag.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
            return Err(format!(
                "the tag \"{tag}\" contains characters a tag cannot"
            ));
        }
        tags.push(EntityTag {
            weak,
            tag: tag.to_owned(),
        });
        rest = body[end + 1..].trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return Err(format!("expected a comma between tags at {rest:?}"));
        }
    }
    if tags.is_empty() {
        return Err("it names no entity tag".to_owned());
    }
    Ok(Condition::Tags(tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong(tag: &str) -> EntityTag {
        EntityTag {
            weak: false,
            tag: tag.to_owned(),
        }
    }

    #[test]
    fn tags_lists_and_stars_parse() {
        assert_eq!(parse("*"), Ok(Condition::Any));
        assert_eq!(parse(" \"3\" "), Ok(Condition::Tags(vec![strong("3")])));
        assert_eq!(
            parse("\"1\", W/\"2\",,\"a,b\""),
            Ok(Condition::Tags(vec![
                strong("1"),
                EntityTag {
                    weak: true,
                    tag: "2".to_owned()
                },
                strong("a,b"),
            ]))
        );
        for bad in ["3", "\"3", "\"3\" \"4\"", "", " , ", "w/\"3\"", "\"a b\""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn if_match_compares_strongly_and_if_none_match_weakly() {
        let c = parse("W/\"3\", \"5\"").unwrap();
        assert!(!c.matches_strong(3));
        assert!(c.matches_strong(5));
        assert!(c.matches_weak(3));
        assert!(!c.matches_weak(4));
        assert!(Condition::Any.matches_strong(9) && Condition::Any.matches_weak(9));
        assert_eq!(c.describe(), "W/\"3\", \"5\"");
    }

    #[test]
    fn several_header_lines_are_one_list_and_absence_is_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(if_match(&headers), Ok(None));
        headers.append(IF_MATCH, HeaderValue::from_static("\"1\""));
        headers.append(IF_MATCH, HeaderValue::from_static("\"2\""));
        let c = if_match(&headers).unwrap().unwrap();
        assert!(c.matches_strong(1) && c.matches_strong(2));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("3"));
        let err = if_none_match(&headers).unwrap_err();
        assert!(err.to_string().contains("If-None-Match: \"3\""), "{err}");
        assert_eq!(of(12), HeaderValue::from_static("\"12\""));
    }
}
