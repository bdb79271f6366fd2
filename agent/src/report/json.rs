//! The JSON lines rendering of events: one object per line, `type`, `time` and `pid` first.

use super::event::Event;

/// One record as a JSON line; `time` is RFC 3339.
pub fn render(event: &Event, time: &str, pid: u32) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut obj = serde_json::Map::new();
    let body = serde_json::to_value(event).map_err(std::io::Error::other)?;
    let serde_json::Value::Object(body) = body else {
        return Err(std::io::Error::other("event is not an object"));
    };
    // `type`, `time`, `pid` first, for people reading the raw lines.
    if let Some(t) = body.get("type") {
        obj.insert("type".into(), t.clone());
    }
    obj.insert("time".into(), time.into());
    obj.insert("pid".into(), pid.into());
    for (k, v) in body {
        if k != "type" {
            obj.insert(k, v);
        }
    }
    serde_json::to_writer(&mut out, &obj).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}
