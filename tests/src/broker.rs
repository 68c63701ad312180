//! RabbitMQ for tests: a topology under a unique prefix (deleted afterwards), and helpers to read
//! what was published.

use std::time::Duration;

use herald_broker::Topology;
use herald_core::Channel;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use uuid::Uuid;

pub fn amqp_url() -> String {
    std::env::var("HERALD_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A connection for test-side inspection; panics with a hint when RabbitMQ is down.
pub async fn connect() -> Connection {
    Connection::connect(
        &amqp_url(),
        ConnectionProperties::default().with_connection_name("herald-test-inspector".into()),
    )
    .await
    .unwrap_or_else(|error| {
        panic!("RabbitMQ is not reachable at {} ({error}); start it with `rabbitmq-server -detached`", amqp_url())
    })
}

/// A RabbitMQ user of one test's own, so that the test can cut its own connections
/// (`rabbitmqctl close_all_user_connections`) without touching anyone else's on the shared
/// broker. Deleted (with its connections) on drop.
#[derive(Debug)]
pub struct DedicatedUser {
    pub name: String,
    password: String,
}

/// `rabbitmqctl`, or the command in `HERALD_TEST_RABBITMQCTL` for a broker elsewhere (the compose
/// one: `docker compose exec -T rabbitmq rabbitmqctl`).
fn rabbitmqctl_command() -> std::process::Command {
    let configured = std::env::var("HERALD_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = configured.split_whitespace();
    let mut command = std::process::Command::new(words.next().unwrap_or("rabbitmqctl"));
    command.args(words);
    command
}

fn rabbitmqctl(args: &[&str]) {
    let output = rabbitmqctl_command()
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("rabbitmqctl must be installed for this test ({error})"));
    assert!(output.status.success(), "rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

impl DedicatedUser {
    /// Creates the user with every permission on the default vhost.
    pub fn create() -> Self {
        let name = format!("herald-test-{}", Uuid::new_v4().simple());
        let password = Uuid::new_v4().simple().to_string();
        rabbitmqctl(&["add_user", &name, &password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        Self { name, password }
    }

    /// The broker URL with this user's credentials.
    pub fn url(&self) -> String {
        // The broker of amqp_url(), with this user's credentials instead of its own.
        let url = amqp_url();
        let at = url.rfind('@').map_or_else(|| url.find("://").map_or(0, |i| i + 3), |i| i + 1);
        format!("amqp://{}:{}@{}", self.name, self.password, &url[at..])
    }

    /// Closes every connection this user has, and only those.
    pub async fn close_connections(&self) {
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["close_all_user_connections", &name, "herald fault test"]);
        })
        .await
        .unwrap();
    }
}

impl Drop for DedicatedUser {
    fn drop(&mut self) {
        let _ = rabbitmqctl_command().args(["delete_user", &self.name]).output();
    }
}

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct Published {
    pub body: serde_json::Value,
    pub message_id: String,
    pub delivery_mode: Option<u8>,
    pub headers: FieldTable,
}

/// A topology with a unique prefix, deleted on drop.
#[derive(Debug)]
pub struct TestTopology {
    pub topology: Topology,
}

impl TestTopology {
    pub fn new(max_queue_length: Option<u32>) -> Self {
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        Self { topology: Topology { prefix, max_queue_length, ..Topology::default() } }
    }

    /// The queue of sandbox `a` (the test app's key) on `channel`.
    pub fn queue(&self, channel: Channel) -> String {
        self.topology.queue_for(channel, "a")
    }

    /// Takes every message currently in `queue` (acknowledged, so they are gone).
    pub async fn drain(&self, queue: &str) -> Vec<Published> {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let mut messages = Vec::new();
        while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            let properties = &message.delivery.properties;
            messages.push(Published {
                body: serde_json::from_slice(&message.delivery.data).expect("a JSON body"),
                message_id: properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default(),
                delivery_mode: *properties.delivery_mode(),
                headers: properties.headers().clone().unwrap_or_default(),
            });
        }
        let _ = connection.close(200, "done".into()).await;
        messages
    }

    /// Publishes `message` again on the work exchange (same body, id and headers), to the shard of
    /// its sandbox, as ingest did.
    pub async fn publish_copy(&self, message: &Published, channel: Channel) {
        let connection = connect().await;
        let publisher = connection.create_channel().await.unwrap();
        publisher.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.unwrap();
        let properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message.message_id.clone().into())
            .with_headers(message.headers.clone());
        let body = serde_json::to_vec(&message.body).unwrap();
        let confirm = publisher
            .basic_publish(
                self.topology.work_exchange().into(),
                self.topology.routing_key_for(channel, message.body["sandbox"].as_str().unwrap_or("a")).into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        let _ = connection.close(200, "done".into()).await;
    }

    /// Whether `queue` exists.
    pub async fn exists(&self, queue: &str) -> bool {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let exists = channel.queue_declare(queue.into(), options, FieldTable::default()).await.is_ok();
        let _ = connection.close(200, "done".into()).await;
        exists
    }

    /// How many consumers `queue` has.
    pub async fn consumers(&self, queue: &str) -> u32 {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(queue.into(), options, FieldTable::default()).await;
        let _ = connection.close(200, "done".into()).await;
        declared.map(|queue| queue.consumer_count()).unwrap_or(0)
    }

    /// How many messages `queue` holds, waiting briefly for quorum-queue counters to settle.
    pub async fn count(&self, queue: &str) -> u32 {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let count = channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap().message_count();
        let _ = connection.close(200, "done".into()).await;
        count
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.ok()?;
                let channel = connection.create_channel().await.ok()?;
                for queue in topology.queues() {
                    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
                }
                for exchange in topology.exchanges() {
                    let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
                }
                connection.close(200, "cleaned up".into()).await.ok()
            })
        })
        .join();
    }
}
