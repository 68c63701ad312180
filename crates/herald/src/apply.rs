//! `herald campaign apply -f FILE`: campaigns as files, applied through the HTTP API (so the same
//! validation, review and sandbox rules hold as for any client). Creates the campaign, or, when
//! one with the same name exists, writes the file into its draft.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::api_client::{call, client, find_campaign, human_problem};
use crate::cli::ApplyArgs;

pub(crate) async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let document: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", args.file.display()))?;
    let name = document["name"].as_str().context("the campaign document needs a name")?.to_string();
    let base = args.api.api_url.trim_end_matches('/');
    let client = client()?;
    let key = args.api.key()?;
    let existing = find_campaign(&client, base, key, &name).await?;
    let (status, campaign) = match &existing {
        None => call(client.post(format!("{base}/campaigns")).bearer_auth(key).json(&document)).await?,
        Some(found) => {
            let id = found["id"].as_str().unwrap_or_default();
            call(client.patch(format!("{base}/campaigns/{id}")).bearer_auth(key).json(&document)).await?
        }
    };
    if !(200..300).contains(&status) {
        bail!("applying {name} answered {}", human_problem(status, &campaign));
    }
    let id = campaign["id"].as_str().unwrap_or_default().to_string();
    let mut result = json!({ "id": id, "name": name, "created": existing.is_none(), "status": campaign["status"] });
    if args.activate {
        let (status, activated) = call(client.post(format!("{base}/campaigns/{id}/activate")).bearer_auth(key)).await?;
        if status != 200 {
            bail!("activating {name} answered {}", human_problem(status, &activated));
        }
        result["status"] = activated["status"].clone();
    }
    println!("{result}");
    Ok(())
}
