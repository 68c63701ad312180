//! SES feedback end to end, with moto: SES sends, SES-format events published to an SNS topic,
//! fanned out to an SQS queue, taken in by Herald's consumer; the deliveries, the suppression
//! list, the report and the next send all show it, and the queue is left empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_tests::moto::Moto;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::feedback::{SqsFeedback, SqsFeedbackSettings};
use herald_worker::providers::aws::AwsProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const BOUNCE: &str = include_str!("../fixtures/ses/bounce.json");
const COMPLAINT: &str = include_str!("../fixtures/ses/complaint.json");
const DELIVERY: &str = include_str!("../fixtures/ses/delivery.json");
const FIXTURE_MESSAGE_ID: &str = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000";

/// An email campaign with context-only content, naming a configuration set.
pub(crate) fn notice_email(name: &str, send_to_complained: bool) -> Value {
    json!({
        "name": name,
        "channel": "email",
        "identityNamespace": "email",
        "surface": { "fromAddress": "no-reply@example.com", "configurationSet": "herald-events" },
        "content": { "subject": "Your code", "html": "<p>{{ context.code }}</p>", "text": "{{ context.code }}" },
        "sendToComplainedAddresses": send_to_complained,
    })
}

/// The SES event `fixture` rewritten for one of Herald's messages.
pub(crate) fn event_for(fixture: &str, message_id: &str, address: &str) -> String {
    fixture.replace(FIXTURE_MESSAGE_ID, message_id).replace("recipient@example.com", address)
}

struct Feedback {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    topic: String,
    queue: String,
    dead: String,
}

impl Feedback {
    /// A topic, a queue subscribed to it (redrive to a dead-letter queue after 2 receipts,
    /// visibility 1 s, so an unreadable message moves on in seconds) and that dead-letter queue.
    async fn create(moto: &Moto) -> Self {
        let config = moto.sdk_config().await;
        let (sqs, sns) = (aws_sdk_sqs::Client::new(&config), aws_sdk_sns::Client::new(&config));
        let topic = sns.create_topic().name("ses-events").send().await.unwrap().topic_arn.unwrap();
        let dead = sqs.create_queue().queue_name("ses-events-dead").send().await.unwrap().queue_url.unwrap();
        let dead_arn = queue_arn(&sqs, &dead).await;
        let redrive = json!({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "2"}).to_string();
        let queue = sqs
            .create_queue()
            .queue_name("ses-events")
            .attributes(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy, redrive)
            .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "1")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let arn = queue_arn(&sqs, &queue).await;
        sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(arn).send().await.unwrap();
        Self { sqs, sns, topic, queue, dead }
    }

    async fn publish(&self, message: &str) {
        self.sns.publish().topic_arn(&self.topic).message(message).send().await.unwrap();
    }

    /// Visible plus in-flight messages of `queue`.
    async fn held(&self, queue: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(Name::ApproximateNumberOfMessages)
            .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        [Name::ApproximateNumberOfMessages, Name::ApproximateNumberOfMessagesNotVisible]
            .iter()
            .map(|name| attributes.get(name).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0))
            .sum()
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    attributes[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone()
}

async fn execute(app: &TestApp, body: &Value) -> String {
    let reply = app.post("/im/executions/unitary", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["executionId"].as_str().unwrap().to_string()
}

/// Waits until every recipient's status is one of `wanted`, and returns them.
async fn statuses(app: &TestApp, execution_id: &str, wanted: &[&str]) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let body = app.get(&format!("/im/executions/{execution_id}")).await.body;
        let recipients = body["recipients"].as_array().cloned().unwrap_or_default();
        if !recipients.is_empty() && recipients.iter().all(|r| wanted.iter().any(|w| r["status"] == *w)) {
            return recipients;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "waiting for {wanted:?}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The SES message ids Herald recorded for an execution, by recipient index.
pub(crate) async fn message_ids(app: &TestApp, execution_id: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let id = uuid::Uuid::parse_str(execution_id).unwrap();
    client
        .query("SELECT provider_message_id FROM deliveries WHERE execution_id = $1 ORDER BY recipient_index", &[&id])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn ses_messages(data: &Value) -> usize {
    data.pointer("/ses/Message").and_then(Value::as_array).map_or(0, Vec::len)
}

#[tokio::test]
async fn ses_events_through_sns_and_sqs_update_deliveries_suppress_and_count_once() {
    let moto = Moto::start().await;
    moto.verify_email_identity("no-reply@example.com").await;
    let config = moto.sdk_config().await;
    aws_sdk_sesv2::Client::new(&config)
        .create_configuration_set()
        .configuration_set_name("herald-events")
        .send()
        .await
        .unwrap();
    let feedback = Feedback::create(&moto).await;
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&notice_email("notice", false)).await;
    let worker = TestWorker::start(&app, Arc::new(AwsProvider::new(&config)), fast_policy()).await;
    let code = json!({"code": "123456"});
    let addresses = ["bounce@example.com", "complaint@example.com", "ok@example.com"];
    let recipients: Vec<(&str, Value)> = addresses.iter().map(|a| (*a, code.clone())).collect();
    let first = execute(&app, &execution("r1", &campaign, &recipients)).await;
    statuses(&app, &first, &["sent"]).await;
    let ids = message_ids(&app, &first).await;
    assert_eq!(ids.len(), 3);
    assert_eq!(ses_messages(&moto.data().await), 3);

    // Each event twice (SNS and SQS deliver at least once), an event about another system's
    // message, and a body that is no SES event at all.
    let events = [
        event_for(BOUNCE, &ids[0], addresses[0]),
        event_for(COMPLAINT, &ids[1], addresses[1]),
        event_for(DELIVERY, &ids[2], addresses[2]),
    ];
    for event in events.iter().chain(events.iter()) {
        feedback.publish(event).await;
    }
    feedback.publish(&event_for(DELIVERY, "not-one-of-herald-s", "x@example.com")).await;
    feedback.publish("this is not an SES event: jane@example.com").await;

    let stop = CancellationToken::new();
    let settings = SqsFeedbackSettings {
        queue_url: feedback.queue.clone(),
        wait_seconds: 1,
        retention: chrono::Duration::days(14),
        pollers: 2,
    };
    let consumer = SqsFeedback::new(&config, app.store.clone(), app.clock.clone(), Arc::clone(&app.metrics), settings);
    let running = tokio::spawn(consumer.run(stop.clone()));

    let after = statuses(&app, &first, &["bounced", "complained", "delivered"]).await;
    assert_eq!(after[0]["status"], "bounced", "{after:?}");
    assert_eq!(after[0]["bounce"], json!({"type": "Permanent", "subType": "General", "hard": true}));
    assert_eq!(after[1]["status"], "complained");
    assert_eq!(after[1]["feedback"]["detail"], "abuse");
    assert_eq!(after[2]["status"], "delivered");

    // The suppression list: the bounced and the complained address, with why and from what.
    let bounced = app.store.get_suppression("a", herald_core::Channel::Email, addresses[0]).await.unwrap().unwrap();
    assert_eq!(bounced.reason, herald_core::feedback::SuppressionReason::HardBounce);
    assert!(bounced.source.contains(&ids[0]), "{bounced:?}");
    let complained = app.store.get_suppression("a", herald_core::Channel::Email, addresses[1]).await.unwrap().unwrap();
    assert_eq!(complained.reason, herald_core::feedback::SuppressionReason::Complaint);
    assert!(app.store.get_suppression("a", herald_core::Channel::Email, addresses[2]).await.unwrap().is_none());
    assert!(
        app.store.get_suppression("b", herald_core::Channel::Email, addresses[0]).await.unwrap().is_none(),
        "per sandbox"
    );

    // The queue drains: the events deleted once recorded, the unreadable one moved to the
    // queue's dead-letter queue by its redrive policy.
    let started = Instant::now();
    while feedback.held(&feedback.queue).await > 0 || feedback.held(&feedback.dead).await < 1 {
        assert!(started.elapsed() < Duration::from_secs(30), "the feedback queue did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(feedback.held(&feedback.dead).await, 1, "only the unreadable message is dead-lettered");

    // Counted once each, though each arrived twice; the unknown message counted as unmatched.
    let report = app.get(&format!("/campaigns/{campaign}/report")).await.body;
    let email = &report["channels"][0];
    assert_eq!(email["sent"], 3, "{report}");
    assert_eq!(email["delivered"], 1, "{report}");
    assert_eq!(email["bounces"]["hard"]["total"], 1);
    assert_eq!(email["bounces"]["hard"]["byReason"]["General"], 1);
    assert_eq!(email["bounces"]["soft"]["total"], 0);
    assert_eq!(email["complaints"]["total"], 1);
    assert_eq!(email["rates"]["bounce"], 0.3333);
    assert_eq!(email["rates"]["complaint"], 0.3333);
    let metrics = app.metrics.encode();
    for (event, outcome, count) in [("Bounce", "recorded", 1), ("Bounce", "duplicate", 1), ("Delivery", "unmatched", 1)]
    {
        let line =
            format!("herald_feedback_events_total{{source=\"sqs\",event=\"{event}\",outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(metrics.contains("event=\"unreadable\",outcome=\"invalid\""), "{metrics}");

    // The next execution to the bounced and the complained addresses: excluded, no SES call.
    let again = execute(&app, &execution("r2", &campaign, &recipients[..2])).await;
    let excluded = statuses(&app, &again, &["excluded"]).await;
    assert!(excluded.iter().all(|r| r["reason"] == "suppressed"), "{excluded:?}");
    assert_eq!(ses_messages(&moto.data().await), 3, "no SendEmail for a suppressed address");
    let report = app.get(&format!("/campaigns/{campaign}/report")).await.body;
    assert_eq!(report["channels"][0]["excluded"]["byReason"]["suppressed"], 2, "{report}");

    // A transactional campaign that opts in sends to the complained address, never the bounced one.
    let opted = app.live_campaign(&notice_email("notice-opted-in", true)).await;
    let third = execute(&app, &execution("r3", &opted, &recipients[..2])).await;
    let outcome = statuses(&app, &third, &["excluded", "sent"]).await;
    assert_eq!((&outcome[0]["status"], &outcome[0]["reason"]), (&json!("excluded"), &json!("suppressed")));
    assert_eq!(outcome[1]["status"], "sent");
    assert_eq!(ses_messages(&moto.data().await), 4);

    stop.cancel();
    running.await.unwrap();
    worker.stop().await;
}
