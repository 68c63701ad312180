//! `herald suppressions list|add|remove`: the sandbox's suppression list through the API, so the
//! command gets the API's checks (the address normalised, the key's scopes and sandbox).

use anyhow::bail;
use serde_json::json;

use crate::api_client::{call, client, human_problem};
use crate::cli::{SuppressionArgs, SuppressionsCommand};

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

pub(crate) async fn run(command: SuppressionsCommand) -> anyhow::Result<()> {
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
