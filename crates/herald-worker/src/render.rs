//! Rendering off the async runtime. A render is CPU work that can take up to its time budget;
//! on a runtime thread it would hold back every other message (and the health endpoints) for
//! that long. Renders run on tokio's blocking pool instead, with a timeout, a bounded number at
//! once (twice the CPUs, at least 4: what bounds the memory renders can hold, each within
//! `MAX_RENDER_BYTES`), owned by the pipeline (`herald_core::template::RenderTurns`). One sandbox may hold at most
//! half of them: a tenant whose renders are slow (up to their budget) then slows down its own
//! messages, not everyone's, and the others' renders share the CPUs with them.
//!
//! A blocking thread cannot be cancelled: what stops a runaway render is its own budget
//! ([`herald_core::template::sandbox`]), which it checks as it goes. The timeout here only keeps
//! the caller responsive should a single step of a render be slower than that; the permits stay
//! with the thread, so such renders still count against the limits.

use std::sync::Arc;
use std::time::Duration;

use herald_core::delivery::{DeliveryStatus, reasons};
use herald_core::template::{CompiledContent, RENDER_TIME_BUDGET, RenderTurn, Rendered, TemplateError, is_control};
use herald_store::{DeliveryKey, StoreError};
use serde_json::Value;
use tracing::Instrument;
use uuid::Uuid;

use crate::pipeline::{Decision, Pipeline, WorkerCampaign};

/// How long after its own deadline a render's caller stops waiting for it.
const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Renders at once in one pipeline (one per worker process).
pub(crate) fn render_limit() -> usize {
    (2 * std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)).max(4)
}

/// Renders `compiled` on a blocking thread during `turn`.
pub(crate) async fn render(
    turn: RenderTurn,
    compiled: Arc<CompiledContent>,
    profile: Value,
    context: Value,
) -> Result<Rendered, TemplateError> {
    let task = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        compiled.render(profile, context)
    });
    let failure =
        |message: &str, code| Err(TemplateError { part: String::new(), line: None, message: message.into(), code });
    match tokio::time::timeout(RENDER_TIME_BUDGET + TIMEOUT_GRACE, task).await {
        Ok(Ok(result)) => result,
        // `render` catches panics; only a runtime shutting down gets here.
        Ok(Err(_)) => failure("the render was interrupted", "render-error"),
        Err(_) => failure("the render went over its budget: out of time", "render-budget"),
    }
}

/// Earlier renders of a redelivered message that never finished (their worker died), beyond
/// which it is dead-lettered instead of rendered. Only redeliveries are counted, since a write
/// for every message would make normal traffic pay: a message that kills whoever renders it
/// takes down a worker on its first delivery and on its first redelivery, and its second
/// redelivery finds the first one's render unfinished. A message redelivered for another reason
/// (a lost connection, a restart) finishes its render, which clears its count.
pub const MAX_EARLIER_UNFINISHED_RENDERS: i32 = 0;

impl Pipeline {
    /// The render step of a delivery: renders the live content with `profile` and `context`,
    /// and makes the subject one header line. Returns the decision instead when the message
    /// cannot be rendered: failed `rendering-error` (the delivery's last error says why), and
    /// dead-lettered as well when earlier renders of this redelivered message never finished.
    pub(crate) async fn render_step(
        &self,
        sandbox: &str,
        key: &DeliveryKey,
        version: Option<Uuid>,
        campaign: &WorkerCampaign,
        (profile, context): (Value, Value),
        redelivered: bool,
    ) -> Result<Result<Rendered, Decision>, StoreError> {
        let now = self.now();
        let failed = |why: String, dead_letter: bool| async move {
            let last_error = herald_telemetry::redact::redact(&why).into_owned();
            tracing::warn!(execution_id = %key.execution_id, error = %last_error, "rendering failed");
            self.store()
                .record_delivery(
                    key,
                    version,
                    DeliveryStatus::Failed,
                    (reasons::RENDERING_ERROR, Some(&last_error)),
                    now,
                )
                .await?;
            crate::observe::outcome(
                self.metrics(),
                key.channel,
                DeliveryStatus::Failed,
                Some(reasons::RENDERING_ERROR),
            );
            let reason = reasons::RENDERING_ERROR.to_string();
            Ok::<_, StoreError>(Err(if dead_letter {
                Decision::DeadLetter { reason, last_error }
            } else {
                Decision::Ack
            }))
        };
        let Some(compiled) = campaign.compiled.as_ref() else {
            let why = campaign.compile_error.clone().unwrap_or_else(|| "the live content does not compile".into());
            return failed(why, false).await;
        };
        let surface = campaign.record.live.as_ref().map(|live| &live.definition.surface);
        let header_fields = surface.into_iter().flat_map(|surface| [&surface.from_name, &surface.reply_to]).flatten();
        if header_fields.into_iter().any(|field| field.chars().any(is_control)) {
            // Refused by the review; only content that bypassed it gets here.
            return failed(
                "the sender name or reply-to address contains a line break or control character".into(),
                false,
            )
            .await;
        }
        let turn = self.render_turns().acquire(sandbox).await;
        if redelivered {
            // Counts this render too.
            let earlier = self.store().start_redelivered_render(key, now).await? - 1;
            if earlier > MAX_EARLIER_UNFINISHED_RENDERS {
                self.store().finish_redelivered_render(key).await?;
                let why = format!(
                    "not rendered again: {earlier} earlier render(s) of this redelivered message never finished \
                     (the worker rendering it died)"
                );
                return failed(why, true).await;
            }
        }
        let span = tracing::info_span!("render");
        let result = render(turn, Arc::clone(compiled), profile, context).instrument(span).await;
        // Best effort: the render returned, so it did not kill the worker, and a database error
        // here must not fail a good render. The count it leaves would dead-letter the message if
        // it were redelivered again: the warning says so.
        if redelivered && let Err(error) = self.store().finish_redelivered_render(key).await {
            tracing::warn!(%error, execution_id = %key.execution_id, "could not clear a redelivered message's render count");
        }
        match result {
            // The subject is already on one line (`CompiledContent::render` folds it).
            Ok(rendered) => Ok(Ok(rendered)),
            Err(error) => {
                let part = if error.part.is_empty() { String::new() } else { format!("{}: ", error.part) };
                failed(format!("{part}{}", error.message), false).await
            }
        }
    }
}
