//! `herald audiences create|upload|list`: the sandbox's audiences through the API, so the
//! commands get the API's checks (the filter language, the upload's line checks, the key's
//! scopes and sandbox).

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::api_client::{call, client, human_problem};
use crate::cli::AudiencesCommand;

/// An upload may take minutes for millions of members; other calls keep the client's deadline.
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

pub(crate) async fn audiences(command: AudiencesCommand) -> anyhow::Result<()> {
    let client = client()?;
    match command {
        AudiencesCommand::Create(args) => {
            let (key, base) = (args.api.key()?, args.api.api_url.trim_end_matches('/'));
            let mut body = json!({ "name": args.name });
            if let Some(filter) = &args.filter {
                let text = match filter.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
                    None => filter.clone(),
                };
                body["filter"] = serde_json::from_str(&text).context("--filter is not JSON")?;
            }
            let (status, audience) =
                call(client.post(format!("{base}/audiences")).bearer_auth(key).json(&body)).await?;
            if status != 201 {
                bail!("creating answered {}", human_problem(status, &audience));
            }
            println!("{audience}");
            Ok(())
        }
        AudiencesCommand::Upload(args) => {
            let (key, base) = (args.api.key()?, args.api.api_url.trim_end_matches('/'));
            let id = audience_id(&client, base, key, &args.audience).await?;
            let csv = args.file.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
            let body = tokio::fs::read(&args.file).await.with_context(|| format!("reading {}", args.file.display()))?;
            let mut url = reqwest::Url::parse(&format!("{base}/audiences/{id}/members"))
                .map_err(|error| anyhow::anyhow!("HERALD_API_URL: {error}"))?;
            if let Some(namespace) = &args.namespace {
                url.query_pairs_mut().append_pair("namespace", namespace);
            }
            let request = client
                .put(url)
                .bearer_auth(key)
                .header("content-type", if csv { "text/csv" } else { "application/x-ndjson" })
                .timeout(UPLOAD_TIMEOUT)
                .body(body);
            let (status, answer) = call(request).await?;
            if status != 200 {
                bail!("uploading answered {}", human_problem(status, &answer));
            }
            println!("{answer}");
            Ok(())
        }
        AudiencesCommand::List(args) => {
            let (key, base) = (args.api.key()?, args.api.api_url.trim_end_matches('/'));
            for audience in list(&client, base, key).await? {
                println!("{audience}");
            }
            Ok(())
        }
    }
}

async fn list(client: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<Vec<Value>> {
    let (status, page) = call(client.get(format!("{base}/audiences")).bearer_auth(key)).await?;
    if status != 200 {
        bail!("listing answered {}", human_problem(status, &page));
    }
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

/// `audience` itself when it is an id, else the id of the audience of that name.
async fn audience_id(client: &reqwest::Client, base: &str, key: &str, audience: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(audience).is_ok() {
        return Ok(audience.to_string());
    }
    list(client, base, key)
        .await?
        .iter()
        .find(|a| a["name"] == audience)
        .and_then(|a| a["id"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no audience named {audience:?} in this key's sandbox"))
}
