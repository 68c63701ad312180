use herald_tests::TestApp;
use herald_tests::fixtures::{otp_sms, password_reset_email};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn get_env_cannot_render_in_a_preview_nor_pass_review() {
    let app = TestApp::spawn().await;
    let mut document = otp_sms("env");
    document["content"]["body"] = json!("{{ get_env(name=\"PATH\") }}");
    let id = app.create_campaign(&document).await;
    let preview = app.post(&format!("/campaigns/{id}/preview"), &json!({})).await;
    preview.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "template-error");
    let text = preview.body.to_string();
    assert!(text.contains("get_env") && !text.contains("/usr/bin"), "{text}");
    let review = app.post(&format!("/campaigns/{id}/activate"), &json!(null)).await;
    assert_eq!(review.body["problems"][0]["code"], "forbidden-function");
}

#[tokio::test]
async fn script_in_context_is_escaped_in_html_and_kept_verbatim_in_text_and_sms() {
    let app = TestApp::spawn().await;
    let attack = "<script>alert(1)</script>";
    let email = app.create_campaign(&password_reset_email("email")).await;
    let sample = json!({"profile": {"person": {"name": {"firstName": "Jane"}}}, "context": {"resetUrl": attack}});
    let rendered = app.post(&format!("/campaigns/{email}/preview"), &sample).await.body["rendered"].clone();
    let html = rendered["html"].as_str().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    assert!(rendered["text"].as_str().unwrap().contains(attack));

    let sms = app.create_campaign(&otp_sms("sms")).await;
    let rendered = app.post(&format!("/campaigns/{sms}/preview"), &json!({"context": {"otp": attack}})).await;
    assert_eq!(rendered.body["rendered"]["body"], format!("Your code is {attack}"));
}

#[tokio::test]
async fn preview_reports_template_errors_with_part_and_line() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("broken");
    document["content"]["text"] = json!("line one\nline two {% if %}");
    let id = app.create_campaign(&document).await;
    let reply = app.post(&format!("/campaigns/{id}/preview"), &json!({})).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "template-error");
    assert_eq!(reply.body["errors"][0]["part"], "text");
    assert_eq!(reply.body["errors"][0]["line"], 2);
}

#[tokio::test]
async fn preview_names_a_missing_context_variable_instead_of_rendering_it_empty() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&otp_sms("otp")).await;
    let reply = app.post(&format!("/campaigns/{id}/preview"), &json!({"context": {"otpp": "1"}})).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "template-error");
    assert!(reply.body["errors"][0]["message"].as_str().unwrap().contains("context.otp"), "{}", reply.body);
}
