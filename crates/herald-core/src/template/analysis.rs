//! Static analysis of a parsed tera template: which `profile.*` and `context.*` variables it
//! reads, whether each read is guarded (a `default` filter, a `defined` test, a bare `if`), and
//! which constructs Herald does not allow (other top-level variables, `context.system`, functions
//! other than `range`/`throw`, macros, `include`/`extends`/`import`/`block`), and what it can
//! prove about its render budget ([`super::cost`]).
//!
//! The review uses it to block activation, the cURL sample lists its variables, and ingest
//! (issue 3) uses the unguarded `context.*` reads to refuse executions that lack them.

use std::collections::BTreeSet;

use tera::ast::{Expr, ExprVal, FunctionCall, LogicOperator, Node};

/// Functions a template may call. Everything else (notably `get_env`) is refused.
pub const ALLOWED_FUNCTIONS: [&str; 2] = ["range", "throw"];
/// The only variables the renderer puts in scope.
pub const ROOT_VARIABLES: [&str; 2] = ["profile", "context"];

/// One read of a variable rooted at `profile` or `context`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VariableUse {
    /// The path as written, e.g. `context.resetUrl` or `profile.person.name.firstName`.
    pub path: String,
    /// Whether a missing value is tolerated (default filter, `defined` test, truthiness check).
    pub guarded: bool,
}

impl VariableUse {
    /// `profile` or `context`.
    pub fn root(&self) -> &str {
        root_of(&self.path)
    }

    /// The attribute directly under the root (`resetUrl` for `context.resetUrl.x`), if any.
    pub fn first_key(&self) -> Option<&str> {
        let rest = self.path.strip_prefix(self.root())?;
        let key = if let Some(bracket) = rest.strip_prefix('[') {
            // `context["a.b"]`: the key is the whole quoted string, dots and brackets included.
            let quote = bracket.chars().next().filter(|c| matches!(c, '"' | '\'' | '`'))?;
            let quoted = &bracket[quote.len_utf8()..];
            &quoted[..quoted.find(quote)?]
        } else {
            let rest = rest.strip_prefix('.')?;
            &rest[..rest.find(['.', '[', ']']).unwrap_or(rest.len())]
        };
        (!key.is_empty()).then_some(key)
    }
}

/// A construct the template must not use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forbidden {
    UnknownVariable(String),
    ContextSystem(String),
    Function(String),
    /// A construct that makes a part more than a single self-contained template. tera renders
    /// them recursively (a self-calling macro overflows the stack and aborts the process), so
    /// compiling refuses them too, not only the review.
    Tag(&'static str),
    /// Over the render budget whatever the input (see [`super::cost`]).
    Budget(String),
}

/// What the analysis of one template found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    pub variables: BTreeSet<VariableUse>,
    pub forbidden: BTreeSet<Forbidden>,
    /// Every filter the template applies, by name (compiling checks they exist).
    pub filters: BTreeSet<String>,
}

fn root_of(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// Walks `nodes` (a template's AST) and reports what it reads and what it must not do.
pub fn analyse(nodes: &[Node]) -> Analysis {
    let mut walker = Walker { analysis: Analysis::default(), locals: vec![] };
    walker.nodes(nodes);
    let mut analysis = walker.analysis;
    analysis.forbidden.extend(super::cost::over_budget(nodes).into_iter().map(Forbidden::Budget));
    analysis
}

struct Walker {
    analysis: Analysis,
    /// Names bound by `for`, `set` and macro arguments, innermost last.
    locals: Vec<String>,
}

impl Walker {
    fn nodes(&mut self, nodes: &[Node]) {
        for node in nodes {
            self.node(node);
        }
    }

    fn node(&mut self, node: &Node) {
        match node {
            Node::VariableBlock(_, expr) => self.expr(expr, false),
            Node::Set(_, set) => {
                self.expr(&set.value, false);
                // A set binds for the rest of its scope; binding it now is what tera does.
                self.locals.push(set.key.clone());
            }
            Node::Forloop(_, forloop, _) => {
                self.expr(&forloop.container, false);
                let depth = self.locals.len();
                self.locals.extend(forloop.key.iter().cloned());
                self.locals.push(forloop.value.clone());
                self.locals.push("loop".to_string());
                self.nodes(&forloop.body);
                self.locals.truncate(depth);
                if let Some(empty) = &forloop.empty_body {
                    self.nodes(empty);
                }
            }
            Node::If(branches, _) => {
                for (_, condition, body) in &branches.conditions {
                    self.condition(condition);
                    self.nodes(body);
                }
                if let Some((_, body)) = &branches.otherwise {
                    self.nodes(body);
                }
            }
            Node::FilterSection(_, section, _) => {
                self.analysis.filters.insert(section.filter.name.clone());
                self.call_args(&section.filter);
                self.nodes(&section.body);
            }
            Node::Block(_, block, _) => {
                self.analysis.forbidden.insert(Forbidden::Tag("block"));
                self.nodes(&block.body);
            }
            Node::MacroDefinition(_, definition, _) => {
                self.analysis.forbidden.insert(Forbidden::Tag("macro"));
                let depth = self.locals.len();
                for (name, default) in &definition.args {
                    if let Some(default) = default {
                        self.expr(default, false);
                    }
                    self.locals.push(name.clone());
                }
                self.nodes(&definition.body);
                self.locals.truncate(depth);
            }
            Node::Extends(..) => {
                self.analysis.forbidden.insert(Forbidden::Tag("extends"));
            }
            Node::Include(..) => {
                self.analysis.forbidden.insert(Forbidden::Tag("include"));
            }
            Node::ImportMacro(..) => {
                self.analysis.forbidden.insert(Forbidden::Tag("import"));
            }
            Node::Super => {
                self.analysis.forbidden.insert(Forbidden::Tag("super"));
            }
            Node::Text(_) | Node::Raw(..) | Node::Break(_) | Node::Continue(_) | Node::Comment(..) => {}
        }
    }

    /// A condition of `if`/`elif`: a bare variable there is a truthiness check, which tera
    /// evaluates to false when the variable is missing, so such a read is guarded.
    fn condition(&mut self, expr: &Expr) {
        match &expr.val {
            ExprVal::Ident(path) if expr.filters.is_empty() => self.ident(path, true),
            ExprVal::Logic(logic) if matches!(logic.operator, LogicOperator::And | LogicOperator::Or) => {
                self.condition(&logic.lhs);
                self.condition(&logic.rhs);
            }
            _ => self.expr(expr, false),
        }
    }

    fn expr(&mut self, expr: &Expr, guarded: bool) {
        let guarded = guarded || expr.has_default_filter();
        self.value(&expr.val, guarded);
        for filter in &expr.filters {
            self.analysis.filters.insert(filter.name.clone());
            self.call_args(filter);
        }
    }

    fn value(&mut self, value: &ExprVal, guarded: bool) {
        match value {
            ExprVal::Ident(path) => self.ident(path, guarded),
            ExprVal::Math(math) => {
                self.expr(&math.lhs, false);
                self.expr(&math.rhs, false);
            }
            ExprVal::Logic(logic) => {
                self.expr(&logic.lhs, false);
                self.expr(&logic.rhs, false);
            }
            ExprVal::Test(test) => {
                // `x is defined` is exactly the guard against a missing `x`.
                self.ident(&test.ident, true);
                for arg in &test.args {
                    self.expr(arg, false);
                }
            }
            ExprVal::MacroCall(call) => {
                self.analysis.forbidden.insert(Forbidden::Tag("macro"));
                for arg in call.args.values() {
                    self.expr(arg, false);
                }
            }
            ExprVal::FunctionCall(call) => {
                if !ALLOWED_FUNCTIONS.contains(&call.name.as_str()) {
                    self.analysis.forbidden.insert(Forbidden::Function(call.name.clone()));
                }
                self.call_args(call);
            }
            ExprVal::Array(items) => {
                for item in items {
                    self.expr(item, false);
                }
            }
            ExprVal::StringConcat(concat) => {
                for part in &concat.values {
                    self.value(part, false);
                }
            }
            ExprVal::In(contains) => {
                self.expr(&contains.lhs, false);
                self.expr(&contains.rhs, false);
            }
            ExprVal::String(_) | ExprVal::Int(_) | ExprVal::Float(_) | ExprVal::Bool(_) => {}
        }
    }

    fn call_args(&mut self, call: &FunctionCall) {
        for arg in call.args.values() {
            self.expr(arg, false);
        }
    }

    fn ident(&mut self, path: &str, guarded: bool) {
        let root = root_of(path);
        if self.locals.iter().any(|local| local == root) {
            return;
        }
        if !ROOT_VARIABLES.contains(&root) {
            self.analysis.forbidden.insert(Forbidden::UnknownVariable(root.to_string()));
            return;
        }
        let variable = VariableUse { path: path.to_string(), guarded };
        if root == "context" && variable.first_key() == Some("system") {
            self.analysis.forbidden.insert(Forbidden::ContextSystem(path.to_string()));
        }
        self.analysis.variables.insert(variable);
    }
}
