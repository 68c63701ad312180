use serde_json::json;

use super::*;

fn facts(channel: Channel, required: &[&str]) -> CampaignFacts {
    CampaignFacts {
        channel,
        identity_namespace: Some("email".into()),
        required_context: required.iter().map(|s| s.to_string()).collect(),
    }
}

fn request(body: Value) -> ExecutionRequest {
    serde_json::from_value(body).unwrap()
}

fn pointers(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.pointer.as_str()).collect()
}

#[test]
fn recipient_context_is_merged_over_the_request_context() {
    let body = request(json!({
        "requestId": "r1", "campaignId": "c",
        "context": {"brand": "Acme", "resetUrl": "https://default"},
        "recipients": [{"type": "aep", "userId": "jane", "context": {"resetUrl": "https://jane"}}]
    }));
    let prepared = prepare(&body, &facts(Channel::Email, &["resetUrl", "brand"])).unwrap();
    assert_eq!(Value::Object(prepared[0].context.clone()), json!({"brand": "Acme", "resetUrl": "https://jane"}));
    assert_eq!(prepared[0].recipient.namespace, "email", "the campaign's namespace is the default");
}

#[test]
fn missing_context_attributes_are_named_per_recipient() {
    let body = request(json!({
        "requestId": "r1", "campaignId": "c",
        "recipients": [
            {"type": "aep", "userId": "jane", "context": {"otp": "1"}},
            {"type": "aep", "userId": "john", "context": {"otpp": "1"}}
        ]
    }));
    let errors = prepare(&body, &facts(Channel::Sms, &["otp"])).unwrap_err();
    assert_eq!(pointers(&errors), ["/recipients/1/context"]);
    assert!(errors[0].detail.contains("`john`") && errors[0].detail.contains("otp"), "{}", errors[0].detail);
}

#[test]
fn recipient_count_duplicates_and_reserved_context_are_refused() {
    let none = request(json!({"requestId": "r", "campaignId": "c", "recipients": []}));
    assert_eq!(pointers(&prepare(&none, &facts(Channel::Email, &[])).unwrap_err()), ["/recipients"]);
    let many: Vec<Value> = (0..21).map(|i| json!({"type": "aep", "userId": format!("u{i}")})).collect();
    let many = request(json!({"requestId": "r", "campaignId": "c", "recipients": many}));
    assert_eq!(pointers(&prepare(&many, &facts(Channel::Email, &[])).unwrap_err()), ["/recipients"]);
    let duplicate = request(json!({
        "requestId": "r", "campaignId": "c", "context": {"system": 1},
        "recipients": [{"type": "aep", "userId": "a"}, {"type": "aep", "userId": "a", "context": {"system": {}}}]
    }));
    assert_eq!(
        pointers(&prepare(&duplicate, &facts(Channel::Email, &[])).unwrap_err()),
        ["/context/system", "/recipients/1/userId", "/recipients/1/context/system"]
    );
}

#[test]
fn external_recipients_need_an_address_valid_for_the_channel() {
    let body = request(json!({
        "requestId": "r", "campaignId": "c",
        "recipients": [
            {"type": "external", "userId": "+33612345678"},
            {"type": "external", "userId": "0612345678"},
            {"type": "external", "userId": "x", "channelData": {"mobilePhoneNumber": "+14155550123"}}
        ]
    }));
    assert_eq!(pointers(&prepare(&body, &facts(Channel::Sms, &[])).unwrap_err()), ["/recipients/1/userId"]);
    let email = request(
        json!({"requestId": "r", "campaignId": "c", "recipients": [{"type": "external", "userId": "not-an-email"}]}),
    );
    assert_eq!(pointers(&prepare(&email, &facts(Channel::Email, &[])).unwrap_err()), ["/recipients/0/userId"]);
    let push = request(
        json!({"requestId": "r", "campaignId": "c", "recipients": [{"type": "external", "userId": "token-1"}]}),
    );
    assert_eq!(
        pointers(&prepare(&push, &facts(Channel::Push, &[])).unwrap_err()),
        ["/recipients/0/channelData/pushPlatform"]
    );
}

#[test]
fn oversize_context_is_refused() {
    let big = "x".repeat(MAX_CONTEXT_BYTES);
    let body = request(
        json!({"requestId": "r", "campaignId": "c", "recipients": [{"type": "aep", "userId": "a", "context": {"blob": big}}]}),
    );
    assert_eq!(pointers(&prepare(&body, &facts(Channel::Email, &[])).unwrap_err()), ["/recipients/0/context"]);
}

#[test]
fn context_values_may_be_of_any_json_type() {
    let body = request(json!({"requestId": "r", "campaignId": "c", "recipients": [{"type": "aep", "userId": "a",
        "context": {"s": "x", "n": 1.5, "b": true, "o": {"k": [1, 2]}, "a": [{"x": null}]}}]}));
    assert!(prepare(&body, &facts(Channel::Email, &["s", "n", "b", "o", "a"])).is_ok());
}

#[test]
fn canonical_json_ignores_key_order() {
    let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"z": 1, "y": 2}], "c": 2}}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a": {"c": 2, "d": [1, {"y": 2, "z": 1}]}, "b": 1}"#).unwrap();
    assert_eq!(canonical_json(&a), canonical_json(&b));
    let c: Value = serde_json::from_str(r#"{"a": {"c": 3, "d": [1, {"y": 2, "z": 1}]}, "b": 1}"#).unwrap();
    assert_ne!(canonical_json(&a), canonical_json(&c));
}

#[test]
fn unknown_fields_in_an_execution_are_refused() {
    let parsed = serde_json::from_value::<ExecutionRequest>(
        json!({"requestId": "r", "campaignId": "c", "recipients": [], "audience": "x"}),
    );
    assert!(parsed.unwrap_err().to_string().contains("audience"));
}
