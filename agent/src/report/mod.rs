//! What ctxprobe prints: one event model ([`event`]) and one module per output format
//! ([`json`], [`text`]); the [`Reporter`] formats each event and sends it to its sink. Adding a
//! format is a module here and a [`Format`] variant.

mod event;
mod json;
mod text;

use std::io::Write;

pub use event::*;

use crate::output_queue::{OutputQueue, QUEUE_RECORDS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
}

/// Where formatted records go.
enum Sink {
    /// Written at once, blocking while the consumer is slow: `--once`, a dump nobody wants
    /// thinned out.
    Blocking(Box<dyn Write>),
    /// Streaming: through a bounded queue; never blocks, drops and counts instead.
    Queued(OutputQueue),
}

pub struct Reporter {
    out: Sink,
    format: Format,
    pid: u32,
}

impl Reporter {
    pub fn new(out: Box<dyn Write>, format: Format, pid: u32) -> Reporter {
        Reporter {
            out: Sink::Blocking(out),
            format,
            pid,
        }
    }

    /// A reporter whose writes never block the caller (see [`OutputQueue`]).
    pub fn queued(
        out: Box<dyn Write + Send>,
        format: Format,
        pid: u32,
    ) -> std::io::Result<Reporter> {
        Ok(Reporter {
            out: Sink::Queued(OutputQueue::start(out, QUEUE_RECORDS)?),
            format,
            pid,
        })
    }

    /// Records dropped so far because the consumer did not keep up.
    pub fn dropped(&self) -> u64 {
        match &self.out {
            Sink::Blocking(_) => 0,
            Sink::Queued(q) => q.dropped(),
        }
    }

    pub fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        let record = self.format_record(event)?;
        match &mut self.out {
            Sink::Blocking(w) => w.write_all(&record),
            Sink::Queued(q) => {
                q.push(record);
                Ok(())
            }
        }
    }

    /// Writes out what is pending; a queued reporter waits at most `timeout` for its consumer.
    pub fn finish(&mut self, timeout: std::time::Duration) -> std::io::Result<()> {
        match &mut self.out {
            Sink::Blocking(w) => w.flush(),
            Sink::Queued(q) => q.close(timeout),
        }
    }

    fn format_record(&self, event: &Event) -> std::io::Result<Vec<u8>> {
        let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        match self.format {
            Format::Json => json::render(event, &time, self.pid),
            Format::Text => Ok(text::render(event, self.pid).into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_the_common_fields_first() {
        let path = std::env::temp_dir().join(format!("ctxprobe-report-{}", std::process::id()));
        {
            let w: Box<dyn Write> = Box::new(std::fs::File::create(&path).unwrap());
            let mut r = Reporter::new(w, Format::Json, 42);
            r.emit(&Event::Detach {
                reason: "duration",
                lost_events: 0,
                dropped_records: 0,
            })
            .unwrap();
        }
        let line = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(line.starts_with(r#"{"type":"detach","time":""#), "{line}");
        assert!(line.contains(r#""pid":42"#));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let t = v["time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('.'), "{t}");
    }
}
