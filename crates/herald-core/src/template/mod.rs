//! Campaign content as tera templates, compiled once per version and rendered per message.
//!
//! A sandbox, because content authors and API callers are not fully trusted, and one template
//! must never take a process down or starve the others:
//! - Before tera parses a part, [`limits::prescan`] refuses nesting and operator chains deep
//!   enough to overflow the stack of tera's recursive parser and renderer, and the parser's work
//!   is capped ([`PARSE_CALL_LIMIT`]): tera's grammar backtracks exponentially on nested calls.
//! - Macros, `include`, `extends`, `import` and `block` do not compile: tera renders them
//!   recursively (a self-calling macro aborts the process with a stack overflow). Nor does what
//!   [`cost`] proves is over the render budget whatever the input (constant loops of a billion
//!   iterations): no render of it could succeed.
//! - Every render has budgets ([`sandbox`]): loop iterations and evaluation steps in total,
//!   the size of every value it builds and of all of them together, and a deadline the render
//!   checks itself. The templates are instrumented ([`instrument`]) to charge them.
//! - HTML parts are auto-escaped (string concatenations with `~` too, which tera alone leaves
//!   raw); subject, text, SMS and push parts are not (they are not HTML).
//! - `get_env` is replaced by a function that always fails, so content cannot read the
//!   process environment; the review also refuses any function but `range` and `throw`.
//! - Only `profile` and `context` are in scope; each rendered part is cut off at
//!   [`MAX_RENDERED_PART_BYTES`].
//!
//! The review ([`crate::review`]) refuses everything above that it can see in the source,
//! including budgets it can prove are exceeded ([`cost`]).

pub mod analysis;
mod cost;
mod instrument;
pub mod limits;
pub mod sandbox;
mod turns;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tera::{Context, Template, Tera};

use crate::campaign::Content;
pub use analysis::{Analysis, Forbidden, VariableUse};
pub use sandbox::{
    MAX_LOOP_ITERATIONS, MAX_RENDER_BYTES, MAX_RENDER_STEPS, MAX_VALUE_BYTES, MAX_VALUE_DEPTH, RENDER_TIME_BUDGET,
};
pub use turns::{RenderTurn, RenderTurns};

/// Largest output of one rendered part; beyond it rendering fails instead of growing.
pub const MAX_RENDERED_PART_BYTES: usize = 1024 * 1024;
/// Largest `range` a template may ask for, which bounds loop-driven render time.
pub const MAX_RANGE_LENGTH: usize = 10_000;
/// Grammar rule calls tera's parser (pest) may make for one part. A dense 256 KiB template of
/// tiny tags takes about 20 million; nested calls in a hundred bytes could take billions.
pub const PARSE_CALL_LIMIT: usize = 40_000_000;

/// A template that did not compile, or failed to render.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TemplateError {
    /// The content part: `subject`, `html`, `text`, `title`, `body` or `data.KEY`.
    pub part: String,
    /// 1-based line in that part, when tera reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
    /// What kind of failure: `template-syntax`, `template-too-deep`, `template-too-complex`,
    /// `forbidden-tag` or `unknown-filter` when compiling (the review's problem codes); `render-budget` or
    /// `render-error` when rendering.
    pub code: &'static str,
}

impl TemplateError {
    fn new(part: impl Into<String>, line: Option<usize>, message: impl Into<String>, code: &'static str) -> Self {
        Self { part: part.into(), line, message: message.into(), code }
    }
}

/// The content of one campaign version, parsed, checked, instrumented and ready to render.
#[derive(Debug)]
pub struct CompiledContent {
    tera: Tera,
    /// (part name, tera template name, analysis of the part as written) in the content's order.
    parts: Vec<(String, String, Analysis)>,
}

/// The output of rendering: part name → rendered text.
pub type Rendered = BTreeMap<String, String>;

impl CompiledContent {
    /// Parses and checks every part of `content`, reporting every part that fails, not just
    /// the first. Refuses what cannot be rendered safely (see the module documentation).
    pub fn compile(content: &Content) -> Result<Self, Vec<TemplateError>> {
        static PARSER_LIMIT: std::sync::Once = std::sync::Once::new();
        // Process-wide, and read by each parse as it starts; tera is the only pest grammar here.
        PARSER_LIMIT.call_once(|| pest::set_call_limit(std::num::NonZeroUsize::new(PARSE_CALL_LIMIT)));
        let mut tera = Tera::default();
        tera.autoescape_on(vec![".html"]);
        tera.set_escape_fn(escape_html);
        tera.register_function("get_env", forbidden_get_env);
        tera.register_function("range", bounded_range);
        sandbox::install(&mut tera);
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        for (part, source) in content_parts(content) {
            if let Err(refusal) = limits::prescan(source) {
                errors.push(TemplateError::new(part, Some(refusal.line), refusal.message, refusal.code));
                continue;
            }
            let template_name = template_name(&part);
            let mut template = match Template::new(&template_name, None, source) {
                Ok(template) => template,
                Err(error) => {
                    errors.push(parse_error(part, &error));
                    continue;
                }
            };
            let analysis = analysis::analyse(&template.ast);
            // tera finds out only when it renders: a campaign with an unknown filter would go live
            // and fail every send.
            // (`default` and `safe` are tera's own syntax, not registered filters.)
            let unknown: Vec<&String> = analysis
                .filters
                .iter()
                .filter(|f| !matches!(f.as_str(), "default" | "safe") && !tera.filters.contains_key(*f))
                .collect();
            if !unknown.is_empty() {
                for filter in unknown {
                    errors.push(TemplateError::new(
                        &part,
                        None,
                        format!("there is no filter `{filter}`"),
                        "unknown-filter",
                    ));
                }
                continue;
            }
            // What tera would recurse on, and what would go over the budget whatever the input:
            // no render of it can succeed, so none starts.
            let mut refused = false;
            for forbidden in &analysis.forbidden {
                let (message, code) = match forbidden {
                    Forbidden::Tag(tag) => (forbidden_tag(tag), "forbidden-tag"),
                    Forbidden::Budget(why) => (over_budget(why), "render-budget"),
                    _ => continue,
                };
                refused = true;
                errors.push(TemplateError::new(&part, None, message, code));
            }
            if refused {
                continue;
            }
            instrument::instrument(&mut template.ast);
            // Inserted directly rather than with `add_raw_template`, which would parse the
            // source again: the renderer must see the instrumented tree. Without `extends`
            // there is no inheritance chain to build.
            tera.templates.insert(template_name.clone(), template);
            parts.push((part, template_name, analysis));
        }
        if errors.is_empty() { Ok(Self { tera, parts }) } else { Err(errors) }
    }

    /// What each part reads and what it must not do, keyed by part name.
    pub fn analyse(&self) -> Vec<(String, Analysis)> {
        self.parts.iter().map(|(part, _, analysis)| (part.clone(), analysis.clone())).collect()
    }

    /// Renders every part with `profile` and `context` as the only variables in scope, within
    /// [`RENDER_TIME_BUDGET`] and the other budgets. Takes the values by value: they become the
    /// template scope without another copy. Blocks the thread: callers on an async runtime run it
    /// on a blocking thread.
    pub fn render(&self, profile: Value, context: Value) -> Result<Rendered, TemplateError> {
        self.render_within(profile, context, RENDER_TIME_BUDGET)
    }

    /// As [`CompiledContent::render`], with `time` as the wall-clock budget.
    pub fn render_within(&self, profile: Value, context: Value, time: Duration) -> Result<Rendered, TemplateError> {
        let (result, exceeded) = sandbox::metered(Instant::now() + time, || self.render_parts(profile, context));
        result.map_err(|mut error| {
            if let Some(reason) = exceeded {
                error.message = reason;
                error.code = "render-budget";
            }
            error
        })
    }

    fn render_parts(&self, profile: Value, context: Value) -> Result<Rendered, TemplateError> {
        let scope = Context::from_value(json!({ "profile": profile, "context": context }))
            .map_err(|error| TemplateError::new("", None, error_chain(&error), "render-error"))?;
        let mut rendered = Rendered::new();
        for (part, name, _) in &self.parts {
            let mut output = LimitedBuffer::default();
            // Defence in depth: tera has `unreachable!` paths in its evaluator, and a template must
            // never be able to take a request or a worker down with it.
            let result = catch_unwind(AssertUnwindSafe(|| self.tera.render_to(name, &scope, &mut output)));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(_)) if output.overflowed => Some((
                    format!(
                        "the render went over its budget: the rendered part exceeds {MAX_RENDERED_PART_BYTES} bytes"
                    ),
                    "render-budget",
                )),
                Ok(Err(error)) => Some((error_chain(&error), "render-error")),
                Err(_) => Some(("the template uses an expression tera cannot evaluate".to_string(), "render-error")),
            };
            if let Some((message, code)) = failure {
                return Err(TemplateError::new(part, None, message, code));
            }
            let mut text = String::from_utf8(output.bytes)
                .map_err(|_| TemplateError::new(part, None, "rendered output is not valid UTF-8", "render-error"))?;
            // Caller data may hold line breaks; in a header they would start new headers. Here,
            // so that a preview shows the subject exactly as it is sent.
            if part == "subject"
                && let std::borrow::Cow::Owned(line) = single_line(&text)
            {
                text = line;
            }
            rendered.insert(part.clone(), text);
        }
        Ok(rendered)
    }
}

/// HTML escaping of what HTML needs escaped (`& < > " '`), and nothing more. tera's default also
/// writes `/` as `&#x2F;`: legal, but every link becomes `https:&#x2F;&#x2F;…`, which spam filters
/// score as an obfuscated URL and which makes the mail's source unreadable.
fn escape_html(input: &str) -> String {
    let mut output = String::with_capacity(input.len() + input.len() / 8);
    for c in input.chars() {
        match c {
            '&' => output.push_str("&amp;"),
            '<' => output.push_str("&lt;"),
            '>' => output.push_str("&gt;"),
            '"' => output.push_str("&quot;"),
            '\'' => output.push_str("&#x27;"),
            _ => output.push(c),
        }
    }
    output
}

fn forbidden_tag(tag: &str) -> String {
    format!("`{tag}` is not allowed: a campaign part is a single template")
}

/// The review reports the same words.
pub(crate) fn over_budget(why: &str) -> String {
    format!("{why}; a render may run {MAX_LOOP_ITERATIONS} loop iterations and build values of {MAX_VALUE_BYTES} bytes")
}

/// A parse error; the parser's call limit is reported as complexity, not as a syntax error.
fn parse_error(part: String, error: &tera::Error) -> TemplateError {
    let message = error_chain(error);
    if message.contains("call limit reached") || message.contains("stack limit reached") {
        return TemplateError::new(
            part,
            None,
            "the template is too complex to parse; simplify its expressions",
            "template-too-complex",
        );
    }
    TemplateError::new(part, error_line(error), message, "template-syntax")
}

/// Replaces every run of control characters (CR, LF, tab, the other C0 and C1 controls, DEL,
/// and the Unicode line and paragraph separators) with one space: a rendered value bound for an
/// email header (the subject) must stay on one line, or it could add headers of its own.
pub fn single_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut line = String::with_capacity(text.len());
    let mut in_run = false;
    for c in text.chars() {
        if is_control(c) {
            if !in_run {
                line.push(' ');
            }
            in_run = true;
        } else {
            line.push(c);
            in_run = false;
        }
    }
    std::borrow::Cow::Owned(line.trim().to_string())
}

/// A character that has no place in a one-line header field: controls, Unicode line breaks, and
/// the invisible direction and width marks that make a sender name display as something else
/// ("Bank\u{202E}moc.evil" shows reversed).
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn content_parts(content: &Content) -> Vec<(String, &str)> {
    let mut parts: Vec<(String, &str)> = [
        ("subject", &content.subject),
        ("html", &content.html),
        ("text", &content.text),
        ("title", &content.title),
        ("body", &content.body),
    ]
    .into_iter()
    .filter_map(|(name, source)| source.as_deref().map(|source| (name.to_string(), source)))
    .collect();
    for (key, source) in content.data.iter().flatten() {
        parts.push((format!("data.{key}"), source.as_str()));
    }
    parts
}

/// Only the `html` part gets a name ending in `.html`, which is what turns tera's escaping on.
fn template_name(part: &str) -> String {
    if part == "html" { "html.html".to_string() } else { format!("{part}.txt") }
}

/// tera nests the useful message (with the line) in its error's source chain.
fn error_chain(error: &tera::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// Finds tera's (pest's) ` --> LINE:COLUMN` marker.
fn error_line(error: &tera::Error) -> Option<usize> {
    let message = error_chain(error);
    let after = &message[message.find("--> ")? + 4..];
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn forbidden_get_env(_: &HashMap<String, Value>) -> tera::Result<Value> {
    Err(tera::Error::msg("`get_env` is disabled: templates cannot read the environment"))
}

/// tera's `range`, refusing long ranges and charging the render for the array it builds.
fn bounded_range(args: &HashMap<String, Value>) -> tera::Result<Value> {
    let number = |name: &str, default: Option<u64>| -> tera::Result<u64> {
        match args.get(name) {
            Some(value) => value
                .as_u64()
                .ok_or_else(|| tera::Error::msg(format!("`range` argument `{name}` must be a non-negative integer"))),
            None => default.ok_or_else(|| tera::Error::msg(format!("`range` needs an `{name}` argument"))),
        }
    };
    let start = number("start", Some(0))?;
    let end = number("end", None)?;
    let step = number("step_by", Some(1))?.max(1);
    let length = end.saturating_sub(start).div_ceil(step);
    if length > MAX_RANGE_LENGTH as u64 {
        return Err(tera::Error::msg(format!("`range` is limited to {MAX_RANGE_LENGTH} items")));
    }
    let range = Value::Array((start..end).step_by(step as usize).map(Value::from).collect());
    sandbox::admit(&range)?;
    Ok(range)
}

/// A `Write` that refuses to grow past [`MAX_RENDERED_PART_BYTES`].
#[derive(Default)]
struct LimitedBuffer {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl Write for LimitedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_PART_BYTES {
            self.overflowed = true;
            return Err(io::Error::other(format!("rendered output exceeds {MAX_RENDERED_PART_BYTES} bytes")));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod tests;
