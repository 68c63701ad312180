//! Faults of the provider: transient errors, calls that hang past the worker's timeout,
//! permanent rejections, and an outage long enough to fill the dead-letter queue (then replayed).

use std::time::{Duration, Instant};

use crate::accounting::{self, Expect, Report};
use crate::fake_ses::Behaviour;
use crate::run::{Env, Run, Spec};

/// 30% of calls answer 500 InternalFailure or 429 TooManyRequests, with short tiers (1,2,4):
/// every message is sent exactly once, after its retries, and the tiers do not multiply copies.
pub(crate) async fn transient_errors(env: &Env) -> Report {
    let mut spec = Spec::new("transient-errors", env.messages(1_000));
    spec.retry_tiers = "1,2,4";
    spec.behaviour = Behaviour { transient_ratio: 0.3, ..Behaviour::default() };
    let run = Run::begin(env, spec).await;
    finish_plain(env, run).await
}

/// The first calls hang for 12 s, past the worker's call timeout (1 s with
/// HERALD_PROVIDER_TIMEOUT_MS; 12 s is also past the 10 s a binary without that setting uses),
/// then the provider accepts them: SES may well have sent such a message, so the worker must not
/// send it again. Each hung message: exactly one call, recorded `unknown`. The others: sent.
pub(crate) async fn provider_hang(env: &Env) -> Report {
    let mut spec = Spec::new("provider-hang", env.messages(300));
    spec.provider_timeout_ms = 1_000;
    spec.behaviour =
        Behaviour { hang_first: 20, hang_for: Duration::from_secs(12), hang_then_ok: true, ..Behaviour::default() };
    let mut run = Run::begin(env, spec).await;
    let records = run.end_load().await;
    run.until_calls(env, 20, Duration::from_secs(60)).await;
    let hung = env.fake.snapshot().values().filter(|calls| calls.hung > 0).count();
    run.report.notes.push(format!("hung_markers={hung}"));
    run.finish(env, records, 0, &|_, calls| {
        if calls.hung > 0 { Expect::unknown_after(1) } else { Expect::SENT_AND_RECORDED }
    })
    .await
}

/// Half the messages are rejected for good (400 MessageRejected): exactly one call each and
/// `failed`, never retried; the other half are sent.
pub(crate) async fn permanent_rejections(env: &Env) -> Report {
    let mut spec = Spec::new("permanent-rejections", env.messages(400));
    spec.markers = (0..spec.markers.len())
        .map(|n| if n % 2 == 0 { format!("perm-rej-{n:05}") } else { format!("perm-ok-{n:05}") })
        .collect();
    spec.behaviour = Behaviour { reject_prefix: Some("perm-rej".into()), ..Behaviour::default() };
    let mut run = Run::begin(env, spec).await;
    let records = run.end_load().await;
    run.finish(env, records, 0, &|marker, _| {
        if marker.starts_with("perm-rej") {
            Expect::failed("MessageRejected", Some(1))
        } else {
            Expect::SENT_AND_RECORDED
        }
    })
    .await
}

/// Every call fails (500) until each message has used its attempts (HERALD_MAX_ATTEMPTS=4,
/// tiers 1,2) and is dead-lettered; then the provider recovers and every dead letter is replayed,
/// half through `POST /dead-letters/{id}/replay`, half with `herald dlq replay`: each message is
/// then sent exactly once.
pub(crate) async fn dead_letter_replay(env: &Env) -> Report {
    let mut spec = Spec::new("dead-letter-replay", env.messages(100));
    spec.retry_tiers = "1,2";
    spec.max_attempts = 4;
    spec.behaviour = Behaviour { transient_ratio: 1.0, ..Behaviour::default() };
    let mut run = Run::begin(env, spec).await;
    let records = run.end_load().await;
    let accepted = records.iter().filter(|r| r.accepted).count();

    // Phase 1: every message in the dead-letter table.
    let dead = accounting::settle(&run.probe, &records, accepted, Duration::from_secs(60)).await;
    let letters = run.probe.dead_letters().await.unwrap_or_default();
    run.report.notes.push(format!(
        "phase1_settled={dead} phase1_dead_letters={} phase1_calls={}",
        letters.len(),
        env.fake.total_calls()
    ));
    if letters.len() != accepted {
        run.report.violate("not every message was dead-lettered", format!("{} of {accepted}", letters.len()));
    }
    let wrong: Vec<String> =
        letters.iter().filter(|l| l.reason != "max-attempts").map(|l| format!("{} {}", l.id, l.reason)).collect();
    for letter in wrong {
        run.report.violate("dead letter with another reason than max-attempts", letter);
    }
    // HERALD_MAX_ATTEMPTS is the number of provider calls in all before the dead-letter queue.
    let max_attempts = run.spec.max_attempts;
    for (marker, calls) in env.fake.snapshot() {
        if calls.calls != max_attempts {
            run.report.violate(
                &format!("a dead-lettered message made other than HERALD_MAX_ATTEMPTS={max_attempts} calls"),
                format!("{marker} {calls:?}"),
            );
        }
    }

    // Phase 2: the provider is healthy again; replay everything.
    env.fake.set(Behaviour::default());
    if let Some(sampler) = &run.sampler {
        sampler.extra_in_flight.store(letters.len(), std::sync::atomic::Ordering::SeqCst);
    }
    let (by_http, by_cli): (Vec<_>, Vec<_>) = letters.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, letter) in by_http {
        let (status, body) = run.api.replay_dead_letter(&letter.id).await;
        if status.as_u16() != 202 || body["replayed"] != true {
            run.report.violate("HTTP replay not accepted", format!("{} {status} {body}", letter.id));
        }
    }
    let ids: Vec<String> = by_cli.iter().map(|(_, letter)| letter.id.clone()).collect();
    if !ids.is_empty() {
        let mut command = run.stack.settings.command(&["dlq", "replay"]);
        command.args(&ids);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the CLI task")
            .expect("run herald dlq replay");
        if !output.status.success() {
            run.report.violate("herald dlq replay failed", String::from_utf8_lossy(&output.stderr).into_owned());
        }
    }
    // Replayed messages still read `failed` until a worker sends them: wait for `sent` here,
    // since the drain check alone would take the old outcomes for final ones.
    let started = Instant::now();
    let mut all_sent = false;
    while !all_sent && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        all_sent = run.probe.deliveries().await.is_some_and(|rows| {
            records
                .iter()
                .filter(|r| r.accepted)
                .all(|r| r.execution_id().and_then(|id| rows.get(id)).is_some_and(|row| row.status == "sent"))
        });
    }
    run.report.notes.push(format!("replayed_sent_after={:.1}s", started.elapsed().as_secs_f64()));
    run.finish(env, records, accepted, &|_, _| Expect::SENT_AND_RECORDED).await
}

async fn finish_plain(env: &Env, mut run: Run) -> Report {
    let records = run.end_load().await;
    run.finish(env, records, 0, &|_, _| Expect::SENT_AND_RECORDED).await
}
