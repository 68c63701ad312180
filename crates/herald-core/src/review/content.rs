//! Checks of content that is not about templates as such: header fields that must stay on one
//! line, and script URLs in HTML.

use crate::template::is_control;

/// Attributes whose value a browser follows or loads as a URL.
const URL_ATTRIBUTES: [&str; 5] = ["href", "src", "action", "formaction", "xlink:href"];
/// URL schemes that run script when followed.
const SCRIPT_SCHEMES: [&str; 2] = ["javascript:", "vbscript:"];

/// Whether `value` holds a character that would break an email header onto a new line (or
/// otherwise has no place in one): CR, LF, the other control characters, the line separators.
pub(super) fn has_control_character(value: &str) -> bool {
    value.chars().any(is_control)
}

/// 1-based lines of `html` where a URL attribute starts with a script scheme, however it is
/// spelled: any case, entity-encoded (`&#106;avascript:`), or with tabs and line breaks inside
/// (browsers drop those from URLs). Only the literal start of a value is known here; a value
/// that starts with a template tag is left to the author.
pub(super) fn script_urls(html: &str) -> Vec<usize> {
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut lines = Vec::new();
    for attribute in URL_ATTRIBUTES {
        let mut from = 0;
        while let Some(offset) = lower[from..].find(attribute) {
            let start = from + offset;
            from = start + attribute.len();
            // A whole attribute name: not the end of `data-href` or `srcset`.
            let before = start.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'_') {
                continue;
            }
            let Some(value) = attribute_value(&html[from..]) else { continue };
            let literal = value.split("{{").next().unwrap_or_default().split("{%").next().unwrap_or_default();
            let url: String =
                decode_entities(literal).chars().filter(|c| !c.is_ascii_whitespace() && !c.is_control()).collect();
            let url = url.to_ascii_lowercase();
            if SCRIPT_SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
                lines.push(html[..start].matches('\n').count() + 1);
            }
        }
    }
    lines.sort_unstable();
    lines.dedup();
    lines
}

/// The value after an attribute name: `= "…"`, `= '…'` or `= …` up to a space or `>`.
fn attribute_value(rest: &str) -> Option<&str> {
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    match rest.chars().next()? {
        quote @ ('"' | '\'') => {
            let inner = &rest[1..];
            Some(&inner[..inner.find(quote).unwrap_or(inner.len())])
        }
        _ => Some(&rest[..rest.find(|c: char| c.is_ascii_whitespace() || c == '>').unwrap_or(rest.len())]),
    }
}

/// Decodes the character references a URL can be hidden with: numeric ones, and the named
/// ones for the characters that matter here (`:`, tab, line feed).
fn decode_entities(text: &str) -> String {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        decoded.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).unwrap_or(rest.len());
        let name = &rest[..end];
        let character = match name.strip_prefix('#') {
            Some(number) => match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse().ok(),
            }
            .and_then(char::from_u32),
            None => match name.to_ascii_lowercase().as_str() {
                "colon" => Some(':'),
                "tab" => Some('\t'),
                "newline" => Some('\n'),
                _ => None,
            },
        };
        match character {
            Some(c) => {
                decoded.push(c);
                rest = &rest[end..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => decoded.push('&'),
        }
    }
    decoded.push_str(rest);
    decoded
}
