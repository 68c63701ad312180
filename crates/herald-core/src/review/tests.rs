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
    // The syntax error in the html does not hide the text's problems: both are listed at once.
    assert_eq!(
        codes(&problems),
        [
            "missing-content",
            "malformed-sender",
            "schedule-end-not-after-start",
            "schedule-end-in-past",
            "template-syntax",
            "unknown-variable",
            "context-system",
            "forbidden-function"
        ]
    );
    let pointers: Vec<&str> = problems.iter().skip(4).map(|p| p.pointer.as_str()).collect();
    assert_eq!(pointers, ["/content/html", "/content/text", "/content/text", "/content/text"]);
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

#[test]
fn macros_and_includes_are_refused_as_forbidden_tags() {
    let mut definition = valid_email();
    definition.content.text =
        Some("{% macro boom(n) %}{{ self::boom(n=n) }}{% endmacro %}{{ self::boom(n=1) }}".into());
    definition.content.html = Some("{% include \"text.txt\" %}".into());
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(codes(&problems), ["forbidden-tag", "forbidden-tag"]);
    assert_eq!(problems[0].pointer, "/content/html");
    assert!(problems[1].detail.contains("`macro`"), "{problems:?}");
}

#[test]
fn templates_nested_too_deep_are_refused_with_their_line() {
    let mut definition = valid_email();
    definition.content.text = Some(format!("\n{}x{}", "{% if a %}".repeat(40), "{% endif %}".repeat(40)));
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(codes(&problems), ["template-too-deep"]);
    assert_eq!(problems[0].line, Some(2));
}

#[test]
fn what_is_provably_over_the_render_budget_is_refused() {
    let mut definition = valid_email();
    definition.content.text = Some(
        "{% for i in range(end=1000) %}{% for j in range(end=1000) %}{% for k in range(end=1000) %}x\
         {% endfor %}{% endfor %}{% endfor %}"
            .into(),
    );
    definition.content.html =
        Some(format!("{{% set a = \"{}\" %}}{{{{ a{} }}}}", "a".repeat(62), " | replace(from=\"a\", to=a)".repeat(5)));
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(codes(&problems), ["render-budget", "render-budget"]);
    assert_eq!(problems[0].pointer, "/content/html");
    assert!(problems[1].detail.contains("1001001000 iterations"), "{problems:?}");
}

#[test]
fn line_breaks_in_header_fields_are_refused() {
    let mut definition = valid_email();
    definition.surface.from_name = Some("Example\r\nBcc: victim@example.com".into());
    definition.surface.reply_to = Some("help@example.com\nBcc: victim@example.com".into());
    definition.content.subject = Some("Reset\u{0}your password".into());
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(codes(&problems), ["control-character", "control-character", "control-character"]);
    let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
    assert_eq!(pointers, ["/surface/fromName", "/surface/replyTo", "/content/subject"]);
    // Direction overrides and invisible marks spoof a display name.
    for spoof in ["Bank\u{202E}moc.live", "Bank\u{2066}x", "Ba\u{200B}nk"] {
        let mut spoofed = valid_email();
        spoofed.surface.from_name = Some(spoof.into());
        assert_eq!(codes(&review(Channel::Email, &spoofed, now())), ["control-character"], "{spoof:?}");
    }
    // A variable in the subject is fine: what it renders to is made one line when sending.
    definition = valid_email();
    definition.content.subject = Some("Hi {{ profile.firstName | default(value='') }}".into());
    assert_eq!(review(Channel::Email, &definition, now()), vec![]);
}

#[test]
fn javascript_urls_in_html_are_flagged_however_they_are_spelled() {
    for html in [
        "<a href=\"javascript:alert(1)\">x</a>",
        "<a HREF='  JavaScript:alert(1)'>x</a>",
        "<a href=\"java\tscript:alert(1)\">x</a>",
        "<a href=\"&#106;avascript&colon;alert(1)\">x</a>",
        "<a href=\"&#x6A;ava&#X73;cript:{{ context.x }}\">x</a>",
        "<img src = \"vbscript:msgbox\">",
        "<form action=\"javascript:go()\"></form>",
    ] {
        let mut definition = valid_email();
        definition.content.html = Some(format!("<p>hi</p>\n{html}"));
        let problems = review(Channel::Email, &definition, now());
        assert_eq!(codes(&problems), ["javascript-url"], "{html}");
        assert_eq!(problems[0].line, Some(2));
    }
    for html in [
        "<a href=\"https://example.com/javascript:x\">x</a>",
        "<a href=\"{{ context.url }}\">x</a>",
        "<a data-href=\"javascript:x\" srcset=\"javascript:x\">x</a>",
        "<p>write href=javascript: in your notes</p>",
    ] {
        let mut definition = valid_email();
        definition.content.html = Some(html.into());
        let problems = review(Channel::Email, &definition, now());
        assert!(codes(&problems) != ["javascript-url"] || html.contains("notes"), "{html}: {problems:?}");
    }
}

#[test]
fn an_unknown_filter_blocks_activation_instead_of_failing_every_send() {
    let mut definition = valid_email();
    definition.content.text = Some("{{ profile.a | nosuchfilter }}".into());
    let problems = review(Channel::Email, &definition, now());
    assert_eq!(codes(&problems), ["unknown-filter"]);
    assert_eq!(problems[0].pointer, "/content/text");
    // The other parts are still reviewed.
    definition.content.html = Some("{{ nobody }}".into());
    assert_eq!(codes(&review(Channel::Email, &definition, now())), ["unknown-filter", "unknown-variable"]);
}

fn high_throughput_sms(body: &str) -> CampaignDefinition {
    CampaignDefinition {
        identity_namespace: Some("phone".into()),
        high_throughput: true,
        surface: Surface { sender_id: Some("Example".into()), ..Default::default() },
        content: Content { body: Some(body.into()), ..Default::default() },
        ..Default::default()
    }
}

#[test]
fn a_high_throughput_campaign_that_reads_only_context_has_no_problem() {
    let definition = high_throughput_sms("Your code is {{ context.otp }}");
    assert_eq!(review(Channel::Sms, &definition, now()), vec![]);
}

#[test]
fn a_high_throughput_campaign_may_not_read_profiles_even_guarded() {
    let definition = high_throughput_sms(
        "Hi {{ profile.firstName }}, {{ profile.firstName | default(value='') }} {{ context.otp }}",
    );
    let problems = review(Channel::Sms, &definition, now());
    assert_eq!(codes(&problems), ["high-throughput-profile"]);
    assert_eq!(problems[0].pointer, "/content/body");
    let detail = &problems[0].detail;
    assert!(detail.starts_with("a high-throughput campaign has no profiles"), "{detail}");
    assert!(detail.contains("`profile.firstName` is never there") && detail.contains("context.*"), "{detail}");

    // Each part that reads a profile has its own problem, on its own field.
    let mut email = valid_email();
    email.high_throughput = true;
    email.content.subject = Some("Hi {% if profile.vip %}VIP{% endif %}".into());
    let problems = review(Channel::Email, &email, now());
    assert_eq!(codes(&problems), ["high-throughput-profile", "high-throughput-profile"]);
    let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
    assert_eq!(pointers, ["/content/subject", "/content/html"]);
    // The same content is fine for a campaign that is not high throughput.
    email.high_throughput = false;
    assert_eq!(review(Channel::Email, &email, now()), vec![]);
}

#[test]
fn a_high_throughput_campaign_may_not_create_profiles() {
    let mut definition = high_throughput_sms("{{ context.otp }}");
    definition.create_new_profiles = true;
    let problems = review(Channel::Sms, &definition, now());
    assert_eq!(codes(&problems), ["high-throughput-create-profiles"]);
    assert_eq!(problems[0].pointer, "/createNewProfiles");
    definition.high_throughput = false;
    assert_eq!(review(Channel::Sms, &definition, now()), vec![]);
}

#[test]
fn a_part_that_does_not_compile_does_not_hide_another_parts_profile_read() {
    let mut email = valid_email();
    email.high_throughput = true;
    email.content.html = Some("{% if %}".into());
    email.content.text = Some("{{ profile.person.name.firstName }} {{ context.resetUrl }}".into());
    let problems = review(Channel::Email, &email, now());
    assert_eq!(codes(&problems), ["template-syntax", "high-throughput-profile"]);
    assert_eq!(problems[1].pointer, "/content/text");
}
