//! Profiles: what Herald knows of a recipient, keyed by (sandbox, identity namespace, user id).
//! Context sent with an execution is never written here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushToken {
    pub token: String,
    /// The key of the campaign's `platformApplicationArn` map this token belongs to (`fcm`, `apns`, ...).
    pub platform: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub namespace: String,
    pub user_id: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub email_address: Option<String>,
    pub phone_number: Option<String>,
    pub push_tokens: Vec<PushToken>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// Replaces the profile (or creates it); returns it and whether it was created.
    pub async fn put_profile(
        &self,
        sandbox: &str,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Result<(Profile, bool), StoreError> {
        let attributes = serde_json::Value::Object(profile.attributes.clone());
        let push_tokens =
            serde_json::to_value(&profile.push_tokens).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO profiles (sandbox, namespace, user_id, attributes, email_address, phone_number, push_tokens, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                 ON CONFLICT (sandbox, namespace, user_id) DO UPDATE
                    SET attributes = EXCLUDED.attributes, email_address = EXCLUDED.email_address,
                        phone_number = EXCLUDED.phone_number, push_tokens = EXCLUDED.push_tokens, updated_at = EXCLUDED.updated_at
                 RETURNING created_at, (xmax = 0) AS inserted",
                &[&sandbox, &profile.namespace, &profile.user_id, &attributes, &profile.email_address, &profile.phone_number, &push_tokens, &now],
            )
            .await?;
        let stored = Profile { created_at: row.get(0), updated_at: now, ..profile.clone() };
        Ok((stored, row.get(1)))
    }

    pub async fn get_profile(
        &self,
        sandbox: &str,
        namespace: &str,
        user_id: &str,
    ) -> Result<Option<Profile>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT attributes, email_address, phone_number, push_tokens, created_at, updated_at
                   FROM profiles WHERE sandbox = $1 AND namespace = $2 AND user_id = $3",
                &[&sandbox, &namespace, &user_id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let attributes = match row.get::<_, serde_json::Value>(0) {
            serde_json::Value::Object(map) => map,
            other => {
                return Err(StoreError::Corrupt(format!("profile attributes are not an object: {other}")));
            }
        };
        let push_tokens = serde_json::from_value(row.get(3)).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        Ok(Some(Profile {
            namespace: namespace.to_string(),
            user_id: user_id.to_string(),
            attributes,
            email_address: row.get(1),
            phone_number: row.get(2),
            push_tokens,
            created_at: row.get(4),
            updated_at: row.get(5),
        }))
    }
}
