//! `herald execute CAMPAIGN --to ADDRESS --context key=value`: one message through the execution
//! API, as a client system sends it, then its status followed until it is final. The quickest way
//! to see Herald send something.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::api_client::{call, client, find_campaign, human_problem};
use crate::cli::ExecuteArgs;

/// How often the status is read while following it.
const POLL: Duration = Duration::from_millis(250);

/// Statuses after which nothing more happens to a recipient.
const FINAL: [&str; 9] =
    ["sent", "failed", "excluded", "unknown", "delivered", "delayed", "bounced", "rejected", "complained"];
/// Final statuses in which the message reached the provider and was not refused after.
const SENT: [&str; 4] = ["sent", "delivered", "delayed", "complained"];

pub(crate) fn context(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut context = Map::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').with_context(|| format!("--context {pair}: expected key=value"))?;
        if key.is_empty() {
            bail!("--context {pair}: the key is empty");
        }
        // A second value for a key would silently replace the first.
        if context.insert(key.to_string(), Value::String(value.to_string())).is_some() {
            bail!("--context {key} is given twice");
        }
    }
    Ok(context)
}

pub(crate) async fn execute(args: ExecuteArgs) -> anyhow::Result<()> {
    let base = args.api.api_url.trim_end_matches('/').to_string();
    let key = args.api.key()?.to_string();
    let client = client()?;
    let campaign = match uuid::Uuid::parse_str(&args.campaign) {
        Ok(id) => id.to_string(),
        Err(_) => find_campaign(&client, &base, &key, &args.campaign)
            .await?
            .and_then(|found| found["id"].as_str().map(str::to_string))
            .with_context(|| format!("no campaign named {} (give its name or id)", args.campaign))?,
    };
    let request_id = args.request_id.clone().unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
    let mut recipient = json!({ "type": "external", "userId": args.to, "context": context(&args.context)? });
    if let Some(platform) = push_platform(&client, &base, &key, &campaign, args.platform.as_deref()).await {
        recipient["channelData"] = json!({ "pushPlatform": platform });
    }
    let body = json!({ "requestId": request_id, "campaignId": campaign, "recipients": [recipient] });
    let (status, accepted) =
        call(client.post(format!("{base}/im/executions/unitary")).bearer_auth(&key).json(&body)).await?;
    if status != 202 {
        bail!("executing answered {}", human_problem(status, &accepted));
    }
    let execution = accepted["executionId"].as_str().context("the 202 has no executionId")?.to_string();
    println!("{execution}");
    if args.no_follow {
        return Ok(());
    }
    follow(&client, &base, &key, &execution, Duration::from_secs(args.wait_seconds)).await
}

/// The platform of a push recipient: `--platform`, else the campaign's only one. `None` for
/// other channels, or when the campaign cannot be read (the key may only execute): the API then
/// says what is missing.
async fn push_platform(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    campaign: &str,
    given: Option<&str>,
) -> Option<String> {
    if let Some(platform) = given {
        return Some(platform.to_string());
    }
    let (status, record) = call(client.get(format!("{base}/campaigns/{campaign}")).bearer_auth(key)).await.ok()?;
    let live = &record["liveVersion"]["definition"];
    let platforms = live["surface"]["platformApplicationArn"].as_object().filter(|_| status == 200)?;
    match (record["channel"].as_str(), platforms.len()) {
        (Some("push"), 1) => platforms.keys().next().cloned(),
        _ => None,
    }
}

/// Prints the recipient's status each time it changes, until it is final or `wait` has passed;
/// fails unless it ends `sent`.
async fn follow(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    execution: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut shown, mut warned) = (String::new(), false);
    loop {
        let (status, view) = call(client.get(format!("{base}/im/executions/{execution}")).bearer_auth(key)).await?;
        if status != 200 {
            bail!("reading the status answered {}", human_problem(status, &view));
        }
        let recipient = &view["recipients"][0];
        let state = recipient["status"].as_str().unwrap_or("unknown").to_string();
        let mut line = state.clone();
        if let Some(reason) = recipient["reason"].as_str() {
            line.push_str(&format!(" ({reason})"));
        }
        if line != shown {
            println!("{line}");
            shown = line;
        }
        if let Some(warning) = view["queue"]["warning"].as_str().filter(|_| !warned) {
            eprintln!("warning: {warning}");
            warned = true;
        }
        if FINAL.contains(&state.as_str()) {
            return if SENT.contains(&state.as_str()) { Ok(()) } else { bail!("the message was not sent: {shown}") };
        }
        if started.elapsed() >= wait {
            bail!("still {state} after {}s (follow it with GET /im/executions/{execution})", wait.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pairs_split_at_the_first_equals_sign() {
        let pairs = ["otp=123456".to_string(), "url=https://x.test/?a=b".to_string(), "empty=".to_string()];
        assert_eq!(
            Value::Object(context(&pairs).unwrap()),
            json!({"otp": "123456", "url": "https://x.test/?a=b", "empty": ""})
        );
        assert!(context(&["novalue".to_string()]).unwrap_err().to_string().contains("expected key=value"));
        assert!(context(&["=x".to_string()]).unwrap_err().to_string().contains("key is empty"));
        let twice = ["otp=1".to_string(), "otp=2".to_string()];
        assert!(context(&twice).unwrap_err().to_string().contains("given twice"));
    }
}
