//! The JSON lines contract, version 1 (issue 2): field presence and types per record type.
//! New fields and new record types are allowed; the documented ones must be there.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Checks one record: the common fields and those of its type. `pid` is the target's.
pub fn check_record(v: &Value, pid: u32) -> Result<()> {
    check_inner(v, pid).with_context(|| format!("record {v}"))
}

fn check_inner(v: &Value, pid: u32) -> Result<()> {
    let ty = str_field(v, "type")?;
    check_time(str_field(v, "time")?)?;
    if v["pid"].as_u64() != Some(u64::from(pid)) {
        bail!("pid is {} instead of {pid}", v["pid"]);
    }
    match ty {
        "attach" => {
            str_field(v, "exe")?;
            str_field(v, "arch")?;
            if bool_field(v, "threads_only")? {
                // Not a Go program (issue 4): threads only, no Go facts.
                null_or(v, "go_version", |_| false)?;
                null_or(v, "goroutines", |_| false)?;
            } else {
                str_field(v, "go_version")?;
                u64_field(v, "goroutines")?;
            }
        }
        "thread_blocked" => {
            u64_field(v, "tid")?;
            null_or(v, "thread_name", Value::is_string)?;
            hex_field(v, "futex_addr")?;
            str_field(v, "futex_op")?;
            u64_field(v, "blocked_ns")?;
            bool_field(v, "since_exact")?;
            null_or(v, "goid", Value::is_u64)?;
            let complete = bool_field(v, "stack_complete")?;
            null_or(v, "stack_error", Value::is_string)?;
            if complete != v["stack_error"].is_null() {
                bail!(
                    "stack_complete {complete} with stack_error {}",
                    v["stack_error"]
                );
            }
            for f in v["stack"].as_array().context("stack is not an array")? {
                hex_field(f, "addr").with_context(|| format!("native frame {f}"))?;
            }
        }
        "thread_unblocked" => {
            u64_field(v, "tid")?;
            hex_field(v, "futex_addr")?;
            u64_field(v, "blocked_ns")?;
            null_or(v, "woken_by_tid", Value::is_u64)?;
        }
        "goroutine" | "blocked" => {
            u64_field(v, "goid")?;
            let state = str_field(v, "state")?;
            match &v["wait_reason"] {
                Value::String(_) if state == "waiting" || state == "leaked" => {}
                Value::Null if state != "waiting" => {}
                Value::Null => {} // a waiting goroutine with waitreason 0 has none
                other => bail!("wait_reason {other} with state {state:?}"),
            }
            if ty == "blocked" {
                u64_field(v, "blocked_ns")?;
                bool_field(v, "since_exact")?;
                u64_field(v, "threshold_ns")?;
                if state != "waiting" && state != "leaked" {
                    bail!("a blocked record has state {state:?}");
                }
            } else {
                null_or(v, "blocked_ns", Value::is_u64)?;
                null_or(v, "since_exact", Value::is_boolean)?;
            }
            let stack = v["stack"].as_array().context("stack is not an array")?;
            for f in stack {
                check_frame(f).with_context(|| format!("stack frame {f}"))?;
            }
            match &v["created_by"] {
                Value::Null => {}
                f => check_frame(f).context("created_by")?,
            }
            null_or(v, "parent_goid", Value::is_u64)?;
            check_contexts(v)?;
            // `--leaks` only: true, false or null (not analysed).
            if v.get("leaked").is_some() {
                null_or(v, "leaked", Value::is_boolean)?;
            }
        }
        "unblocked" => {
            u64_field(v, "goid")?;
            null_or(v, "wait_reason", Value::is_string)?;
            u64_field(v, "blocked_ns")?;
        }
        "summary" => {
            u64_field(v, "lost_events")?;
            u64_field(v, "dropped_records")?;
            if v.get("goroutines").is_some() {
                u64_field(v, "goroutines")?;
                counts(v, "by_state")?;
                counts(v, "by_wait_reason")?;
                u64_field(v, "blocked")?;
                u64_field(v, "groups")?;
                u64_field(v, "groups_omitted")?;
                u64_field(v, "leak_suspects")?;
                // Streaming `--leaks` only: counts, null until the first analysis.
                for k in ["leaked", "leaked_groups"] {
                    if v.get(k).is_some() {
                        null_or(v, k, Value::is_u64)?;
                    }
                }
                if v["leaked"].is_null() != v["leaked_groups"].is_null() {
                    bail!("leaked and leaked_groups are null together or not at all");
                }
                if !v["probe"].is_null() {
                    check_probe_status(&v["probe"]).context("probe")?;
                }
            } else if !v["contended_futexes"].is_array() {
                bail!("a summary without goroutine counts must be a thread-only one");
            }
        }
        "detach" => {
            let reason = str_field(v, "reason")?;
            if !["duration", "signal", "target_exited", "target_exec"].contains(&reason) {
                bail!("unknown detach reason {reason:?}");
            }
            u64_field(v, "lost_events")?;
            u64_field(v, "dropped_records")?;
        }
        "target_stopped" => {}
        "target_resumed" => {
            u64_field(v, "stopped_ns")?;
        }
        "error" => {
            str_field(v, "message")?;
        }
        "leak_analysis" => {
            null_or(v, "leaked", Value::is_u64)?;
            null_or(v, "error", Value::is_string)?;
            if v["leaked"].is_null() == v["error"].is_null() {
                bail!("a leak_analysis has a count or an error, not both or neither");
            }
            for k in ["analysed", "unresolved", "heap_objects", "heap_bytes"] {
                u64_field(v, k)?;
            }
            // Streaming: which analysis, what is new, its cost and lateness.
            if v.get("analysis").is_some() {
                for k in ["analysis", "newly_leaked", "skipped", "interval_ns"] {
                    u64_field(v, k)?;
                }
                for k in ["cpu_ms", "delayed_ms"] {
                    if !v[k].is_number() {
                        bail!("{k} is not a number");
                    }
                }
                null_or(v, "delay_reason", Value::is_string)?;
            }
        }
        _ => {} // record types added after version 1
    }
    Ok(())
}

/// A summary's `probe` object.
fn check_probe_status(p: &Value) -> Result<()> {
    let mode = str_field(p, "mode")?;
    bool_field(p, "park_probe_attached")?;
    for key in ["parks_per_sec", "attached_fraction"] {
        if !p[key].is_number() {
            bail!("{key} is not a number");
        }
    }
    null_or(p, "cancel_probe_attached", Value::is_boolean)?;
    null_or(p, "cancels_per_sec", Value::is_number)?;
    null_or(p, "cancel_attached_fraction", Value::is_number)?;
    if mode != "precise" && !p["cancel_probe_attached"].is_null() {
        bail!("a cancel probe outside precise mode");
    }
    for key in [
        "probes_restored",
        "map_update_errors",
        "probe_read_errors",
        "unwatched_wakeups",
    ] {
        u64_field(p, key)?;
    }
    if u64_field(p, "park_hit_ns")? == 0 {
        bail!("park_hit_ns is 0");
    }
    let source = str_field(p, "park_hit_cost")?;
    if !["measured", "assumed"].contains(&source) {
        bail!("park_hit_cost {source:?}");
    }
    Ok(())
}

/// RFC 3339, UTC, with nanoseconds: `2026-11-22T03:10:00.123456789Z`.
pub fn check_time(s: &str) -> Result<()> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let ok = b.len() == 30
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..29)
        && b[29] == b'Z';
    if !ok {
        bail!("time {s:?} is not RFC 3339 UTC with nanoseconds (YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ)");
    }
    Ok(())
}

/// `contexts`, `waits_on`, `context_verdict` (issue 8).
fn check_contexts(v: &Value) -> Result<()> {
    let contexts = v["contexts"]
        .as_array()
        .context("contexts is not an array")?;
    for c in contexts {
        (|| -> Result<()> {
            str_field(c, "frame")?;
            str_field(c, "type")?;
            bool_field(c, "cancelled")?;
            null_or(c, "err", Value::is_string)?;
            bool_field(c, "done_waited")?;
            match c.get("deadline") {
                Some(Value::String(d)) => check_time(d)?,
                Some(Value::Null) => {}
                other => bail!("deadline {other:?}"),
            }
            let chain = c["chain"].as_array().context("chain is not an array")?;
            if chain.is_empty() || !chain.iter().all(Value::is_string) || chain[0] != c["type"] {
                bail!("chain must start with the context's own type");
            }
            // Precise mode's cancel probe: all three or none, and only for cancelled contexts.
            null_or(c, "cancelled_ago_ns", Value::is_u64)?;
            null_or(c, "cancelled_by_goid", Value::is_u64)?;
            match c.get("cancelled_at") {
                Some(Value::Null) => {}
                Some(f) => check_frame(f)?,
                None => bail!("no cancelled_at"),
            }
            if !c["cancelled_ago_ns"].is_null() && c["cancelled"] != true {
                bail!("cancelled_ago_ns on a context that is not cancelled");
            }
            if c["cancelled_ago_ns"].is_null() != c["cancelled_by_goid"].is_null() {
                bail!("cancelled_ago_ns and cancelled_by_goid must be both null or both set");
            }
            // Set for cancelled contexts in precise mode only; the probe's fields only with
            // "probe".
            let attribution = &c["cancel_attribution"];
            null_or(c, "cancel_attribution", |a| {
                a.as_str()
                    .is_some_and(|a| ["probe", "not_seen", "unavailable"].contains(&a))
            })?;
            if !attribution.is_null() && c["cancelled"] != true {
                bail!("cancel_attribution on a context that is not cancelled");
            }
            if !c["cancelled_by_goid"].is_null() && *attribution != "probe" {
                bail!("cancelled_by_goid without cancel_attribution \"probe\"");
            }
            Ok(())
        })()
        .with_context(|| format!("context {c}"))?;
    }
    let waits = v["waits_on"]
        .as_array()
        .context("waits_on is not an array")?;
    for w in waits {
        (|| -> Result<()> {
            hex_field(w, "chan")?;
            null_or(w, "dir", |d| d == "send" || d == "recv")?;
            null_or(w, "elem_type", Value::is_string)?;
            u64_field(w, "cap")?;
            u64_field(w, "len")?;
            bool_field(w, "closed")?;
            bool_field(w, "ctx_done")?;
            Ok(())
        })()
        .with_context(|| format!("waits_on entry {w}"))?;
    }
    null_or(v, "context_verdict", |x| {
        x == "ignores_cancellation" || x == "uncancellable" || x == "waits_for_cancel"
    })
}

fn check_frame(f: &Value) -> Result<()> {
    if str_field(f, "func")?.is_empty() {
        bail!("empty func");
    }
    if str_field(f, "file")?.is_empty() {
        bail!("empty file");
    }
    if u64_field(f, "line")? == 0 {
        bail!("line 0");
    }
    Ok(())
}

fn counts(v: &Value, key: &str) -> Result<()> {
    let o = v[key]
        .as_object()
        .with_context(|| format!("{key} is not an object"))?;
    for (k, n) in o {
        if !n.is_u64() {
            bail!("{key}.{k} is not a count: {n}");
        }
    }
    Ok(())
}

pub fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("{key} missing or not a string"))
}

pub fn u64_field(v: &Value, key: &str) -> Result<u64> {
    v[key]
        .as_u64()
        .with_context(|| format!("{key} missing or not a non-negative integer"))
}

fn bool_field(v: &Value, key: &str) -> Result<bool> {
    v[key]
        .as_bool()
        .with_context(|| format!("{key} missing or not a bool"))
}

fn null_or(v: &Value, key: &str, ok: fn(&Value) -> bool) -> Result<()> {
    let x = v.get(key).with_context(|| format!("{key} missing"))?;
    if !x.is_null() && !ok(x) {
        bail!("{key} has the wrong type: {x}");
    }
    Ok(())
}

/// A `"0x…"` address string.
fn hex_field(v: &Value, name: &str) -> Result<u64> {
    let s = str_field(v, name)?;
    let digits = s
        .strip_prefix("0x")
        .with_context(|| format!("{name} {s:?} is not 0x-hex"))?;
    u64::from_str_radix(digits, 16).with_context(|| format!("{name} {s:?} is not 0x-hex"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times() {
        assert!(check_time("2026-11-22T03:10:00.123456789Z").is_ok());
        assert!(check_time("2026-11-22T03:10:00.123Z").is_err());
        assert!(check_time("2026-11-22T03:10:00.123456789+00:00").is_err());
        assert!(check_time("2026-11-22 03:10:00.123456789Z").is_err());
    }

    #[test]
    fn records() {
        let t = "2026-11-22T03:10:00.123456789Z";
        let blocked = json!({"type":"blocked","time":t,"pid":7,"goid":18,"state":"waiting",
            "wait_reason":"chan receive","blocked_ns":2_000_000_000u64,"since_exact":false,
            "threshold_ns":1_000_000_000u64,
            "stack":[{"func":"main.f","file":"/m.go","line":3}],
            "created_by":{"func":"main.main","file":"/m.go","line":9},"parent_goid":1,
            "contexts":[],"waits_on":[],"context_verdict":null});
        check_record(&blocked, 7).unwrap();
        assert!(check_record(&blocked, 8).is_err());
        let mut bad = blocked.clone();
        bad["stack"][0]["line"] = json!(0);
        assert!(check_record(&bad, 7).is_err());
        let detach = json!({"type":"detach","time":t,"pid":7,"reason":"duration","lost_events":0,
            "dropped_records":0});
        check_record(&detach, 7).unwrap();
        let bad = json!({"type":"detach","time":t,"pid":7,"reason":"bored","lost_events":0,
            "dropped_records":0});
        assert!(check_record(&bad, 7).is_err());
    }
}
