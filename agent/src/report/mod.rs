//! What ctxprobe prints: one event model ([`event`]) and one module per output format
//! ([`json`], [`text`]); the [`Reporter`] formats each event and sends it to its sink. Adding a
//! format is a module here and a [`Format`] variant.

mod event;
mod goroutine_json;
mod json;
mod text;

use std::io::Write;

pub use event::*;

use crate::dump_writer::DumpWriter;
use crate::output_queue::{OutputQueue, QUEUE_RECORDS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
}

/// Where formatted records go.
enum Sink {
    /// Streaming: through a bounded queue; never blocks, drops and counts instead.
    Queued(OutputQueue),
    /// `--once`: formatted and written on a thread of its own, never dropped (a dump nobody
    /// wants thinned out waits for its consumer).
    Threaded(DumpWriter),
}

pub struct Reporter {
    out: Sink,
    format: Format,
    pid: u32,
}

impl Reporter {
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

    /// A reporter that formats and writes on a thread of its own, waiting for its consumer
    /// (see [`DumpWriter`]); [`Self::emit_owned`] hands events over without a copy.
    pub fn threaded(
        out: Box<dyn Write + Send>,
        format: Format,
        pid: u32,
    ) -> std::io::Result<Reporter> {
        Ok(Reporter {
            out: Sink::Threaded(DumpWriter::start(out, format, pid)?),
            format,
            pid,
        })
    }

    /// [`Self::emit`] for an event the caller is done with.
    pub fn emit_owned(&mut self, event: Event) -> std::io::Result<()> {
        match &mut self.out {
            Sink::Threaded(w) => w.send(event),
            Sink::Queued(_) => self.emit(&event),
        }
    }

    /// Records dropped so far because the consumer did not keep up.
    pub fn dropped(&self) -> u64 {
        match &self.out {
            Sink::Threaded(_) => 0,
            Sink::Queued(q) => q.dropped(),
        }
    }

    pub fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        match &mut self.out {
            Sink::Threaded(w) => w.send(event.clone()),
            Sink::Queued(q) => {
                q.push(format_record(self.format, self.pid, event)?);
                Ok(())
            }
        }
    }

    /// Writes out what is pending; a queued reporter waits at most `timeout` for its consumer.
    pub fn finish(&mut self, timeout: std::time::Duration) -> std::io::Result<()> {
        match &mut self.out {
            Sink::Queued(q) => q.close(timeout),
            // A dump is the whole answer: it is written out however long that takes.
            Sink::Threaded(w) => w.finish(),
        }
    }
}

/// One record as `format` writes it, with its line end.
pub fn format_record(format: Format, pid: u32, event: &Event) -> std::io::Result<Vec<u8>> {
    let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    match format {
        Format::Json => json::render(event, &time, pid),
        Format::Text => Ok(text::render(event, pid).into_bytes()),
    }
}

/// Formats the records of a dump one after another, as [`format_record`] does; JSON
/// `goroutine` records (a million in a big dump) by a path that renders each distinct stack
/// once.
pub struct DumpFormatter {
    format: Format,
    pid: u32,
    goroutines: goroutine_json::GoroutineJson,
    time: String,
}

impl DumpFormatter {
    pub fn new(format: Format, pid: u32) -> Self {
        DumpFormatter {
            format,
            pid,
            goroutines: Default::default(),
            time: String::with_capacity(40),
        }
    }

    /// Appends `event`'s record, with its line end, to `out`.
    pub fn append(&mut self, out: &mut Vec<u8>, event: &Event) -> std::io::Result<()> {
        match (self.format, event) {
            (Format::Json, Event::Goroutine(g)) => {
                use std::fmt::Write as _;
                self.time.clear();
                let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now());
                let _ = write!(self.time, "{now}");
                self.goroutines.render(out, g, &self.time, self.pid)
            }
            _ => {
                out.extend_from_slice(&format_record(self.format, self.pid, event)?);
                Ok(())
            }
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
            let w: Box<dyn Write + Send> = Box::new(std::fs::File::create(&path).unwrap());
            let mut r = Reporter::threaded(w, Format::Json, 42).unwrap();
            r.emit(&Event::Detach {
                reason: "duration",
                lost_events: 0,
                dropped_records: 0,
            })
            .unwrap();
            r.finish(std::time::Duration::MAX).unwrap();
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
