//! The `groups` fixture's protocol (see fixtures/groups/main.go), the runtime's `debug=1` dump,
//! and `group` records: what the tests of issue 7 compare.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::compare::{record_stack, Site};
use crate::dump::is_runtime_func;
use crate::fixture::Fixture;
use crate::toolchain::{version_at_least, BuildMode, Toolchain};

/// What the fixture says about one of its sites.
#[derive(Debug, Clone)]
pub struct SiteTruth {
    /// The function its goroutines block in (`main.leakCtx`).
    pub func: String,
    /// The function whose `go` statement creates them.
    pub creator: String,
    /// `leak`, `pool`, `warmup`, `burst` or `holder`.
    pub kind: String,
    /// Goroutines added per second (leak sites).
    pub rate: f64,
    /// Members at the ready line.
    pub count: i64,
}

pub struct Groups {
    pub fixture: Fixture,
    pub go_minor: String,
    pub sites: HashMap<String, SiteTruth>,
    pub busy: Vec<u64>,
    /// When the ready line arrived.
    pub ready_at: Instant,
}

/// Fixture arguments for a population that never changes after the ready line.
pub const QUIET: &[&str] = &[
    "-leak-rate",
    "0",
    "-burst",
    "0",
    "-warm-over",
    "0",
    "-busy-pairs",
    "0",
    "-report-every",
    "0",
];

impl Groups {
    pub fn start(tc: &Toolchain, mode: &BuildMode, args: &[&str]) -> Result<Groups> {
        let fixture = Fixture::build_and_start("groups", tc, mode, args)?;
        let ready_at = fixture.ready_at;
        let ready = &fixture.ready;
        let mut sites = HashMap::new();
        for (name, s) in ready["sites"].as_object().context("ready line: sites")? {
            let truth = SiteTruth {
                func: s["func"].as_str().context("site func")?.to_string(),
                creator: s["creator"].as_str().context("site creator")?.to_string(),
                kind: s["kind"].as_str().context("site kind")?.to_string(),
                rate: s["rate"].as_f64().unwrap_or(0.0),
                count: s["count"].as_i64().context("site count")?,
            };
            sites.insert(name.clone(), truth);
        }
        let busy = serde_json::from_value(ready["busy"].clone()).context("ready line: busy")?;
        Ok(Groups {
            fixture,
            go_minor: tc.version.clone(),
            sites,
            busy,
            ready_at,
        })
    }

    pub fn pid(&self) -> u32 {
        self.fixture.pid()
    }

    /// The leak sites' names, sorted.
    pub fn leak_sites(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sites
            .iter()
            .filter(|(_, s)| s.kind == "leak")
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Every `counts` line so far, with the time the harness received it; the ready line's counts
    /// come first.
    pub fn counts(&mut self) -> Vec<(Instant, HashMap<String, i64>)> {
        let mut out = vec![(
            self.ready_at,
            self.sites
                .iter()
                .map(|(n, s)| (n.clone(), s.count))
                .collect(),
        )];
        for l in self.fixture.process.lines() {
            if let Some(c) = l.json.as_ref().and_then(|v| v["counts"].as_object()) {
                let m = c
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                    .collect();
                out.push((l.at, m));
            }
        }
        out
    }

    /// The site whose blocking function is the innermost fixture frame of `rec`'s stack.
    pub fn site_of(&self, rec: &Value) -> Option<String> {
        let stack = record_stack(rec);
        let f = stack.iter().find(|f| f.func.starts_with("main."))?;
        self.sites
            .iter()
            .find(|(_, s)| s.func == f.func)
            .map(|(n, _)| n.clone())
    }

    /// Asks for the runtime's `debug=1` dump (SIGUSR2) and parses it.
    pub fn dump_debug1(&mut self) -> Result<Vec<StackCount>> {
        let path = self.fixture.dump_path().to_path_buf();
        let _ = std::fs::remove_file(&path);
        self.fixture.process.skip_pending();
        self.fixture.process.signal(libc::SIGUSR2)?;
        let line =
            self.fixture
                .process
                .wait_json("debug=1 dump", Duration::from_secs(60), |v| {
                    v.get("dumped1").is_some()
                })?;
        if line.json.as_ref().is_some_and(|v| v["dumped1"] != true) {
            bail!("fixture could not write its debug=1 dump: {}", line.text);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let _ = std::fs::remove_file(&path);
        parse_debug1(&text)
    }

    pub fn expected_wait_reason(&self, site: &str) -> Option<&'static str> {
        expected_wait_reason(site, &self.go_minor)
    }
}

/// The wait reason of each site's goroutines, by Go minor version.
pub fn expected_wait_reason(site: &str, go_minor: &str) -> Option<&'static str> {
    Some(match site {
        "ctx" => "select",
        "send" => "chan send",
        "wg" if version_at_least(go_minor, 24) => "sync.WaitGroup.Wait",
        "mutex" if version_at_least(go_minor, 21) => "sync.Mutex.Lock",
        "wg" | "mutex" => "semacquire",
        "idle" | "warm" | "burst" | "holder" => "chan receive",
        _ => return None,
    })
}

/// One stack of a `debug=1` goroutine profile.
#[derive(Debug, Clone)]
pub struct StackCount {
    pub count: u64,
    /// As printed: innermost first, the runtime's own leading frames left out.
    pub frames: Vec<Site>,
}

/// Parses `pprof.Lookup("goroutine").WriteTo(w, 1)`: `N @ pc...` then `#\tpc\tfunc+off\tfile:line`.
pub fn parse_debug1(text: &str) -> Result<Vec<StackCount>> {
    let mut out: Vec<StackCount> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#\t") {
            let cur = out.last_mut().context("frame line before any stack")?;
            let parts: Vec<&str> = rest.split('\t').filter(|p| !p.is_empty()).collect();
            if parts.len() < 3 {
                bail!("bad debug=1 frame line {line:?}");
            }
            let func = parts[1].rsplit_once("+0x").map_or(parts[1], |(f, _)| f);
            let (file, ln) = parts[2]
                .rsplit_once(':')
                .with_context(|| format!("bad file:line in {line:?}"))?;
            cur.frames.push(Site {
                func: func.to_string(),
                file: file.to_string(),
                line: ln
                    .trim()
                    .parse()
                    .with_context(|| format!("bad line in {line:?}"))?,
            });
        } else if let Some((n, _)) = line.split_once(" @ ") {
            out.push(StackCount {
                count: n
                    .trim()
                    .parse()
                    .with_context(|| format!("bad count in {line:?}"))?,
                frames: Vec::new(),
            });
        }
    }
    if out.is_empty() {
        bail!("no stacks in the debug=1 dump");
    }
    Ok(out)
}

/// A record's stack as `debug=1` prints it, normalised with [`trim_runtime`].
pub fn as_debug1_stack(rec: &Value) -> Vec<Site> {
    trim_runtime(&record_stack(rec))
}

/// A stack without its leading and trailing `runtime.` frames: `debug=1` leaves out the leading
/// ones (gopark, chanrecv...) and prints `runtime.main` at the end of the main goroutine, which
/// ctxprobe's stacks end before; neither says anything about grouping.
pub fn trim_runtime(stack: &[Site]) -> Vec<Site> {
    let start = stack
        .iter()
        .position(|f| !is_runtime_func(&f.func))
        .unwrap_or(stack.len());
    let end = stack
        .iter()
        .rposition(|f| !is_runtime_func(&f.func))
        .map_or(start, |i| i + 1);
    stack[start..end.max(start)].to_vec()
}

/// Checks the fields of a `group` record that do not depend on the target's population.
pub fn check_group_record(g: &Value) -> Result<()> {
    for k in ["group_id", "goroutines", "new", "gone", "stack_bytes"] {
        g[k].as_u64()
            .with_context(|| format!("group record: {k} is not a u64: {g}"))?;
    }
    g["state"]
        .as_str()
        .with_context(|| format!("group record: no state: {g}"))?;
    if !(g["wait_reason"].is_null() || g["wait_reason"].is_string()) {
        bail!("group record: wait_reason neither string nor null: {g}");
    }
    g["stack"]
        .as_array()
        .with_context(|| format!("group record: stack is not an array: {g}"))?;
    // threshold_ns may be null in `--once --grouped` (there is no threshold there).
    for k in ["blocked_min_ns", "blocked_max_ns", "threshold_ns"] {
        if !(g[k].is_null() || g[k].is_u64()) {
            bail!("group record: {k} neither u64 nor null: {g}");
        }
    }
    g["growth_per_min"]
        .as_f64()
        .with_context(|| format!("group record: growth_per_min is not a number: {g}"))?;
    let samples = g["sample_goids"]
        .as_array()
        .with_context(|| format!("group record: sample_goids is not an array: {g}"))?;
    if samples.len() > 5 || samples.iter().any(|s| !s.is_u64()) {
        bail!("group record: sample_goids must be at most 5 goids: {g}");
    }
    let suspect = g["leak_suspect"]
        .as_bool()
        .with_context(|| format!("group record: leak_suspect is not a bool: {g}"))?;
    match g["leak_since"].as_str() {
        Some(t) => crate::contract::check_time(t)?,
        None if g["leak_since"].is_null() => {}
        None => bail!("group record: leak_since neither a time nor null: {g}"),
    }
    if suspect && g["leak_since"].is_null() {
        bail!("group record: a leak suspect without leak_since: {g}");
    }
    Ok(())
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time as ctxprobe prints it.
pub fn unix_time(s: &str) -> Result<f64> {
    crate::contract::check_time(s)?;
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap_or(0) };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    Ok(secs as f64 + n(20..29) as f64 / 1e9)
}
