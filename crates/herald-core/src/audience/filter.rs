//! The audience filter: a small JSON predicate language that selects stored profiles, compiled to
//! a PostgreSQL condition whose every value and attribute path is a bound parameter.
//!
//! # The language
//!
//! A filter is a JSON object, either a **condition** or a **combinator**.
//!
//! A condition is `{"field": F, "op": OP, "value": V}` (no other key):
//!
//! | `field` | What it reads |
//! |---|---|
//! | `namespace`, `userId` | the profile's identity namespace and user id |
//! | `email`, `phone` | the profile's email address and phone number (either may be absent) |
//! | `pushToken` | whether the profile has at least one push token (`exists` only) |
//! | `attributes.a.b.c` | the value at path `a` → `b` → `c` in the profile's attributes |
//!
//! An attribute path has 1 to 8 segments after `attributes.`, each 1 to 64 of `A-Z`, `a-z`, `0-9`,
//! `_` and `-`. A segment that is an integer also indexes into an array (`attributes.tags.0`; a
//! negative one counts from the end). Any other `field`, in any other spelling, is refused.
//!
//! | `op` | `value` | Matches when the field... |
//! |---|---|---|
//! | `eq` | a scalar | equals `value` |
//! | `neq` | a scalar | does not equal `value`, **including when it is absent**: `neq` is exactly `not eq` |
//! | `in` | an array of 1 to 1000 scalars | equals one of them |
//! | `exists` | none, `true` or `false` | is present (`true`, the default) or absent (`false`) |
//! | `gt`, `lt` | a number or a string | is greater / less than `value` |
//!
//! A scalar is a string (at most 1024 bytes, no NUL character), a number or a boolean; `null` is
//! refused (test for a missing attribute with `exists`).
//!
//! * **Attributes** compare as JSON values: the string `"1"` does not equal the number `1`, the
//!   number `1` equals `1.0`, and an attribute holding an object or an array equals no scalar.
//!   `exists` is true for an attribute present with the value `null`. `gt`/`lt` with a number
//!   match only attributes that are JSON numbers (compared numerically, the filter's number as a
//!   double, so one beyond a double's range is refused); with a string, only attributes that are
//!   JSON strings (compared byte-wise, collation `C`: `"B" < "a"` and `"10" < "9"`). An attribute
//!   of another type, or absent, matches neither.
//! * **Identity fields** are text: their values must be strings (a number or a boolean is
//!   refused); `gt`/`lt` compare byte-wise (collation `C`); `exists` tests that the column has a
//!   value (only `email` and `phone` can be absent). `pushToken` takes only `exists`: the
//!   profile's push tokens are a non-empty array.
//!
//! Combinators: `{"and": [F, ...]}` and `{"or": [F, ...]}` hold 1 to 64 filters; `{"not": F}`
//! matches exactly the profiles `F` does not match. A combinator object has exactly one key.
//!
//! Limits: a filter is at most 8 levels deep (a lone condition is one level, `{"not": condition}`
//! two) and has at most 256 objects (conditions and combinators) in all. Unknown keys are refused
//! everywhere. Every problem is reported, up to 32, each with a JSON pointer to where it is
//! (e.g. `/filter/and/1/field`).
//!
//! # Example
//!
//! Email subscribers on the pro or team plan, older than 17, not in the beta group:
//!
//! ```json
//! {"and": [
//!   {"field": "email", "op": "exists"},
//!   {"field": "attributes.plan", "op": "in", "value": ["pro", "team"]},
//!   {"field": "attributes.profile.age", "op": "gt", "value": 17},
//!   {"not": {"field": "attributes.groups.beta", "op": "eq", "value": true}}
//! ]}
//! ```
//!
//! # The SQL
//!
//! [`Filter::compile`] returns a parenthesised condition on the profiles table aliased `p`, built
//! only from fixed text and `$n` placeholders, each with an explicit cast (`$n::text`,
//! `$n::text[]`, `$n::float8`); values and paths travel only in [`CompiledFilter::params`]. Every
//! condition is safe on any stored row (no cast that can fail runs on a value of the wrong type).

use serde::Serialize;
use serde::Serializer;
use serde_json::{Map, Number, Value};

use crate::campaign::FieldError;

/// How many levels a filter may nest, a lone condition being one.
pub const MAX_DEPTH: usize = 8;
/// How many objects (conditions and combinators) a filter may hold in all.
pub const MAX_NODES: usize = 256;
/// How many values an `in` may list.
pub const MAX_IN_VALUES: usize = 1000;

const MAX_CHILDREN: usize = 64;
const MAX_PATH_SEGMENTS: usize = 8;
const MAX_SEGMENT_LENGTH: usize = 64;
const MAX_STRING_BYTES: usize = 1024;
const MAX_ERRORS: usize = 32;

/// A parsed, validated filter. It serialises back to the language it was parsed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    #[serde(untagged)]
    Condition(Condition),
}

/// One validated condition; only [`parse`] makes them, so each is one the compiler can express.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(Leaf);

#[derive(Debug, Clone, PartialEq)]
enum Leaf {
    Column(Column, Test<String, String>),
    Attribute(Vec<String>, Test<Scalar, Ordered>),
    HasPushToken(bool),
}

/// An identity field: its name in the language and its column.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Column {
    name: &'static str,
    sql: &'static str,
}

const COLUMNS: [Column; 4] = [
    Column { name: "namespace", sql: "p.namespace" },
    Column { name: "userId", sql: "p.user_id" },
    Column { name: "email", sql: "p.email_address" },
    Column { name: "phone", sql: "p.phone_number" },
];

/// An operator and its value: `V` what `eq`, `neq` and `in` take, `O` what `gt` and `lt` take.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", content = "value", rename_all = "camelCase")]
enum Test<V, O> {
    Eq(V),
    Neq(V),
    In(Vec<V>),
    Exists(bool),
    Gt(O),
    Lt(O),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Number(Number),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum Ordered {
    String(String),
    Number(f64),
}

/// A bound parameter of a compiled filter, in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Text(String),
    TextArray(Vec<String>),
    Float(f64),
}

/// A filter as a PostgreSQL condition on `profiles p`, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledFilter {
    /// The condition, parenthesised; placeholders `$first_param` to `$first_param + params.len() - 1`.
    pub sql: String,
    pub params: Vec<SqlParam>,
}

/// Parses and validates `value` as a filter. Errors carry JSON pointers prefixed with `base`
/// (the filter's own pointer in the request, e.g. `/filter`; `""` for a filter on its own).
pub fn parse(value: &Value, base: &str) -> Result<Filter, Vec<FieldError>> {
    let mut parser = Parser { errors: Vec::new(), nodes: 0 };
    let filter = parser.node(value, base, 1);
    match filter {
        Some(filter) if parser.errors.is_empty() => Ok(filter),
        _ => Err(parser.errors),
    }
}

struct Parser {
    errors: Vec<FieldError>,
    nodes: usize,
}

/// A condition's `field` once recognised.
enum Target {
    Column(Column),
    Attribute(Vec<String>),
    PushToken,
}

impl Parser {
    fn error(&mut self, pointer: &str, detail: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(FieldError { pointer: pointer.to_string(), detail: detail.into() });
        }
    }

    fn node(&mut self, value: &Value, pointer: &str, depth: usize) -> Option<Filter> {
        if depth > MAX_DEPTH {
            return self.refuse(pointer, format!("is nested too deeply: a filter is at most {MAX_DEPTH} levels deep"));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            if self.nodes == MAX_NODES + 1 {
                self.error(pointer, format!("is one object too many: a filter holds at most {MAX_NODES} in all"));
            }
            return None;
        }
        let Value::Object(members) = value else {
            return self.refuse(pointer, "must be an object: a condition, or an and, or, not combinator");
        };
        match members.keys().find(|key| matches!(key.as_str(), "and" | "or" | "not")) {
            Some(name) => self.combinator(members, name, pointer, depth),
            None => self.condition(members, pointer).map(|leaf| Filter::Condition(Condition(leaf))),
        }
    }

    fn combinator(&mut self, members: &Map<String, Value>, name: &str, pointer: &str, depth: usize) -> Option<Filter> {
        for key in members.keys().filter(|key| *key != name) {
            self.error(&member(pointer, key), format!("is not allowed next to `{name}`: a combinator has one key"));
        }
        let at = member(pointer, name);
        if name == "not" {
            return self.node(&members[name], &at, depth + 1).map(|child| Filter::Not(Box::new(child)));
        }
        let Value::Array(items) = &members[name] else {
            return self.refuse(&at, "must be an array of filters");
        };
        let mut valid = (1..=MAX_CHILDREN).contains(&items.len());
        if !valid {
            self.error(&at, format!("must hold 1 to {MAX_CHILDREN} filters"));
        }
        let mut children = Vec::with_capacity(items.len().min(MAX_CHILDREN));
        for (index, item) in items.iter().enumerate() {
            match self.node(item, &format!("{at}/{index}"), depth + 1) {
                Some(child) => children.push(child),
                None => valid = false,
            }
        }
        valid.then(|| if name == "and" { Filter::And(children) } else { Filter::Or(children) })
    }

    fn condition(&mut self, members: &Map<String, Value>, pointer: &str) -> Option<Leaf> {
        for key in members.keys().filter(|key| !matches!(key.as_str(), "field" | "op" | "value")) {
            self.error(&member(pointer, key), "is not a key of a condition (field, op, value) nor a combinator");
        }
        let field_at = format!("{pointer}/field");
        let target = match members.get("field") {
            None => self.refuse(&field_at, "is required"),
            Some(Value::String(text)) => target(text).map_err(|detail| self.error(&field_at, detail)).ok(),
            Some(_) => self.refuse(&field_at, "must be a string"),
        };
        match target {
            Some(Target::Column(column)) => {
                self.test(members, pointer, Self::text, Self::text).map(|test| Leaf::Column(column, test))
            }
            Some(Target::Attribute(path)) => {
                self.test(members, pointer, Self::scalar, Self::ordered).map(|test| Leaf::Attribute(path, test))
            }
            Some(Target::PushToken) => match self.test(members, pointer, Self::scalar, Self::ordered)? {
                Test::Exists(exists) => Some(Leaf::HasPushToken(exists)),
                _ => self.refuse(&format!("{pointer}/op"), "must be `exists`: pushToken only tests for tokens"),
            },
            None => self.test(members, pointer, Self::scalar, Self::ordered).and(None),
        }
    }

    /// The condition's `op` and `value`, its values read by `value` (eq, neq, in) or `ordered`
    /// (gt, lt), which report what they refuse.
    fn test<V, O>(
        &mut self,
        members: &Map<String, Value>,
        pointer: &str,
        value: fn(&mut Self, &Value, &str) -> Option<V>,
        ordered: fn(&mut Self, &Value, &str) -> Option<O>,
    ) -> Option<Test<V, O>> {
        let (op_at, at) = (format!("{pointer}/op"), format!("{pointer}/value"));
        let op = match members.get("op") {
            None => return self.refuse(&op_at, "is required"),
            Some(Value::String(op)) => op.as_str(),
            Some(_) => return self.refuse(&op_at, "must be a string"),
        };
        if !matches!(op, "eq" | "neq" | "in" | "exists" | "gt" | "lt") {
            return self.refuse(&op_at, "must be one of eq, neq, in, exists, gt, lt");
        }
        let given = match (op, members.get("value")) {
            ("exists", None) => return Some(Test::Exists(true)),
            ("exists", Some(Value::Bool(exists))) => return Some(Test::Exists(*exists)),
            ("exists", Some(_)) => return self.refuse(&at, "must be true or false, or left out (true)"),
            (_, None) => return self.refuse(&at, format!("is required with `{op}`")),
            (_, Some(given)) => given,
        };
        match op {
            "eq" => value(self, given, &at).map(Test::Eq),
            "neq" => value(self, given, &at).map(Test::Neq),
            "gt" => ordered(self, given, &at).map(Test::Gt),
            "lt" => ordered(self, given, &at).map(Test::Lt),
            _ => {
                let Value::Array(items) = given else {
                    return self.refuse(&at, "must be an array of values");
                };
                if !(1..=MAX_IN_VALUES).contains(&items.len()) {
                    return self.refuse(&at, format!("must hold 1 to {MAX_IN_VALUES} values"));
                }
                let values: Vec<_> = (items.iter().enumerate())
                    .map(|(index, item)| value(self, item, &format!("{at}/{index}")))
                    .collect();
                values.into_iter().collect::<Option<_>>().map(Test::In)
            }
        }
    }

    fn scalar(&mut self, value: &Value, pointer: &str) -> Option<Scalar> {
        match value {
            Value::String(text) if text.len() > MAX_STRING_BYTES => {
                self.refuse(pointer, format!("is too long: a string value is at most {MAX_STRING_BYTES} bytes"))
            }
            Value::String(text) if text.contains('\0') => self.refuse(pointer, "must not contain a NUL character"),
            Value::String(text) => Some(Scalar::String(text.clone())),
            Value::Number(number) => Some(Scalar::Number(number.clone())),
            Value::Bool(value) => Some(Scalar::Bool(*value)),
            Value::Null => self.refuse(pointer, "must not be null: test for an absent field with `exists`"),
            _ => self.refuse(pointer, "must be a string, a number or a boolean"),
        }
    }

    /// A value for an identity field: a string.
    fn text(&mut self, value: &Value, pointer: &str) -> Option<String> {
        match self.scalar(value, pointer)? {
            Scalar::String(text) => Some(text),
            _ => self.refuse(pointer, "must be a string: identity fields are text"),
        }
    }

    /// A value for an attribute's `gt` or `lt`: a string or a (finite) number.
    fn ordered(&mut self, value: &Value, pointer: &str) -> Option<Ordered> {
        match self.scalar(value, pointer)? {
            Scalar::String(text) => Some(Ordered::String(text)),
            Scalar::Number(number) => match number.as_f64() {
                Some(number) if number.is_finite() => Some(Ordered::Number(number)),
                _ => self.refuse(pointer, "must be a number a double can hold"),
            },
            Scalar::Bool(_) => self.refuse(pointer, "must be a number or a string with `gt` and `lt`"),
        }
    }

    fn refuse<T>(&mut self, pointer: &str, detail: impl Into<String>) -> Option<T> {
        self.error(pointer, detail);
        None
    }
}

/// A condition's `field` as what it reads, or why it is refused.
fn target(field: &str) -> Result<Target, String> {
    if field == "pushToken" {
        return Ok(Target::PushToken);
    }
    if let Some(column) = COLUMNS.iter().find(|column| column.name == field) {
        return Ok(Target::Column(*column));
    }
    let Some(path) = field.strip_prefix("attributes.") else {
        return Err("must be namespace, userId, email, phone, pushToken or attributes.<path>".into());
    };
    let mut segments = Vec::new();
    for segment in path.split('.') {
        if segments.len() == MAX_PATH_SEGMENTS {
            return Err(format!("has too many segments: an attribute path has 1 to {MAX_PATH_SEGMENTS}"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if !(1..=MAX_SEGMENT_LENGTH).contains(&segment.len()) || !segment.chars().all(allowed) {
            return Err(format!("has an invalid segment: each is 1 to {MAX_SEGMENT_LENGTH} of A-Z, a-z, 0-9, _ and -"));
        }
        segments.push(segment.to_string());
    }
    Ok(Target::Attribute(segments))
}

/// `pointer/key`, the key escaped as a JSON pointer token (RFC 6901).
fn member(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, T> {
            field: &'a str,
            #[serde(flatten)]
            test: &'a T,
        }
        match &self.0 {
            Leaf::Column(column, test) => Wire { field: column.name, test }.serialize(serializer),
            Leaf::Attribute(path, test) => {
                Wire { field: &format!("attributes.{}", path.join(".")), test }.serialize(serializer)
            }
            Leaf::HasPushToken(exists) => {
                Wire { field: "pushToken", test: &Test::<(), ()>::Exists(*exists) }.serialize(serializer)
            }
        }
    }
}

impl Filter {
    /// The filter as a PostgreSQL condition on `profiles p`, its placeholders numbered from
    /// `$first_param` (which must be at least 1). An `and` of nothing is true, an `or` of nothing
    /// false (neither comes out of [`parse`]).
    pub fn compile(&self, first_param: usize) -> CompiledFilter {
        assert!(first_param >= 1, "PostgreSQL numbers placeholders from $1");
        let mut sql = Sql { text: String::new(), params: Vec::new(), first_param };
        sql.filter(self);
        CompiledFilter { sql: sql.text, params: sql.params }
    }
}

/// The compiler's output. Its text grows only through `fixed`, which takes string constants, and
/// `template`, which takes a constant and puts placeholder numbers in it: nothing from the filter
/// is ever written into it.
struct Sql {
    text: String,
    params: Vec<SqlParam>,
    first_param: usize,
}

impl Sql {
    fn fixed(&mut self, constant: &'static str) {
        self.text.push_str(constant);
    }

    /// Writes `template` with its `$P` the placeholder of the attribute path `path` and its `$V`
    /// that of `value`, each bound (path first) if the template uses it.
    fn template(&mut self, template: &'static str, path: Option<&[String]>, value: Option<SqlParam>) {
        let path = path.map(|path| self.bind(SqlParam::TextArray(path.to_vec())));
        let value = value.map(|value| self.bind(value));
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            self.text.push_str(&rest[..at]);
            let number = if rest[at..].starts_with("$P") { path } else { value };
            let number = number.unwrap_or_else(|| panic!("no parameter for {template}"));
            self.text.push_str(&format!("${number}"));
            rest = &rest[at + 2..];
        }
        self.text.push_str(rest);
    }

    fn bind(&mut self, param: SqlParam) -> usize {
        self.params.push(param);
        self.first_param + self.params.len() - 1
    }

    fn filter(&mut self, filter: &Filter) {
        match filter {
            Filter::And(children) => self.join(children, " AND ", "TRUE"),
            Filter::Or(children) => self.join(children, " OR ", "FALSE"),
            Filter::Not(child) => {
                // `IS NOT TRUE`, not `NOT`: a condition that is NULL on a row (a comparison with
                // an absent column) does not match it, so its negation must.
                self.fixed("(");
                self.filter(child);
                self.fixed(" IS NOT TRUE)");
            }
            Filter::Condition(Condition(leaf)) => self.leaf(leaf),
        }
    }

    fn join(&mut self, children: &[Filter], operator: &'static str, empty: &'static str) {
        self.fixed("(");
        for (index, child) in children.iter().enumerate() {
            self.fixed(if index > 0 { operator } else { "" });
            self.filter(child);
        }
        self.fixed(if children.is_empty() { empty } else { "" });
        self.fixed(")");
    }

    fn leaf(&mut self, leaf: &Leaf) {
        use SqlParam::{Float, Text, TextArray};
        match leaf {
            Leaf::HasPushToken(exists) => self.fixed(if *exists { PUSH_TOKENS } else { NO_PUSH_TOKENS }),
            Leaf::Column(column, test) => {
                self.fixed("(");
                self.fixed(column.sql);
                let (template, value) = match test {
                    Test::Eq(value) => (" = $V::text)", Some(Text(value.clone()))),
                    Test::Neq(value) => (" IS DISTINCT FROM $V::text)", Some(Text(value.clone()))),
                    Test::In(values) => (" = ANY ($V::text[]))", Some(TextArray(values.clone()))),
                    Test::Exists(true) => (" IS NOT NULL)", None),
                    Test::Exists(false) => (" IS NULL)", None),
                    Test::Gt(value) => (" COLLATE \"C\" > $V::text)", Some(Text(value.clone()))),
                    Test::Lt(value) => (" COLLATE \"C\" < $V::text)", Some(Text(value.clone()))),
                };
                self.template(template, None, value);
            }
            Leaf::Attribute(path, test) => {
                // gt and lt cast to numeric, or collate, only once jsonb_typeof has said the
                // attribute is of that type: CASE evaluates THEN only for the rows WHEN holds for.
                let (template, value) = match test {
                    Test::Eq(value) => ("((p.attributes #> $P::text[]) = ($V::text)::jsonb)", Some(Text(value.json()))),
                    Test::Neq(value) => (ATTRIBUTE_NEQ, Some(Text(value.json()))),
                    Test::In(values) => (ATTRIBUTE_IN, Some(TextArray(values.iter().map(Scalar::json).collect()))),
                    Test::Exists(true) => ("((p.attributes #> $P::text[]) IS NOT NULL)", None),
                    Test::Exists(false) => ("((p.attributes #> $P::text[]) IS NULL)", None),
                    Test::Gt(Ordered::Number(number)) => (NUMBER_GT, Some(Float(*number))),
                    Test::Lt(Ordered::Number(number)) => (NUMBER_LT, Some(Float(*number))),
                    Test::Gt(Ordered::String(text)) => (STRING_GT, Some(Text(text.clone()))),
                    Test::Lt(Ordered::String(text)) => (STRING_LT, Some(Text(text.clone()))),
                };
                self.template(template, Some(path), value);
            }
        }
    }
}

const PUSH_TOKENS: &str = "(CASE WHEN jsonb_typeof(p.push_tokens) = 'array' \
    THEN jsonb_array_length(p.push_tokens) > 0 ELSE false END)";
const NO_PUSH_TOKENS: &str = "(CASE WHEN jsonb_typeof(p.push_tokens) = 'array' \
    THEN jsonb_array_length(p.push_tokens) = 0 ELSE true END)";
const ATTRIBUTE_NEQ: &str = "((p.attributes #> $P::text[]) IS DISTINCT FROM ($V::text)::jsonb)";
const ATTRIBUTE_IN: &str = "((p.attributes #> $P::text[]) = ANY (($V::text[])::jsonb[]))";
const NUMBER_GT: &str = "(CASE WHEN jsonb_typeof(p.attributes #> $P::text[]) = 'number' \
    THEN (p.attributes #>> $P::text[])::numeric > ($V::float8)::numeric ELSE false END)";
const NUMBER_LT: &str = "(CASE WHEN jsonb_typeof(p.attributes #> $P::text[]) = 'number' \
    THEN (p.attributes #>> $P::text[])::numeric < ($V::float8)::numeric ELSE false END)";
const STRING_GT: &str = "(CASE WHEN jsonb_typeof(p.attributes #> $P::text[]) = 'string' \
    THEN (p.attributes #>> $P::text[]) COLLATE \"C\" > $V::text ELSE false END)";
const STRING_LT: &str = "(CASE WHEN jsonb_typeof(p.attributes #> $P::text[]) = 'string' \
    THEN (p.attributes #>> $P::text[]) COLLATE \"C\" < $V::text ELSE false END)";

impl Scalar {
    /// The value as JSON text, for a `::jsonb` cast.
    fn json(&self) -> String {
        match self {
            Scalar::String(text) => Value::String(text.clone()).to_string(),
            Scalar::Number(number) => number.to_string(),
            Scalar::Bool(value) => value.to_string(),
        }
    }
}

#[cfg(feature = "sql")]
impl postgres_types::ToSql for SqlParam {
    fn to_sql(
        &self,
        ty: &postgres_types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres_types::ToSql;
        match self {
            SqlParam::Text(text) if <String as ToSql>::accepts(ty) => text.to_sql(ty, out),
            SqlParam::TextArray(items) if <Vec<String> as ToSql>::accepts(ty) => items.to_sql(ty, out),
            SqlParam::Float(number) if <f64 as ToSql>::accepts(ty) => number.to_sql(ty, out),
            _ => Err(format!("this filter parameter cannot be sent as {ty}").into()),
        }
    }

    fn accepts(ty: &postgres_types::Type) -> bool {
        use postgres_types::Type;
        [Type::TEXT, Type::VARCHAR, Type::TEXT_ARRAY, Type::FLOAT8].contains(ty)
    }

    postgres_types::to_sql_checked!();
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
