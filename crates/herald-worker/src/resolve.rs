//! Who a delivery goes to: `channelData` first, then (for `external` recipients) the user id
//! itself, then the stored profile, then (for `aep` recipients in the channel's own address
//! namespace, `email` or `phone`) the identity itself. The stored profile's attributes, overlaid with the inline
//! `profile` of the request, are what templates see as `profile`.

use herald_core::delivery::reasons;
use herald_core::execution::{Envelope, RecipientType};
use herald_core::{CampaignDefinition, Channel};
use herald_store::Profile;
use serde_json::{Map, Value};

/// Where a push goes: the platform application and the device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub application_arn: String,
    pub token: String,
}

/// A recipient ready to be sent to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Email address or phone number (for push, the token).
    pub address: String,
    pub push: Option<PushTarget>,
    pub profile: Map<String, Value>,
}

/// Objects merge key by key, recursively; anything else in `overlay` replaces.
pub fn merge_profile(base: &mut Map<String, Value>, overlay: &Map<String, Value>) {
    for (key, value) in overlay {
        match (base.get_mut(key), value) {
            (Some(Value::Object(inner)), Value::Object(patch)) => merge_profile(inner, patch),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Resolves the envelope's recipient against its stored profile; `Err` is an exclusion reason.
pub fn resolve(
    envelope: &Envelope,
    definition: &CampaignDefinition,
    stored: Option<&Profile>,
) -> Result<Resolved, &'static str> {
    let data = envelope.recipient.channel_data.clone().unwrap_or_default();
    let external = (envelope.recipient.kind == RecipientType::External).then(|| envelope.recipient.user_id.clone());
    // "namespace email, userId jane@example.com" names an address: the last resort when neither
    // channelData nor a stored profile gives one.
    let identity = (envelope.recipient.kind == RecipientType::Aep)
        .then(|| envelope.channel.identity_address(&envelope.recipient.namespace, &envelope.recipient.user_id))
        .flatten()
        .map(str::to_string);
    let mut profile = stored.map(|p| p.attributes.clone()).unwrap_or_default();
    merge_profile(&mut profile, &envelope.profile);
    let (address, push) = match envelope.channel {
        channel @ (Channel::Email | Channel::Sms) => {
            let stored_address = stored.and_then(|p| match channel {
                Channel::Email => p.email_address.clone(),
                _ => p.phone_number.clone(),
            });
            let address = data
                .address(channel)
                .map(str::to_string)
                .or(external)
                .or(stored_address)
                .or_else(|| identity.clone())
                .ok_or(reasons::NO_ADDRESS)?;
            if !channel.is_valid_address(&address) {
                return Err(reasons::MALFORMED_ADDRESS);
            }
            (address, None)
        }
        Channel::Push => {
            let stored_token = stored.and_then(|p| p.push_tokens.first().cloned());
            let (token, platform) = match (data.push_token.or(external), data.push_platform) {
                (Some(token), Some(platform)) => (token, platform),
                (Some(token), None) => (token, stored_token.map(|t| t.platform).ok_or(reasons::NO_ADDRESS)?),
                (None, _) => stored_token.map(|t| (t.token, t.platform)).ok_or(reasons::NO_ADDRESS)?,
            };
            if !Channel::Push.is_valid_address(&token) {
                return Err(reasons::MALFORMED_ADDRESS);
            }
            let application_arn = definition
                .surface
                .platform_application_arn
                .as_ref()
                .and_then(|arns| arns.get(&platform))
                .cloned()
                .ok_or(reasons::NO_ADDRESS)?;
            (token.clone(), Some(PushTarget { application_arn, token }))
        }
    };
    Ok(Resolved { address, push, profile })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use herald_core::execution::{ChannelData, Recipient};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn envelope(
        channel: Channel,
        kind: RecipientType,
        user_id: &str,
        data: Option<ChannelData>,
        profile: Value,
    ) -> Envelope {
        Envelope {
            version: 1,
            execution_id: Uuid::nil(),
            request_id: "r".into(),
            campaign_id: Uuid::nil(),
            sandbox: "a".into(),
            channel,
            recipient_index: 0,
            recipient: Recipient { kind, user_id: user_id.into(), namespace: "email".into(), channel_data: data },
            context: Map::new(),
            profile: profile.as_object().cloned().unwrap_or_default(),
            accepted_at: Utc::now(),
            expires_at: None,
        }
    }

    fn stored() -> Profile {
        Profile {
            namespace: "email".into(),
            user_id: "jane".into(),
            attributes: json!({"person": {"name": {"firstName": "Jane", "lastName": "Doe"}}})
                .as_object()
                .cloned()
                .unwrap(),
            email_address: Some("jane@example.com".into()),
            phone_number: Some("+33612345678".into()),
            push_tokens: vec![herald_store::PushToken { token: "tok".into(), platform: "fcm".into() }],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn channel_data_overrides_the_profile_and_inline_attributes_overlay_stored_ones() {
        let data = ChannelData { email_address: Some("other@example.com".into()), ..Default::default() };
        let envelope = envelope(
            Channel::Email,
            RecipientType::Aep,
            "jane",
            Some(data),
            json!({"person": {"name": {"firstName": "J"}}}),
        );
        let resolved = resolve(&envelope, &CampaignDefinition::default(), Some(&stored())).unwrap();
        assert_eq!(resolved.address, "other@example.com");
        assert_eq!(Value::Object(resolved.profile), json!({"person": {"name": {"firstName": "J", "lastName": "Doe"}}}));
    }

    #[test]
    fn missing_and_malformed_addresses_are_exclusions() {
        let unknown = envelope(Channel::Sms, RecipientType::Aep, "ghost", None, json!({}));
        assert_eq!(resolve(&unknown, &CampaignDefinition::default(), None), Err(reasons::NO_ADDRESS));
        let mut bad = stored();
        bad.phone_number = Some("0612".into());
        assert_eq!(resolve(&unknown, &CampaignDefinition::default(), Some(&bad)), Err(reasons::MALFORMED_ADDRESS));
    }

    #[test]
    fn an_aep_identity_in_the_channels_address_namespace_is_the_address_of_last_resort() {
        let definition = CampaignDefinition::default();
        let mut email = envelope(Channel::Email, RecipientType::Aep, "jane@example.com", None, json!({}));
        assert_eq!(resolve(&email, &definition, None).unwrap().address, "jane@example.com");
        // A stored profile's address, then channelData, come first.
        let mut profile = stored();
        profile.email_address = Some("stored@example.com".into());
        assert_eq!(resolve(&email, &definition, Some(&profile)).unwrap().address, "stored@example.com");
        email.recipient.channel_data =
            Some(ChannelData { email_address: Some("data@example.com".into()), ..Default::default() });
        assert_eq!(resolve(&email, &definition, Some(&profile)).unwrap().address, "data@example.com");
        // Another namespace's identity is not an address; nor is a malformed one sent anywhere.
        let mut crm = envelope(Channel::Email, RecipientType::Aep, "jane@example.com", None, json!({}));
        crm.recipient.namespace = "crm".into();
        assert_eq!(resolve(&crm, &definition, None), Err(reasons::NO_ADDRESS));
        let not_an_address = envelope(Channel::Email, RecipientType::Aep, "jane", None, json!({}));
        assert_eq!(resolve(&not_an_address, &definition, None), Err(reasons::NO_ADDRESS));
        let mut sms = envelope(Channel::Sms, RecipientType::Aep, "+33612345678", None, json!({}));
        sms.recipient.namespace = "phone".into();
        assert_eq!(resolve(&sms, &definition, None).unwrap().address, "+33612345678");
        sms.recipient.namespace = "email".into();
        assert_eq!(resolve(&sms, &definition, None), Err(reasons::NO_ADDRESS));
    }

    #[test]
    fn push_goes_to_the_platform_application_of_the_token() {
        let mut definition = CampaignDefinition::default();
        let arn = "arn:aws:sns:us-east-1:123456789012:app/GCM/herald".to_string();
        definition.surface.platform_application_arn = Some([("fcm".to_string(), arn.clone())].into());
        let envelope = envelope(Channel::Push, RecipientType::Aep, "jane", None, json!({}));
        let resolved = resolve(&envelope, &definition, Some(&stored())).unwrap();
        assert_eq!(resolved.push, Some(PushTarget { application_arn: arn, token: "tok".into() }));
        assert_eq!(resolve(&envelope, &CampaignDefinition::default(), Some(&stored())), Err(reasons::NO_ADDRESS));
    }
}
