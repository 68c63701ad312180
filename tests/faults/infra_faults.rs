//! Faults of what Herald depends on: the broker (application stop/start, full node restart) and
//! the database (restarts), each mid-run.

use std::time::{Duration, Instant};

use crate::accounting::{Expect, Report};
use crate::run::{Env, Run, Spec};

/// RabbitMQ's application stopped for 3 s then started (every connection drops), and later the
/// whole node restarted from its data directory, while clients send and workers deliver.
pub(crate) async fn broker_restart(env: &Env) -> Report {
    let mut spec = Spec::new("broker-restart", env.messages(1_500));
    spec.settle_within = Duration::from_secs(90);
    // About 10 s of sending (plus the outages), so both faults land mid-run.
    spec.rate_per_sec = Some(150.0);
    let mut run = Run::begin(env, spec).await;
    if run.until_accepted(0.25, Duration::from_secs(120)).await {
        run.report.notes.push(format!("stop_app_at={}", run.progress()));
        env.with_node(|node| node.stop_app()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        env.with_node(|node| node.start_app()).await;
    }
    if run.until_accepted(0.6, Duration::from_secs(180)).await {
        let (progress, started) = (run.progress(), Instant::now());
        env.with_node(|node| node.restart_node()).await;
        run.report.notes.push(format!("node_restart_at={progress} took={:.1}s", started.elapsed().as_secs_f64()));
    }
    let records = run.end_load().await;
    run.finish(env, records, 0, &|_, _| Expect::SENT_AND_RECORDED).await
}

/// PostgreSQL restarted twice (clean stop, 2 s down, start) while clients send and workers
/// deliver: claims and outcomes written around the restart must neither vanish nor repeat.
pub(crate) async fn postgres_restart(env: &Env) -> Report {
    let mut spec = Spec::new("postgres-restart", env.messages(1_500));
    spec.settle_within = Duration::from_secs(90);
    // About 10 s of sending (plus the outages), so both restarts land mid-run.
    spec.rate_per_sec = Some(150.0);
    let mut run = Run::begin(env, spec).await;
    for share in [0.25, 0.6] {
        if !run.until_accepted(share, Duration::from_secs(180)).await {
            break;
        }
        let progress = run.progress();
        env.with_pg(|pg| pg.restart(Duration::from_secs(2))).await;
        run.report.notes.push(format!("pg_restart_at={progress}"));
    }
    let records = run.end_load().await;
    run.finish(env, records, 0, &|_, _| Expect::SENT_AND_RECORDED).await
}
