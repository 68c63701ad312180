//! Hostile templates: each must be refused or stopped by a budget, quickly, without taking the
//! process down. Compiles and renders run on threads with a 2 MiB stack, as tokio's blocking
//! pool and worker threads have, so a recursion that would abort a real process aborts here.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

fn body(source: &str) -> Content {
    Content { body: Some(source.into()), ..Default::default() }
}

/// Runs `work` on a thread with tokio's default stack size.
fn on_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 * 1024 * 1024).spawn(work).unwrap().join().unwrap()
}

fn compile_error(source: &str) -> TemplateError {
    let source = source.to_string();
    let errors = on_small_stack(move || CompiledContent::compile(&body(&source)).map(|_| ()).unwrap_err());
    errors.into_iter().next().unwrap()
}

/// Compiles `source` and renders it with `context`; returns the error and how long it took.
fn render_error(source: &str, context: Value) -> (TemplateError, Duration) {
    let source = source.to_string();
    on_small_stack(move || {
        let compiled = CompiledContent::compile(&body(&source)).unwrap();
        let started = Instant::now();
        let error = compiled.render(json!({}), context).unwrap_err();
        (error, started.elapsed())
    })
}

fn assert_over_budget(source: &str, context: Value, reason: &str) {
    let (error, took) = render_error(source, context);
    assert_eq!(error.code, "render-budget", "{error:?}");
    assert!(error.message.contains(reason), "{error:?}");
    assert!(took < Duration::from_millis(900), "stopped after {took:?}");
}

#[test]
fn a_self_calling_macro_does_not_compile() {
    let error = compile_error("{% macro boom(n) %}{{ self::boom(n=n) }}{% endmacro %}{{ self::boom(n=1) }}");
    assert_eq!((error.code, error.part.as_str()), ("forbidden-tag", "body"));
    assert!(error.message.contains("`macro`"), "{error:?}");
}

#[test]
fn include_extends_import_and_block_do_not_compile() {
    for source in [
        "{% include \"body.txt\" %}",
        "{% extends \"body.txt\" %}",
        "{% import \"body.txt\" as m %}x",
        "{% block b %}x{% endblock b %}",
    ] {
        assert_eq!(compile_error(source).code, "forbidden-tag", "{source}");
    }
}

#[test]
fn blocks_nested_too_deep_are_refused_before_parsing() {
    // 500 nested `if`s aborted the process in tera's parser.
    let source = format!("{}x{}", "{% if a %}".repeat(500), "{% endif %}".repeat(500));
    let error = compile_error(&source);
    assert_eq!((error.code, error.line), ("template-too-deep", Some(1)));
    let fine = format!("{}x{}", "{% for a in b %}".repeat(16), "{% endfor %}".repeat(16));
    assert!(CompiledContent::compile(&body(&fine)).is_ok());
}

#[test]
fn brackets_nested_too_deep_are_refused_before_parsing() {
    let parentheses = format!("{{{{ {}1{} }}}}", "(".repeat(3000), ")".repeat(3000));
    assert_eq!(compile_error(&parentheses).code, "template-too-deep");
    // Ten nested calls took tera's parser 16 s.
    let calls = format!("{{{{ {}1{} }}}}", "range(end=".repeat(10), ")".repeat(10));
    let started = Instant::now();
    assert_eq!(compile_error(&calls).code, "template-too-deep");
    assert!(started.elapsed() < Duration::from_millis(100));
    // Brackets inside strings, comments and raw blocks are text.
    let text = format!(
        "{{{{ \"{}\" }}}}{{# {} #}}{{% raw %}}{{{{ {} }}}}{{% endraw %}}",
        "(".repeat(50),
        "[".repeat(50),
        "(".repeat(50)
    );
    assert!(CompiledContent::compile(&body(&text)).is_ok());
}

#[test]
fn a_long_operator_chain_is_refused_before_it_can_overflow_the_renderer() {
    // `a + a + …` nests one level per term: 10,000 terms overflowed the stack when rendered.
    let source = format!("{{{{ {}1 }}}}", "context.a + ".repeat(10_000));
    assert_eq!(compile_error(&source).code, "template-too-complex");
    let fine = format!("{{{{ {}1 }}}}", "context.a + ".repeat(200));
    let compiled =
        on_small_stack(move || CompiledContent::compile(&body(&fine)).unwrap().render(json!({}), json!({"a": 1})));
    assert_eq!(compiled.unwrap()["body"], "201");
}

#[test]
fn the_parser_work_is_capped_whatever_the_nesting() {
    // Within the nesting limit, nested calls still backtrack: many of them in one part used to
    // parse for seconds; the call cap ends it.
    let tag = format!("{{{{ {}1{} }}}}\n", "range(end=".repeat(6), ")".repeat(6));
    let source = tag.repeat(crate::campaign::MAX_TEMPLATE_PART_BYTES / tag.len());
    let started = Instant::now();
    let error = compile_error(&source);
    assert_eq!(error.code, "template-too-complex", "{error:?}");
    // The cap is about half a second of an optimised build; tests run unoptimised.
    let bound = if cfg!(debug_assertions) { Duration::from_secs(20) } else { Duration::from_secs(2) };
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
}

#[test]
fn a_billion_iterations_stop_at_the_iteration_budget() {
    // Bounds from the context: the review cannot see them.
    let source = "{% for i in range(end=context.n) %}{% for j in range(end=context.n) %}{% for k in range(end=context.n) %}\
                  {% endfor %}{% endfor %}{% endfor %}";
    assert_over_budget(source, json!({"n": 1000}), "loop iterations");
    // With constant bounds, it does not even compile.
    let constant = source.replace("context.n", "1000");
    let error = compile_error(&constant);
    assert_eq!(error.code, "render-budget");
    assert!(error.message.contains("1001001000 iterations"), "{error:?}");
}

#[test]
fn the_iteration_budget_counts_every_loop_of_the_render_and_every_kind_of_loop() {
    let source = "{% for i in range(end=context.n) %}{% endfor %}".repeat(11);
    assert_over_budget(&source, json!({"n": 10_000}), "loop iterations");
    // Characters of a string and items of a context array count as well.
    let source = "{% for c in context.s %}{% for x in context.items %}{% endfor %}{% endfor %}";
    assert_over_budget(source, json!({"s": "x".repeat(1000), "items": vec![1; 200]}), "loop iterations");
    let ok = "{% for i in range(end=10000) %}{% endfor %}".repeat(9);
    assert!(CompiledContent::compile(&body(&ok)).unwrap().render(json!({}), json!({})).is_ok());
}

#[test]
fn a_loop_with_a_big_body_stops_at_the_step_budget() {
    let source = format!("{{% for i in range(end=10000) %}}{}{{% endfor %}}", "{% if i %}{% endif %}".repeat(200));
    let compiled = CompiledContent::compile(&body(&source)).unwrap();
    // A generous clock, so that the step budget is what stops it even unoptimised.
    let error = compiled.render_within(json!({}), json!({}), Duration::from_secs(60)).unwrap_err();
    assert_eq!(
        (error.code, error.message.as_str()),
        ("render-budget", "the render went over its budget: more than 1000000 evaluation steps")
    );
}

#[test]
fn chained_replace_cannot_build_a_huge_string() {
    // Five chained `replace` of a 62-byte string ask for 62^6 bytes (tens of gigabytes): when
    // the string is a constant, compiling refuses it.
    let source =
        format!("{{% set a = \"{}\" %}}{{{{ a{} }}}}", "a".repeat(62), " | replace(from=\"a\", to=a)".repeat(5));
    assert_eq!(compile_error(&source).code, "render-budget");
    // The same from the context, which the review cannot see.
    let source = format!("{{{{ context.a{} }}}}", " | replace(from=\"a\", to=context.a)".repeat(5));
    assert_over_budget(&source, json!({"a": "a".repeat(62)}), "the limit is 1048576");
}

#[test]
fn every_string_growing_filter_is_bounded() {
    let big = json!({"s": "a\n".repeat(20_000), "items": vec!["x"; 5000]});
    for source in [
        "{{ context.s | replace(from=\"\", to=context.s) }}",
        "{{ context.items | join(sep=context.s) }}",
        "{{ context.s | split(pat=\"\") | length }}",
        "{{ context.s | indent(prefix=context.s) }}",
    ] {
        assert_over_budget(source, big.clone(), "the limit is 1048576");
    }
}

#[test]
fn doubling_a_variable_in_a_loop_stops_at_the_value_budget() {
    let concat =
        "{% set s = context.s %}{% for i in range(end=64) %}{% set_global s = s ~ s %}{% endfor %}{{ s | length }}";
    assert_over_budget(concat, json!({"s": "ab"}), "the limit is 1048576");
    // Arrays of arrays double too, and would be dropped recursively: size and depth are bounded.
    let arrays = "{% set a = [1] %}{% for i in range(end=64) %}{% set_global a = [a, a] %}{% endfor %}{{ a | length }}";
    assert_over_budget(arrays, json!({}), "budget");
    let deep = "{% set a = [1] %}{% for i in range(end=1000) %}{% set_global a = [a] %}{% endfor %}{{ a | length }}";
    assert_over_budget(deep, json!({}), "nested more than 128 deep");
}

#[test]
fn a_long_array_literal_of_copies_stops_at_the_render_total() {
    let source = format!("{{% set a = [{}] %}}", "context.s, ".repeat(5000));
    assert_over_budget(&source, json!({"s": "x".repeat(100_000)}), "bytes of values built");
}

#[test]
fn a_filter_section_cannot_buffer_past_the_budget() {
    let source = format!(
        "{{% filter upper %}}{{% for i in range(end=10000) %}}{}{{{{ context.s }}}}{{% endfor %}}{{% endfilter %}}",
        "x".repeat(1000)
    );
    assert_over_budget(&source, json!({"s": "y".repeat(3000)}), "bytes of values built");
}

#[test]
fn a_slow_render_stops_itself_at_its_deadline() {
    // Within the iteration budget, each iteration scans a megabyte.
    let source = "{% set big = context.s | replace(from=\"a\", to=\"aaaaaaaa\") %}\
                  {% for i in range(end=9000) %}{% for j in range(end=10) %}{% if \"zz\" in big %}z{% endif %}{% endfor %}{% endfor %}";
    let compiled = CompiledContent::compile(&body(source)).unwrap();
    let started = Instant::now();
    let error =
        compiled.render_within(json!({}), json!({"s": "a".repeat(120_000)}), Duration::from_millis(100)).unwrap_err();
    assert_eq!((error.code, error.message.as_str()), ("render-budget", "the render went over its budget: out of time"));
    assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
}

#[test]
fn the_budget_is_per_render_not_per_compiled_template() {
    let source = "{% for i in range(end=10000) %}{% endfor %}".repeat(9);
    let compiled = CompiledContent::compile(&body(&source)).unwrap();
    for _ in 0..3 {
        assert!(compiled.render(json!({}), json!({})).is_ok());
    }
}

#[test]
fn instrumenting_keeps_what_templates_mean() {
    let html = "{% set n = context.items | length %}{% for item in context.items %}{% if loop.first %}[{% endif %}\
                {{ item.name }}{% if item.skip %}{% continue %}{% endif %}{% if loop.index > 2 %}{% break %}{% endif %}\
                ,{% endfor %}]{{ context.missing | default(value=\"d\") }}{{ \"<b>\" | safe }}{{ \"<i>\" ~ context.x }}\
                {{ [1, 2] | join(sep=\"-\") }}{% filter upper %}{{ n }}{% endfilter %}{% raw %}{{ x }}{% endraw %}";
    let compiled = CompiledContent::compile(&Content { html: Some(html.into()), ..Default::default() }).unwrap();
    let items = json!([{"name": "a"}, {"name": "b", "skip": true}, {"name": "c"}, {"name": "d"}]);
    let rendered = compiled.render(json!({}), json!({"items": items, "x": "&"})).unwrap();
    // A concatenation is escaped in HTML like any other value (tera alone leaves it raw).
    assert_eq!(rendered["html"], "[a,bc]d<b>&lt;i&gt;&amp;1-24{{ x }}");
}

#[test]
fn a_missing_variable_in_a_condition_is_still_false() {
    let compiled =
        CompiledContent::compile(&body("{% if context.a and not context.b or context.c %}y{% else %}n{% endif %}"))
            .unwrap();
    assert_eq!(compiled.render(json!({}), json!({})).unwrap()["body"], "n");
}

#[test]
fn review_sees_constant_budgets_before_anything_runs() {
    let analysed = |source: &str| {
        analysis::analyse(&Template::new("x", None, source).unwrap().ast).forbidden.into_iter().collect::<Vec<_>>()
    };
    let nested = "{% for i in range(end=1000) %}{% for j in range(end=1000) %}{% for k in range(end=1000) %}\
                  {% endfor %}{% endfor %}{% endfor %}";
    assert!(matches!(&analysed(nested)[..], [Forbidden::Budget(why)] if why.contains("1001001000 iterations")));
    let product = "{% for i in range(end=300) %}{% for j in [1, 2, 3, 4] %}{% for k in range(start=0, end=100, step_by=1) %}\
                   {% endfor %}{% endfor %}{% endfor %}";
    assert_eq!(analysed(product).len(), 1);
    let fine = "{% for i in range(end=300) %}{% for j in range(end=300) %}{% endfor %}{% endfor %}";
    assert!(analysed(fine).is_empty());
    assert!(
        matches!(&analysed("{% for i in range(end=20000) %}{% endfor %}")[..], [Forbidden::Budget(why)] if why.contains("20000 items"))
    );
    let bomb = format!("{{% set a = \"{}\" %}}{{{{ a{} }}}}", "a".repeat(62), " | replace(from=\"a\", to=a)".repeat(5));
    assert!(matches!(&analysed(&bomb)[..], [Forbidden::Budget(why)] if why.contains("string of")));
    // A loop variable hides a constant of the same name; context values are unknown.
    let shadowed = "{% set a = \"aaaaaaaa\" %}{% for a in context.items %}{{ a | replace(from=\"a\", to=\"aaaaaaaaaaaaaaaaaaaa\") }}{% endfor %}";
    assert!(analysed(shadowed).is_empty());
}

#[test]
fn a_subject_is_kept_on_one_line() {
    assert_eq!(single_line("Hello"), "Hello");
    assert_eq!(single_line("Hi\r\nBcc: victim@example.com"), "Hi Bcc: victim@example.com");
    assert_eq!(single_line("a\t\u{0}\u{85}\u{2028}b\n"), "a b");
}

#[test]
fn the_pre_scan_stays_linear_on_unclosed_constructs() {
    for unit in ["{% raw %}", "{{ \"", "{# ", "{{ (", "{% if a %}{% endif %}"] {
        let source = unit.repeat(crate::campaign::MAX_TEMPLATE_PART_BYTES / unit.len());
        let started = Instant::now();
        let _ = limits::prescan(&source);
        assert!(started.elapsed() < Duration::from_millis(500), "{unit}: {:?}", started.elapsed());
    }
}
