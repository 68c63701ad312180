//! What the review can prove about a template's render budget before it runs: loops over
//! constant ranges whose iterations multiply past [`MAX_LOOP_ITERATIONS`], ranges longer than
//! [`MAX_RANGE_LENGTH`], and constant strings that `replace` or `~` would grow past
//! [`MAX_VALUE_BYTES`] (a few hundred bytes of chained `replace` can ask for gigabytes).
//!
//! Anything that depends on `profile` or `context` is unknown here and left to the budgets at
//! render time. Loops in every `if` branch are counted, as if each branch ran: a constant loop
//! that would blow the budget whenever its branch runs is refused now rather than later.

use std::collections::{BTreeSet, HashMap};

use tera::ast::{Expr, ExprVal, Node};

use super::MAX_RANGE_LENGTH;
use super::sandbox::{MAX_LOOP_ITERATIONS, MAX_VALUE_BYTES};

/// Bytes of constant strings the analysis may build for one template: it must stay cheap.
const MAX_FOLDED_BYTES: u64 = 16 * 1024 * 1024;

/// The reasons `nodes` would go over its render budget whatever the input.
pub(crate) fn over_budget(nodes: &[Node]) -> BTreeSet<String> {
    let mut cost = Cost { iterations: 0, constants: HashMap::new(), folded: 0, problems: BTreeSet::new() };
    cost.nodes(nodes, 1);
    if cost.iterations > u128::from(MAX_LOOP_ITERATIONS) {
        cost.problems.insert(format!(
            "loops over constant ranges run {} iterations; a render may run {MAX_LOOP_ITERATIONS}",
            cost.iterations
        ));
    }
    cost.problems
}

struct Cost {
    /// Iterations of the loops whose bounds are known, nesting multiplied.
    iterations: u128,
    /// Variables `set` to a constant string, in the current scope.
    constants: HashMap<String, String>,
    folded: u64,
    problems: BTreeSet<String>,
}

impl Cost {
    /// `runs`: how many times these nodes run, as far as known (0: unknown).
    fn nodes(&mut self, nodes: &[Node], runs: u128) {
        for node in nodes {
            match node {
                Node::VariableBlock(_, expr) => {
                    self.fold(expr);
                }
                Node::Set(_, set) => match self.fold(&set.value) {
                    Some(value) => {
                        self.constants.insert(set.key.clone(), value);
                    }
                    None => {
                        self.constants.remove(&set.key);
                    }
                },
                Node::Forloop(_, forloop, _) => {
                    self.fold(&forloop.container);
                    let length = self.length(&forloop.container);
                    let runs = runs.saturating_mul(length.unwrap_or(0));
                    self.iterations = self.iterations.saturating_add(runs);
                    // A loop's `set`s are its own (tera scopes them to the loop), and its
                    // variables hide constants of the same name.
                    let outside = self.constants.clone();
                    self.constants.remove(&forloop.value);
                    if let Some(key) = &forloop.key {
                        self.constants.remove(key);
                    }
                    self.nodes(&forloop.body, runs);
                    self.constants = outside;
                    self.forget_globals(&forloop.body);
                }
                Node::If(branches, _) => {
                    let before = self.constants.clone();
                    let bodies = branches
                        .conditions
                        .iter()
                        .map(|(_, _, body)| body)
                        .chain(branches.otherwise.iter().map(|(_, b)| b));
                    for (_, condition, _) in &branches.conditions {
                        self.fold(condition);
                    }
                    let mut assigned = Vec::new();
                    for body in bodies {
                        self.constants = before.clone();
                        self.nodes(body, runs);
                        assigned_in(body, &mut assigned);
                    }
                    // After the `if`, a variable a branch set is no longer known.
                    self.constants = before;
                    for name in assigned {
                        self.constants.remove(&name);
                    }
                }
                Node::FilterSection(_, section, _) => self.nodes(&section.body, runs),
                _ => {}
            }
        }
    }

    fn forget_globals(&mut self, nodes: &[Node]) {
        let mut assigned = Vec::new();
        assigned_in(nodes, &mut assigned);
        for name in assigned {
            self.constants.remove(&name);
        }
    }

    /// Iterations of a loop over `container`, when they are constant.
    fn length(&mut self, container: &Expr) -> Option<u128> {
        if !container.filters.is_empty() {
            return None;
        }
        match &container.val {
            ExprVal::Array(items) => Some(items.len() as u128),
            ExprVal::FunctionCall(call) if call.name == "range" => {
                let number = |name: &str, default: Option<i64>| match call.args.get(name).map(|arg| &arg.val) {
                    Some(ExprVal::Int(n)) if call.args[name].filters.is_empty() => Some(*n),
                    Some(_) => None,
                    None => default,
                };
                let (start, end, step) = (number("start", Some(0))?, number("end", None)?, number("step_by", Some(1))?);
                let length =
                    u128::try_from(end.saturating_sub(start)).ok()?.div_ceil(u128::try_from(step.max(1)).ok()?);
                if length > MAX_RANGE_LENGTH as u128 {
                    self.problems.insert(format!("`range` of {length} items; the limit is {MAX_RANGE_LENGTH}"));
                }
                Some(length)
            }
            _ => None,
        }
    }

    /// The constant string `expr` evaluates to, if it is one; records values over the limit.
    /// Every argument and operand is folded too, so a bomb anywhere in the expression is found.
    fn fold(&mut self, expr: &Expr) -> Option<String> {
        let mut value = match &expr.val {
            ExprVal::String(text) => Some(text.clone()),
            ExprVal::Ident(name) => self.constants.get(name).cloned(),
            ExprVal::StringConcat(concat) => {
                let mut parts = Vec::new();
                for part in &concat.values {
                    parts.push(match part {
                        ExprVal::String(text) => Some(text.clone()),
                        ExprVal::Int(n) => Some(n.to_string()),
                        ExprVal::Ident(name) => self.constants.get(name).cloned(),
                        _ => None,
                    });
                }
                let parts: Option<Vec<String>> = parts.into_iter().collect();
                parts.and_then(|parts| self.build(parts.iter().map(|part| part.len() as u64).sum(), || parts.concat()))
            }
            other => {
                for child in children(other) {
                    self.fold(child);
                }
                None
            }
        };
        for filter in &expr.filters {
            let args: HashMap<&str, Option<String>> =
                filter.args.iter().map(|(name, arg)| (name.as_str(), self.fold(arg))).collect();
            value = match (filter.name.as_str(), value) {
                ("default" | "safe", value) => value,
                ("replace", Some(input)) => match (args.get("from"), args.get("to")) {
                    (Some(Some(from)), Some(Some(to))) => {
                        let matches = if from.is_empty() {
                            input.chars().count() + 1
                        } else {
                            input.matches(from.as_str()).count()
                        };
                        let size = (input.len() - matches * from.len()) as u64 + (matches as u64) * to.len() as u64;
                        self.build(size, || input.replace(from.as_str(), to))
                    }
                    _ => None,
                },
                ("upper", Some(input)) => self.build(input.len() as u64, || input.to_uppercase()),
                ("lower", Some(input)) => self.build(input.len() as u64, || input.to_lowercase()),
                _ => None,
            };
        }
        value
    }

    /// Builds a constant of `size` bytes, unless it is over the value limit (a problem) or the
    /// analysis has folded enough already (then it is unknown).
    fn build(&mut self, size: u64, build: impl FnOnce() -> String) -> Option<String> {
        if size > MAX_VALUE_BYTES {
            self.problems
                .insert(format!("an expression builds a string of {size} bytes; the limit is {MAX_VALUE_BYTES}"));
            return None;
        }
        self.folded += size;
        (self.folded <= MAX_FOLDED_BYTES).then(build)
    }
}

/// The expressions directly inside a value.
fn children(value: &ExprVal) -> Vec<&Expr> {
    match value {
        ExprVal::Math(math) => vec![&math.lhs, &math.rhs],
        ExprVal::Logic(logic) => vec![&logic.lhs, &logic.rhs],
        ExprVal::In(contains) => vec![&contains.lhs, &contains.rhs],
        ExprVal::Test(test) => test.args.iter().collect(),
        ExprVal::FunctionCall(call) => call.args.values().collect(),
        ExprVal::MacroCall(call) => call.args.values().collect(),
        ExprVal::Array(items) => items.iter().collect(),
        _ => Vec::new(),
    }
}

/// Names `set` anywhere in `nodes`.
fn assigned_in(nodes: &[Node], names: &mut Vec<String>) {
    for node in nodes {
        match node {
            Node::Set(_, set) => names.push(set.key.clone()),
            Node::Forloop(_, forloop, _) => {
                assigned_in(&forloop.body, names);
                if let Some(empty) = &forloop.empty_body {
                    assigned_in(empty, names);
                }
            }
            Node::If(branches, _) => {
                for (_, _, body) in &branches.conditions {
                    assigned_in(body, names);
                }
                if let Some((_, body)) = &branches.otherwise {
                    assigned_in(body, names);
                }
            }
            Node::FilterSection(_, section, _) => assigned_in(&section.body, names),
            _ => {}
        }
    }
}
