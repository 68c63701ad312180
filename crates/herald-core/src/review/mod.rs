//! The review that gates activation: every problem in a campaign version, reported at once, so
//! an operator fixes them in one pass instead of discovering them one 422 at a time.
//!
//! The template checks ([`review_content`]) are also what a preview runs before it renders: a
//! preview never renders content the review would refuse.

mod content;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::address::{is_valid_e164, is_valid_email, is_valid_platform_application_arn, is_valid_sms_sender_id};
use crate::campaign::{CampaignDefinition, Channel, Content, Surface};
use crate::template::{Analysis, CompiledContent, Forbidden};

/// One reason a version cannot be activated. `code` is stable and documented; clients branch on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewProblem {
    pub code: &'static str,
    /// JSON pointer into the campaign, e.g. `/content/html`.
    pub pointer: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl ReviewProblem {
    fn new(code: &'static str, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { code, pointer: pointer.into(), detail: detail.into(), line: None }
    }
}

/// Reviews `definition` for a campaign on `channel` at instant `now`.
pub fn review(channel: Channel, definition: &CampaignDefinition, now: DateTime<Utc>) -> Vec<ReviewProblem> {
    let mut problems = Vec::new();
    if definition.identity_namespace.as_deref().is_none_or(|namespace| namespace.trim().is_empty()) {
        problems.push(ReviewProblem::new(
            "missing-identity-namespace",
            "/identityNamespace",
            "an identity namespace is required",
        ));
    }
    review_content_presence(channel, &definition.content, &mut problems);
    review_surface(channel, &definition.surface, &mut problems);
    review_schedule(definition, now, &mut problems);
    let reviewed = review_templates(&definition.content);
    problems.extend(reviewed.problems);
    if definition.high_throughput {
        review_high_throughput(definition, &reviewed.analysed, &mut problems);
    }
    problems.extend(
        definition.check_limits().into_iter().map(|error| ReviewProblem::new("limit", error.pointer, error.detail)),
    );
    problems
}

fn review_content_presence(channel: Channel, content: &Content, problems: &mut Vec<ReviewProblem>) {
    let present = |value: &Option<String>| value.as_deref().is_some_and(|s| !s.trim().is_empty());
    let mut missing =
        |pointer: &str, detail: &str| problems.push(ReviewProblem::new("missing-content", pointer, detail));
    match channel {
        Channel::Email => {
            if !present(&content.subject) {
                missing("/content/subject", "an email needs a subject");
            }
            if !present(&content.html) && !present(&content.text) {
                missing("/content/html", "an email needs an HTML or a text body");
            }
        }
        Channel::Sms => {
            if !present(&content.body) {
                missing("/content/body", "an SMS needs a body");
            }
        }
        Channel::Push => {
            if !present(&content.body) {
                missing("/content/body", "a push notification needs a body");
            }
        }
    }
    let foreign: &[(&str, bool)] = match channel {
        Channel::Email => {
            &[("title", content.title.is_some()), ("body", content.body.is_some()), ("data", content.data.is_some())]
        }
        Channel::Sms => &[
            ("subject", content.subject.is_some()),
            ("html", content.html.is_some()),
            ("text", content.text.is_some()),
            ("title", content.title.is_some()),
            ("data", content.data.is_some()),
        ],
        Channel::Push => &[
            ("subject", content.subject.is_some()),
            ("html", content.html.is_some()),
            ("text", content.text.is_some()),
        ],
    };
    for (field, _) in foreign.iter().filter(|(_, set)| *set) {
        problems.push(ReviewProblem::new(
            "content-not-for-channel",
            format!("/content/{field}"),
            format!("`{field}` is not used by the {channel} channel; remove it"),
        ));
    }
}

fn review_surface(channel: Channel, surface: &Surface, problems: &mut Vec<ReviewProblem>) {
    // Header-bound fields: a line break there would let the value add headers of its own.
    let header_fields = [("/surface/fromName", &surface.from_name), ("/surface/replyTo", &surface.reply_to)];
    let mut broken_headers = Vec::new();
    for (pointer, value) in header_fields {
        if value.as_deref().is_some_and(content::has_control_character) {
            broken_headers.push(pointer);
            problems.push(ReviewProblem::new(
                "control-character",
                pointer,
                "line breaks and other control characters are not allowed in a header field",
            ));
        }
    }
    let mut malformed =
        |pointer: &str, detail: String| problems.push(ReviewProblem::new("malformed-sender", pointer, detail));
    let mut missing = Vec::new();
    match channel {
        Channel::Email => {
            match surface.from_address.as_deref() {
                None | Some("") => missing.push(("/surface/fromAddress", "an email needs a sender address")),
                Some(address) if !is_valid_email(address) => {
                    malformed("/surface/fromAddress", format!("`{address}` is not an email address"))
                }
                Some(_) => {}
            }
            let reply_to = surface.reply_to.as_deref().filter(|_| !broken_headers.contains(&"/surface/replyTo"));
            if let Some(reply_to) = reply_to.filter(|address| !is_valid_email(address)) {
                malformed("/surface/replyTo", format!("`{reply_to}` is not an email address"));
            }
        }
        Channel::Sms => {
            if surface.sender_id.is_none() && surface.origination_number.is_none() {
                missing.push(("/surface/senderId", "an SMS needs a sender id or an origination number"));
            }
            if let Some(sender_id) = surface.sender_id.as_deref().filter(|id| !is_valid_sms_sender_id(id)) {
                malformed(
                    "/surface/senderId",
                    format!("`{sender_id}` is not 1 to 11 letters and digits with at least one letter"),
                );
            }
            if let Some(number) = surface.origination_number.as_deref().filter(|number| !is_valid_e164(number)) {
                malformed("/surface/originationNumber", format!("`{number}` is not an E.164 phone number"));
            }
        }
        Channel::Push => match &surface.platform_application_arn {
            Some(arns) if !arns.is_empty() => {
                for (platform, arn) in arns.iter().filter(|(_, arn)| !is_valid_platform_application_arn(arn)) {
                    malformed(
                        &format!("/surface/platformApplicationArn/{platform}"),
                        format!("`{arn}` is not an SNS platform application ARN"),
                    );
                }
            }
            _ => missing
                .push(("/surface/platformApplicationArn", "a push campaign needs a platform application per platform")),
        },
    }
    problems.extend(missing.into_iter().map(|(pointer, detail)| ReviewProblem::new("missing-sender", pointer, detail)));
}

fn review_schedule(definition: &CampaignDefinition, now: DateTime<Utc>, problems: &mut Vec<ReviewProblem>) {
    let schedule = &definition.schedule;
    if let (Some(start), Some(end)) = (schedule.start_date, schedule.end_date)
        && end <= start
    {
        problems.push(ReviewProblem::new(
            "schedule-end-not-after-start",
            "/schedule/endDate",
            "the end date must be after the start date",
        ));
    }
    if schedule.end_date.is_some_and(|end| end <= now) {
        problems.push(ReviewProblem::new(
            "schedule-end-in-past",
            "/schedule/endDate",
            "the end date has already passed",
        ));
    }
}

/// What a high-throughput campaign may not do: it is executed without profiles (external
/// recipients only, none looked up, none created), so a `profile.*` read could only ever see
/// nothing, and creating profiles contradicts it.
fn review_high_throughput(
    definition: &CampaignDefinition,
    analysed: &[(String, Analysis)],
    problems: &mut Vec<ReviewProblem>,
) {
    for (part, analysis) in analysed {
        let mut paths: Vec<&str> =
            analysis.variables.iter().filter(|v| v.root() == "profile").map(|v| v.path.as_str()).collect();
        paths.dedup();
        if paths.is_empty() {
            continue;
        }
        let verb = if paths.len() == 1 { "is" } else { "are" };
        let paths: Vec<String> = paths.into_iter().map(|path| format!("`{path}`")).collect();
        problems.push(ReviewProblem::new(
            "high-throughput-profile",
            part_pointer(part),
            format!(
                "a high-throughput campaign has no profiles: {} {verb} never there; use context.* \
                 instead and pass the values in each recipient's `context`",
                paths.join(", ")
            ),
        ));
    }
    if definition.create_new_profiles {
        problems.push(ReviewProblem::new(
            "high-throughput-create-profiles",
            "/createNewProfiles",
            "a high-throughput campaign never looks up or creates profiles: set `createNewProfiles` to \
             false, or `highThroughput` to false",
        ));
    }
}

/// The problems of `content` as templates (syntax, what they may not do, the render budgets
/// they would exceed whatever the input, a subject on more than one line, script URLs), and the
/// compiled content when it compiles.
pub fn review_content(content: &Content) -> (Option<CompiledContent>, Vec<ReviewProblem>) {
    let reviewed = review_templates(content);
    (reviewed.compiled, reviewed.problems)
}

/// What [`review_templates`] found: the compiled content when it compiles, the problems, and
/// the analysis of every part that compiles (also when another part does not).
struct ReviewedContent {
    compiled: Option<CompiledContent>,
    problems: Vec<ReviewProblem>,
    analysed: Vec<(String, Analysis)>,
}

fn review_templates(content: &Content) -> ReviewedContent {
    let mut problems = Vec::new();
    if content.subject.as_deref().is_some_and(content::has_control_character) {
        problems.push(ReviewProblem::new(
            "control-character",
            "/content/subject",
            "line breaks and other control characters are not allowed in a subject",
        ));
    }
    for line in content.html.as_deref().map(content::script_urls).unwrap_or_default() {
        problems.push(ReviewProblem {
            code: "javascript-url",
            pointer: "/content/html".into(),
            detail: "a link or source with a `javascript:` URL runs script in the reader's mail client".into(),
            line: Some(line),
        });
    }
    let (compiled, analysed) = match CompiledContent::compile(content) {
        Ok(compiled) => {
            let analysed = compiled.analyse();
            (Some(compiled), analysed)
        }
        Err(errors) => {
            let failed: Vec<String> = errors.iter().map(|error| error.part.clone()).collect();
            for error in errors {
                problems.push(ReviewProblem {
                    code: error.code,
                    pointer: part_pointer(&error.part),
                    detail: error.message,
                    line: error.line,
                });
            }
            // One part that does not compile must not hide the others' problems: review the rest.
            let rest = without_parts(content, &failed);
            (None, CompiledContent::compile(&rest).map(|rest| rest.analyse()).unwrap_or_default())
        }
    };
    for (part, analysis) in &analysed {
        for forbidden in analysis.forbidden.iter().cloned() {
            let (code, detail) = match forbidden {
                Forbidden::UnknownVariable(name) => (
                    "unknown-variable",
                    format!("`{name}` is not available; templates can use only `profile` and `context`"),
                ),
                Forbidden::ContextSystem(path) => ("context-system", format!("`{path}`: `context.system` is reserved")),
                Forbidden::Function(name) => {
                    ("forbidden-function", format!("the function `{name}` is not allowed in templates"))
                }
                Forbidden::Tag(tag) => {
                    ("forbidden-tag", format!("`{tag}` is not allowed: a campaign part is a single template"))
                }
                // Compiling refuses these already; kept so that every kind has its code.
                Forbidden::Budget(why) => ("render-budget", crate::template::over_budget(&why)),
            };
            problems.push(ReviewProblem::new(code, part_pointer(part), detail));
        }
    }
    ReviewedContent { compiled, problems, analysed }
}

/// `content` without the parts named in `parts` (`subject`, `html`, …, `data.KEY`).
fn without_parts(content: &Content, parts: &[String]) -> Content {
    let mut rest = content.clone();
    for part in parts {
        match part.as_str() {
            "subject" => rest.subject = None,
            "html" => rest.html = None,
            "text" => rest.text = None,
            "title" => rest.title = None,
            "body" => rest.body = None,
            other => {
                if let (Some(key), Some(data)) = (other.strip_prefix("data."), rest.data.as_mut()) {
                    data.remove(key);
                }
            }
        }
    }
    rest
}

/// `data.deepLink` → `/content/data/deepLink`; `html` → `/content/html`.
fn part_pointer(part: &str) -> String {
    format!("/content/{}", part.replacen('.', "/", 1))
}

#[cfg(test)]
mod tests;
