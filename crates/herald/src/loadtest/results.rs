//! What a load test found: the calls made, what the fake provider received, and the summary of
//! both (JSON for machines, lines for people).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::args::LoadtestArgs;

/// One call as the load generator saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) seq: u64,
    pub(crate) due_us: i64,
    /// HTTP status, 0 for a transport error or a timeout.
    pub(crate) status: u16,
    pub(crate) answered_us: i64,
}

/// What the provider received for one run: per seq, the calls and the first arrival.
#[derive(Debug, Default)]
pub(crate) struct Received {
    by_seq: HashMap<u64, (u32, i64)>,
}

impl Received {
    /// From the fake's `/_fake/markers` answer (markers `<prefix><seq>.<due>`).
    pub(crate) fn from_answer(answer: &Value, prefix: &str) -> Self {
        let mut by_seq = HashMap::new();
        for entry in answer["markers"].as_array().into_iter().flatten() {
            let seq = entry[0]
                .as_str()
                .and_then(|marker| marker.strip_prefix(prefix))
                .and_then(|rest| rest.split('.').next())
                .and_then(|seq| seq.parse::<u64>().ok());
            let (Some(seq), Some(calls), Some(first)) = (seq, entry[1].as_u64(), entry[2].as_i64()) else {
                continue;
            };
            by_seq.insert(seq, (calls as u32, first));
        }
        Self { by_seq }
    }

    /// How many of `seqs` have arrived.
    pub(crate) fn arrived_of(&self, seqs: &std::collections::HashSet<u64>) -> usize {
        seqs.iter().filter(|seq| self.by_seq.contains_key(seq)).count()
    }
}

/// p50, p99, p99.9 and max of `values` (µs), in milliseconds; nearest rank.
fn percentiles(mut values: Vec<i64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1] as f64 / 1000.0
    };
    json!({ "p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "max": at(1.0), "count": values.len() })
}

fn per_second(count: u64, from_us: i64, to_us: i64) -> f64 {
    let seconds = (to_us - from_us) as f64 / 1e6;
    if seconds <= 0.0 { 0.0 } else { (count as f64 / seconds * 10.0).round() / 10.0 }
}

pub(crate) fn summarise(
    args: &LoadtestArgs,
    run: &str,
    started_us: i64,
    calls: &[Call],
    received: Option<&Received>,
) -> Value {
    let mut statuses = BTreeMap::<String, u64>::new();
    for call in calls {
        let name = if call.status == 0 { "error".to_string() } else { call.status.to_string() };
        *statuses.entry(name).or_default() += 1;
    }
    let accepted: Vec<&Call> = calls.iter().filter(|call| call.status == 202).collect();
    let last_answer = calls.iter().map(|call| call.answered_us).max().unwrap_or(started_us);
    let mut summary = json!({
        "run": run,
        "mode": if args.rate == 0 { format!("closed loop, {} connection(s)", args.connections) } else { format!("open loop, {}/s", args.rate) },
        "offeredRate": args.rate,
        "durationSeconds": args.duration_seconds,
        "calls": calls.len(),
        "accepted": accepted.len(),
        "statuses": statuses,
        "acceptedPerSecond": per_second(accepted.len() as u64, started_us, last_answer),
        // From the call's due time: includes any wait for a connection or for the generator.
        "acceptLatencyMs": percentiles(accepted.iter().map(|call| call.answered_us - call.due_us).collect()),
    });
    let Some(received) = received else {
        return summary;
    };
    let by_seq: HashMap<u64, &Call> = calls.iter().map(|call| (call.seq, call)).collect();
    let (mut sent, mut duplicated, mut extra_copies, mut without_accept) = (0u64, 0u64, 0u64, 0u64);
    let (mut due_to_provider, mut accept_to_provider, mut last_arrival) = (Vec::new(), Vec::new(), started_us);
    for (seq, (copies, first)) in &received.by_seq {
        last_arrival = last_arrival.max(*first);
        if *copies > 1 {
            duplicated += 1;
            extra_copies += u64::from(copies - 1);
        }
        match by_seq.get(seq) {
            Some(call) if call.status == 202 => {
                sent += 1;
                due_to_provider.push(first - call.due_us);
                // The worker may reach the provider before the client has read its 202.
                accept_to_provider.push((first - call.answered_us).max(0));
            }
            _ => without_accept += 1,
        }
    }
    summary["sent"] = json!(sent);
    summary["lost"] = json!(accepted.len() as u64 - sent);
    summary["duplicated"] = json!(duplicated);
    summary["extraCopies"] = json!(extra_copies);
    // A call that timed out or failed on the client's side and was sent anyway: not a loss.
    summary["sentWithoutAccept"] = json!(without_accept);
    summary["sentPerSecond"] = json!(per_second(sent, started_us, last_arrival));
    summary["dueToProviderMs"] = percentiles(due_to_provider);
    summary["acceptToProviderMs"] = percentiles(accept_to_provider);
    summary
}

/// The summary as a few lines a person reads.
pub(crate) fn human(summary: &Value) -> String {
    let latency = |name: &str| {
        let value = &summary[name];
        if value.is_null() {
            return "-".to_string();
        }
        format!("p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms", value["p50"], value["p99"], value["p999"], value["max"])
    };
    let mut text = format!(
        "run {}, {}: {} calls, {} accepted ({}/s), statuses {}\ndue → 202: {}",
        summary["run"].as_str().unwrap_or(""),
        summary["mode"].as_str().unwrap_or(""),
        summary["calls"],
        summary["accepted"],
        summary["acceptedPerSecond"],
        summary["statuses"],
        latency("acceptLatencyMs"),
    );
    if summary.get("sent").is_some() {
        text.push_str(&format!(
            "\nprovider: {} sent ({}/s), {} not received within --drain-seconds, {} duplicated, {} sent without a 202\ndue → provider: {}\n202 → provider: {}",
            summary["sent"],
            summary["sentPerSecond"],
            summary["lost"],
            summary["duplicated"],
            summary["sentWithoutAccept"],
            latency("dueToProviderMs"),
            latency("acceptToProviderMs"),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> LoadtestArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        Wrapper::parse_from(["x", "campaign", "--rate", "100", "--duration-seconds", "1"]).args
    }

    fn call(seq: u64, status: u16) -> Call {
        Call {
            seq,
            due_us: 1_000_000 + seq as i64 * 10_000,
            status,
            answered_us: 1_000_000 + seq as i64 * 10_000 + 2_000,
        }
    }

    #[test]
    fn lost_duplicated_and_unaccepted_sends_are_told_apart() {
        let calls = [call(1, 202), call(2, 202), call(3, 202), call(4, 503)];
        let answer = json!({ "markers": [
            ["hlm.run.1.0", 1, 1_015_000],
            ["hlm.run.2.0", 3, 1_030_000],
            ["hlm.run.4.0", 1, 1_045_000],
            ["hlm.other.3.0", 1, 1_045_000],
        ]});
        let received = Received::from_answer(&answer, "hlm.run.");
        let summary = summarise(&args(), "run", 1_000_000, &calls, Some(&received));
        assert_eq!(summary["accepted"], 3);
        assert_eq!(summary["sent"], 2);
        assert_eq!(summary["lost"], 1, "seq 3 was accepted and never arrived (the other run's 3 does not count)");
        assert_eq!((summary["duplicated"].as_u64(), summary["extraCopies"].as_u64()), (Some(1), Some(2)));
        assert_eq!(summary["sentWithoutAccept"], 1);
        assert_eq!(summary["statuses"], json!({"202": 3, "503": 1}));
        // Seq 1 was due at 1.010 s and arrived at 1.015 s; seq 2 due at 1.020 s, arrived 1.030 s.
        assert_eq!(summary["dueToProviderMs"]["p50"], 5.0);
        assert_eq!(summary["dueToProviderMs"]["max"], 10.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<i64> = (1..=1000).map(|ms| ms * 1000).collect();
        let p = percentiles(values);
        assert_eq!((p["p50"].as_f64(), p["p99"].as_f64(), p["p999"].as_f64()), (Some(500.0), Some(990.0), Some(999.0)));
        assert!(percentiles(Vec::new()).is_null());
    }
}
