//! SNS push endpoints per (application, token), and identity-only profiles the worker creates.

use chrono::{DateTime, Utc};

use crate::{Store, StoreError};

impl Store {
    /// Creates a profile holding only its identity, unless one exists (`createNewProfiles`).
    pub async fn ensure_identity_profile(
        &self,
        sandbox: &str,
        namespace: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO profiles (sandbox, namespace, user_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT DO NOTHING",
                &[&sandbox, &namespace, &user_id, &now],
            )
            .await?;
        Ok(())
    }

    /// The SNS endpoint created earlier for (application, token): its ARN and whether it is dead.
    pub async fn push_endpoint(
        &self,
        sandbox: &str,
        application_arn: &str,
        token: &str,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT endpoint_arn, disabled_at IS NOT NULL FROM push_endpoints WHERE sandbox = $1 AND application_arn = $2 AND token = $3",
                &[&sandbox, &application_arn, &token],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    pub async fn remember_push_endpoint(
        &self,
        sandbox: &str,
        application_arn: &str,
        token: &str,
        endpoint_arn: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO push_endpoints (sandbox, application_arn, token, endpoint_arn, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (sandbox, application_arn, token) DO UPDATE SET endpoint_arn = EXCLUDED.endpoint_arn, disabled_at = NULL",
                &[&sandbox, &application_arn, &token, &endpoint_arn, &now],
            )
            .await?;
        Ok(())
    }

    /// Marks a token dead after its endpoint reported disabled.
    pub async fn mark_push_token_dead(
        &self,
        sandbox: &str,
        application_arn: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE push_endpoints SET disabled_at = $4 WHERE sandbox = $1 AND application_arn = $2 AND token = $3",
                &[&sandbox, &application_arn, &token, &now],
            )
            .await?;
        Ok(())
    }
}
