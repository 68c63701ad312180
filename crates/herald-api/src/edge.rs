//! What every request and answer goes through at the edge, whatever its route:
//!
//! - [`uri`] refuses a URI over [`MAX_URI_BYTES`] (414), before routing looks at it;
//! - [`path_and_query`] refuses path parameters and query values that are not storable text
//!   (a NUL, or a path segment that is not UTF-8 once decoded), naming the parameter, before any
//!   handler or extractor runs, so no route can forget it and axum's plain-text `Path` rejection
//!   never shows;
//! - [`problems_only`] turns any error answer that is not already problem+json (a rejection of
//!   axum's own that escaped the typed extractors) into one, so clients only ever parse one shape;
//! - [`headers`] marks every answer `nosniff`, and every answer but the HTML report page
//!   `no-store`: answers carry personal data (profiles, masked addresses) no cache should keep.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::json::escape_token;
use crate::problem::Problem;

/// The longest URI served. Far above any real request (ids, short query strings), and below
/// hyper's own limit (64 KiB), past which hyper answers a bare 414 before Herald sees anything.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// How much of a plain-text error body is kept as the problem's `detail`.
const MAX_DETAIL_BYTES: usize = 1024;

pub(crate) async fn uri(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let length = uri.path().len() + uri.query().map_or(0, |query| query.len() + 1);
    if length > MAX_URI_BYTES {
        return Problem::new(StatusCode::URI_TOO_LONG, "uri-too-long", "Request URI too long")
            .detail(format!("the path and query string must be at most {MAX_URI_BYTES} bytes"))
            .into_response();
    }
    next.run(request).await
}

/// Decodes `%XX` escapes (and `+` as a space, in a query); malformed escapes stay as they are,
/// as axum decodes them.
fn percent_decode(text: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(u8::try_from(high * 16 + low).unwrap_or(0));
                index += 3;
            }
            (b'+', _, _) if plus_is_space => {
                decoded.push(b' ');
                index += 1;
            }
            (byte, _, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    decoded
}

/// `user_id` → `userId`, as the parameter is named in bodies and problems.
fn camel_case(name: &str) -> String {
    let mut camel = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                camel.extend(c.to_uppercase());
                upper = false;
            }
            c => camel.push(c),
        }
    }
    camel
}

const NUL_DETAIL: &str = "contains a NUL character (%00), which cannot be stored";

/// A route layer: the matched route names each path parameter.
pub(crate) async fn path_and_query(request: Request, next: Next) -> Response {
    let mut errors: Vec<Value> = Vec::new();
    let route = request.extensions().get::<MatchedPath>().map_or("", MatchedPath::as_str);
    // Routes have no wildcards: the path's segments line up with the route's.
    for (segment, pattern) in request.uri().path().split('/').zip(route.split('/').chain(std::iter::repeat(""))) {
        if !segment.contains('%') {
            continue;
        }
        let name = pattern.strip_prefix('{').and_then(|p| p.strip_suffix('}')).map_or("path".into(), camel_case);
        let decoded = percent_decode(segment, false);
        if decoded.contains(&0) {
            errors.push(Problem::field_error(&format!("/{name}"), NUL_DETAIL));
        } else if std::str::from_utf8(&decoded).is_err() {
            errors.push(Problem::field_error(&format!("/{name}"), "is not valid UTF-8 once percent-decoded"));
        }
    }
    for pair in request.uri().query().unwrap_or("").split('&').filter(|pair| pair.contains('%')) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key, true);
        if key.contains(&0) || percent_decode(value, true).contains(&0) {
            let key = String::from_utf8_lossy(&key);
            errors.push(Problem::field_error(&format!("/{}", escape_token(&key)), NUL_DETAIL));
        }
    }
    if !errors.is_empty() {
        let title = if route.is_empty() { "Invalid request" } else { "Invalid path or query string" };
        return Problem::validation(title, errors).into_response();
    }
    next.run(request).await
}

fn is_problem(response: &Response) -> bool {
    response.headers().get(header::CONTENT_TYPE).is_some_and(|value| value.as_bytes() == b"application/problem+json")
}

/// The stable problem type for an error status that no handler described.
fn kind_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "validation",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::URI_TOO_LONG => "uri-too-long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_server_error() => "internal",
        _ => "bad-request",
    }
}

pub(crate) async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(&response) {
        return response;
    }
    tracing::warn!(status = status.as_u16(), "an error answer was not problem+json; converted");
    let (parts, body) = response.into_parts();
    let mut problem =
        Problem::new(status, kind_of(status), status.canonical_reason().unwrap_or("Request refused").to_string());
    // axum's rejection texts are short and say what was wrong; a 5xx says nothing of the inside.
    if status.is_client_error()
        && let Ok(bytes) = axum::body::to_bytes(body, MAX_DETAIL_BYTES).await
        && !bytes.is_empty()
    {
        problem = problem.detail(String::from_utf8_lossy(&bytes).into_owned());
    }
    let mut converted = problem.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            converted.headers_mut().append(name, value.clone());
        }
    }
    converted
}

pub(crate) async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The report page keeps its own headers (its CSP); everything else is an API answer.
    let html = headers.get(header::CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"text/html"));
    if !html && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_finds_a_nul_only_where_one_is_encoded() {
        assert_eq!(percent_decode("a%00b", false), b"a\0b");
        assert_eq!(percent_decode("%2500", false), b"%00", "an encoded percent sign, then text");
        assert_eq!(percent_decode("%zz%4", false), b"%zz%4", "malformed escapes stay");
        assert_eq!(percent_decode("a+b", true), b"a b");
        assert_eq!(percent_decode("%C3%A9", false), "é".as_bytes());
    }

    #[test]
    fn route_parameters_are_named_in_camel_case() {
        assert_eq!(camel_case("user_id"), "userId");
        assert_eq!(camel_case("execution_id"), "executionId");
        assert_eq!(camel_case("id"), "id");
    }
}
