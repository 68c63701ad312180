//! Rewrites a parsed template so that rendering it charges the render's budget
//! ([`super::sandbox`]). The analysis sees the template as written; only the renderer sees this.
//!
//! - Each body (the template, a loop's body, an `if` branch, a `{% filter %}` section) starts
//!   with a check node that charges the steps its own tags will take (one per expression they
//!   evaluate) and looks at the clock; in a loop body it also counts an iteration. Inside loops
//!   and filter sections (whose output tera buffers without a limit) it charges the body's text
//!   too. The node is `{{ N | render_budget }}`, N encoding what to charge: a filter without
//!   arguments costs tera no allocation, which matters once per loop iteration.
//! - Every expression that builds a value gets the `within_budget` filter at the end of its
//!   filters (before a trailing `safe`, so `safe` keeps working), unless its last filter is a
//!   builtin, which measures its own result. Variables get it where tera copies them (output,
//!   `set`, arguments, array items, concatenations), not where it only reads them.

use std::collections::HashMap;

use tera::ast::{Expr, ExprVal, FunctionCall, Node, WS};

use super::sandbox::{CHECK_FILTER, Charge, MEASURE_FILTER, MEASURE_FUNCTION};

/// Instruments a template's nodes in place.
pub(crate) fn instrument(nodes: &mut Vec<Node>) {
    body(nodes, false, false);
}

/// Where an expression is evaluated, which decides whether its value is a copy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Written out, assigned, or passed as an argument: tera copies the value.
    Copy,
    /// Read in place (an operand, a loop container, an `if` condition).
    Read,
}

/// Instruments the nodes of one body and puts its check node first. `buffered`: the body may
/// be written many times (a loop) or into tera's unbounded buffer (a filter section), so its
/// text counts against the budget. `iteration`: the body is a loop's.
fn body(nodes: &mut Vec<Node>, buffered: bool, iteration: bool) {
    let mut charge = Charge { steps: 1, bytes: 0, iteration };
    for node in nodes.iter_mut() {
        charge.steps += match node {
            Node::Text(text) | Node::Raw(_, text, _) => {
                if buffered {
                    charge.bytes += text.len() as u64;
                }
                0
            }
            Node::VariableBlock(_, expr) => expression(expr, Position::Copy),
            Node::Set(_, set) => expression(&mut set.value, Position::Copy),
            Node::If(branches, _) => {
                let mut steps = 0;
                for (_, condition, branch) in &mut branches.conditions {
                    steps += expression(condition, Position::Read);
                    body(branch, buffered, false);
                }
                if let Some((_, branch)) = &mut branches.otherwise {
                    body(branch, buffered, false);
                }
                steps
            }
            Node::Forloop(_, forloop, _) => {
                let steps = expression(&mut forloop.container, Position::Read);
                body(&mut forloop.body, true, true);
                if let Some(empty) = &mut forloop.empty_body {
                    body(empty, buffered, false);
                }
                steps
            }
            Node::FilterSection(_, section, _) => {
                let steps = 1 + arguments(&mut section.filter.args);
                body(&mut section.body, true, false);
                steps
            }
            // Refused before instrumenting (macros, `include`, …), or nothing to evaluate.
            _ => 0,
        } as u64;
    }
    nodes.insert(0, check(charge));
}

/// `{{ N | render_budget }}`, rendering nothing.
fn check(charge: Charge) -> Node {
    let filter = FunctionCall { name: CHECK_FILTER.into(), args: HashMap::new() };
    Node::VariableBlock(WS::default(), Expr::with_filters(ExprVal::Int(charge.encode()), vec![filter]))
}

fn arguments(args: &mut HashMap<String, Expr>) -> usize {
    args.values_mut().map(|arg| expression(arg, Position::Copy)).sum()
}

/// Instruments `expr` and what it contains; returns how many expressions it holds (its steps).
fn expression(expr: &mut Expr, position: Position) -> usize {
    let mut steps = 1;
    match &mut expr.val {
        ExprVal::Math(math) => {
            steps += expression(&mut math.lhs, Position::Read) + expression(&mut math.rhs, Position::Read);
        }
        ExprVal::Logic(logic) => {
            // Read in place; and an `and`/`or` operand is a truthiness check, where a missing
            // variable is false: measuring it would make it an error.
            steps += expression(&mut logic.lhs, Position::Read) + expression(&mut logic.rhs, Position::Read);
        }
        ExprVal::In(contains) => {
            steps += expression(&mut contains.lhs, Position::Read) + expression(&mut contains.rhs, Position::Read);
        }
        ExprVal::Test(test) => {
            steps += test.args.iter_mut().map(|arg| expression(arg, Position::Read)).sum::<usize>();
        }
        ExprVal::FunctionCall(call) => steps += arguments(&mut call.args),
        ExprVal::MacroCall(call) => steps += arguments(&mut call.args),
        ExprVal::Array(items) => {
            steps += items.iter_mut().map(|item| expression(item, Position::Copy)).sum::<usize>();
        }
        ExprVal::StringConcat(concat) => {
            for part in &mut concat.values {
                steps += 1;
                match part {
                    // Each variable is measured as it is added, so a long chain of big values
                    // stops at the budget instead of being concatenated first.
                    ExprVal::Ident(name) => {
                        let variable = Expr::new(ExprVal::Ident(std::mem::take(name)));
                        let args = HashMap::from([("value".to_string(), variable)]);
                        *part = ExprVal::FunctionCall(FunctionCall { name: MEASURE_FUNCTION.into(), args });
                    }
                    ExprVal::FunctionCall(call) => steps += arguments(&mut call.args),
                    _ => {}
                }
            }
        }
        ExprVal::String(_) | ExprVal::Int(_) | ExprVal::Float(_) | ExprVal::Bool(_) | ExprVal::Ident(_) => {}
    }
    for filter in &mut expr.filters {
        steps += 1 + arguments(&mut filter.args);
    }
    if needs_measure(expr, position) {
        let at = expr.filters.iter().rposition(|filter| filter.name != "safe").map_or(0, |last| last + 1);
        expr.filters.insert(at, FunctionCall { name: MEASURE_FILTER.into(), args: HashMap::new() });
    }
    steps
}

/// Whether `expr` builds (or copies) a value nothing else measures.
fn needs_measure(expr: &Expr, position: Position) -> bool {
    if expr.negated {
        return false; // a boolean
    }
    // `default` and `safe` are not called as filters; any other filter is a bounded builtin.
    if expr.filters.iter().any(|filter| filter.name != "default" && filter.name != "safe") {
        return false;
    }
    match expr.val {
        ExprVal::String(_) | ExprVal::Array(_) | ExprVal::StringConcat(_) => true,
        ExprVal::Ident(_) => position == Position::Copy,
        _ => false,
    }
}
