//! Where every accepted message ended up: the client's 202s, the fake provider's calls, the
//! deliveries and dead letters in PostgreSQL, and the broker's queues. A scenario's verdict is a
//! list of violations, gathered rather than asserted one by one, so that a failing scenario still
//! reports all of its numbers (and the suite goes on to the next one).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::RequestRecord;
use crate::fake_ses::MarkerCalls;

/// Outcomes a worker never changes again.
const FINAL: [&str; 4] = ["sent", "failed", "excluded", "unknown"];

/// Read-only views of one scenario's database and queues, reconnecting for every look so that
/// broker and database restarts only cost a missed sample.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) amqp_url: String,
    pub(crate) database_url: String,
    /// Every queue of the scenario's prefix.
    pub(crate) queues: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct DeliveryRow {
    pub(crate) status: String,
    pub(crate) reason: String,
}

#[derive(Debug, Clone)]
pub(crate) struct DeadLetterRow {
    pub(crate) id: String,
    pub(crate) execution_id: String,
    pub(crate) reason: String,
}

impl Probe {
    /// `queues`: every queue of the scenario's prefix (see [`Probe::expected_queues`]).
    pub(crate) fn new(amqp_url: &str, database_url: &str, queues: Vec<String>) -> Self {
        Self { amqp_url: amqp_url.into(), database_url: database_url.into(), queues }
    }

    /// The queues any Herald version declares for `prefix` and tiers such as `5,30,300`: the
    /// first queue of each channel, one per retry tier, and the dead-letter queue. (Newer
    /// versions add shard queues; the broker's own list finds those.)
    pub(crate) fn expected_queues(prefix: &str, tiers: &str) -> Vec<String> {
        let mut queues: Vec<String> = ["email", "sms", "push"].iter().map(|c| format!("{prefix}.{c}")).collect();
        queues.extend(tiers.split(',').map(|t| format!("{prefix}.retry.{}s", t.trim())));
        queues.push(format!("{prefix}.dead"));
        queues
    }

    /// Ready messages per queue (passive declares); `None` while the broker is away.
    pub(crate) async fn queue_depths(&self) -> Option<Vec<(String, u32)>> {
        let connect = lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default());
        let connection = tokio::time::timeout(Duration::from_secs(5), connect).await.ok()?.ok()?;
        let mut depths = Vec::new();
        for queue in &self.queues {
            // A passive declare of a missing queue closes the channel: one channel per queue.
            let channel = connection.create_channel().await.ok()?;
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            let depth = match channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await {
                Ok(declared) => declared.message_count(),
                Err(_) => 0, // not declared (yet): empty
            };
            depths.push((queue.clone(), depth));
            let _ = channel.close(200, "probed".into()).await;
        }
        let _ = connection.close(200, "probed".into()).await;
        Some(depths)
    }

    pub(crate) async fn database(&self) -> Option<tokio_postgres::Client> {
        let connect = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connect).await.ok()?.ok()?;
        tokio::spawn(connection);
        Some(client)
    }

    /// Delivery rows by execution id (recipient 0: every execution here has one recipient).
    pub(crate) async fn deliveries(&self) -> Option<HashMap<String, DeliveryRow>> {
        let rows = self
            .database()
            .await?
            .query(
                "SELECT execution_id::text, status, coalesce(reason, '') FROM deliveries WHERE recipient_index = 0",
                &[],
            )
            .await
            .ok()?;
        Some(rows.iter().map(|row| (row.get(0), DeliveryRow { status: row.get(1), reason: row.get(2) })).collect())
    }

    /// Execution ids by request id, as the database has them.
    pub(crate) async fn executions(&self) -> Option<HashMap<String, String>> {
        let rows =
            self.database().await?.query("SELECT request_id, execution_id::text FROM executions", &[]).await.ok()?;
        Some(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub(crate) async fn dead_letters(&self) -> Option<Vec<DeadLetterRow>> {
        let rows = self
            .database()
            .await?
            .query(
                "SELECT id::text, coalesce(execution_id::text, ''), reason FROM dead_letters ORDER BY dead_lettered_at",
                &[],
            )
            .await
            .ok()?;
        Some(
            rows.iter()
                .map(|row| DeadLetterRow { id: row.get(0), execution_id: row.get(1), reason: row.get(2) })
                .collect(),
        )
    }

    async fn final_deliveries(&self) -> Option<usize> {
        let row = self
            .database()
            .await?
            .query_one("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'failed', 'excluded', 'unknown')", &[])
            .await
            .ok()?;
        usize::try_from(row.get::<_, i64>(0)).ok()
    }
}

/// What the once-a-second queue sampler saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    pub(crate) max_depth: u32,
    pub(crate) max_retry_depth: u32,
    /// Samples where the queues held far more than the messages still in flight.
    pub(crate) storms: Vec<String>,
}

/// Samples queue depths every second from a scenario's start to the end of its drain.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Samples>,
    /// Messages in flight the load counter does not know of (dead letters being replayed).
    pub(crate) extra_in_flight: Arc<AtomicUsize>,
}

impl Sampler {
    /// `accepted`: the client's 202 count. A sample is a storm when the queues hold more than
    /// three copies of every message that may be in flight: accepted and not yet final, or being
    /// sent by one of the `concurrency` senders (confirmed by the broker, 202 not yet read; or
    /// published twice because a confirm was lost with the connection and the client retried).
    pub(crate) fn start(probe: Arc<Probe>, accepted: Arc<AtomicUsize>, concurrency: usize) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let extra_in_flight = Arc::new(AtomicUsize::new(0));
        let extra = Arc::clone(&extra_in_flight);
        let handle = tokio::spawn(async move {
            let mut samples = Samples::default();
            let started = Instant::now();
            while !*stopped.borrow() {
                if let Some(depths) = probe.queue_depths().await {
                    let total: u32 = depths.iter().map(|(_, d)| d).sum();
                    let retry: u32 = depths.iter().filter(|(q, _)| q.contains(".retry.")).map(|(_, d)| d).sum();
                    samples.max_depth = samples.max_depth.max(total);
                    samples.max_retry_depth = samples.max_retry_depth.max(retry);
                    if let Some(done) = probe.final_deliveries().await {
                        let in_flight = (accepted.load(Ordering::SeqCst) + extra.load(Ordering::SeqCst) + concurrency)
                            .saturating_sub(done);
                        // Dead letters are final deliveries waiting to be copied into the
                        // database, not work in flight: they do not count towards a storm.
                        let working: u32 = depths.iter().filter(|(q, _)| !q.ends_with(".dead")).map(|(_, d)| d).sum();
                        if working as usize > 3 * in_flight + 10 {
                            samples.storms.push(format!(
                                "t={:.0}s depth {working} > 3×{in_flight} in flight + 10",
                                started.elapsed().as_secs_f64(),
                            ));
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => {}
                }
            }
            samples
        });
        Self { stop, handle, extra_in_flight }
    }

    pub(crate) async fn finish(self) -> Samples {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or_default()
    }
}

/// Waits until every accepted message has a final delivery row, at least `dead_letters` dead
/// letters are recorded, and every queue has been empty twice in a row; gives up after `within`.
/// Returns whether it settled.
pub(crate) async fn settle(probe: &Probe, records: &[RequestRecord], dead_letters: usize, within: Duration) -> bool {
    let started = Instant::now();
    let mut empty_in_a_row = 0;
    while started.elapsed() < within {
        let finals = probe.deliveries().await.map(|rows| {
            records.iter().filter(|r| r.accepted).all(|r| {
                r.execution_id().and_then(|id| rows.get(id)).is_some_and(|row| FINAL.contains(&row.status.as_str()))
            })
        });
        let letters = probe.dead_letters().await.map(|rows| rows.len() >= dead_letters);
        let empty = probe.queue_depths().await.is_some_and(|depths| depths.iter().all(|(_, d)| *d == 0));
        empty_in_a_row = if empty { empty_in_a_row + 1 } else { 0 };
        if finals == Some(true) && letters == Some(true) && empty_in_a_row >= 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// What a scenario expects of one marker's delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    pub(crate) status: &'static str,
    pub(crate) reason: Option<&'static str>,
    /// Exactly this many provider calls, when set.
    pub(crate) calls: Option<u32>,
    /// Whether `unknown` (maybe sent) after at least one call is acceptable instead of `sent`.
    pub(crate) maybe_sent_ok: bool,
}

impl Expect {
    /// Sent, or `unknown` after at least one call: maybe sent, which is the honest record when
    /// a worker died between its call and writing the outcome.
    pub(crate) const SENT: Expect = Expect { status: "sent", reason: None, calls: None, maybe_sent_ok: true };

    /// Sent and recorded so: for scenarios where no worker dies, a worker that made a call knows
    /// its outcome, so `unknown` means an outcome was lost (e.g. while the database was away).
    pub(crate) const SENT_AND_RECORDED: Expect = Expect { maybe_sent_ok: false, ..Expect::SENT };

    pub(crate) fn failed(reason: &'static str, calls: Option<u32>) -> Self {
        Self { status: "failed", reason: Some(reason), calls, maybe_sent_ok: false }
    }

    pub(crate) fn unknown_after(calls: u32) -> Self {
        Self { status: "unknown", reason: None, calls: Some(calls), maybe_sent_ok: true }
    }
}

/// The reason of a delivery whose worker died after its call mark.
const WORKER_DIED: &str = "worker-died-during-send";

/// Most `unknown` deliveries a scenario may have whose request the fake never saw (killed
/// between the mark and the bytes reaching the provider: a window of a few task switches).
pub(crate) const MAX_UNSEEN_MAYBE_SENT: usize = 5;

/// One scenario's numbers and verdict.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) name: String,
    pub(crate) requests: usize,
    pub(crate) accepted: usize,
    pub(crate) client_retries: u64,
    pub(crate) max_accept_wait: Duration,
    pub(crate) calls: u64,
    pub(crate) ok: u64,
    pub(crate) statuses: BTreeMap<String, usize>,
    pub(crate) dead_letters: usize,
    pub(crate) duplicates: usize,
    pub(crate) lost: usize,
    /// `unknown` because a worker died after its call mark, yet the fake never saw the request:
    /// the worker was killed between handing the signed request to its HTTP connection and the
    /// bytes reaching the provider. Herald cannot tell this from a delivered request, so it is
    /// maybe sent, not lost; the count is reported and bounded (see [`MAX_UNSEEN_MAYBE_SENT`]).
    pub(crate) unseen_maybe_sent: usize,
    pub(crate) samples: Samples,
    pub(crate) drain: Duration,
    pub(crate) settled: bool,
    /// Violation kind → examples (the count is the list's length).
    pub(crate) violations: BTreeMap<String, Vec<String>>,
    /// Scenario-specific facts for the summary line (e.g. how long a SIGTERM took).
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn violate(&mut self, kind: &str, example: String) {
        self.violations.entry(kind.to_string()).or_default().push(example);
    }

    pub(crate) fn violation_count(&self) -> usize {
        self.violations.values().map(Vec::len).sum()
    }

    fn status(&self, name: &str) -> usize {
        self.statuses.get(name).copied().unwrap_or(0)
    }

    /// The evidence line: every count on one line.
    pub(crate) fn summary(&self) -> String {
        let mut line = format!(
            "FAULTS {:<22} accepted={}/{} client_retries={} max_accept_wait={:.1}s calls={} ok200={} sent={} failed={} unknown={} unknown_unseen={} excluded={} not_final={} dead_letters={} lost={} duplicates={} max_queue_depth={} max_retry_depth={} drain={:.1}s settled={} violations={}",
            self.name,
            self.accepted,
            self.requests,
            self.client_retries,
            self.max_accept_wait.as_secs_f64(),
            self.calls,
            self.ok,
            self.status("sent"),
            self.status("failed"),
            self.status("unknown"),
            self.unseen_maybe_sent,
            self.status("excluded"),
            self.status("not-final"),
            self.dead_letters,
            self.lost,
            self.duplicates,
            self.samples.max_depth,
            self.samples.max_retry_depth,
            self.drain.as_secs_f64(),
            self.settled,
            self.violation_count(),
        );
        for note in &self.notes {
            line.push(' ');
            line.push_str(note);
        }
        line
    }

    /// The violations, a few examples each.
    pub(crate) fn details(&self) -> String {
        let mut text = String::new();
        for (kind, examples) in &self.violations {
            let shown: Vec<&String> = examples.iter().take(5).collect();
            text.push_str(&format!("  {}: {kind} ×{}: {shown:?}\n", self.name, examples.len()));
        }
        text
    }
}

/// Everything gathered at the end of a scenario, to be judged by [`judge`].
#[derive(Debug)]
pub(crate) struct Evidence {
    pub(crate) records: Vec<RequestRecord>,
    pub(crate) fake: HashMap<String, MarkerCalls>,
    pub(crate) deliveries: HashMap<String, DeliveryRow>,
    pub(crate) executions: HashMap<String, String>,
    pub(crate) dead_letters: Vec<DeadLetterRow>,
}

/// Judges every accepted marker against `expect` and the suite's promises: nothing lost, nothing
/// sent twice, one execution id per request id.
pub(crate) fn judge(report: &mut Report, evidence: &Evidence, expect: &dyn Fn(&str, &MarkerCalls) -> Expect) {
    report.requests = evidence.records.len();
    report.accepted = evidence.records.iter().filter(|r| r.accepted).count();
    report.client_retries = evidence.records.iter().map(|r| u64::from(r.tries.saturating_sub(1))).sum();
    report.max_accept_wait = evidence.records.iter().map(|r| r.waited).max().unwrap_or_default();
    report.calls = evidence.fake.values().map(|m| u64::from(m.calls)).sum();
    report.ok = evidence.fake.values().map(|m| u64::from(m.ok)).sum();
    report.dead_letters = evidence.dead_letters.len();
    let lettered: HashMap<&str, &DeadLetterRow> =
        evidence.dead_letters.iter().map(|d| (d.execution_id.as_str(), d)).collect();

    for (marker, calls) in &evidence.fake {
        if calls.ok > 1 {
            report.duplicates += 1;
            report.violate("duplicate: accepted by the provider more than once", format!("{marker} {calls:?}"));
        }
    }
    for record in &evidence.records {
        if let Some(refused) = &record.refused {
            report.violate("request refused", format!("{}: {refused}", record.request_id));
            continue;
        }
        if !record.accepted {
            report.violate(
                "never accepted before the client's deadline",
                format!("{} after {} tries: {:?}", record.request_id, record.tries, record.last_error),
            );
            continue;
        }
        if record.execution_ids.iter().any(|id| Some(id.as_str()) != record.execution_id()) {
            report.violate(
                "several execution ids for one request id",
                format!("{} {:?}", record.request_id, record.execution_ids),
            );
        }
        let execution = record.execution_id().unwrap_or_default();
        if evidence.executions.get(&record.request_id).map(String::as_str) != Some(execution) {
            report.violate(
                "202 execution id differs from the database's",
                format!(
                    "{} answered {execution}, stored {:?}",
                    record.request_id,
                    evidence.executions.get(&record.request_id)
                ),
            );
        }
        let calls = evidence.fake.get(&record.marker).copied().unwrap_or_default();
        let wanted = expect(&record.marker, &calls);
        let row = evidence.deliveries.get(execution);
        let status = row
            .map_or("not-final", |r| if FINAL.contains(&r.status.as_str()) { r.status.as_str() } else { "not-final" });
        *report.statuses.entry(status.to_string()).or_default() += 1;
        let reason = row.map_or("", |r| r.reason.as_str());
        let example = || {
            format!(
                "{} {execution} status={} reason={reason} {calls:?}",
                record.marker,
                row.map_or("none", |r| r.status.as_str())
            )
        };
        let lost = |report: &mut Report, kind: &str| {
            report.lost += 1;
            report.violate(&format!("lost: {kind}"), example());
        };
        match status {
            "not-final" => lost(report, "no final outcome (queued, sending or retrying forever)"),
            "excluded" => lost(report, "excluded"),
            "sent" if calls.ok == 0 => lost(report, "recorded sent, never accepted by the provider"),
            "unknown" if calls.calls == 0 && wanted.maybe_sent_ok && reason == WORKER_DIED => {
                report.unseen_maybe_sent += 1;
            }
            "unknown" if calls.calls == 0 => lost(report, "recorded unknown (maybe sent) without any provider call"),
            "failed" if wanted.status != "failed" && calls.ok == 0 => lost(report, "failed"),
            _ => {}
        }
        let as_expected = match (status, wanted.status) {
            ("sent", "sent") | ("unknown", "unknown") => true,
            ("unknown", "sent") => wanted.maybe_sent_ok && (calls.calls > 0 || reason == WORKER_DIED),
            ("failed", "failed") => wanted.reason.is_none_or(|r| r == reason),
            _ => false,
        };
        if !as_expected && !matches!(status, "not-final" | "excluded") {
            report.violate(&format!("expected {}, got {status}", wanted.status), example());
        }
        if let Some(n) = wanted.calls
            && calls.calls != n
        {
            report.violate(&format!("expected exactly {n} provider call(s)"), example());
        }
        if status == "failed" && reason == "max-attempts" && !lettered.contains_key(execution) {
            report.violate("failed max-attempts without a dead letter", example());
        }
    }
    if report.unseen_maybe_sent > MAX_UNSEEN_MAYBE_SENT {
        report.violate(
            "more maybe-sent deliveries the provider never saw than the mark-to-request window explains",
            format!("{} > {MAX_UNSEEN_MAYBE_SENT}", report.unseen_maybe_sent),
        );
    }
    if !report.settled {
        report.violate("did not settle (outcomes missing or queues not empty) before the deadline", String::new());
    }
    for storm in &report.samples.storms {
        report
            .violations
            .entry("retry storm: queues far deeper than the messages in flight".into())
            .or_default()
            .push(storm.clone());
    }
}
