//! What the client commands (`herald campaign apply`, `herald execute`) share: an HTTP client with
//! a deadline, one call returning status and JSON, a campaign looked up by name, and problem+json
//! as lines a person reads.

use anyhow::{Context, bail};
use serde_json::Value;

/// An HTTP client for the API that gives up on an answer after [`CALL_TIMEOUT`]: a command a
/// person typed must not hang on an API that accepts connections and never answers.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(CALL_TIMEOUT).build().context("building the HTTP client")
}

const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

pub(crate) async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await.context("calling the API")?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// A problem+json answer as lines a person reads: the title and detail, then each problem (or
/// field error) as `pointer  code (line N)` with its message indented below, line breaks kept
/// (tera's syntax errors draw a caret under the faulty spot).
pub(crate) fn human_problem(status: u16, body: &Value) -> String {
    let Some(title) = body["title"].as_str() else {
        return format!("{status}: {body}");
    };
    let mut text = format!("{status} {title}");
    if let Some(detail) = body["detail"].as_str() {
        text.push_str(&format!(": {detail}"));
    }
    let items = body["problems"].as_array().or_else(|| body["errors"].as_array());
    for item in items.into_iter().flatten() {
        let pointer = item["pointer"].as_str().unwrap_or("");
        let mut head = format!("\n  {pointer}");
        if let Some(code) = item["code"].as_str() {
            head.push_str(&format!("  {code}"));
        }
        if let Some(line) = item["line"].as_u64() {
            head.push_str(&format!(" (line {line})"));
        }
        text.push_str(&head);
        for line in item["detail"].as_str().unwrap_or("").lines() {
            text.push_str(&format!("\n      {line}"));
        }
    }
    text
}

/// The campaign named `name`, looked up page by page.
pub(crate) async fn find_campaign(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
) -> anyhow::Result<Option<Value>> {
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/campaigns?limit=500");
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let (status, page) = call(client.get(url).bearer_auth(key)).await?;
        if status != 200 {
            bail!("listing campaigns answered {}", human_problem(status, &page));
        }
        if let Some(found) = page["items"].as_array().and_then(|items| items.iter().find(|c| c["name"] == name)) {
            return Ok(Some(found.clone()));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_review_failure_reads_as_lines_with_the_caret_diagram_intact() {
        let body = json!({
            "type": "https://herald.dev/problems/review-failed",
            "title": "The campaign did not pass review",
            "detail": "2 problem(s) block activation",
            "problems": [
                {"code": "template-syntax", "pointer": "/content/html", "line": 2,
                 "detail": "--> 2:4\n  |\n2 | {{ x\n  |    ^---\n  = expected `}}`"},
                {"code": "unknown-variable", "pointer": "/content/text", "detail": "`user` is not available"}
            ]
        });
        let text = human_problem(422, &body);
        assert_eq!(
            text,
            "422 The campaign did not pass review: 2 problem(s) block activation\n  \
             /content/html  template-syntax (line 2)\n      --> 2:4\n        |\n      2 | {{ x\n        |    ^---\n        = expected `}}`\n  \
             /content/text  unknown-variable\n      `user` is not available"
        );
        assert!(!text.contains("\\n"), "no escaped line breaks: {text}");
    }

    #[test]
    fn an_answer_that_is_not_a_problem_is_shown_as_it_came() {
        assert_eq!(human_problem(502, &json!({"x": 1})), "502: {\"x\":1}");
        assert_eq!(human_problem(500, &Value::Null), "500: null");
    }
}
