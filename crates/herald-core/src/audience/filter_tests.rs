//! Hostile filters first: each must be refused at the right pointer, or compiled with its values
//! only in the parameters. Then the SQL of each operator, the numbering, and the round trip.

use serde_json::{Value, json};

use super::*;

fn errors(filter: Value) -> Vec<FieldError> {
    parse(&filter, "/filter").expect_err("the filter should be refused")
}

/// The single error a filter is refused with, as (pointer, detail).
fn refusal(filter: Value) -> (String, String) {
    let errors = errors(filter);
    assert_eq!(errors.len(), 1, "{errors:?}");
    (errors[0].pointer.clone(), errors[0].detail.clone())
}

fn leaf(field: &str, op: &str, value: Value) -> Value {
    json!({"field": field, "op": op, "value": value})
}

fn compile(filter: Value) -> CompiledFilter {
    parse(&filter, "/filter").unwrap_or_else(|errors| panic!("{errors:?}")).compile(1)
}

/// Asserts what the SQL may be made of: a fixed alphabet; quoted literals and identifiers only
/// from an allow-list; every placeholder in range, cast explicitly, and every parameter used.
fn assert_safe_shape(compiled: &CompiledFilter, first: usize) {
    let sql = &compiled.sql;
    let allowed = |c: char| c.is_ascii_alphanumeric() || " _$:()[]=<>'.,#\"".contains(c);
    assert!(sql.chars().all(allowed), "unexpected character in {sql}");
    let mut used = vec![false; compiled.params.len()];
    let mut rest = sql.as_str();
    while let Some(start) = rest.find(['\'', '"', '$']) {
        let quote = rest[start..].chars().next().unwrap();
        let after = &rest[start + 1..];
        if quote == '$' {
            let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            let number: usize = after[..digits].parse().expect("a placeholder number");
            assert!(number >= first && number < first + used.len(), "${number} out of range in {sql}");
            used[number - first] = true;
            let cast = &after[digits..];
            assert!(
                ["::text[]", "::text", "::float8"].iter().any(|c| cast.starts_with(c)),
                "uncast ${number} in {sql}"
            );
            rest = &after[digits..];
        } else {
            let end = after.find(quote).expect("a closed quote");
            let allow: &[&str] = if quote == '\'' { &["number", "string", "array"] } else { &["C"] };
            assert!(allow.contains(&&after[..end]), "literal {quote}{}{quote} in {sql}", &after[..end]);
            rest = &after[end + 1..];
        }
    }
    assert!(used.iter().all(|u| *u), "an unused parameter in {sql} for {:?}", compiled.params);
}

#[test]
fn hostile_field_names_are_refused() {
    let long = "a".repeat(65);
    let fields = [
        "namespace; DROP TABLE profiles",
        "attributes.a'--",
        "attributes.",
        "attributes",
        "attributes.a..b",
        "attributes.a.",
        ".attributes.a",
        "attributes.a b",
        "attributes.a/b",
        "attributes.a\0",
        "attributes.$1",
        "attributes.a\"",
        "attributes.a]::text[]--",
        "attributes.n\u{0430}me", // Cyrillic а
        "n\u{0430}mespace",       // Cyrillic а
        "\u{FF45}mail",           // fullwidth e
        "userId\u{200B}",         // zero-width space
        "attributes.\u{212A}ey",  // Kelvin sign, which lowercases to k
        "Namespace",
        "user_id",
        "email_address",
        "p.email_address",
        "push_tokens",
        "Attributes.a",
        "attributes.a.b.c.d.e.f.g.h.i", // 9 segments
        &format!("attributes.{long}"),
        "",
    ];
    for field in fields {
        let (pointer, detail) = refusal(leaf(field, "eq", json!("x")));
        assert_eq!(pointer, "/filter/field", "{field:?}: {detail}");
    }
    assert_eq!(refusal(json!({"field": 1, "op": "exists"})).0, "/filter/field");
    assert_eq!(refusal(json!({"op": "exists"})), ("/filter/field".into(), "is required".into()));
}

#[test]
fn attribute_paths_at_the_limits_are_accepted() {
    let longest = "a".repeat(64);
    for field in ["attributes.a.b.c.d.e.f.g.h", &format!("attributes.{longest}"), "attributes.A-z_0.9"] {
        assert!(parse(&leaf(field, "exists", json!(true)), "").is_ok(), "{field}");
    }
}

#[test]
fn hostile_operators_are_refused() {
    for op in [json!("eq OR 1=1"), json!("EQ"), json!(" eq"), json!("="), json!("like"), json!(1), json!(null)] {
        let (pointer, _) = refusal(json!({"field": "email", "op": op, "value": "x"}));
        assert_eq!(pointer, "/filter/op", "{op}");
    }
    assert_eq!(refusal(json!({"field": "email"})), ("/filter/op".into(), "is required".into()));
}

#[test]
fn unknown_keys_are_refused_at_their_pointer() {
    // An object with `or` is a combinator: everything else in it is refused.
    let pointers: Vec<String> = errors(json!({"field": "email", "op": "exists", "or": 1, "sql": "1=1"}))
        .into_iter()
        .map(|e| e.pointer)
        .collect();
    assert_eq!(pointers, ["/filter/field", "/filter/op", "/filter/sql", "/filter/or"]);
    let pointers: Vec<String> = errors(json!({"and": [{"field": "email", "op": "exists", "sql": "1=1", "a/b~c": 0}]}))
        .into_iter()
        .map(|e| e.pointer)
        .collect();
    assert_eq!(pointers, ["/filter/and/0/sql", "/filter/and/0/a~1b~0c"]);
    let pointers: Vec<String> =
        errors(json!({"and": [{"field": "email", "op": "exists"}], "or": []})).into_iter().map(|e| e.pointer).collect();
    assert_eq!(pointers, ["/filter/or"]);
    assert_eq!(refusal(json!({"not": {"field": "email", "op": "exists"}, "value": 1})).0, "/filter/value");
    let pointers: Vec<String> = errors(json!({})).into_iter().map(|e| e.pointer).collect();
    assert_eq!(pointers, ["/filter/field", "/filter/op"]);
}

#[test]
fn nul_null_and_non_scalar_values_are_refused() {
    let cases = [
        (leaf("email", "eq", json!("a\0b")), "/filter/value"),
        (leaf("attributes.a", "eq", json!(null)), "/filter/value"),
        (leaf("attributes.a", "neq", json!({"a": 1})), "/filter/value"),
        (leaf("attributes.a", "eq", json!([1])), "/filter/value"),
        (leaf("attributes.a", "in", json!([1, null])), "/filter/value/1"),
        (leaf("attributes.a", "in", json!(["x", [1]])), "/filter/value/1"),
        (leaf("attributes.a", "in", json!(["\0"])), "/filter/value/0"),
        (leaf("attributes.a", "in", json!("x")), "/filter/value"),
        (leaf("attributes.a", "in", json!([])), "/filter/value"),
        (leaf("attributes.a", "gt", json!(true)), "/filter/value"),
        (leaf("attributes.a", "lt", json!(null)), "/filter/value"),
        (leaf("attributes.a", "exists", json!("yes")), "/filter/value"),
        (leaf("attributes.a", "exists", json!(null)), "/filter/value"),
        (json!({"field": "attributes.a", "op": "eq"}), "/filter/value"),
        (leaf("email", "eq", json!(1)), "/filter/value"),
        (leaf("userId", "gt", json!(1.5)), "/filter/value"),
        (leaf("namespace", "neq", json!(false)), "/filter/value"),
        (leaf("phone", "in", json!(["+15555550100", 15555550100u64])), "/filter/value/1"),
        (leaf("pushToken", "eq", json!("x")), "/filter/op"),
    ];
    for (filter, pointer) in cases {
        assert_eq!(refusal(filter.clone()).0, pointer, "{filter}");
    }
}

#[test]
fn in_lists_and_strings_are_bounded() {
    let values: Vec<Value> = (0..MAX_IN_VALUES).map(|i| json!(i)).collect();
    assert!(parse(&leaf("attributes.a", "in", json!(values)), "").is_ok());
    let values: Vec<Value> = (0..=MAX_IN_VALUES).map(|i| json!(i)).collect();
    assert_eq!(refusal(leaf("attributes.a", "in", json!(values))).0, "/filter/value");
    // 1001 hostile values: one error for the list, none per value.
    let values: Vec<Value> = (0..=MAX_IN_VALUES).map(|_| json!([null])).collect();
    assert_eq!(refusal(leaf("attributes.a", "in", json!(values))).0, "/filter/value");

    assert!(parse(&leaf("email", "eq", json!("a".repeat(1024))), "").is_ok());
    assert_eq!(refusal(leaf("email", "eq", json!("é".repeat(513)))).0, "/filter/value", "bytes, not characters");
    let (pointer, detail) = refusal(leaf("attributes.a", "eq", json!("x".repeat(10 << 20))));
    assert_eq!(pointer, "/filter/value");
    assert!(detail.len() < 100, "the detail does not echo the value");
}

#[test]
fn depth_and_node_count_are_bounded() {
    let nested = |levels: usize| (1..levels).fold(leaf("email", "exists", json!(true)), |f, _| json!({"not": f}));
    assert!(parse(&nested(MAX_DEPTH), "").is_ok());
    let (pointer, _) = refusal(nested(MAX_DEPTH + 1));
    assert_eq!(pointer, format!("/filter{}", "/not".repeat(MAX_DEPTH)));
    // Far deeper than the limit: refused at the limit, without walking the rest.
    assert_eq!(refusal(nested(120)).0, format!("/filter{}", "/not".repeat(MAX_DEPTH)));

    let group = |size: usize| json!({"or": vec![leaf("email", "exists", json!(true)); size]});
    // 1 + 3 * (1 + 64) + 1 + 59 = 256
    let largest = json!({"and": [group(64), group(64), group(64), group(59)]});
    assert!(parse(&largest, "").is_ok());
    let (pointer, detail) = refusal(json!({"and": [group(64), group(64), group(64), group(60)]}));
    assert_eq!(pointer, "/filter/and/3/or/59");
    assert!(detail.contains("256"), "{detail}");

    for children in [json!([]), json!(vec![leaf("email", "exists", json!(true)); 65]), json!({}), json!("x")] {
        assert_eq!(refusal(json!({"or": children.clone()})).0, "/filter/or", "{children}");
    }
    assert_eq!(refusal(json!({"not": [leaf("email", "exists", json!(true))]})).0, "/filter/not");
    assert_eq!(refusal(json!({"and": [1]})).0, "/filter/and/0");
    assert_eq!(refusal(json!("email = 'x'")).0, "/filter");
}

#[test]
fn every_problem_is_reported_up_to_a_cap() {
    let all = errors(json!({"and": [
        {"field": "emial", "op": "eq", "value": "x"},
        {"field": "email", "op": "eq OR 1=1", "value": "x"},
        {"field": "email", "op": "eq", "value": null, "extra": 1},
    ]}));
    let pointers: Vec<&str> = all.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(pointers, ["/filter/and/0/field", "/filter/and/1/op", "/filter/and/2/extra", "/filter/and/2/value"]);
    let values: Vec<Value> = (0..MAX_IN_VALUES).map(|_| json!("\0")).collect();
    assert_eq!(errors(leaf("attributes.a", "in", json!(values))).len(), 32);
    let at_root = parse(&json!({"field": "x", "op": "exists"}), "").unwrap_err();
    assert_eq!(at_root[0].pointer, "/field");
}

const HOSTILE: [&str; 10] = [
    "'); DROP TABLE profiles; --",
    "$1",
    "$2::text",
    "\\",
    "\"",
    "%",
    "' OR '1'='1",
    "*/ SELECT pg_sleep(10) /*",
    "\u{FEFF}\u{202E}",
    "x'::text[]) OR TRUE OR (p.attributes #> '{a}",
];

/// Filters whose every value is `value`, in every position a value can take.
fn shapes(value: &str) -> Vec<Value> {
    let mut shapes = Vec::new();
    for field in ["namespace", "userId", "email", "phone", "attributes.a", "attributes.a.b-c.d_e"] {
        for op in ["eq", "neq", "gt", "lt"] {
            shapes.push(leaf(field, op, json!(value)));
        }
        shapes.push(leaf(field, "in", json!([value, "x", value])));
    }
    shapes.push(json!({"or": [
        {"not": leaf("attributes.a", "eq", json!(value))},
        {"and": [leaf("email", "in", json!([value])), leaf("attributes.z", "gt", json!(1.5))]},
    ]}));
    shapes
}

#[test]
fn hostile_values_only_ever_reach_the_parameters() {
    let benign: Vec<CompiledFilter> = shapes("x").into_iter().map(compile).collect();
    for hostile in HOSTILE {
        for (shape, benign) in shapes(hostile).into_iter().zip(&benign) {
            let compiled = compile(shape.clone());
            assert_safe_shape(&compiled, 1);
            // The SQL depends on the filter's shape alone, never on its values...
            assert_eq!(compiled.sql, benign.sql, "{shape}");
            // ...which is why it contains none of them (but `$1` and `"`, which it has anyway).
            if !benign.sql.contains(hostile) {
                assert!(!compiled.sql.contains(hostile), "{hostile:?} in {}", compiled.sql);
            }
            // ...and they are all in the parameters, as text or as JSON text.
            let as_json = Value::String(hostile.into()).to_string();
            let carried = |p: &SqlParam| match p {
                SqlParam::Text(text) => text == hostile || *text == as_json,
                SqlParam::TextArray(items) => items.iter().any(|t| t == hostile || *t == as_json),
                SqlParam::Float(_) => false,
            };
            assert!(compiled.params.iter().any(carried), "{hostile:?} not in {:?}", compiled.params);
        }
    }
}

#[test]
fn attribute_paths_are_parameters_too() {
    let compiled = compile(leaf("attributes.DROP.TABLE.profiles", "exists", json!(true)));
    assert_eq!(compiled.sql, "((p.attributes #> $1::text[]) IS NOT NULL)");
    assert_eq!(compiled.params, [SqlParam::TextArray(vec!["DROP".into(), "TABLE".into(), "profiles".into()])]);
}

#[test]
fn identity_fields_compile_to_their_columns() {
    let sql = |field: &str, op: &str, value: Value| compile(leaf(field, op, value));
    let eq = sql("userId", "eq", json!("u-1"));
    assert_eq!(eq.sql, "(p.user_id = $1::text)");
    assert_eq!(eq.params, [SqlParam::Text("u-1".into())]);
    assert_eq!(sql("namespace", "neq", json!("n")).sql, "(p.namespace IS DISTINCT FROM $1::text)");
    let within = sql("email", "in", json!(["a@example.com", "b@example.com"]));
    assert_eq!(within.sql, "(p.email_address = ANY ($1::text[]))");
    assert_eq!(within.params, [SqlParam::TextArray(vec!["a@example.com".into(), "b@example.com".into()])]);
    assert_eq!(sql("phone", "exists", json!(true)).sql, "(p.phone_number IS NOT NULL)");
    assert_eq!(sql("phone", "exists", json!(false)).sql, "(p.phone_number IS NULL)");
    assert_eq!(compile(json!({"field": "email", "op": "exists"})).sql, "(p.email_address IS NOT NULL)");
    assert_eq!(sql("email", "gt", json!("m")).sql, "(p.email_address COLLATE \"C\" > $1::text)");
    assert_eq!(sql("userId", "lt", json!("m")).sql, "(p.user_id COLLATE \"C\" < $1::text)");
    let tokens = compile(json!({"field": "pushToken", "op": "exists"}));
    assert_eq!(
        tokens.sql,
        "(CASE WHEN jsonb_typeof(p.push_tokens) = 'array' THEN jsonb_array_length(p.push_tokens) > 0 ELSE false END)"
    );
    assert!(tokens.params.is_empty());
    let none = sql("pushToken", "exists", json!(false)).sql;
    assert!(none.contains("jsonb_array_length(p.push_tokens) = 0 ELSE true END"), "{none}");
}

#[test]
fn attributes_compare_as_json_values() {
    let path = SqlParam::TextArray(vec!["plan".into()]);
    let eq = compile(leaf("attributes.plan", "eq", json!("pro \"x\"")));
    assert_eq!(eq.sql, "((p.attributes #> $1::text[]) = ($2::text)::jsonb)");
    assert_eq!(eq.params, [path.clone(), SqlParam::Text(r#""pro \"x\"""#.into())]);
    let neq = compile(leaf("attributes.plan", "neq", json!(12345678901234567890u64)));
    assert_eq!(neq.sql, "((p.attributes #> $1::text[]) IS DISTINCT FROM ($2::text)::jsonb)");
    assert_eq!(neq.params[1], SqlParam::Text("12345678901234567890".into()), "the number as written");
    let within = compile(leaf("attributes.plan", "in", json!(["pro", 1, true, 2.5])));
    assert_eq!(within.sql, "((p.attributes #> $1::text[]) = ANY (($2::text[])::jsonb[]))");
    let texts = ["\"pro\"", "1", "true", "2.5"].map(String::from).to_vec();
    assert_eq!(within.params, [path.clone(), SqlParam::TextArray(texts)]);
    assert_eq!(compile(leaf("attributes.plan", "exists", json!(false))).sql, "((p.attributes #> $1::text[]) IS NULL)");
}

#[test]
fn attribute_order_comparisons_cast_only_values_of_their_type() {
    let number = compile(leaf("attributes.age", "gt", json!(17)));
    assert_eq!(
        number.sql,
        "(CASE WHEN jsonb_typeof(p.attributes #> $1::text[]) = 'number' \
         THEN (p.attributes #>> $1::text[])::numeric > ($2::float8)::numeric ELSE false END)"
    );
    assert_eq!(number.params, [SqlParam::TextArray(vec!["age".into()]), SqlParam::Float(17.0)]);
    let text = compile(leaf("attributes.name", "lt", json!("m")));
    assert_eq!(
        text.sql,
        "(CASE WHEN jsonb_typeof(p.attributes #> $1::text[]) = 'string' \
         THEN (p.attributes #>> $1::text[]) COLLATE \"C\" < $2::text ELSE false END)"
    );
    assert_eq!(text.params[1], SqlParam::Text("m".into()));
}

#[test]
fn combinators_nest_and_not_is_an_exact_complement() {
    let compiled = compile(json!({"and": [
        leaf("namespace", "eq", json!("n")),
        {"or": [leaf("attributes.a", "exists", json!(true)), {"not": leaf("email", "eq", json!("e"))}]},
    ]}));
    assert_eq!(
        compiled.sql,
        "((p.namespace = $1::text) AND (((p.attributes #> $2::text[]) IS NOT NULL) OR \
         ((p.email_address = $3::text) IS NOT TRUE)))"
    );
    assert_eq!(Filter::And(vec![]).compile(1).sql, "(TRUE)");
    assert_eq!(Filter::Or(vec![]).compile(1).sql, "(FALSE)");
}

#[test]
fn placeholders_start_at_first_param() {
    let filter = parse(
        &json!({"or": [
            leaf("attributes.a", "gt", json!(1)),
            leaf("email", "in", json!(["x"])),
            leaf("attributes.b", "lt", json!("z")),
            leaf("pushToken", "exists", json!(true)),
        ]}),
        "",
    )
    .unwrap();
    let from_one = filter.compile(1);
    let from_five = filter.compile(5);
    assert_eq!(from_five.params, from_one.params);
    assert_eq!(from_five.params.len(), 5);
    assert_safe_shape(&from_five, 5);
    for n in 5..10 {
        assert!(from_five.sql.contains(&format!("${n}::")), "${n} in {}", from_five.sql);
    }
    assert!(!from_five.sql.contains("$1:") && !from_five.sql.contains("$10"), "{}", from_five.sql);
    let mut renumbered = from_one.sql.clone();
    for n in (1..=5).rev() {
        renumbered = renumbered.replace(&format!("${n}::"), &format!("${}::", n + 4));
    }
    assert_eq!(from_five.sql, renumbered);
    assert!(filter.compile(100).sql.contains("$104::"));
}

#[test]
#[should_panic(expected = "from $1")]
fn placeholder_zero_is_a_programming_error() {
    parse(&leaf("email", "exists", json!(true)), "").unwrap().compile(0);
}

#[test]
fn a_filter_serialises_back_to_the_language() {
    let source = json!({"and": [
        {"field": "email", "op": "exists"},
        {"field": "attributes.plan", "op": "in", "value": ["pro", "team", 3]},
        {"field": "attributes.profile.age", "op": "gt", "value": 17},
        {"not": {"field": "attributes.groups.beta", "op": "eq", "value": true}},
        {"or": [{"field": "pushToken", "op": "exists", "value": false}, {"field": "userId", "op": "lt", "value": "m"}]},
    ]});
    let filter = parse(&source, "/filter").unwrap();
    let written = serde_json::to_value(&filter).unwrap();
    assert_eq!(written["and"][0], json!({"field": "email", "op": "exists", "value": true}));
    assert_eq!(written["and"][2], json!({"field": "attributes.profile.age", "op": "gt", "value": 17.0}));
    assert_eq!(written["and"][3]["not"], source["and"][3]["not"]);
    assert_eq!(written["and"][4], source["and"][4]);
    assert_eq!(parse(&written, "").unwrap(), filter);
}

#[cfg(feature = "sql")]
#[test]
fn parameters_are_sent_only_as_their_own_type() {
    use postgres_types::{ToSql, Type};
    let mut out = bytes::BytesMut::new();
    SqlParam::Text("x".into()).to_sql_checked(&Type::TEXT, &mut out).unwrap();
    assert_eq!(&out[..], b"x");
    out.clear();
    SqlParam::Float(1.5).to_sql_checked(&Type::FLOAT8, &mut out).unwrap();
    assert_eq!(&out[..], 1.5f64.to_be_bytes());
    out.clear();
    SqlParam::TextArray(vec!["a".into()]).to_sql_checked(&Type::TEXT_ARRAY, &mut out).unwrap();
    assert!(!out.is_empty());
    assert!(SqlParam::Text("1".into()).to_sql_checked(&Type::FLOAT8, &mut out).is_err());
    assert!(SqlParam::Float(1.0).to_sql_checked(&Type::TEXT, &mut out).is_err());
    assert!(SqlParam::TextArray(vec![]).to_sql_checked(&Type::TEXT, &mut out).is_err());
    assert!(SqlParam::Text("x".into()).to_sql_checked(&Type::INT4, &mut out).is_err());
    assert!(!<SqlParam as ToSql>::accepts(&Type::JSONB));
}
