//! Comparing ctxprobe's `goroutine`/`blocked` records with the runtime's own dump.

use std::collections::HashMap;

use serde_json::Value;

use crate::dump::{is_runtime_func, Goroutine};

/// A frame as ctxprobe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub func: String,
    pub file: String,
    pub line: u64,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.func, self.file, self.line)
    }
}

fn site(v: &Value) -> Option<Site> {
    Some(Site {
        func: v["func"].as_str()?.to_string(),
        file: v["file"].as_str()?.to_string(),
        line: v["line"].as_u64()?,
    })
}

/// The record's stack, innermost first (malformed frames are left out; the contract check
/// reports them).
pub fn record_stack(rec: &Value) -> Vec<Site> {
    rec["stack"]
        .as_array()
        .map(|a| a.iter().filter_map(site).collect())
        .unwrap_or_default()
}

/// The record's innermost frame outside package runtime.
pub fn record_user_frame(rec: &Value) -> Option<Site> {
    record_stack(rec)
        .into_iter()
        .find(|f| !is_runtime_func(&f.func))
}

pub fn record_created_by(rec: &Value) -> Option<Site> {
    site(&rec["created_by"])
}

pub fn goid(rec: &Value) -> Option<u64> {
    rec["goid"].as_u64()
}

/// The dump's goroutines by id.
pub fn by_goid(dump: &[Goroutine]) -> HashMap<u64, &Goroutine> {
    dump.iter().map(|g| (g.goid, g)).collect()
}

/// Everything on which `rec` (a `goroutine` or `blocked` record) and the runtime's view `g` of
/// the same goroutine disagree: state, wait reason, innermost non-runtime frame, creation site,
/// parent goid. Empty when they agree.
pub fn mismatches(rec: &Value, g: &Goroutine, check_state: bool) -> Vec<String> {
    let mut out = Vec::new();
    if goid(rec) != Some(g.goid) {
        out.push(format!("goid {} vs dump {}", rec["goid"], g.goid));
    }
    if check_state {
        if rec["state"].as_str() != Some(g.state.as_str()) {
            out.push(format!("state {} vs dump {:?}", rec["state"], g.state));
        }
        if rec["wait_reason"].as_str() != g.wait_reason.as_deref() {
            out.push(format!(
                "wait_reason {} vs dump {:?}",
                rec["wait_reason"], g.wait_reason
            ));
        }
    }
    let dump_frame = g.innermost_user_frame().map(|f| Site {
        func: f.func.clone(),
        file: f.file.clone(),
        line: u64::from(f.line),
    });
    let rec_frame = record_user_frame(rec);
    if rec_frame != dump_frame {
        out.push(format!(
            "innermost non-runtime frame {} vs dump {}",
            show(&rec_frame),
            show(&dump_frame)
        ));
    }
    let rec_created = record_created_by(rec);
    match &g.created_by {
        Some(c) => {
            let want = Site {
                func: c.func.clone(),
                file: c.file.clone(),
                line: u64::from(c.line),
            };
            if rec_created.as_ref() != Some(&want) {
                out.push(format!("created_by {} vs dump {want}", show(&rec_created)));
            }
            let rec_parent = rec["parent_goid"].as_u64();
            match c.parent_goid {
                Some(p) if rec_parent != Some(p) => {
                    out.push(format!("parent_goid {} vs dump {p}", rec["parent_goid"]))
                }
                // Not printed: before Go 1.21 (ctxprobe cannot know it either), or parent 0.
                None if rec_parent.is_some_and(|p| p != 0) => out.push(format!(
                    "parent_goid {} but the dump shows none",
                    rec["parent_goid"]
                )),
                _ => {}
            }
        }
        // The runtime prints no creation site for goroutine 1 (created by the bootstrap).
        None => {
            if let Some(c) = &rec_created {
                if !is_runtime_func(&c.func) {
                    out.push(format!("created_by {c} but the dump shows none"));
                }
            }
        }
    }
    out
}

fn show(s: &Option<Site>) -> String {
    s.as_ref().map_or("none".to_string(), Site::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::parse_dump;
    use serde_json::json;

    #[test]
    fn agrees_and_disagrees() {
        let dump = parse_dump(
            "goroutine 41 [sync.Mutex.Lock]:\n\
             internal/sync.runtime_SemacquireMutex(0x0?)\n\t/go/sema.go:95 +0x25\n\
             main.blockMutex(0x0?)\n\t/f/main.go:181 +0x54\n\
             created by main.spawnMutex in goroutine 1\n\t/f/main.go:298 +0xe7\n",
        )
        .unwrap();
        let g = &dump[0];
        let mut rec = json!({"goid":41,"state":"waiting","wait_reason":"sync.Mutex.Lock",
            "stack":[{"func":"runtime.gopark","file":"/go/proc.go","line":460},
                     {"func":"internal/sync.runtime_SemacquireMutex","file":"/go/sema.go","line":95},
                     {"func":"main.blockMutex","file":"/f/main.go","line":181}],
            "created_by":{"func":"main.spawnMutex","file":"/f/main.go","line":298},
            "parent_goid":1});
        assert_eq!(mismatches(&rec, g, true), Vec::<String>::new());
        rec["parent_goid"] = json!(2);
        rec["wait_reason"] = json!("semacquire");
        rec["stack"][1]["line"] = json!(96);
        assert_eq!(mismatches(&rec, g, true).len(), 3);
        assert_eq!(mismatches(&rec, g, false).len(), 2);
    }
}
