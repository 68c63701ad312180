//! A fuzz test of the bodies (and some paths and query strings) a tenant sends: valid documents
//! mutated with hostile values (NULs, control and odd Unicode characters, extreme numbers, deep
//! nesting, wrong types, unknown and removed members) and broken bytes (truncation, invalid
//! UTF-8, lone surrogates). Whatever is sent, the answer is never a 5xx, and every error is
//! problem+json with a stable type.
//!
//! A seeded generator (splitmix64) rather than a fuzzing crate: no dependency, and a failure
//! prints its seed; `HERALD_FUZZ_SEED=<seed>` replays it. Each run explores a new seed.

use std::time::{Duration, Instant};

use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::{TestApp, TestOptions};
use reqwest::Method;
use serde_json::{Map, Value, json};

/// Requests per run, and a time budget that stops a slow machine earlier.
const REQUESTS: usize = 1_200;
const BUDGET: Duration = Duration::from_secs(12);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NASTY: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "a\u{0}b",
    "\u{1}\u{1f}\u{7f}",
    "\r\nBcc: x@example.com",
    "\u{202e}evil",
    "\u{feff}",
    "\u{ffff}",
    "\u{10ffff}",
    "😀",
    "e\u{301}",
    "%00",
    "\\u0000",
    "'; DROP TABLE campaigns; --",
    "{{",
    "}}",
    "{% if %}",
    "{{ context.x }}",
    "{{ profile.a.b | upper }}",
    "null",
    "1e999",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "javascript:alert(1)",
    "a@b",
    "+33612345678",
    "jane@example.com",
    "~1/~0",
    "/",
    "%",
    "\u{d7ff}",
    "\u{e000}",
    "draft",
    "live",
    "email",
    "sms",
    "push",
    "external",
    "aep",
    "2030-01-01T00:00:00Z",
    "-262143-01-01T00:00:00Z",
    "+262142-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
];

const PALETTE: &str = "aZ0 \u{1}\n\t\"\\/~%{}é\u{202e}😀\u{10ffff}\u{fffd}";

fn string(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 | 1 => (*rng.pick(NASTY)).to_string(),
        2 => {
            let palette: Vec<char> = PALETTE.chars().collect();
            (0..rng.below(40)).map(|_| *rng.pick(&palette)).collect()
        }
        _ => rng.pick(&PALETTE.chars().collect::<Vec<_>>()).to_string().repeat(rng.below(5_000)),
    }
}

fn number(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i64::MAX),
        3 => json!(i64::MIN),
        4 => json!(u64::MAX),
        5 => json!(1.5),
        6 => json!(-0.0),
        7 => json!(1e308),
        8 => json!(-1e308),
        9 => json!(5e-324),
        10 => json!(4_294_967_296_u64),
        11 => json!(4_294_967_295_u64),
        12 => json!(20),
        _ => json!(rng.next() % 1_000),
    }
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => number(rng),
        3 | 4 => Value::String(string(rng)),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        6 | 7 => Value::Object((0..rng.below(4)).map(|_| (string(rng), value(rng, depth + 1))).collect()),
        _ => {
            // Nesting around the parser's limit (128).
            let mut nested = Value::String(string(rng));
            for level in 0..(100 + rng.below(60)) {
                nested = if level % 2 == 0 { json!([nested]) } else { json!({ "k": nested }) };
            }
            nested
        }
    }
}

/// The pointers of every node of `value`.
fn nodes(value: &Value, pointer: String, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, item)| nodes(item, format!("{pointer}/{i}"), out))
        }
        Value::Object(members) => members.iter().for_each(|(key, member)| {
            nodes(member, format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1")), out);
        }),
        _ => {}
    }
    out.push(pointer);
}

/// One to four random changes to `document`. A gentle change only rewrites a string, so the
/// document often stays valid and its hostile text reaches the database and the broker.
fn mutate(rng: &mut Rng, document: &mut Value) {
    let gentle = rng.chance(50);
    for _ in 0..=rng.below(4) {
        let mut pointers = Vec::new();
        nodes(document, String::new(), &mut pointers);
        if gentle {
            pointers.retain(|pointer| document.pointer(pointer).is_some_and(Value::is_string));
        }
        if pointers.is_empty() {
            return;
        }
        let pointer = rng.pick(&pointers).clone();
        let Some(node) = document.pointer_mut(&pointer) else { continue };
        match (if gentle { 0 } else { rng.below(6) }, node) {
            (0..=2, Value::String(text)) => *text = string(rng),
            (0..=2, Value::Object(members)) => {
                members.insert(string(rng), value(rng, 1));
            }
            (3, Value::Object(members)) if !members.is_empty() => {
                let key = members.keys().nth(rng.below(members.len())).cloned().unwrap_or_default();
                members.remove(&key);
            }
            (3, Value::Array(items)) if !items.is_empty() => {
                let copy = items[0].clone();
                items.extend(std::iter::repeat_n(copy, rng.below(25)));
            }
            (_, node) => *node = value(rng, 1),
        }
    }
}

/// Breaks the bytes of a document the way a broken or hostile client might.
fn break_bytes(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    let at = rng.below(bytes.len() + 1);
    match rng.below(6) {
        0 => bytes.truncate(at),
        1 => bytes.insert(at.min(bytes.len()), *rng.pick(&[0x00, 0xff, 0xc3, 0x80, b'"', b'\\', b'{'])),
        2 => {
            // A lone surrogate, in place of the first string's opening quote after `at`.
            if let Some(quote) = bytes[at..].iter().position(|b| *b == b'"') {
                bytes.splice(at + quote..=at + quote, br#""\ud800"#.iter().copied());
            }
        }
        3 => bytes = [b"[".repeat(rng.below(20_000)), bytes].concat(),
        4 => bytes = br#"{"name": 1e99999, "name": "dup"}"#.to_vec(),
        _ => bytes.extend_from_slice(b"\xef\xbb\xbf garbage"),
    }
    bytes
}

fn percent_encoded(rng: &mut Rng) -> String {
    let text = string(rng);
    let mut encoded: String = text.bytes().take(300).map(|b| format!("%{b:02X}")).collect();
    if rng.chance(20) {
        encoded.push_str(&format!("%{:02X}", 0x80 + rng.below(0x80)));
    }
    if encoded.is_empty() { "x".into() } else { encoded }
}

struct Target {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
}

fn execution_seed(campaign: &str, email: bool) -> Value {
    let recipient = if email {
        json!({"type": "external", "userId": "jane@example.com", "context": {"resetUrl": "https://example.com/r"},
               "profile": {"person": {"name": {"firstName": "Jane"}}}, "channelData": {"emailAddress": "j@example.com"}})
    } else {
        json!({"type": "aep", "userId": "user-1", "namespace": "phone", "context": {"otp": "1"}})
    };
    json!({"requestId": "r", "campaignId": campaign, "context": {"otp": "2", "brand": "Acme"}, "recipients": [recipient]})
}

fn target(rng: &mut Rng, reset: &str, otp: &str, draft: &str) -> Target {
    let (method, path, mut document) = match rng.below(9) {
        0 | 1 => {
            let mut document = if rng.chance(50) { password_reset_email("fuzz") } else { otp_sms("fuzz") };
            document["name"] = json!(format!("fuzz {}", rng.next()));
            (Method::POST, "/campaigns".to_string(), document)
        }
        2 => {
            let mut patch = password_reset_email("patched");
            patch.as_object_mut().unwrap().retain(|_, _| rng.chance(40));
            (Method::PATCH, format!("/campaigns/{draft}"), patch)
        }
        3 => (Method::POST, format!("/campaigns/{draft}/duplicate"), json!({"name": format!("copy {}", rng.next())})),
        4..=6 => {
            let (campaign, email) = if rng.chance(50) { (reset, true) } else { (otp, false) };
            let mut body = execution_seed(campaign, email);
            body["requestId"] = json!(format!("fuzz-{}", rng.next()));
            (Method::POST, "/im/executions/unitary".to_string(), body)
        }
        7 => {
            let profile = json!({"attributes": {"person": {"name": {"firstName": "Jane"}}}, "emailAddress": "j@example.com",
                                 "phoneNumber": "+33612345678", "pushTokens": [{"token": "t", "platform": "fcm"}]});
            let (namespace, user) = if rng.chance(50) {
                (percent_encoded(rng), percent_encoded(rng))
            } else {
                ("phone".into(), "user-1".into())
            };
            (Method::PUT, format!("/profiles/{namespace}/{user}"), profile)
        }
        _ => {
            let path = rng.pick(&["/campaigns", "/reports", "/dead-letters", "/im/executions/x"]).to_string();
            let path = path.replace("x", &percent_encoded(rng));
            let key =
                rng.pick(&["status", "limit", "after", "from", "to", "bucketSeconds", "reason", "campaignId", "x"]);
            let query = format!(
                "{key}={}",
                if rng.chance(50) {
                    percent_encoded(rng)
                } else {
                    string(rng).chars().filter(char::is_ascii_alphanumeric).collect()
                }
            );
            return Target { method: Method::GET, path: format!("{path}?{query}"), body: None };
        }
    };
    mutate(rng, &mut document);
    let bytes = serde_json::to_vec(&document).unwrap();
    let bytes = if rng.chance(15) { break_bytes(rng, bytes) } else { bytes };
    Target { method, path, body: Some(bytes) }
}

#[tokio::test]
async fn no_hostile_campaign_execution_or_profile_body_gets_a_5xx_or_a_non_problem_error() {
    let seed = std::env::var("HERALD_FUZZ_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("fuzz seed {seed} (replay with HERALD_FUZZ_SEED={seed})");
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let reset = app.live_campaign(&password_reset_email("reset")).await;
    let otp = app.live_campaign(&otp_sms("otp")).await;
    let draft = app.create_campaign(&password_reset_email("draft")).await;
    let profile = json!({"phoneNumber": "+33612345678"});
    app.call(Method::PUT, "/profiles/phone/user-1", Some(&app.key), Some(&profile)).await;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut sent = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    while sent < REQUESTS && started.elapsed() < BUDGET {
        let Target { method, path, body } = target(&mut rng, &reset, &otp, &draft);
        let mut request = app.http.request(method.clone(), format!("{}{path}", app.address)).bearer_auth(&app.key);
        if let Some(body) = &body {
            let content_type = if rng.chance(3) { "text/plain" } else { "application/json" };
            request = request.header("content-type", content_type).body(body.clone());
        }
        let response = request.send().await.unwrap_or_else(|error| panic!("seed {seed}, request {sent}: {error}"));
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
        let text = response.text().await.unwrap_or_default();
        let shown = body.as_deref().map(|b| String::from_utf8_lossy(&b[..b.len().min(2_000)]).into_owned());
        let context = || format!("seed {seed}, request {sent}: {method} {path} {shown:?}\n→ {status} {text}");
        assert!(!status.is_server_error(), "{}", context());
        if status.is_client_error() {
            assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{}", context());
            let problem: Map<String, Value> = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}", context()));
            assert!(
                problem["type"].as_str().is_some_and(|t| t.starts_with("https://herald.dev/errors/")),
                "{}",
                context()
            );
            assert_eq!(problem["status"], status.as_u16(), "{}", context());
        }
        *statuses.entry(status.as_u16()).or_default() += 1;
        sent += 1;
    }
    eprintln!("fuzz: {sent} requests in {:?}, by status {statuses:?}", started.elapsed());
    assert!(sent >= 200, "too few requests in the budget: {sent}");
}
