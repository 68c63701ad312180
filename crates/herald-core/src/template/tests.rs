use serde_json::json;

use super::*;

fn email(subject: &str, html: &str, text: &str) -> Content {
    Content { subject: Some(subject.into()), html: Some(html.into()), text: Some(text.into()), ..Default::default() }
}

#[test]
fn html_is_escaped_and_text_is_not() {
    let compiled =
        CompiledContent::compile(&email("Hi {{ context.x }}", "<p>{{ context.x }}</p>", "{{ context.x }}")).unwrap();
    let rendered = compiled.render(json!({}), json!({"x": "<script>alert(1)</script>"})).unwrap();
    assert_eq!(rendered["html"], "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>");
    assert_eq!(rendered["text"], "<script>alert(1)</script>");
    assert_eq!(rendered["subject"], "Hi <script>alert(1)</script>");
}

#[test]
fn a_url_in_html_keeps_its_slashes_and_its_quotes_and_ampersands_are_escaped() {
    let html = "<a href=\"{{ context.url }}\">{{ context.label }}</a>";
    let compiled = CompiledContent::compile(&email("s", html, "t")).unwrap();
    let context = json!({"url": "https://example.com/r/abc?x=1&y=2", "label": "it's \"here\""});
    let rendered = compiled.render(json!({}), context).unwrap();
    assert_eq!(rendered["html"], "<a href=\"https://example.com/r/abc?x=1&amp;y=2\">it&#x27;s &quot;here&quot;</a>");
    // Nothing can close the attribute or open a tag.
    let hostile = compiled.render(json!({}), json!({"url": "\"><script>x</script>", "label": "<"})).unwrap();
    assert_eq!(hostile["html"], "<a href=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\">&lt;</a>");
}

#[test]
fn an_unknown_filter_does_not_compile_and_the_known_ones_do() {
    let errors =
        CompiledContent::compile(&email("s", "{{ context.x | nosuchfilter }}", "{% filter nope %}x{% endfilter %}"))
            .unwrap_err();
    let found: Vec<(&str, &str)> = errors.iter().map(|e| (e.part.as_str(), e.code)).collect();
    assert_eq!(found, [("html", "unknown-filter"), ("text", "unknown-filter")]);
    assert!(errors[0].message.contains("nosuchfilter"), "{errors:?}");
    let known = "{{ context.x | upper | trim | default(value=\"y\") | safe }}{% filter lower %}X{% endfilter %}";
    assert!(CompiledContent::compile(&email("s", known, "{{ context.x | length }}")).is_ok());
}

#[test]
fn a_subject_from_caller_data_renders_on_one_line_so_the_preview_shows_what_is_sent() {
    let compiled =
        CompiledContent::compile(&email("Hello {{ context.x }}", "<p>{{ context.x }}</p>", "{{ context.x }}")).unwrap();
    let rendered = compiled.render(json!({}), json!({"x": "hi\r\nBcc: evil@example.com"})).unwrap();
    assert_eq!(rendered["subject"], "Hello hi Bcc: evil@example.com");
    assert_eq!(rendered["text"], "hi\r\nBcc: evil@example.com", "only the header is folded");
}

#[test]
fn get_env_cannot_render() {
    let compiled =
        CompiledContent::compile(&Content { body: Some("{{ get_env(name=\"PATH\") }}".into()), ..Default::default() })
            .unwrap();
    let error = compiled.render(json!({}), json!({})).unwrap_err();
    assert!(error.message.contains("get_env"), "{error:?}");
    assert!(!error.message.contains("/usr"), "the environment leaked: {error:?}");
}

#[test]
fn syntax_errors_name_the_part_and_the_line() {
    let errors = CompiledContent::compile(&email("ok", "<p>\n{{ context.x </p>", "{% if %}")).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert_eq!((errors[0].part.as_str(), errors[0].line), ("html", Some(2)));
    assert_eq!((errors[1].part.as_str(), errors[1].line), ("text", Some(1)));
}

#[test]
fn render_output_is_bounded() {
    let body = "{% for i in range(end=10000) %}{{ context.big }}{% endfor %}";
    let compiled = CompiledContent::compile(&Content { body: Some(body.into()), ..Default::default() }).unwrap();
    let error = compiled.render(json!({}), json!({"big": "x".repeat(1000)})).unwrap_err();
    assert!(error.message.contains("exceeds"), "{error:?}");
}

#[test]
fn huge_ranges_are_refused() {
    let constant =
        Content { body: Some("{% for i in range(end=100000000) %}{% endfor %}".into()), ..Default::default() };
    let errors = CompiledContent::compile(&constant).unwrap_err();
    assert!(errors[0].message.contains("`range` of 100000000 items"), "{errors:?}");
    let compiled = CompiledContent::compile(&Content {
        body: Some("{% for i in range(end=context.n) %}{% endfor %}".into()),
        ..Default::default()
    })
    .unwrap();
    assert!(compiled.render(json!({}), json!({"n": 100_000_000})).unwrap_err().message.contains("limited"));
}

#[test]
fn a_missing_context_variable_fails_instead_of_rendering_empty() {
    let compiled =
        CompiledContent::compile(&Content { body: Some("code {{ context.otp }}".into()), ..Default::default() })
            .unwrap();
    assert!(compiled.render(json!({}), json!({})).is_err());
    assert_eq!(compiled.render(json!({}), json!({"otp": 482913})).unwrap()["body"], "code 482913");
}

#[test]
fn analysis_lists_variables_with_their_guards() {
    let html = "{% if profile.vip %}VIP{% endif %}{{ profile.person.name.firstName | default(value='there') }}\
                {% for item in context.items %}{{ item.name }}{{ loop.index }}{% endfor %}{{ context.resetUrl }}";
    let compiled = CompiledContent::compile(&Content { html: Some(html.into()), ..Default::default() }).unwrap();
    let (_, analysis) = &compiled.analyse()[0];
    let variables: Vec<(&str, bool)> = analysis.variables.iter().map(|v| (v.path.as_str(), v.guarded)).collect();
    assert_eq!(
        variables,
        [
            ("context.items", false),
            ("context.resetUrl", false),
            ("profile.person.name.firstName", true),
            ("profile.vip", true)
        ]
    );
    assert!(analysis.forbidden.is_empty(), "{:?}", analysis.forbidden);
}

#[test]
fn analysis_flags_forbidden_constructs() {
    let body = "{{ user.name }}{{ context.system.x }}{{ get_env(name='HOME') }}{{ now() }}{{ range(end=2) | length }}";
    let compiled = CompiledContent::compile(&Content { body: Some(body.into()), ..Default::default() }).unwrap();
    let (_, analysis) = &compiled.analyse()[0];
    let forbidden: Vec<Forbidden> = analysis.forbidden.iter().cloned().collect();
    assert_eq!(
        forbidden,
        [
            Forbidden::UnknownVariable("user".into()),
            Forbidden::ContextSystem("context.system.x".into()),
            Forbidden::Function("get_env".into()),
            Forbidden::Function("now".into()),
        ]
    );
}

#[test]
fn first_key_handles_dots_and_brackets() {
    let key = |path: &str| VariableUse { path: path.into(), guarded: false }.first_key().map(str::to_string);
    assert_eq!(key("context.resetUrl.host"), Some("resetUrl".into()));
    assert_eq!(key("context[\"otp\"]"), Some("otp".into()));
    assert_eq!(key("context"), None);
    // Tera takes a quoted key whole: the execution must ask for the same attribute.
    assert_eq!(key("context[\"a.b\"]"), Some("a.b".into()));
    assert_eq!(key("context['a]b'].x"), Some("a]b".into()));
    assert_eq!(key("context[\"a'\"]"), Some("a'".into()));
}
