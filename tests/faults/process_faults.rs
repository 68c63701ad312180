//! Faults of Herald's own processes: workers killed with SIGKILL, the API killed again and
//! again, and workers stopped with SIGTERM while their sends outlast the grace period.

use std::time::{Duration, Instant};

use crate::accounting::{Expect, Report};
use crate::fake_ses::Behaviour;
use crate::run::{Env, Run, Spec};

/// kill -9 of a worker, twice, mid-run, with the default retry tiers (5,30,300): messages the
/// dead worker had claimed come back to the other worker, wait for the claim to go stale
/// (10 s) and are recorded `unknown`; nothing may be lost, sent twice, or left in a tier.
pub(crate) async fn worker_kill(env: &Env) -> Report {
    let mut spec = Spec::new("worker-kill", env.messages(2_000));
    spec.retry_tiers = "5,30,300";
    spec.stale_claim_seconds = 10;
    // Calls that take a little time, so the kill finds some in flight (claimed, maybe sent).
    spec.behaviour = Behaviour { latency: Duration::from_millis(20), ..Behaviour::default() };
    spec.settle_within = Duration::from_secs(90);
    // About 10 s of sending, so both kills land mid-run.
    spec.rate_per_sec = Some(200.0);
    let mut run = Run::begin(env, spec).await;
    for (share, worker) in [(0.25, 0), (0.6, 1)] {
        if !run.until_accepted(share, Duration::from_secs(120)).await {
            break;
        }
        let (calls_at_kill, progress) = (env.fake.total_calls(), run.progress());
        run.stack.workers[worker].kill9();
        run.report.notes.push(format!("killed_{}_at={progress}_call={calls_at_kill}", run.stack.workers[worker].name));
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.stack.workers[worker].spawn();
        run.stack.workers[worker].wait_ready(Duration::from_secs(60)).await;
    }
    let records = run.end_load().await;
    run.finish(env, records, 0, &|_, _| Expect::SENT).await
}

/// kill -9 of the API ten times while clients send: requests cut mid-accept are retried with the
/// same request id; a half-accepted one is refused with 409 only while its lease lasts (5 s
/// here), then completes under the same execution id.
pub(crate) async fn api_kill(env: &Env) -> Report {
    // Unpaced: sixteen requests are in flight at every kill, so some are cut mid-accept.
    let spec = Spec::new("api-kill", env.messages(1_000));
    let lease = Duration::from_secs(spec.ingest_lease_seconds);
    let mut run = Run::begin(env, spec).await;
    let mut kills = 0;
    for k in 1..=10 {
        // Spread the kills over the run: after 1/12, 2/12, … 10/12 of the 202s.
        if !run.until_accepted(f64::from(k) / 12.0, Duration::from_secs(120)).await {
            break;
        }
        run.stack.api.kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stack.api.spawn();
        run.stack.api.wait_ready(Duration::from_secs(60)).await;
    }
    run.report.notes.push(format!("api_kills={kills}"));
    let records = run.end_load().await;
    // A request cut mid-accept is refused (409) only while its lease lasts; then the retry takes
    // it over. Allow the lease twice over plus the restart, no more.
    let bound = lease * 2 + Duration::from_secs(2);
    for record in records.iter().filter(|r| r.accepted && r.waited > bound) {
        run.report.violate(
            &format!("a retried request waited longer than twice the {lease:?} lease"),
            format!("{} waited {:.1}s over {} tries", record.request_id, record.waited.as_secs_f64(), record.tries),
        );
    }
    run.finish(env, records, 0, &|_, _| Expect::SENT_AND_RECORDED).await
}

/// SIGTERM to each worker in turn while every send takes 3 s and the grace period is 1 s: the
/// worker exits with sends in flight. Those are maybe sent (`unknown` is allowed only for
/// markers the provider saw), never lost and never sent twice.
pub(crate) async fn sigterm_drain(env: &Env) -> Report {
    let mut spec = Spec::new("sigterm-drain", env.messages(300));
    spec.grace_seconds = 1;
    spec.stale_claim_seconds = 10;
    spec.behaviour = Behaviour { latency: Duration::from_secs(3), ..Behaviour::default() };
    let messages = spec.markers.len() as u64;
    let mut run = Run::begin(env, spec).await;
    for (worker, calls) in [(0, messages / 8), (1, messages / 2)] {
        if !run.until_calls(env, calls, Duration::from_secs(120)).await {
            break;
        }
        let started = Instant::now();
        run.stack.workers[worker].sigterm();
        let exited = run.stack.workers[worker].wait_exit(Duration::from_secs(30)).await;
        let name = run.stack.workers[worker].name.clone();
        match exited {
            Some(status) => run
                .report
                .notes
                .push(format!("{name}_exit_after_sigterm={:.1}s({status})", started.elapsed().as_secs_f64())),
            None => {
                run.report.violate("a worker ignored SIGTERM for 30 s", name.clone());
                run.stack.workers[worker].kill9();
            }
        }
        run.stack.workers[worker].spawn();
        run.stack.workers[worker].wait_ready(Duration::from_secs(60)).await;
    }
    let records = run.end_load().await;
    run.finish(env, records, 0, &|_, _| Expect::SENT).await
}
