//! CPU time and memory of process trees, read from /proc: what each part of the stack spent.

use std::collections::HashMap;
use std::process::Command;

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless configured otherwise).
pub(crate) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// `(ppid, user + system ticks of the process and of its reaped children)` of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok());
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let ppid = number(1)? as u32;
    Some((ppid, number(11)? + number(12)? + number(13)? + number(14)?))
}

/// CPU-seconds spent by this process's children that have exited and been waited for.
pub(crate) fn reaped_children_seconds(ticks_per_second: f64) -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = text.rfind(')').map_or("", |at| &text[at + 1..]);
    let fields: Vec<u64> = rest.split_whitespace().skip(13).take(2).filter_map(|f| f.parse().ok()).collect();
    fields.iter().sum::<u64>() as f64 / ticks_per_second
}

/// CPU-seconds spent so far by `root` and every process below it, including children that have
/// exited and been waited for (a database backend that closed, say).
pub(crate) fn tree_cpu_seconds(root: u32, ticks_per_second: f64) -> f64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut ticks: HashMap<u32, u64> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if let Some((ppid, spent)) = stat(pid) {
            children.entry(ppid).or_default().push(pid);
            ticks.insert(pid, spent);
        }
    }
    let (mut total, mut todo) = (0u64, vec![root]);
    while let Some(pid) = todo.pop() {
        total += ticks.get(&pid).copied().unwrap_or(0);
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    total as f64 / ticks_per_second
}

/// `(VmRSS, VmHWM)` of one process in MiB: resident now and at its peak.
pub(crate) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| (kib / 1024.0 * 10.0).round() / 10.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
