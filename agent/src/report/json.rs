//! The JSON lines rendering of events: one object per line, `type`, `time` and `pid` first.

use super::event::Event;

/// One record as a JSON line; `time` is RFC 3339.
pub fn render(event: &Event, time: &str, pid: u32) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, event).map_err(std::io::Error::other)?;
    splice_time_and_pid(&mut out, time, pid)?;
    out.push(b'\n');
    Ok(out)
}

/// Puts `"time"` and `"pid"` right after the leading `"type"` field of a serialized event, for
/// people reading the raw lines. Serializing straight to bytes and splicing costs a fraction of
/// building a `serde_json::Value` per record (a `--once` dump writes a million of them).
fn splice_time_and_pid(record: &mut Vec<u8>, time: &str, pid: u32) -> std::io::Result<()> {
    const TAG: &[u8] = b"{\"type\":\"";
    // The tag is the first field of an internally tagged enum and its values are plain
    // snake_case names: the field ends at the next quote.
    let end = record
        .strip_prefix(TAG)
        .and_then(|rest| rest.iter().position(|&b| b == b'"'))
        .map(|i| TAG.len() + i + 1)
        .ok_or_else(|| std::io::Error::other("event does not start with its type"))?;
    let mut fields = Vec::with_capacity(64);
    fields.extend_from_slice(b",\"time\":");
    serde_json::to_writer(&mut fields, time).map_err(std::io::Error::other)?;
    fields.extend_from_slice(format!(",\"pid\":{pid}").as_bytes());
    // An event with no other field serializes as `{"type":"x"}`: the splice goes before `}`.
    record.splice(end..end, fields);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{GoroutineReport, SinceSource};
    use crate::stack::SourceFrame;

    /// The spliced line is what building a `serde_json::Value` with the common fields first
    /// gave, for an event with no field of its own and one with flattened parts.
    #[test]
    fn spliced_lines_equal_the_value_built_ones() {
        fn by_value(event: &Event, time: &str, pid: u32) -> Vec<u8> {
            let serde_json::Value::Object(body) = serde_json::to_value(event).unwrap() else {
                panic!("not an object");
            };
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), body["type"].clone());
            obj.insert("time".into(), time.into());
            obj.insert("pid".into(), pid.into());
            for (k, v) in body {
                if k != "type" {
                    obj.insert(k, v);
                }
            }
            serde_json::to_vec(&obj).unwrap()
        }
        let g = GoroutineReport {
            goid: 7,
            state: "waiting".into(),
            wait_reason: Some("chan \"send\"".into()),
            blocked_ns: Some(5),
            since_exact: false,
            since_source: SinceSource::Runtime,
            stack: vec![SourceFrame {
                func: "main.f".into(),
                file: "/m.go".into(),
                line: 3,
            }]
            .into(),
            stack_error: None,
            created_by: None,
            parent_goid: Some(1),
            system: false,
            contexts: Default::default(),
            leaked: None,
        };
        let time = "2026-12-01T03:04:05.000000006Z";
        for event in [
            Event::TargetStopped {},
            Event::Goroutine(g.clone()),
            Event::Blocked { g, threshold_ns: 9 },
        ] {
            let mut direct = serde_json::to_vec(&event).unwrap();
            splice_time_and_pid(&mut direct, time, 42).unwrap();
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(by_value(&event, time, 42)).unwrap()
            );
        }
    }
}
