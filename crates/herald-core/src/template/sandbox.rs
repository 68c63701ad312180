//! The budgets of one render, and the filters and functions that enforce them.
//!
//! tera has no hook for loops or for the values it builds, so the budget is kept in a
//! thread-local [`Meter`] for the length of one [`super::CompiledContent::render`], and charged
//! from code tera does call:
//! - a check node that [`super::instrument`] puts at the top of every body (the template, each
//!   loop iteration, each `if` branch) counts steps and iterations and looks at the clock, as do
//!   the filters below: a render stops itself at its deadline, which matters because a blocking
//!   thread cannot be cancelled from outside;
//! - every builtin filter is replaced by a bounded version (`register_filter` overrides a builtin
//!   of the same name): filters that can multiply a value's size (`replace`, `join`, `indent`,
//!   `split`) compute the size of their result before building it, and every result is measured;
//! - the `within_budget` filter measures the values other expressions build (literals, arrays,
//!   concatenations, copies of variables).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tera::{Filter, Tera};

/// Loop iterations in one render, all loops together.
pub const MAX_LOOP_ITERATIONS: u64 = 100_000;
/// Evaluation steps in one render: a tag counts one step per expression it evaluates.
pub const MAX_RENDER_STEPS: u64 = 1_000_000;
/// Largest value a render may build: bigger than a rendered part may be, it is of no use.
pub const MAX_VALUE_BYTES: u64 = super::MAX_RENDERED_PART_BYTES as u64;
/// All the values one render builds, together: what bounds its memory and copying.
pub const MAX_RENDER_BYTES: u64 = 16 * 1024 * 1024;
/// Nesting of a value; deeper values are refused (serde_json parses request bodies to 128 too).
pub const MAX_VALUE_DEPTH: usize = 128;
/// Wall-clock time of one render, by default.
pub const RENDER_TIME_BUDGET: Duration = Duration::from_secs(1);
/// Bytes a value is counted for beyond its strings: about the size of a `serde_json::Value`.
const NODE_BYTES: u64 = 32;

/// The filter of the check nodes, and the measuring filter.
pub(crate) const CHECK_FILTER: &str = "render_budget";
pub(crate) const MEASURE_FILTER: &str = "within_budget";
/// The function a concatenation's variables are read through, measured one by one.
pub(crate) const MEASURE_FUNCTION: &str = "measured";

/// What one render has used so far.
struct Meter {
    deadline: Instant,
    iterations: u64,
    steps: u64,
    bytes: u64,
    /// Why the render went over its budget, once it has.
    exceeded: Option<String>,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

/// Runs `render` with a fresh budget ending at `deadline`; returns its result and, when it went
/// over budget, why.
pub(crate) fn metered<R>(deadline: Instant, render: impl FnOnce() -> R) -> (R, Option<String>) {
    struct Reset;
    impl Drop for Reset {
        // Also on unwinding: the next render on this thread must start with a fresh meter.
        fn drop(&mut self) {
            METER.with(|meter| meter.borrow_mut().take());
        }
    }
    METER.with(|meter| {
        *meter.borrow_mut() = Some(Meter { deadline, iterations: 0, steps: 0, bytes: 0, exceeded: None });
    });
    let reset = Reset;
    let result = render();
    let exceeded = METER.with(|meter| meter.borrow_mut().as_mut().and_then(|meter| meter.exceeded.take()));
    drop(reset);
    (result, exceeded)
}

/// Charges the meter; an error once any budget is spent. Without a meter (tera used directly,
/// which Herald never does) nothing is counted.
fn charge(iterations: u64, steps: u64, bytes: u64) -> tera::Result<()> {
    METER.with(|meter| {
        let mut meter = meter.borrow_mut();
        let Some(meter) = meter.as_mut() else { return Ok(()) };
        if let Some(reason) = &meter.exceeded {
            return Err(tera::Error::msg(reason.clone()));
        }
        meter.iterations += iterations;
        meter.steps += steps;
        meter.bytes += bytes;
        let reason = if meter.iterations > MAX_LOOP_ITERATIONS {
            Some(format!("more than {MAX_LOOP_ITERATIONS} loop iterations"))
        } else if meter.steps > MAX_RENDER_STEPS {
            Some(format!("more than {MAX_RENDER_STEPS} evaluation steps"))
        } else if meter.bytes > MAX_RENDER_BYTES {
            Some(format!("more than {MAX_RENDER_BYTES} bytes of values built"))
        } else if Instant::now() >= meter.deadline {
            Some("out of time".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => {
                let reason = format!("the render went over its budget: {reason}");
                meter.exceeded = Some(reason.clone());
                Err(tera::Error::msg(reason))
            }
            None => Ok(()),
        }
    })
}

/// Records a value that is too big or too deep as the reason the render stopped.
fn refuse(reason: String) -> tera::Error {
    let reason = format!("the render went over its budget: {reason}");
    METER.with(|meter| {
        if let Some(meter) = meter.borrow_mut().as_mut() {
            meter.exceeded.get_or_insert_with(|| reason.clone());
        }
    });
    tera::Error::msg(reason)
}

/// The size [`MAX_VALUE_BYTES`] counts: string bytes plus [`NODE_BYTES`] a node. Stops counting
/// past the limit, so measuring costs at most as much as the limit.
pub(crate) fn measure(value: &Value) -> tera::Result<u64> {
    fn walk(value: &Value, depth: usize, total: &mut u64) -> Result<(), String> {
        if depth > MAX_VALUE_DEPTH {
            return Err(format!("a value nested more than {MAX_VALUE_DEPTH} deep"));
        }
        *total += NODE_BYTES;
        match value {
            Value::String(text) => *total += text.len() as u64,
            Value::Array(items) => {
                for item in items {
                    walk(item, depth + 1, total)?;
                    if *total > MAX_VALUE_BYTES {
                        break;
                    }
                }
            }
            Value::Object(members) => {
                for (key, member) in members {
                    *total += key.len() as u64;
                    walk(member, depth + 1, total)?;
                    if *total > MAX_VALUE_BYTES {
                        break;
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }
    let mut total = 0;
    walk(value, 0, &mut total).map_err(refuse)?;
    Ok(total)
}

/// Measures a value a render built: refused when too big, else charged to the render's total.
pub(crate) fn admit(value: &Value) -> tera::Result<()> {
    let size = measure(value)?;
    if size > MAX_VALUE_BYTES {
        return Err(too_big(size));
    }
    charge(0, 0, size)
}

fn too_big(size: u64) -> tera::Error {
    refuse(format!("a value of {size} bytes or more; the limit is {MAX_VALUE_BYTES}"))
}

/// Installs the budget's filters and functions on `tera`, over the builtins of the same name.
pub(crate) fn install(tera: &mut Tera) {
    let builtins: Vec<(String, Arc<dyn Filter>)> =
        tera.filters.iter().map(|(name, filter)| (name.clone(), Arc::clone(filter))).collect();
    for (name, inner) in builtins {
        tera.register_filter(&name.clone(), Bounded { name, inner });
    }
    tera.register_filter(MEASURE_FILTER, |value: &Value, _: &HashMap<String, Value>| {
        charge(0, 0, 0)?;
        admit(value)?;
        Ok(value.clone())
    });
    tera.register_function(MEASURE_FUNCTION, |args: &HashMap<String, Value>| {
        let value = args.get("value").cloned().unwrap_or(Value::Null);
        admit(&value)?;
        Ok(value)
    });
    tera.register_filter(CHECK_FILTER, Check);
}

/// What a check node charges, encoded in the integer it filters: steps in bits 0-30, text
/// bytes in bits 31-61, an iteration in bit 62.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Charge {
    pub steps: u64,
    pub bytes: u64,
    pub iteration: bool,
}

const FIELD: u64 = (1 << 31) - 1;

impl Charge {
    pub(crate) fn encode(self) -> i64 {
        let encoded = self.steps.min(FIELD) | (self.bytes.min(FIELD) << 31) | (u64::from(self.iteration) << 62);
        i64::try_from(encoded).unwrap_or(i64::MAX)
    }

    fn decode(encoded: u64) -> Self {
        Self { steps: encoded & FIELD, bytes: (encoded >> 31) & FIELD, iteration: encoded >> 62 & 1 == 1 }
    }
}

/// The check nodes' filter. It renders nothing.
struct Check;

impl Filter for Check {
    fn filter(&self, value: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
        let charged = Charge::decode(value.as_u64().unwrap_or(0));
        charge(u64::from(charged.iteration), charged.steps, charged.bytes)?;
        Ok(Value::String(String::new()))
    }

    fn is_safe(&self) -> bool {
        true
    }
}

/// A builtin filter with its result bounded.
struct Bounded {
    name: String,
    inner: Arc<dyn Filter>,
}

impl Filter for Bounded {
    fn filter(&self, value: &Value, args: &HashMap<String, Value>) -> tera::Result<Value> {
        charge(0, 1, 0)?;
        if let Some(size) = predicted_size(&self.name, value, args)?
            && size > MAX_VALUE_BYTES
        {
            return Err(too_big(size));
        }
        let result = self.inner.filter(value, args)?;
        admit(&result)?;
        Ok(result)
    }

    fn is_safe(&self) -> bool {
        self.inner.is_safe()
    }
}

/// The size of the result of the filters whose result can be many times their input, computed
/// without building it. The others grow by a small factor at most (escaping: 6), so measuring
/// their result afterwards is enough.
fn predicted_size(name: &str, value: &Value, args: &HashMap<String, Value>) -> tera::Result<Option<u64>> {
    let text = |name: &str| args.get(name).and_then(Value::as_str);
    // `join` and `split` read `\n` and `\t` in their argument as escapes, as tera does.
    let unescape = |text: &str| text.replace("\\n", "\n").replace("\\t", "\t");
    let size = match (name, value) {
        ("replace", Value::String(input)) => {
            let (Some(from), Some(to)) = (text("from"), text("to")) else { return Ok(None) };
            let matches = count_matches(input, from);
            let kept = input.len() as u64 - matches * from.len() as u64;
            kept + matches * to.len() as u64 + NODE_BYTES
        }
        ("split", Value::String(input)) => {
            let Some(pattern) = text("pat") else { return Ok(None) };
            let pieces = count_matches(input, &unescape(pattern)) + 1;
            input.len() as u64 + pieces * NODE_BYTES
        }
        ("indent", Value::String(input)) => {
            let prefix = text("prefix").map_or(4, str::len) as u64;
            let lines = input.bytes().filter(|&b| b == b'\n').count() as u64 + 1;
            input.len() as u64 + lines * (prefix + 1) + NODE_BYTES
        }
        ("join", Value::Array(items)) => {
            let separator = text("sep").map_or(0, |sep| unescape(sep).len()) as u64;
            let mut total = separator * items.len().saturating_sub(1) as u64;
            for item in items {
                total += measure(item)?;
                if total > MAX_VALUE_BYTES {
                    break;
                }
            }
            total
        }
        _ => return Ok(None),
    };
    Ok(Some(size))
}

/// Occurrences `str::replace` and `str::split` find; an empty pattern matches between every
/// two characters and at both ends.
fn count_matches(haystack: &str, pattern: &str) -> u64 {
    if pattern.is_empty() { haystack.chars().count() as u64 + 1 } else { haystack.matches(pattern).count() as u64 }
}
