use herald_tests::TestApp;
use herald_tests::fixtures::password_reset_email;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_curl_sample_lists_exactly_the_variables_the_live_content_uses() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("reset");
    document["content"]["subject"] =
        json!("{% if profile.vip %}VIP {% endif %}Reset, {{ profile.person.name.firstName | default(value='there') }}");
    document["content"]["text"] = json!(
        "{{ context.resetUrl }} {{ context.otp | default(value='') }} {% for l in context.links %}{{ l.href }}{% endfor %}"
    );
    let id = app.live_campaign(&document).await;

    let reply = app.get(&format!("/campaigns/{id}/curl")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["contextVariables"], json!(["links", "otp", "resetUrl"]));
    assert_eq!(reply.body["profileVariables"], json!(["person.name.firstName", "vip"]));
    let recipient = &reply.body["body"]["recipients"][0];
    assert_eq!(recipient["context"], json!({"links": "<links>", "otp": "<otp>", "resetUrl": "<resetUrl>"}));
    assert_eq!(
        recipient["profile"],
        json!({"person": {"name": {"firstName": "<person.name.firstName>"}}, "vip": "<vip>"})
    );
    assert_eq!(recipient["namespace"], "email");
    assert_eq!(reply.body["body"]["campaignId"], id.as_str());

    let command = reply.body["command"].as_str().unwrap();
    assert!(command.starts_with(&format!("curl -X POST '{}/im/executions/unitary'", app.address)), "{command}");
    assert!(command.contains("Authorization: Bearer $HERALD_API_KEY"));
    assert!(command.contains(&id));
}

#[tokio::test]
async fn the_curl_sample_follows_the_live_version_not_the_draft() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    app.patch(&format!("/campaigns/{id}"), &json!({"content": {"text": "{{ context.brandNew }}", "html": null}})).await;
    let reply = app.get(&format!("/campaigns/{id}/curl")).await;
    assert_eq!(reply.body["contextVariables"], json!(["resetUrl"]));
}

#[tokio::test]
async fn a_draft_has_no_curl_sample_yet() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let reply = app.get(&format!("/campaigns/{id}/curl")).await;
    reply.assert_problem(StatusCode::CONFLICT, "campaign-not-live");
    assert_eq!(reply.body["campaignStatus"], "draft");
}
