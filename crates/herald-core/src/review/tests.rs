use chrono::{Duration, TimeZone, Utc};

use super::*;
use crate::campaign::Schedule;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn valid_email() -> CampaignDefinition {
    CampaignDefinition {
        identity_namespace: Some("email".into()),
        surface: Surface { from_address: Some("no-reply@example.com".into()), ..Default::default() },
        content: Content {
            subject: Some("Reset your password".into()),
            html: Some("<a href=\"{{ context.resetUrl }}\">Hi {{ profile.firstName }}</a>".into()),
            text: Some("{{ context.resetUrl }}".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn codes(problems: &[ReviewProblem]) -> Vec<&'static str> {
    problems.iter().map(|p| p.code).collect()
}

#[test]
fn a_complete_email_campaign_has_no_problem() {
    assert_eq!(review(Channel::Email, &valid_email(), now()), vec![]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut definition = valid_email();
    definition.surface.from_address = Some("not-an-address".into());
    definition.content.subject = None;
    definition.content.text = Some("{{ user.name }} {{ context.system.id }} {{ get_env(name='HOME') }}".into());
    definition.content.html = Some("{% if %}".into());
    definition.schedule =
        Schedule { start_date: Some(now() - Duration::days(1)), end_date: Some(now() - Duration::days(2)) };
    let problems = review(Channel::Email, &definition, now());
    // The syntax error stops the analysis of every part, so the variable problems come after it is fixed.
    assert_eq!(
        codes(&problems),
        [
            "missing-content",
            "malformed-sender",
            "schedule-end-not-after-start",
            "schedule-end-in-past",
            "template-syntax"
        ]
    );
    definition.content.html = Some("ok".into());
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(
        codes(&problems),
        [
            "missing-content",
            "malformed-sender",
            "schedule-end-not-after-start",
            "schedule-end-in-past",
            "unknown-variable",
            "context-system",
            "forbidden-function"
        ]
    );
}

#[test]
fn sms_needs_a_body_and_a_sender() {
    let definition = CampaignDefinition {
        identity_namespace: Some("phone".into()),
        content: Content { html: Some("x".into()), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(
        codes(&review(Channel::Sms, &definition, now())),
        ["missing-content", "content-not-for-channel", "missing-sender"]
    );
}

#[test]
fn push_needs_valid_platform_applications() {
    let mut arns = std::collections::BTreeMap::new();
    arns.insert("fcm".to_string(), "arn:aws:sns:us-east-1:123456789012:app/GCM/herald".to_string());
    arns.insert("apns".to_string(), "garbage".to_string());
    let definition = CampaignDefinition {
        identity_namespace: Some("ecid".into()),
        surface: Surface { platform_application_arn: Some(arns), ..Default::default() },
        content: Content { body: Some("Your order shipped".into()), ..Default::default() },
        ..Default::default()
    };
    let problems = review(Channel::Push, &definition, now());
    assert_eq!(codes(&problems), ["malformed-sender"]);
    assert_eq!(problems[0].pointer, "/surface/platformApplicationArn/apns");
}

#[test]
fn template_syntax_errors_carry_the_part_and_line() {
    let mut definition = valid_email();
    definition.content.text = Some("line one\n{{ context.x ".into());
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(codes(&problems), ["template-syntax"]);
    assert_eq!((problems[0].pointer.as_str(), problems[0].line), ("/content/text", Some(2)));
}
