//! `goroutine` records as JSON lines, written straight to bytes: a `--once` dump writes a
//! million of them, most sharing a handful of stacks and creation sites, so each distinct
//! stack and site is rendered once and copied after. The bytes are exactly what serializing
//! [`Event::Goroutine`] with serde and splicing `time` and `pid` gives (see [`super::json`]);
//! the test below holds the two together.

use std::io;
use std::sync::Arc;

use serde::Serialize;

use super::event::{GoroutineReport, SinceSource};
use crate::fxhash::FxHashMap;
use crate::stack::SourceFrame;

/// Distinct stacks (or sites) kept rendered; the cache starts over when full.
const MAX_CACHED: usize = 20_000;

/// A rendered fragment, keyed by the address of the shared value it renders; the value is
/// kept alive with it so the address cannot be reused by another one.
type Rendered<T> = FxHashMap<usize, (Arc<T>, Box<[u8]>)>;

#[derive(Default)]
pub struct GoroutineJson {
    stacks: Rendered<[SourceFrame]>,
    sites: Rendered<SourceFrame>,
}

impl GoroutineJson {
    /// Appends `g`'s `goroutine` record, with its line end, to `out`.
    pub fn render(
        &mut self,
        out: &mut Vec<u8>,
        g: &GoroutineReport,
        time: &str,
        pid: u32,
    ) -> io::Result<()> {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"type\":\"goroutine\",\"time\":");
        json_value(out, time)?;
        out.extend_from_slice(b",\"pid\":");
        out.extend_from_slice(num.format(pid).as_bytes());
        out.extend_from_slice(b",\"goid\":");
        out.extend_from_slice(num.format(g.goid).as_bytes());
        out.extend_from_slice(b",\"state\":");
        json_value(out, &g.state)?;
        out.extend_from_slice(b",\"wait_reason\":");
        match &g.wait_reason {
            Some(r) => json_value(out, r)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"blocked_ns\":");
        match g.blocked_ns {
            Some(ns) => out.extend_from_slice(num.format(ns).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(if g.since_exact {
            b",\"since_exact\":true,\"since_source\":"
        } else {
            b",\"since_exact\":false,\"since_source\":"
        });
        out.extend_from_slice(match g.since_source {
            SinceSource::Probe => b"\"probe\"",
            SinceSource::Runtime => b"\"runtime\"",
            SinceSource::Observed => b"\"observed\"",
            SinceSource::Unknown => b"\"unknown\"",
        });
        out.extend_from_slice(b",\"stack\":");
        out.extend_from_slice(cached(&mut self.stacks, &g.stack)?);
        if let Some(e) = &g.stack_error {
            out.extend_from_slice(b",\"stack_error\":");
            json_value(out, e)?;
        }
        out.extend_from_slice(b",\"created_by\":");
        match &g.created_by {
            Some(site) => out.extend_from_slice(cached(&mut self.sites, site)?),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"parent_goid\":");
        match g.parent_goid {
            Some(p) => out.extend_from_slice(num.format(p).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        if g.system {
            out.extend_from_slice(b",\"system\":true");
        }
        // The flattened context diagnosis, field by field.
        let c = &g.contexts;
        out.extend_from_slice(b",\"contexts\":");
        json_list(out, &c.contexts)?;
        out.extend_from_slice(b",\"waits_on\":");
        json_list(out, &c.waits_on)?;
        out.extend_from_slice(b",\"context_verdict\":");
        match &c.context_verdict {
            Some(v) => json_value(out, v)?,
            None => out.extend_from_slice(b"null"),
        }
        match g.leaked {
            None => {}
            Some(None) => out.extend_from_slice(b",\"leaked\":null"),
            Some(Some(true)) => out.extend_from_slice(b",\"leaked\":true"),
            Some(Some(false)) => out.extend_from_slice(b",\"leaked\":false"),
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// The rendering of `value`, from the cache or made now.
fn cached<'c, T: Serialize + ?Sized>(
    cache: &'c mut Rendered<T>,
    value: &Arc<T>,
) -> io::Result<&'c [u8]> {
    let key = Arc::as_ptr(value) as *const u8 as usize;
    if !cache.contains_key(&key) {
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        let mut bytes = Vec::new();
        json_value(&mut bytes, &**value)?;
        cache.insert(key, (value.clone(), bytes.into()));
    }
    Ok(cache.get(&key).map_or(&[][..], |(_, b)| b))
}

fn json_list<T: Serialize>(out: &mut Vec<u8>, items: &[T]) -> io::Result<()> {
    if items.is_empty() {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    json_value(out, items)
}

fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> io::Result<()> {
    serde_json::to_writer(out, value).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contexts::{ChanWait, ContextDiagnosis, HeldContext, Verdict};
    use crate::report::{json, Event};

    fn frame(func: &str, line: u32) -> SourceFrame {
        SourceFrame {
            func: func.into(),
            file: "/src/m \"q\".go".into(),
            line,
        }
    }

    fn reports() -> Vec<GoroutineReport> {
        let stack: Arc<[SourceFrame]> = vec![frame("main.f", 3), frame("main.g\u{e9}", 9)].into();
        let site = Arc::new(frame("main.main", 12));
        let base = GoroutineReport {
            goid: 7,
            state: "waiting".into(),
            wait_reason: Some("chan send".into()),
            blocked_ns: Some(5_000_000_123),
            since_exact: false,
            since_source: SinceSource::Runtime,
            stack: stack.clone(),
            stack_error: None,
            created_by: Some(site.clone()),
            parent_goid: Some(1),
            system: false,
            contexts: ContextDiagnosis::default(),
            leaked: None,
        };
        let mut all = vec![base.clone()];
        let mut g = base.clone();
        g.goid = 8;
        g.state = "runnable".into();
        g.wait_reason = None;
        g.blocked_ns = None;
        g.since_exact = true;
        g.since_source = SinceSource::Probe;
        g.stack = Vec::new().into();
        g.stack_error = Some("running: its \"stack\" is\nelsewhere".into());
        g.created_by = None;
        g.parent_goid = None;
        g.system = true;
        g.leaked = Some(Some(true));
        all.push(g);
        for source in [SinceSource::Observed, SinceSource::Unknown] {
            let mut g = base.clone();
            g.since_source = source;
            all.push(g);
        }
        for leaked in [Some(None), Some(Some(false))] {
            let mut g = base.clone();
            g.leaked = leaked;
            all.push(g);
        }
        let mut g = base.clone();
        g.contexts = ContextDiagnosis {
            contexts: vec![HeldContext {
                frame: "main.f".into(),
                type_name: "*context.cancelCtx".into(),
                cancelled: true,
                err: Some("context canceled".into()),
                deadline: None,
                done_waited: true,
                chain: vec!["*context.cancelCtx".into(), "context.backgroundCtx".into()],
                cancelled_ago_ns: Some(12),
                cancelled_by_goid: None,
                cancelled_at: Some(frame("main.cancel", 4)),
                cancel_attribution: Some("probe"),
                facts: Default::default(),
            }],
            waits_on: vec![ChanWait {
                chan: "0xc000123456".into(),
                dir: Some("recv"),
                elem_type: Some("struct {}".into()),
                cap: 0,
                len: 0,
                closed: false,
                ctx_done: true,
            }],
            context_verdict: Some(Verdict::IgnoresCancellation),
        };
        all.push(g);
        // Another goroutine on the first's (cached) stack and site.
        let mut g = base;
        g.goid = u64::MAX;
        all.push(g);
        all
    }

    #[test]
    fn records_equal_the_serde_rendering() {
        let mut fast = GoroutineJson::default();
        let time = "2026-12-01T03:04:05.000000006Z";
        for g in reports() {
            let mut out = Vec::new();
            fast.render(&mut out, &g, time, 4242).unwrap();
            let by_serde = json::render(&Event::Goroutine(g), time, 4242).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(by_serde).unwrap()
            );
        }
    }
}
