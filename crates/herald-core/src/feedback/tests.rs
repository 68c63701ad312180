use super::sns::{SnsMessage, ses_event_of};
use super::*;

const BOUNCE: &str = include_str!("../../../../tests/fixtures/ses/bounce.json");
const COMPLAINT: &str = include_str!("../../../../tests/fixtures/ses/complaint.json");
const DELIVERY: &str = include_str!("../../../../tests/fixtures/ses/delivery.json");
const DELAY: &str = include_str!("../../../../tests/fixtures/ses/delivery-delay.json");
const REJECT: &str = include_str!("../../../../tests/fixtures/ses/reject.json");
const MESSAGE_ID: &str = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000";

#[test]
fn the_documented_ses_events_read_as_their_statuses() {
    let bounce = parse_ses_event(BOUNCE).unwrap().unwrap();
    assert_eq!(bounce.message_id, MESSAGE_ID);
    assert_eq!((bounce.status, bounce.hard), (Some(FeedbackStatus::Bounced), true));
    assert_eq!(bounce.detail.as_deref(), Some("Permanent/General"));
    assert_eq!(bounce.recipients, vec!["recipient@example.com".to_string()]);
    assert_eq!(bounce.suppresses(), Some(SuppressionReason::HardBounce));
    assert_eq!((bounce.report_event(), bounce.report_reason().as_str()), (Some("bounced_hard"), "General"));

    let complaint = parse_ses_event(COMPLAINT).unwrap().unwrap();
    assert_eq!(complaint.status, Some(FeedbackStatus::Complained));
    assert_eq!(complaint.detail.as_deref(), Some("abuse"));
    assert_eq!(complaint.suppresses(), Some(SuppressionReason::Complaint));

    let delivery = parse_ses_event(DELIVERY).unwrap().unwrap();
    assert_eq!((delivery.status, delivery.suppresses()), (Some(FeedbackStatus::Delivered), None));
    assert_eq!(delivery.occurred_at.unwrap().to_rfc3339(), "2016-10-19T23:21:04.133+00:00");

    let delay = parse_ses_event(DELAY).unwrap().unwrap();
    assert_eq!(delay.status, Some(FeedbackStatus::Delayed));
    assert_eq!(delay.detail.as_deref(), Some("TransientCommunicationFailure"));

    let reject = parse_ses_event(REJECT).unwrap().unwrap();
    assert_eq!((reject.status, reject.detail.as_deref()), (Some(FeedbackStatus::Rejected), Some("Bad content")));
}

#[test]
fn a_hard_bounce_outranks_a_soft_one_and_a_complaint_both() {
    let hard = parse_ses_event(BOUNCE).unwrap().unwrap();
    let soft = parse_ses_event(&BOUNCE.replace("\"Permanent\"", "\"Transient\"")).unwrap().unwrap();
    let complaint = parse_ses_event(COMPLAINT).unwrap().unwrap();
    let delivery = parse_ses_event(DELIVERY).unwrap().unwrap();
    assert!(delivery.rank() < soft.rank() && soft.rank() < hard.rank() && hard.rank() < complaint.rank());
    assert_eq!(feedback_rank(FeedbackStatus::Bounced, true), hard.rank());
}

#[test]
fn a_soft_bounce_does_not_suppress() {
    let soft = BOUNCE.replace("\"Permanent\"", "\"Transient\"").replace("\"General\"", "\"MailboxFull\"");
    let event = parse_ses_event(&soft).unwrap().unwrap();
    assert_eq!((event.status, event.hard, event.suppresses()), (Some(FeedbackStatus::Bounced), false, None));
    assert_eq!(event.report_event(), Some("bounced_soft"));
}

#[test]
fn the_same_event_twice_has_one_key_and_different_events_differ() {
    let once = parse_ses_event(BOUNCE).unwrap().unwrap();
    // Re-serialised (as SNS may): same content, same key.
    let again = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(BOUNCE).unwrap()).unwrap();
    assert_eq!(parse_ses_event(&again).unwrap().unwrap().key, once.key);
    let keys: std::collections::HashSet<String> =
        [BOUNCE, COMPLAINT, DELIVERY, DELAY, REJECT].iter().map(|b| parse_ses_event(b).unwrap().unwrap().key).collect();
    assert_eq!(keys.len(), 5);
    let other_feedback =
        BOUNCE.replace("example-000000\",\n    \"reportingMTA", "example-000001\",\n    \"reportingMTA");
    assert_ne!(parse_ses_event(&other_feedback).unwrap().unwrap().key, once.key);
}

#[test]
fn herald_tags_find_the_delivery() {
    let tagged = BOUNCE.replace(
        "\"ses:configuration-set\": [\"ConfigSet\"],",
        "\"ses:configuration-set\": [\"ConfigSet\"], \"herald-execution-id\": [\"0190b6a2-8a3c-7d4e-9f00-000000000001\"], \"herald-recipient-index\": [\"3\"],",
    );
    let event = parse_ses_event(&tagged).unwrap().unwrap();
    assert_eq!(event.execution_id.unwrap().to_string(), "0190b6a2-8a3c-7d4e-9f00-000000000001");
    assert_eq!(event.recipient_index, Some(3));
}

#[test]
fn hostile_and_foreign_bodies_are_errors_or_ignored_never_panics() {
    for body in ["", "null", "[]", "{}", "{\"eventType\":1}", "\u{0}", "{\"eventType\":\"Bounce\",\"mail\":{}}"] {
        assert!(parse_ses_event(body).is_err(), "{body:?}");
    }
    let no_type = BOUNCE.replace("\"bounceType\": \"Permanent\",", "");
    assert!(parse_ses_event(&no_type).is_err());
    let open = DELIVERY.replace("\"Delivery\"", "\"Open\"");
    assert_eq!(parse_ses_event(&open).unwrap(), None, "untracked events are acknowledged");
    let huge_id = DELIVERY.replace(MESSAGE_ID, &"x".repeat(10_000));
    assert!(parse_ses_event(&huge_id).is_err());
    let nul = BOUNCE.replace("smtp; 550", "smtp;\\u0000 550").replace("\"General\"", "\"Gen\\u0000eral\"");
    let event = parse_ses_event(&nul).unwrap().unwrap();
    assert!(!event.detail.unwrap().contains('\0'), "text PostgreSQL cannot store is dropped");
}

#[test]
fn identity_notifications_read_like_events() {
    let notification = BOUNCE.replace("\"eventType\"", "\"notificationType\"");
    assert_eq!(parse_ses_event(&notification).unwrap().unwrap().status, Some(FeedbackStatus::Bounced));
}

#[test]
fn a_queued_sns_envelope_is_unwrapped_and_a_raw_body_kept() {
    let envelope = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": BOUNCE,
        "Timestamp": "2017-08-05T00:41:03.000Z", "SignatureVersion": "1", "Signature": "x", "SigningCertURL": "https://x"});
    assert_eq!(ses_event_of(&envelope.to_string()).unwrap(), BOUNCE);
    assert_eq!(ses_event_of(BOUNCE).unwrap(), BOUNCE);
    assert!(ses_event_of("not json").is_err());
}

#[test]
fn the_string_to_sign_follows_the_sns_documentation() {
    let message: SnsMessage = serde_json::from_value(serde_json::json!({
        "Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic", "Subject": "My First Message",
        "Message": "Hello world!", "Timestamp": "2012-05-02T00:54:06.655Z", "SignatureVersion": "1",
        "Signature": "EXAMPLE", "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
    }))
    .unwrap();
    assert_eq!(
        message.string_to_sign().unwrap(),
        "Message\nHello world!\nMessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\nSubject\nMy First Message\n\
         Timestamp\n2012-05-02T00:54:06.655Z\nTopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nNotification\n"
    );
    let mut confirmation = message.clone();
    confirmation.kind = "SubscriptionConfirmation".into();
    assert_eq!(confirmation.string_to_sign(), None, "a confirmation needs its SubscribeURL and Token");
    confirmation.subscribe_url = Some("https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription".into());
    confirmation.token = Some("tok".into());
    let text = confirmation.string_to_sign().unwrap();
    assert!(text.contains("SubscribeURL\nhttps://sns") && text.contains("Token\ntok\n") && !text.contains("Subject"));
    let mut other = message;
    other.kind = "Other".into();
    assert_eq!(other.string_to_sign(), None);
}

#[test]
fn suppression_addresses_are_normalised() {
    assert_eq!(suppression_address(Channel::Email, " Jane@Example.COM ").as_deref(), Some("jane@example.com"));
    assert_eq!(suppression_address(Channel::Email, "not an address"), None);
    assert_eq!(suppression_address(Channel::Sms, "+33612345678").as_deref(), Some("+33612345678"));
    assert_eq!(suppression_address(Channel::Sms, "0612345678"), None);
    assert_eq!(suppression_address(Channel::Push, "token"), None);
}

#[test]
fn feedback_only_moves_up() {
    use FeedbackStatus::*;
    assert!(
        Delayed.rank() < Delivered.rank() && Delivered.rank() < Bounced.rank() && Bounced.rank() < Complained.rank()
    );
    for status in FeedbackStatus::ALL {
        assert_eq!(FeedbackStatus::parse(status.as_str()), Some(status));
    }
    for reason in SuppressionReason::ALL {
        assert_eq!(SuppressionReason::parse(reason.as_str()), Some(reason));
    }
}
