//! `herald keys create|list|revoke|rotate` (straight to the database, for operators: any
//! sandbox), and the bootstrap key's registration at API start-up. A secret is printed once,
//! alone on stdout; everything else goes to stderr or is a JSON line without it.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use herald_core::{Clock, Scope, SystemClock};
use herald_store::Store;
use herald_store::api_keys::{BootstrapOutcome, KeyChange};

use crate::cli::{CreateKeyArgs, DatabaseArgs, ListKeysArgs, RevokeKeysArgs, RotateKeyArgs};

/// Keys read per query while listing.
const PAGE: i64 = 1000;

/// The database, migrated: these commands may run before any `herald api` did.
async fn store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let store = Store::connect(database.database_url.expose(), database.database_pool_size)
        .context("configuring the database pool")?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

pub(crate) async fn create(args: CreateKeyArgs) -> anyhow::Result<()> {
    let scopes = Scope::parse_list(&args.scopes).map_err(anyhow::Error::msg)?;
    let sandbox = args.sandbox.trim();
    if sandbox.is_empty() || sandbox.len() > 100 {
        bail!("--sandbox must be 1 to 100 characters");
    }
    let store = store(&args.database).await?;
    let key = store
        .create_api_key(sandbox, &scopes, args.name.as_deref(), SystemClock.now())
        .await
        .context("creating the key")?;
    println!("{key}");
    Ok(())
}

pub(crate) async fn list(args: ListKeysArgs) -> anyhow::Result<()> {
    let store = store(&args.database).await?;
    let mut after = None;
    loop {
        let keys = store
            .list_api_keys(args.sandbox.as_deref(), args.include_revoked, after, PAGE)
            .await
            .context("listing keys")?;
        for key in &keys {
            let mut line = herald_api::keys::view(key);
            line["sandbox"] = serde_json::json!(key.sandbox);
            println!("{line}");
        }
        match keys.last() {
            Some(last) if keys.len() as i64 == PAGE => after = Some(last.id),
            _ => return Ok(()),
        }
    }
}

pub(crate) async fn revoke(args: RevokeKeysArgs) -> anyhow::Result<()> {
    let store = store(&args.database).await?;
    let mut unknown = Vec::new();
    for id in args.ids {
        match store.revoke_api_key(None, id, None, SystemClock.now()).await.with_context(|| format!("revoking {id}"))? {
            KeyChange::Done(key) => println!("{}", serde_json::json!({ "id": id, "revokedAt": key.revoked_at })),
            _ => unknown.push(id.to_string()),
        }
    }
    if !unknown.is_empty() {
        bail!("no such key: {}", unknown.join(", "));
    }
    Ok(())
}

pub(crate) async fn rotate(args: RotateKeyArgs) -> anyhow::Result<()> {
    let store = store(&args.database).await?;
    let id = args.id;
    match store.rotate_api_key(None, id, None, SystemClock.now()).await.context("rotating the key")? {
        KeyChange::Done(created) => {
            tracing::info!(key_id = %id, new_key_id = %created.info.id, "api key rotated; the old key no longer works");
            println!("{}", created.key);
            Ok(())
        }
        KeyChange::Revoked => bail!("key {id} is revoked; create a new one with `herald keys create`"),
        KeyChange::NotFound | KeyChange::Exceeds(_) => bail!("no such key: {id}"),
    }
}

/// Registers `HERALD_BOOTSTRAP_API_KEY`, which retires any previous bootstrap key.
pub(crate) async fn register_bootstrap(
    store: &Store,
    sandbox: &str,
    key: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    if let Some(reason) = herald_store::api_keys::bootstrap::refusal(key) {
        bail!("HERALD_BOOTSTRAP_API_KEY is refused: {reason}");
    }
    let (outcome, retired) =
        store.register_bootstrap_key(sandbox, key, now).await.context("registering the bootstrap API key")?;
    let retired: Vec<String> = retired.iter().map(ToString::to_string).collect();
    match outcome {
        BootstrapOutcome::Registered { id, .. } => {
            tracing::info!(%sandbox, key_id = %id, ?retired, "bootstrap api key registered");
        }
        BootstrapOutcome::Kept { id, .. } => {
            tracing::info!(%sandbox, key_id = %id, ?retired, "bootstrap api key already registered");
        }
        // Refusing to start would take a whole stack down for one revoked key; starting without
        // it is safe, and says why.
        BootstrapOutcome::Revoked { id } => tracing::error!(
            key_id = %id,
            "HERALD_BOOTSTRAP_API_KEY names a revoked key; it stays revoked: configure another one"
        ),
    }
    Ok(())
}
