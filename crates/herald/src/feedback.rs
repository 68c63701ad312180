//! `herald suppressions list|add|remove` and `herald webhooks set|show|remove`: the sandbox's
//! suppression list and feedback webhook through the API, so the commands get the API's checks
//! (the address normalised, the URL's SSRF rules, the key's scopes and sandbox).

use anyhow::bail;
use serde_json::json;

use crate::api_client::{call, client, human_problem};
use crate::cli::{SuppressionArgs, SuppressionsCommand, WebhooksCommand};

/// A path segment: an address holds `@` and `+`, and may hold anything else an operator typed.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn entry_url(args: &SuppressionArgs) -> String {
    let base = args.api.api_url.trim_end_matches('/');
    format!("{base}/suppressions/{}/{}", segment(&args.channel), segment(&args.address))
}

pub(crate) async fn suppressions(command: SuppressionsCommand) -> anyhow::Result<()> {
    let client = client()?;
    match command {
        SuppressionsCommand::List(args) => {
            let key = args.api.key()?.to_string();
            let base = args.api.api_url.trim_end_matches('/').to_string();
            let mut cursor: Option<String> = None;
            loop {
                let mut url = reqwest::Url::parse(&format!("{base}/suppressions"))
                    .map_err(|error| anyhow::anyhow!("HERALD_API_URL: {error}"))?;
                url.query_pairs_mut().append_pair("limit", "1000");
                if let Some(channel) = &args.channel {
                    url.query_pairs_mut().append_pair("channel", channel);
                }
                if let Some(cursor) = &cursor {
                    url.query_pairs_mut().append_pair("cursor", cursor);
                }
                let (status, page) = call(client.get(url).bearer_auth(&key)).await?;
                if status != 200 {
                    bail!("listing answered {}", human_problem(status, &page));
                }
                for item in page["items"].as_array().into_iter().flatten() {
                    println!("{item}");
                }
                match page["next"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => return Ok(()),
                }
            }
        }
        SuppressionsCommand::Add(args) => {
            let key = args.api.key()?;
            let body = json!({ "reason": args.reason, "detail": args.detail });
            let (status, entry) = call(client.put(entry_url(&args)).bearer_auth(key).json(&body)).await?;
            if status != 200 {
                bail!("adding answered {}", human_problem(status, &entry));
            }
            println!("{entry}");
            Ok(())
        }
        SuppressionsCommand::Remove(args) => {
            let key = args.api.key()?;
            let (status, answer) = call(client.delete(entry_url(&args)).bearer_auth(key)).await?;
            match status {
                204 => Ok(()),
                _ => bail!("removing answered {}", human_problem(status, &answer)),
            }
        }
    }
}

pub(crate) async fn webhooks(command: WebhooksCommand) -> anyhow::Result<()> {
    let client = client()?;
    let api = match &command {
        WebhooksCommand::Set(args) => &args.api,
        WebhooksCommand::Show(args) | WebhooksCommand::Remove(args) => &args.api,
    };
    let (key, url) = (api.key()?.to_string(), format!("{}/webhooks/feedback", api.api_url.trim_end_matches('/')));
    match command {
        WebhooksCommand::Set(args) => {
            let mut body = json!({ "url": args.url, "rotateSecret": args.rotate_secret });
            if !args.events.is_empty() {
                body["eventTypes"] = json!(args.events);
            }
            if !args.channels.is_empty() {
                body["channels"] = json!(args.channels);
            }
            let (status, answer) = call(client.put(&url).bearer_auth(&key).json(&body)).await?;
            if !matches!(status, 200 | 201) {
                bail!("setting the webhook answered {}", human_problem(status, &answer));
            }
            if answer["secret"].is_string() {
                eprintln!("the signing secret is shown this once: keep it where the receiver can read it");
            }
            println!("{answer}");
        }
        WebhooksCommand::Show(_) => {
            let (status, answer) = call(client.get(&url).bearer_auth(&key)).await?;
            if status != 200 {
                bail!("reading the webhook answered {}", human_problem(status, &answer));
            }
            println!("{answer}");
        }
        WebhooksCommand::Remove(_) => {
            let (status, answer) = call(client.delete(&url).bearer_auth(&key)).await?;
            if status != 204 {
                bail!("removing the webhook answered {}", human_problem(status, &answer));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_one_path_segment() {
        assert_eq!(segment("+33612345678"), "%2B33612345678");
        assert_eq!(segment("jane.doe@example.com"), "jane.doe@example.com");
        assert_eq!(segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
    }
}
