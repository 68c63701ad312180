use herald_tests::TestApp;
use herald_tests::fixtures::password_reset_email;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_new_campaign_is_a_draft_that_can_be_edited_and_deleted() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;

    let created = app.get(&format!("/campaigns/{id}")).await;
    assert_eq!(created.body["status"], "draft");
    assert_eq!(created.body["draftVersion"]["number"], 1);
    assert_eq!(created.body["liveVersion"], Value::Null);

    let patched =
        app.patch(&format!("/campaigns/{id}"), &json!({"description": "new", "content": {"text": null}})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["description"], "new");
    assert_eq!(patched.body["draftVersion"]["number"], 1, "editing a draft edits the same version");
    assert_eq!(patched.body["draftVersion"]["definition"]["content"].get("text"), None);
    assert!(patched.body["draftVersion"]["definition"]["content"]["html"].is_string());

    assert_eq!(app.delete(&format!("/campaigns/{id}")).await.status, StatusCode::NO_CONTENT);
    app.get(&format!("/campaigns/{id}")).await.assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
}

#[tokio::test]
async fn activation_makes_the_draft_the_live_version() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let reply = app.post(&format!("/campaigns/{id}/activate"), &Value::Null).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "live");
    assert_eq!(reply.body["liveVersion"]["number"], 1);
    assert_eq!(reply.body["draftVersion"], Value::Null);
    assert!(reply.body["activatedAt"].is_string());
}

#[tokio::test]
async fn a_draft_cannot_be_stopped_or_archived() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    for action in ["stop", "archive"] {
        let reply = app.post(&format!("/campaigns/{id}/{action}"), &Value::Null).await;
        reply.assert_problem(StatusCode::CONFLICT, "illegal-transition");
        assert_eq!(reply.body["campaignStatus"], "draft");
        assert_eq!(reply.body["action"], action);
    }
}

#[tokio::test]
async fn a_live_campaign_cannot_be_deleted_archived_or_reactivated_without_a_draft() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    app.delete(&format!("/campaigns/{id}")).await.assert_problem(StatusCode::CONFLICT, "illegal-transition");
    for action in ["archive", "activate"] {
        let reply = app.post(&format!("/campaigns/{id}/{action}"), &Value::Null).await;
        reply.assert_problem(StatusCode::CONFLICT, "illegal-transition");
        assert_eq!(reply.body["campaignStatus"], "live");
    }
}

#[tokio::test]
async fn a_stopped_campaign_is_final_and_can_only_be_archived_or_duplicated() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    let stopped = app.post(&format!("/campaigns/{id}/stop"), &Value::Null).await;
    assert_eq!(stopped.status, StatusCode::OK);
    assert_eq!(stopped.body["status"], "stopped");

    for action in ["activate", "stop"] {
        let reply = app.post(&format!("/campaigns/{id}/{action}"), &Value::Null).await;
        reply.assert_problem(StatusCode::CONFLICT, "illegal-transition");
        assert_eq!(reply.body["campaignStatus"], "stopped");
    }
    app.patch(&format!("/campaigns/{id}"), &json!({"description": "x"}))
        .await
        .assert_problem(StatusCode::CONFLICT, "illegal-transition");
    app.delete(&format!("/campaigns/{id}")).await.assert_problem(StatusCode::CONFLICT, "illegal-transition");

    let archived = app.post(&format!("/campaigns/{id}/archive"), &Value::Null).await;
    assert_eq!(archived.body["status"], "archived");
    let patch = app.patch(&format!("/campaigns/{id}"), &json!({"description": "x"})).await;
    patch.assert_problem(StatusCode::CONFLICT, "illegal-transition");
    assert_eq!(patch.body["campaignStatus"], "archived");
    app.post(&format!("/campaigns/{id}/archive"), &Value::Null)
        .await
        .assert_problem(StatusCode::CONFLICT, "illegal-transition");

    let copy = app.post(&format!("/campaigns/{id}/duplicate"), &Value::Null).await;
    assert_eq!(copy.status, StatusCode::CREATED, "{}", copy.body);
    assert_eq!(copy.body["status"], "draft");
    assert_eq!(copy.body["name"], "reset copy");
    assert_ne!(copy.body["id"], id.as_str());
}

#[tokio::test]
async fn duplicate_copies_the_newest_version_and_picks_a_free_name() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    app.patch(&format!("/campaigns/{id}"), &json!({"content": {"subject": "v2 subject"}})).await;
    let first = app.post(&format!("/campaigns/{id}/duplicate"), &Value::Null).await;
    let second = app.post(&format!("/campaigns/{id}/duplicate"), &Value::Null).await;
    assert_eq!(first.body["name"], "reset copy");
    assert_eq!(second.body["name"], "reset copy 2");
    assert_eq!(first.body["draftVersion"]["definition"]["content"]["subject"], "v2 subject");
    let named = app.post(&format!("/campaigns/{id}/duplicate"), &json!({"name": "reset again"})).await;
    assert_eq!(named.body["name"], "reset again");
    app.post(&format!("/campaigns/{id}/duplicate"), &json!({"name": "reset again"}))
        .await
        .assert_problem(StatusCode::CONFLICT, "campaign-name-taken");
}

#[tokio::test]
async fn editing_a_live_campaign_creates_a_draft_and_the_live_version_keeps_rendering_until_activated() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    let sample =
        json!({"profile": {"person": {"name": {"firstName": "Jane"}}}, "context": {"resetUrl": "https://x/r"}});

    let patched =
        app.patch(&format!("/campaigns/{id}"), &json!({"content": {"text": "NEW {{ context.resetUrl }}"}})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["status"], "live", "the live version keeps serving");
    assert_eq!(patched.body["liveVersion"]["number"], 1);
    assert_eq!(patched.body["draftVersion"]["number"], 2);

    let live = app.post(&format!("/campaigns/{id}/preview?version=live"), &sample).await;
    assert_eq!(live.body["rendered"]["text"], "Hi Jane, reset here: https://x/r");
    let draft = app.post(&format!("/campaigns/{id}/preview"), &sample).await;
    assert_eq!(draft.body["version"], "draft");
    assert_eq!(draft.body["rendered"]["text"], "NEW https://x/r");

    // A second edit changes the same draft, not a third version.
    let again =
        app.patch(&format!("/campaigns/{id}"), &json!({"content": {"text": "NEWER {{ context.resetUrl }}"}})).await;
    assert_eq!(again.body["draftVersion"]["number"], 2);

    let activated = app.post(&format!("/campaigns/{id}/activate"), &Value::Null).await;
    assert_eq!(activated.body["liveVersion"]["number"], 2);
    assert_eq!(activated.body["draftVersion"], Value::Null);
    let live = app.post(&format!("/campaigns/{id}/preview?version=live"), &sample).await;
    assert_eq!(live.body["rendered"]["text"], "NEWER https://x/r");
}

#[tokio::test]
async fn the_channel_of_a_campaign_cannot_change() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let reply = app.patch(&format!("/campaigns/{id}"), &json!({"channel": "sms"})).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    assert_eq!(reply.body["errors"][0]["pointer"], "/channel");
}

#[tokio::test]
async fn campaigns_are_listed_by_status_and_paged() {
    let app = TestApp::spawn().await;
    let live = app.live_campaign(&password_reset_email("one")).await;
    let draft = app.create_campaign(&password_reset_email("two")).await;
    let stopped = app.live_campaign(&password_reset_email("three")).await;
    app.post(&format!("/campaigns/{stopped}/stop"), &Value::Null).await;

    let ids = |reply: &herald_tests::Reply| -> Vec<String> {
        reply.body["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&app.get("/campaigns").await), [live.clone(), draft.clone(), stopped.clone()]);
    assert_eq!(ids(&app.get("/campaigns?status=live").await), [live.as_str()]);
    assert_eq!(ids(&app.get("/campaigns?status=draft").await), [draft.as_str()]);
    assert_eq!(ids(&app.get("/campaigns?status=stopped").await), [stopped.as_str()]);

    let page = app.get("/campaigns?limit=2").await;
    assert_eq!(ids(&page), [live, draft]);
    let next = page.body["next"].as_str().unwrap();
    assert_eq!(ids(&app.get(&format!("/campaigns?limit=2&after={next}")).await), [stopped]);

    app.get("/campaigns?status=running").await.assert_problem(StatusCode::BAD_REQUEST, "validation");
}

#[tokio::test]
async fn names_are_unique_within_a_sandbox() {
    let app = TestApp::spawn().await;
    app.create_campaign(&password_reset_email("reset")).await;
    app.post("/campaigns", &password_reset_email("reset"))
        .await
        .assert_problem(StatusCode::CONFLICT, "campaign-name-taken");
}
