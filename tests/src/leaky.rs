//! The `leaky` fixture's protocol (see fixtures/leaky/main.go) and what the runtime is expected
//! to say about each kind of goroutine it creates.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::fixture::Fixture;
use crate::toolchain::{version_at_least, BuildMode, Toolchain};

/// A goroutine the fixture blocked forever (until released, for kind `releasable`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Leak {
    pub goid: u64,
    /// 0 before Go 1.21 (the runtime did not print it).
    pub parent: u64,
    pub kind: String,
    /// 1 (at start), 2 (SIGUSR2) or 0 (grown).
    pub batch: u32,
    /// The fixture function it blocks in.
    pub func: String,
}

pub struct Leaky {
    pub fixture: Fixture,
    /// Minor version, e.g. "1.21".
    pub go_minor: String,
    pub leaked: Vec<Leak>,
    pub busy: Vec<u64>,
    pub infra: Vec<u64>,
    pub released: Vec<u64>,
}

impl Leaky {
    pub fn start(tc: &Toolchain, mode: &BuildMode, args: &[&str]) -> Result<Leaky> {
        let fixture = Fixture::build_and_start("leaky", tc, mode, args)?;
        Leaky::from_fixture(fixture, tc)
    }

    /// The fixture built by `tc` at `bin` (a copy of its build, say).
    pub fn start_binary(bin: &std::path::Path, tc: &Toolchain, args: &[&str]) -> Result<Leaky> {
        let fixture = Fixture::start(bin, args, std::time::Duration::from_secs(60))?;
        Leaky::from_fixture(fixture, tc)
    }

    fn from_fixture(fixture: Fixture, tc: &Toolchain) -> Result<Leaky> {
        let ready = &fixture.ready;
        let leaked = leaks(&ready["leaked"]).context("ready line: leaked")?;
        let busy = ids(&ready["busy"]).context("ready line: busy")?;
        let infra = ids(&ready["infra"]).context("ready line: infra")?;
        Ok(Leaky {
            fixture,
            go_minor: tc.version.clone(),
            leaked,
            busy,
            infra,
            released: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.fixture.pid()
    }

    /// Creates the second batch (SIGUSR2) and returns it once every goroutine has blocked.
    pub fn batch2(&mut self) -> Result<Vec<Leak>> {
        self.fixture.process.signal(libc::SIGUSR2)?;
        let line = self
            .fixture
            .process
            .wait_json("batch2 line", Duration::from_secs(30), |v| {
                v.get("batch2").is_some()
            })?;
        let v = line.json.unwrap_or(Value::Null);
        if v["batch2"] != true {
            bail!("fixture failed to create batch 2: {v}");
        }
        let batch = leaks(&v["leaked"]).context("batch2 line")?;
        self.leaked.extend(batch.iter().cloned());
        Ok(batch)
    }

    /// Wakes one `releasable` goroutine; returns when the fixture confirms it returned.
    pub fn release(&mut self, goid: u64) -> Result<Instant> {
        self.fixture.process.send_line(&format!("release {goid}"))?;
        let line =
            self.fixture
                .process
                .wait_json("released line", Duration::from_secs(10), |v| {
                    v.get("released").is_some()
                })?;
        let v = line.json.unwrap_or(Value::Null);
        if v["released"].as_u64() != Some(goid) {
            bail!("fixture did not release goroutine {goid}: {v}");
        }
        self.released.push(goid);
        Ok(line.at)
    }

    /// The longest each busy goroutine ever waited, as the fixture itself measured it: a busy
    /// goroutine flagged although this stayed far below the threshold was reported falsely;
    /// one that really stalled (an overloaded machine) shows it here.
    pub fn busy_max_wait(&mut self) -> Result<std::collections::HashMap<u64, Duration>> {
        self.busy_stats("stats")
    }

    /// Like [`Self::busy_max_wait`], then the fixture's maxima start afresh: what a later call
    /// returns happened after this one.
    pub fn reset_busy_max_wait(&mut self) -> Result<std::collections::HashMap<u64, Duration>> {
        self.busy_stats("stats reset")
    }

    fn busy_stats(&mut self, command: &str) -> Result<std::collections::HashMap<u64, Duration>> {
        self.fixture.process.skip_pending();
        self.fixture.process.send_line(command)?;
        let line = self
            .fixture
            .process
            .wait_json("stats line", Duration::from_secs(10), |v| {
                v.get("stats").is_some()
            })?;
        let v = line.json.unwrap_or(Value::Null);
        let mut out = std::collections::HashMap::new();
        for (k, ns) in v["stats"].as_object().context("bad stats line")? {
            let goid: u64 = k.parse().context("bad goid in stats")?;
            out.insert(goid, Duration::from_nanos(ns.as_u64().unwrap_or(0)));
        }
        Ok(out)
    }

    /// Goroutines added by the growth ticker so far, with the time the harness learnt of each
    /// (a few milliseconds after it blocked).
    pub fn grown(&mut self) -> Result<Vec<(Leak, Instant)>> {
        let mut out = Vec::new();
        for l in self.fixture.process.lines() {
            if let Some(g) = l.json.as_ref().and_then(|v| v.get("grown")) {
                let leak: Leak = serde_json::from_value(g.clone())
                    .with_context(|| format!("bad grown line {}", l.text))?;
                out.push((leak, l.at));
            }
        }
        Ok(out)
    }

    /// Every goroutine of the fixture that is blocked forever right now: both batches minus the
    /// released ones, plus those grown so far.
    pub fn forever_blocked(&mut self) -> Result<Vec<Leak>> {
        let mut all: Vec<Leak> = self
            .leaked
            .iter()
            .filter(|l| !self.released.contains(&l.goid))
            .cloned()
            .collect();
        all.extend(self.grown()?.into_iter().map(|(l, _)| l));
        Ok(all)
    }

    pub fn expected_wait_reason(&self, kind: &str) -> Option<&'static str> {
        expected_wait_reason(kind, &self.go_minor)
    }
}

/// The wait reason the runtime reports for each kind of leaked goroutine, by Go minor version
/// (the sync reasons were "semacquire" before they got their own names).
pub fn expected_wait_reason(kind: &str, go_minor: &str) -> Option<&'static str> {
    let named_locks = version_at_least(go_minor, 21);
    Some(match kind {
        "chan-recv" | "context" | "mutex-holder" | "rwmutex-holder" | "nest-parent" | "nested"
        | "orphan" | "releasable" | "grown" => "chan receive",
        "chan-send" => "chan send",
        "select" => "select",
        "select-no-cases" => "select (no cases)",
        "nil-chan-recv" => "chan receive (nil chan)",
        "nil-chan-send" => "chan send (nil chan)",
        "mutex" if named_locks => "sync.Mutex.Lock",
        "rwmutex-lock" if named_locks => "sync.RWMutex.Lock",
        "rwmutex-rlock" if named_locks => "sync.RWMutex.RLock",
        "mutex" | "rwmutex-lock" | "rwmutex-rlock" => "semacquire",
        "waitgroup" if version_at_least(go_minor, 24) => "sync.WaitGroup.Wait",
        "waitgroup" => "semacquire",
        "cond" => "sync.Cond.Wait",
        "sleep" => "sleep",
        "io-wait" => "IO wait",
        _ => return None,
    })
}

/// The function whose `go` statement creates each kind (its creation site).
pub fn expected_creator(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "chan-recv" | "chan-send" | "select" | "select-no-cases" => "main.spawnChans",
        "nil-chan-recv" | "nil-chan-send" => "main.spawnNilChans",
        "mutex" | "mutex-holder" => "main.spawnMutex",
        "rwmutex-lock" | "rwmutex-rlock" | "rwmutex-holder" => "main.spawnRWMutex",
        "waitgroup" | "cond" => "main.spawnSync",
        "sleep" => "main.spawnSleep",
        "context" => "main.spawnContext",
        "io-wait" => "main.spawnIOWait",
        "nest-parent" => "main.spawnNested",
        "nested" => "main.nestParent",
        "orphan" => "main.orphanParent",
        "releasable" => "main.spawnReleasable",
        "grown" => "main.growLoop",
        _ => return None,
    })
}

/// Every kind the fixture creates (to check that none goes missing).
pub const KINDS: &[&str] = &[
    "chan-recv",
    "chan-send",
    "select",
    "select-no-cases",
    "nil-chan-recv",
    "nil-chan-send",
    "mutex",
    "mutex-holder",
    "rwmutex-lock",
    "rwmutex-rlock",
    "rwmutex-holder",
    "waitgroup",
    "cond",
    "sleep",
    "context",
    "io-wait",
    "nest-parent",
    "nested",
    "orphan",
    "releasable",
];

fn leaks(v: &Value) -> Result<Vec<Leak>> {
    serde_json::from_value(v.clone()).context("expected an array of leaked goroutines")
}

fn ids(v: &Value) -> Result<Vec<u64>> {
    serde_json::from_value(v.clone()).context("expected an array of goroutine ids")
}
