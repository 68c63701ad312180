//! Campaign content as tera templates, compiled once per version and rendered per message.
//!
//! Hardening, because content authors and API callers are not fully trusted:
//! - HTML parts are auto-escaped; subject, text, SMS and push parts are not (they are not HTML).
//! - `get_env` is replaced by a function that always fails, so content cannot read the
//!   process environment; the review also refuses any function but `range` and `throw`.
//! - `range` is capped, template sources are size-limited when saved, and each rendered part is
//!   cut off at [`MAX_RENDERED_PART_BYTES`].
//! - Only `profile` and `context` are in scope.

pub mod analysis;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::{Value, json};
use tera::{Context, Tera};

use crate::campaign::Content;
pub use analysis::{Analysis, Forbidden, VariableUse};

/// Largest output of one rendered part; beyond it rendering fails instead of growing.
pub const MAX_RENDERED_PART_BYTES: usize = 1024 * 1024;
/// Largest `range` a template may ask for, which bounds loop-driven render time.
pub const MAX_RANGE_LENGTH: usize = 10_000;

/// A template that did not compile, or failed to render.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TemplateError {
    /// The content part: `subject`, `html`, `text`, `title`, `body` or `data.KEY`.
    pub part: String,
    /// 1-based line in that part, when tera reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

/// The content of one campaign version, parsed and ready to render.
#[derive(Debug)]
pub struct CompiledContent {
    tera: Tera,
    /// (part name, tera template name) in the content's order.
    parts: Vec<(String, String)>,
}

/// The output of rendering: part name → rendered text.
pub type Rendered = BTreeMap<String, String>;

impl CompiledContent {
    /// Parses every part of `content`, reporting every part that fails, not just the first.
    pub fn compile(content: &Content) -> Result<Self, Vec<TemplateError>> {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![".html"]);
        tera.register_function("get_env", forbidden_get_env);
        tera.register_function("range", bounded_range);
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        for (part, source) in content_parts(content) {
            let template_name = template_name(&part);
            match tera.add_raw_template(&template_name, source) {
                Ok(()) => parts.push((part, template_name)),
                Err(error) => {
                    errors.push(TemplateError { line: error_line(&error), message: error_chain(&error), part })
                }
            }
        }
        if errors.is_empty() { Ok(Self { tera, parts }) } else { Err(errors) }
    }

    /// What each part reads and what it must not do, keyed by part name.
    pub fn analyse(&self) -> Vec<(String, Analysis)> {
        self.parts
            .iter()
            .filter_map(|(part, name)| {
                let template = self.tera.get_template(name).ok()?;
                Some((part.clone(), analysis::analyse(&template.ast)))
            })
            .collect()
    }

    /// Renders every part with `profile` and `context` as the only variables in scope.
    /// Takes the values by value: they become the template scope without another copy.
    pub fn render(&self, profile: Value, context: Value) -> Result<Rendered, TemplateError> {
        let scope = Context::from_value(json!({ "profile": profile, "context": context }))
            .map_err(|error| TemplateError { part: String::new(), line: None, message: error_chain(&error) })?;
        let mut rendered = Rendered::new();
        for (part, name) in &self.parts {
            let mut output = LimitedBuffer::default();
            // Defence in depth: tera has `unreachable!` paths in its evaluator, and a template must
            // never be able to take a request or a worker down with it.
            let result = catch_unwind(AssertUnwindSafe(|| self.tera.render_to(name, &scope, &mut output)));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error_chain(&error)),
                Err(_) => Some("the template uses an expression tera cannot evaluate".to_string()),
            };
            if let Some(message) = failure {
                return Err(TemplateError { part: part.clone(), line: None, message });
            }
            let text = String::from_utf8(output.bytes).map_err(|_| TemplateError {
                part: part.clone(),
                line: None,
                message: "rendered output is not valid UTF-8".into(),
            })?;
            rendered.insert(part.clone(), text);
        }
        Ok(rendered)
    }
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
    Ok(Value::Array((start..end).step_by(step as usize).map(Value::from).collect()))
}

/// A `Write` that refuses to grow past [`MAX_RENDERED_PART_BYTES`].
#[derive(Default)]
struct LimitedBuffer {
    bytes: Vec<u8>,
}

impl Write for LimitedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_PART_BYTES {
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
mod tests;
