//! Issue 7 against the `groups` fixture: `group` records and `--once --grouped` compared with the
//! runtime's own `debug=1` dump and with the fixture's truth; leak suspects (growing sites are,
//! stable pools, warm-up plateaus and drained bursts are not); the per-group rate limit of
//! `blocked`; `--max-groups`; and a stdout nobody reads. Needs root and a built ctxprobe.
//!
//! Under emulation ([`time_scale`] 3) the timelines that are about the machine's speed are
//! stretched: the fixture's bursts and growth, ctxprobe's `--duration`s, the waits, and the
//! tolerances of checks about how fast something happens. What is checked stays the same.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use ctxprobe_tests::compare::{goid, record_stack, Site};
use ctxprobe_tests::groups::{
    as_debug1_stack, check_group_record, trim_runtime, unix_time, Groups, StackCount, QUIET,
};
use ctxprobe_tests::probe::{args, ctxprobe_bin, run_ctxprobe, RunningProbe};
use ctxprobe_tests::scenario::{check_all_records, ensure_success, for_each_cell};
use ctxprobe_tests::serial::bpf_serial;
use ctxprobe_tests::toolchain::{BuildMode, Toolchain, LATEST_GO};
use ctxprobe_tests::{scaled, time_scale};
use serde_json::Value;

fn with(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(extra).copied().collect()
}

/// `d` stretched by the time scale, as a duration argument (ctxprobe's and the fixture's).
fn scaled_arg(d: Duration) -> String {
    format!("{}ms", scaled(d).as_millis())
}

/// A rate per second slowed by the time scale, as a fixture argument.
fn scaled_rate(per_sec: f64) -> String {
    (per_sec / f64::from(time_scale())).to_string()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn key(stack: &[Site]) -> Vec<String> {
    stack.iter().map(|f| f.to_string()).collect()
}

fn of_type<'a>(records: &'a [Value], ty: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == ty).collect()
}

/// `--once --grouped` on a population that does not change: each of the runtime's `debug=1`
/// stacks (taken right after) has exactly the count of our groups with that stack, and each
/// fixture site has exactly its members, wait reason and creation site.
#[test]
fn once_grouped_matches_debug1() {
    for_each_cell(|tc, mode| {
        let fixture_args = with(
            QUIET,
            &["-leak-initial", "50", "-idle", "30", "-warm", "20"],
        );
        let mut g = Groups::start(tc, mode, &fixture_args)?;
        let out = run_ctxprobe(
            &args(g.pid(), &["--once", "--grouped"]),
            Duration::from_secs(60),
        )?;
        let stacks = g.dump_debug1()?;
        ensure_success(&out)?;
        let records = out.records().with_context(|| out.describe())?;
        let groups = of_type(&records, "group");
        let mut problems = Vec::new();
        if groups.is_empty() {
            bail!("no group records: {}", out.describe());
        }
        let per_goroutine = of_type(&records, "goroutine").len();
        if per_goroutine > 0 {
            problems.push(format!(
                "--grouped printed {per_goroutine} goroutine records"
            ));
        }
        for r in &groups {
            if let Err(e) = check_group_record(r) {
                problems.push(format!("{e:#}"));
            }
        }
        let sizes: Vec<u64> = groups
            .iter()
            .map(|r| r["goroutines"].as_u64().unwrap_or(0))
            .collect();
        if sizes.windows(2).any(|w| w[0] < w[1]) {
            problems.push(format!("groups not largest first: {sizes:?}"));
        }

        problems.extend(compare_groups(&g, &groups, &stacks, true));
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    });
}

/// Our groups against the runtime's `debug=1` stacks and the fixture's truth per site. `full`
/// also checks the fields only ctxprobe's own `group` records have.
fn compare_groups(g: &Groups, groups: &[&Value], stacks: &[StackCount], full: bool) -> Vec<String> {
    let mut problems = Vec::new();
    // The runtime's view: every stack it prints, except the goroutine writing the dump and the
    // signal goroutine while it delivers the signal that asked for it (ctxprobe saw it parked
    // before the signal came: under emulation the dump catches it on its way).
    let mut ours: HashMap<Vec<String>, u64> = HashMap::new();
    for r in groups {
        *ours.entry(key(&as_debug1_stack(r))).or_default() += r["goroutines"].as_u64().unwrap_or(0);
    }
    for s in stacks {
        if s.frames
            .iter()
            .any(|f| f.func == "main.dump" || f.func == "os/signal.process")
        {
            continue;
        }
        let got = ours
            .get(&key(&trim_runtime(&s.frames)))
            .copied()
            .unwrap_or(0);
        if got != s.count {
            let top: Vec<String> = s.frames.iter().take(3).map(|f| f.to_string()).collect();
            problems.push(format!(
                "debug=1 has {} goroutines with stack [{}], our groups {got}",
                s.count,
                top.join(" <- ")
            ));
        }
    }

    // The fixture's truth, site by site.
    for (name, truth) in &g.sites {
        let mine: Vec<&&Value> = groups
            .iter()
            .filter(|r| g.site_of(r).as_deref() == Some(name.as_str()))
            .collect();
        let n: i64 = mine
            .iter()
            .map(|r| r["goroutines"].as_i64().unwrap_or(0))
            .sum();
        if n != truth.count {
            problems.push(format!(
                "site {name}: fixture has {}, our groups {n}",
                truth.count
            ));
        }
        for r in mine {
            let want = g.expected_wait_reason(name);
            if r["wait_reason"].as_str() != want {
                problems.push(format!(
                    "site {name}: wait_reason {} (want {want:?})",
                    r["wait_reason"]
                ));
            }
            if r["created_by"]["func"].as_str() != Some(truth.creator.as_str()) {
                problems.push(format!(
                    "site {name}: created_by {} (want {})",
                    r["created_by"], truth.creator
                ));
            }
            let members = r["goroutines"].as_u64().unwrap_or(0);
            let samples = r["sample_goids"].as_array().map_or(0, |a| a.len() as u64);
            if full && (samples == 0 || samples > members.min(5)) {
                problems.push(format!(
                    "site {name}: {samples} sample_goids for {members} members (want 1..={})",
                    members.min(5)
                ));
            }
            if full && r["stack_bytes"].as_u64().unwrap_or(0) < members * 2048 {
                problems.push(format!(
                    "site {name}: stack_bytes {} below 2 KiB per member ({members})",
                    r["stack_bytes"]
                ));
            }
        }
    }
    problems
}

/// The oracle itself: `--once` alone stays the per-goroutine dump, and its `goroutine` records,
/// grouped here by state, wait reason, stack and creation site, agree with `debug=1` and the
/// fixture's truth (so a failure of the grouped test is ctxprobe's grouping, not the harness).
#[test]
fn once_per_goroutine_grouped_by_harness_matches_debug1() {
    for_each_cell(|tc, mode| {
        let fixture_args = with(
            QUIET,
            &["-leak-initial", "50", "-idle", "30", "-warm", "20"],
        );
        let mut g = Groups::start(tc, mode, &fixture_args)?;
        let out = run_ctxprobe(&args(g.pid(), &["--once"]), Duration::from_secs(60))?;
        let stacks = g.dump_debug1()?;
        ensure_success(&out)?;
        let records = out.records().with_context(|| out.describe())?;
        ensure!(
            of_type(&records, "group").is_empty(),
            "--once without --grouped printed group records"
        );
        let mut by_key: HashMap<String, Value> = HashMap::new();
        for r in of_type(&records, "goroutine") {
            let k = format!(
                "{}|{}|{}|{}",
                r["state"], r["wait_reason"], r["stack"], r["created_by"]
            );
            let e = by_key.entry(k).or_insert_with(|| {
                let mut v = r.clone();
                v["goroutines"] = 0.into();
                v
            });
            e["goroutines"] = (e["goroutines"].as_u64().unwrap_or(0) + 1).into();
        }
        let groups: Vec<&Value> = by_key.values().collect();
        let problems = compare_groups(&g, &groups, &stacks, false);
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    });
}

const STREAM_THRESHOLD: Duration = Duration::from_secs(2);
const STREAM_SUMMARY: Duration = Duration::from_secs(2);

/// `--duration` of the leak-suspect test. Not simply stretched: most of it is the suspect
/// rule's own clock (30 s of history in 10-s buckets, fixed in ctxprobe whatever the machine),
/// and only the rest (attach, the first scans, the scans' spacing) is the machine's speed.
fn suspects_duration() -> Duration {
    Duration::from_secs(40) + scaled(Duration::from_secs(10))
}

/// Streaming on a process with growing leaks, a stable pool, a warm-up, a burst that drains and
/// busy goroutines: each leak site is a suspect, nothing else is; counts follow the fixture's.
#[test]
fn streaming_groups_and_leak_suspects() {
    for_each_cell(|tc, mode| {
        // The leak rate and the warm-up stay on ctxprobe's fixed clock (see suspects_duration):
        // a warm-up stretched over three 10-s buckets would rightly look like a leak. The
        // burst, whose members are past the threshold only while it is held, is stretched so
        // that slower scans still see it.
        let (burst_at, burst_hold) = (
            scaled_arg(Duration::from_secs(2)),
            scaled_arg(Duration::from_secs(4)),
        );
        let mut g = Groups::start(
            tc,
            mode,
            &[
                "-leak-rate",
                "3",
                "-idle",
                "20",
                "-warm",
                "30",
                "-warm-over",
                "10s",
                "-burst",
                "40",
                "-burst-at",
                &burst_at,
                "-burst-hold",
                &burst_hold,
                "-busy-pairs",
                "2",
                "-report-every",
                "500ms",
            ],
        )?;
        let duration = format!("{}ms", suspects_duration().as_millis());
        let mut probe = RunningProbe::spawn(&args(
            g.pid(),
            &[
                "--threshold",
                "2s",
                "--summary-interval",
                "2s",
                "--duration",
                &duration,
            ],
        ))?;
        let attach = probe.wait_record("attach", scaled(Duration::from_secs(20)))?;
        let out = probe.finish(suspects_duration() + scaled(Duration::from_secs(40)))?;
        ensure_success(&out)?;
        let counts = g.counts();
        let mut problems = Vec::new();
        if let Err(e) = check_all_records(&out, g.pid()) {
            problems.push(format!("contract: {e:#}"));
        }
        let records = out.records()?;
        let lines: Vec<(Instant, &Value)> = out
            .lines
            .iter()
            .zip(&records)
            .map(|(l, r)| (l.at, r))
            .collect();

        let busy_funcs = ["main.busyPing", "main.busyPong"];
        let busy: HashSet<u64> = g.busy.iter().copied().collect();
        let mut first_group: HashMap<String, Instant> = HashMap::new();
        let mut suspects: HashSet<String> = HashSet::new();
        let mut group_ids: HashMap<String, HashSet<u64>> = HashMap::new();
        // A record's count is its group's at the last snapshot, which slower scans leave older.
        let window = STREAM_SUMMARY + scaled(Duration::from_secs(3));
        for (at, r) in lines.iter().filter(|(_, r)| r["type"] == "group") {
            if let Err(e) = check_group_record(r) {
                problems.push(format!("{e:#}"));
            }
            if record_stack(r)
                .iter()
                .any(|f| busy_funcs.contains(&f.func.as_str()))
            {
                problems.push(format!("a busy goroutine's group was reported: {r}"));
            }
            for s in r["sample_goids"].as_array().into_iter().flatten() {
                if s.as_u64().is_some_and(|id| busy.contains(&id)) {
                    problems.push(format!("busy goroutine {s} among sample_goids: {r}"));
                }
            }
            let Some(site) = g.site_of(r) else { continue };
            first_group.entry(site.clone()).or_insert(*at);
            if let Some(id) = r["group_id"].as_u64() {
                group_ids.entry(site.clone()).or_default().insert(id);
            }
            if r["leak_suspect"] == true {
                suspects.insert(site.clone());
            }
            // The record's count is the fixture's at some moment of the last snapshot window.
            let from = at.checked_sub(window).unwrap_or(*at);
            let in_window: Vec<i64> = counts
                .iter()
                .filter(|(t, _)| *t >= from && *t <= *at)
                .chain(counts.iter().rfind(|(t, _)| *t < from))
                .chain(counts.iter().find(|(t, _)| *t > *at))
                .filter_map(|(_, m)| m.get(&site).copied())
                .collect();
            let (lo, hi) = (
                in_window.iter().min().copied().unwrap_or(0),
                in_window.iter().max().copied().unwrap_or(i64::MAX),
            );
            let n = r["goroutines"].as_i64().unwrap_or(-1);
            if n < lo || n > hi {
                problems.push(format!(
                    "site {site}: group says {n} goroutines at +{:.1}s, the fixture had {lo}..={hi}",
                    at.duration_since(attach.at).as_secs_f64()
                ));
            }
        }
        for site in g.leak_sites() {
            match first_group.get(&site) {
                None => problems.push(format!("leak site {site}: no group record")),
                Some(t) => {
                    let after = t.saturating_duration_since(attach.at);
                    if after > STREAM_THRESHOLD + scaled(Duration::from_secs(10)) {
                        problems.push(format!(
                            "leak site {site}: first group record {after:?} after attach"
                        ));
                    }
                }
            }
            if !suspects.contains(&site) {
                problems.push(format!("leak site {site}: never a leak suspect"));
            }
        }
        for site in ["idle", "warm", "burst", "holder"] {
            if suspects.contains(site) {
                problems.push(format!("{site} called a leak suspect"));
            }
            if !first_group.contains_key(site) {
                problems.push(format!(
                    "{site}: no group record (members were past the threshold)"
                ));
            }
        }

        // blocked: at most 3 per group (the default); never busy; unblocked only after blocked.
        let mut blocked_per_site: HashMap<String, usize> = HashMap::new();
        let mut blocked_goids = HashSet::new();
        for r in of_type(&records, "blocked") {
            let id = goid(r).unwrap_or(0);
            blocked_goids.insert(id);
            if busy.contains(&id) {
                problems.push(format!("busy goroutine reported blocked: {r}"));
            }
            if let Some(site) = g.site_of(r) {
                *blocked_per_site.entry(site).or_default() += 1;
            }
        }
        for (site, n) in &blocked_per_site {
            let groups = group_ids.get(site).map_or(1, |s| s.len().max(1));
            if *n > 3 * groups {
                problems.push(format!(
                    "site {site}: {n} blocked records for {groups} group(s), want at most 3 each"
                ));
            }
        }
        for r in of_type(&records, "unblocked") {
            if !goid(r).is_some_and(|id| blocked_goids.contains(&id)) {
                problems.push(format!("unblocked without a blocked record: {r}"));
            }
        }

        let summaries = of_type(&records, "summary");
        for k in [
            "groups",
            "groups_omitted",
            "leak_suspects",
            "dropped_records",
        ] {
            let missing = summaries.iter().filter(|s| !s[k].is_u64()).count();
            if missing > 0 {
                problems.push(format!(
                    "{missing} of {} summaries without {k}",
                    summaries.len()
                ));
            }
        }
        if let Some(last) = summaries.last() {
            let want = g.leak_sites().len() as u64;
            if last["leak_suspects"].as_u64() != Some(want) {
                problems.push(format!(
                    "last summary: leak_suspects {} (want {want})",
                    last["leak_suspects"]
                ));
            }
        }
        match of_type(&records, "detach").last() {
            Some(d) if d["dropped_records"].is_u64() => {}
            other => problems.push(format!("detach without dropped_records: {other:?}")),
        }
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    });
}

/// A static population plus a burst that drains, for the rate-limit tests. The burst's members
/// are past the threshold only while it is held: stretched, so that slower scans still see it.
fn static_args() -> Vec<String> {
    let mut a: Vec<String> = [
        "-leak-initial",
        "20",
        "-leak-rate",
        "0",
        "-idle",
        "10",
        "-warm",
        "10",
        "-warm-over",
        "0",
        "-burst",
        "10",
        "-busy-pairs",
        "1",
        "-report-every",
        "0",
    ]
    .map(String::from)
    .into();
    a.extend([
        "-burst-at".into(),
        scaled_arg(Duration::from_millis(2500)),
        "-burst-hold".into(),
        scaled_arg(Duration::from_secs(3)),
    ]);
    a
}

/// `--duration` of the rate-limit tests: past the burst's release, stretched with it.
fn static_duration() -> String {
    scaled_arg(Duration::from_secs(10))
}

/// `--samples-per-group 1 --max-groups 2`: at most one `blocked` per group, `unblocked` only for
/// those, at most two `group` records per summary interval and the rest counted.
#[test]
fn samples_per_group_and_max_groups() {
    for_each_cell(|tc, mode| {
        let g = Groups::start(tc, mode, &as_strs(&static_args()))?;
        let duration = static_duration();
        let mut probe = RunningProbe::spawn(&args(
            g.pid(),
            &[
                "--threshold",
                "1s",
                "--summary-interval",
                "1s",
                "--duration",
                &duration,
                "--samples-per-group",
                "1",
                "--max-groups",
                "2",
            ],
        ))?;
        probe.wait_record("attach", scaled(Duration::from_secs(20)))?;
        let out = probe.finish(scaled(Duration::from_secs(40)))?;
        ensure_success(&out)?;
        let records = out.records()?;
        let mut problems = Vec::new();
        let mut per_site: HashMap<String, usize> = HashMap::new();
        let mut blocked = HashSet::new();
        for r in of_type(&records, "blocked") {
            blocked.insert(goid(r).unwrap_or(0));
            if let Some(site) = g.site_of(r) {
                *per_site.entry(site).or_default() += 1;
            }
        }
        for (site, n) in &per_site {
            if *n > 1 {
                problems.push(format!(
                    "site {site}: {n} blocked records with --samples-per-group 1"
                ));
            }
        }
        for site in g
            .leak_sites()
            .iter()
            .map(String::as_str)
            .chain(["idle", "warm", "burst"])
        {
            if !per_site.contains_key(site) {
                problems.push(format!("site {site}: no blocked sample"));
            }
        }
        for r in of_type(&records, "unblocked") {
            if !goid(r).is_some_and(|id| blocked.contains(&id)) {
                problems.push(format!("unblocked without a blocked record: {r}"));
            }
        }
        // Group records between two summaries.
        let mut in_interval = 0;
        let mut first_in_interval = 0;
        let mut seen_ids = HashSet::new();
        let mut omitted = 0;
        for r in &records {
            if r["type"] == "group" {
                in_interval += 1;
                if r["group_id"].as_u64().is_some_and(|id| seen_ids.insert(id)) {
                    first_in_interval += 1;
                }
            } else if r["type"] == "summary" {
                if in_interval > 2 {
                    problems.push(format!(
                        "{in_interval} group records in one interval with --max-groups 2 \
                         ({first_in_interval} of them a group's first)"
                    ));
                }
                in_interval = 0;
                first_in_interval = 0;
                omitted += r["groups_omitted"].as_u64().unwrap_or(0);
            }
        }
        if omitted == 0 {
            problems.push(
                "no summary counted groups_omitted although 7+ groups were past the threshold"
                    .into(),
            );
        }
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    });
}

/// `--every-goroutine`: one `blocked` per goroutine (exactly the fixture's members per site) and
/// one `unblocked` per member of the drained burst.
#[test]
fn every_goroutine_restores_per_goroutine_records() {
    for_each_cell(|tc, mode| {
        let g = Groups::start(tc, mode, &as_strs(&static_args()))?;
        let duration = static_duration();
        let mut probe = RunningProbe::spawn(&args(
            g.pid(),
            &[
                "--threshold",
                "1s",
                "--summary-interval",
                "1s",
                "--duration",
                &duration,
                "--every-goroutine",
            ],
        ))?;
        probe.wait_record("attach", scaled(Duration::from_secs(20)))?;
        let out = probe.finish(scaled(Duration::from_secs(40)))?;
        ensure_success(&out)?;
        let records = out.records()?;
        let mut problems = Vec::new();
        let mut per_site: HashMap<String, HashSet<u64>> = HashMap::new();
        let mut seen = HashSet::new();
        // A goroutine may block again after an `unblocked` (the burst's own sleeping spawner).
        let mut blocked_now = HashSet::new();
        for r in &records {
            let Some(id) = goid(r) else { continue };
            if r["type"] == "unblocked" {
                blocked_now.remove(&id);
                continue;
            }
            if r["type"] != "blocked" {
                continue;
            }
            seen.insert(id);
            if !blocked_now.insert(id) {
                problems.push(format!(
                    "goroutine {id} reported blocked twice without unblocked"
                ));
            }
            if let Some(site) = g.site_of(r) {
                per_site.entry(site).or_default().insert(id);
            }
        }
        for (name, truth) in &g.sites {
            let want = if name == "burst" {
                10
            } else {
                truth.count as usize
            };
            let got = per_site.get(name).map_or(0, |s| s.len());
            if got != want {
                problems.push(format!(
                    "site {name}: {got} blocked records, the fixture has {want}"
                ));
            }
        }
        let burst = per_site.get("burst").cloned().unwrap_or_default();
        let unblocked: HashSet<u64> = of_type(&records, "unblocked")
            .iter()
            .filter_map(|r| goid(r))
            .collect();
        if !burst.is_subset(&unblocked) {
            problems.push(format!(
                "{} of the burst's {} goroutines have no unblocked record",
                burst.difference(&unblocked).count(),
                burst.len()
            ));
        }
        if !unblocked.is_subset(&seen) {
            problems.push("unblocked records for goroutines never reported blocked".into());
        }
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    });
}

/// A ctxprobe whose stdout is a pipe nobody reads.
struct Stalled {
    child: std::process::Child,
    stdout: Option<std::process::ChildStdout>,
    started: Instant,
}

impl Stalled {
    fn spawn(args: &[String]) -> Result<Stalled> {
        let child = Command::new(ctxprobe_bin()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting ctxprobe")?;
        Ok(Stalled {
            stdout: None,
            started: Instant::now(),
            child,
        })
        .map(|mut s| {
            s.stdout = s.child.stdout.take();
            s
        })
    }

    /// Starts reading stdout (in a thread); returns its lines when it closes.
    fn drain(&mut self) -> std::thread::JoinHandle<Vec<Value>> {
        let mut out = self.stdout.take();
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut text);
            }
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
    }

    /// Waits for exit; returns the wall-clock time of the exit (seconds since the epoch).
    fn wait_exit(&mut self, timeout: Duration) -> Result<(std::process::ExitStatus, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
                return Ok((st, now));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("ctxprobe still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest toolchain only: one cell is enough to show the loop does not wait for stdout.
fn newest_cell(f: impl Fn(&Toolchain, &BuildMode) -> Result<()>) {
    let r = ctxprobe_tests::scenario::preconditions()
        .and_then(|()| Toolchain::find(LATEST_GO))
        .and_then(|tc| {
            let _serial = bpf_serial()?;
            f(&tc, &BuildMode::default_build())
        });
    if let Err(e) = r {
        panic!("[Go {LATEST_GO} default] {e:#}");
    }
}

/// A large population growing fast and busy goroutines. The growth is slowed with the stretched
/// timeline, so the population at each point of the test is the same.
fn loaded_args() -> Vec<String> {
    let mut a: Vec<String> = [
        "-leak-initial",
        "3000",
        "-idle",
        "1000",
        "-busy-pairs",
        "8",
        "-burst",
        "0",
        "-warm-over",
        "0",
        "-report-every",
        "0",
    ]
    .map(String::from)
    .into();
    a.extend(["-leak-rate".into(), scaled_rate(100.0)]);
    a
}

/// stdout stops being read for 20 s (stretched under emulation) under load: `--duration` still
/// ends on time, records are dropped and counted, the probe budget still works; SIGTERM exits
/// at once even with stdout still blocked.
#[test]
fn stalled_stdout_never_stalls_the_loop() {
    newest_cell(|tc, mode| {
        let g = Groups::start(tc, mode, &as_strs(&loaded_args()))?;
        let duration = scaled(Duration::from_secs(25));
        let summary_interval = scaled(Duration::from_secs(1));
        let mut p = Stalled::spawn(&args(
            g.pid(),
            &[
                "--threshold",
                "1s",
                "--summary-interval",
                &format!("{}ms", summary_interval.as_millis()),
                "--duration",
                &format!("{}ms", duration.as_millis()),
                // One record per goroutine keeps the output heavy enough to fill the queue.
                "--every-goroutine",
            ],
        ))?;
        std::thread::sleep(scaled(Duration::from_secs(20)));
        let reader = p.drain();
        let (status, exit_wall) = p.wait_exit(scaled(Duration::from_secs(40)))?;
        let records = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        let mut problems = Vec::new();
        if !status.success() {
            problems.push(format!("ctxprobe exited with {status}"));
        }
        let attach = records
            .iter()
            .find(|r| r["type"] == "attach")
            .with_context(|| format!("no attach record (ctxprobe exited with {status})"))?;
        let attach_wall = unix_time(attach["time"].as_str().unwrap_or(""))?;
        let late = exit_wall - (attach_wall + duration.as_secs_f64());
        // Early is wrong on any machine. Late by as much as the loop takes to notice the
        // deadline and detach (the scan step under way, the probes' detach: CPU work that
        // emulation makes several times slower), then at most 0.5 s for the output.
        let most_late = scaled(Duration::from_secs(1)).as_secs_f64();
        if !(-1.0..=most_late).contains(&late) {
            problems.push(format!(
                "exit {late:+.2}s from attach + --duration (want -1 s to +{most_late} s)"
            ));
        }
        let dropped = records
            .iter()
            .filter(|r| r["type"] == "summary" || r["type"] == "detach")
            .filter_map(|r| r["dropped_records"].as_u64())
            .max();
        if dropped.is_none_or(|d| d == 0) {
            problems.push(format!(
                "no summary or detach reported dropped_records > 0 (max {dropped:?})"
            ));
        }
        let summaries: Vec<&Value> = records.iter().filter(|r| r["type"] == "summary").collect();
        // A loop that waited for stdout makes up for the summaries it missed in a bunch once
        // the pipe flows; one that never waits stamps each on time (and drops what does not fit).
        // A summary can still come late by one loop step (the next one is on time): half the
        // interval allows for that, and the interval is stretched with the steps under
        // emulation.
        let stamps: Vec<f64> = summaries
            .iter()
            .filter_map(|s| unix_time(s["time"].as_str()?).ok())
            .collect();
        let min_gap = stamps
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(f64::INFINITY, f64::min);
        let min_apart = summary_interval.as_secs_f64() / 2.0;
        if min_gap < min_apart {
            problems.push(format!(
                "summaries {min_gap:.3}s apart with --summary-interval {summary_interval:?}: the \
                 loop fell behind while stdout was blocked"
            ));
        }
        let budget_acted = summaries.iter().any(|s| {
            s["probe"]["park_probe_attached"] == false
                || s["probe"]["attached_fraction"]
                    .as_f64()
                    .is_some_and(|f| f < 1.0)
        });
        if !budget_acted {
            problems.push(format!(
                "no summary ({} seen) shows the park probe detached by the budget under load",
                summaries.len()
            ));
        }
        if !records.iter().any(|r| r["type"] == "detach") {
            problems.push("no detach record after the pipe flowed again".into());
        }
        eprintln!(
            "stalled stdout: exit {late:+.2}s, dropped {dropped:?}, {} summaries, {} records",
            summaries.len(),
            records.len()
        );

        // SIGTERM while stdout is still blocked (the queue full by then).
        let mut p = Stalled::spawn(&args(
            g.pid(),
            &[
                "--threshold",
                "1s",
                "--summary-interval",
                &format!("{}ms", summary_interval.as_millis()),
                "--duration",
                &scaled_arg(Duration::from_secs(60)),
                "--every-goroutine",
            ],
        ))?;
        std::thread::sleep(scaled(Duration::from_secs(8)));
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        let sent = Instant::now();
        // "At once": the loop's current step and the probes' detach (CPU work that emulation
        // makes several times slower), then at most 0.5 s for the output.
        let at_once = scaled(Duration::from_secs(1));
        match p.wait_exit(scaled(Duration::from_secs(10))) {
            Ok(_) if sent.elapsed() <= at_once => {}
            Ok(_) => problems.push(format!(
                "SIGTERM with stdout blocked: exit after {:?}",
                sent.elapsed()
            )),
            Err(e) => problems.push(format!("SIGTERM with stdout blocked: {e:#}")),
        }
        let _ = p.started;
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    });
}

/// The fixture's truth against the runtime's own dumps (no ctxprobe, no root), with every Go
/// toolchain the project supports: each site's members, wait reason and creation site in the
/// `debug=2` dump, and each site's count in the `debug=1` dump.
#[test]
fn groups_fixture_truth_matches_its_own_dumps() {
    let mut failures = Vec::new();
    for v in [
        "1.19", "1.21", "1.22", "1.23", "1.24", "1.25", "1.26", LATEST_GO,
    ] {
        let r = Toolchain::find(v).and_then(|tc| {
            let fixture_args = with(QUIET, &["-leak-initial", "7", "-idle", "5", "-warm", "3"]);
            let mut g = Groups::start(&tc, &BuildMode::default_build(), &fixture_args)?;
            let dump = g.fixture.dump()?;
            let stacks = g.dump_debug1()?;
            let mut problems = Vec::new();
            for (name, truth) in &g.sites {
                let members: Vec<_> = dump
                    .goroutines
                    .iter()
                    .filter(|gr| {
                        gr.frames
                            .iter()
                            .find(|f| f.func.starts_with("main."))
                            .is_some_and(|f| f.func == truth.func)
                    })
                    .collect();
                if members.len() as i64 != truth.count {
                    problems.push(format!(
                        "site {name}: debug=2 has {}, the fixture says {}",
                        members.len(),
                        truth.count
                    ));
                }
                let want = g.expected_wait_reason(name);
                for m in &members {
                    if m.wait_reason.as_deref() != want {
                        problems.push(format!(
                            "site {name}: goroutine {} waits on {:?}, want {want:?}",
                            m.goid, m.wait_reason
                        ));
                    }
                    if m.created_by.as_ref().map(|c| c.func.as_str()) != Some(&truth.creator) {
                        problems.push(format!(
                            "site {name}: goroutine {} created by {:?}, want {}",
                            m.goid,
                            m.created_by.as_ref().map(|c| &c.func),
                            truth.creator
                        ));
                    }
                }
                let in_debug1: u64 = stacks
                    .iter()
                    .filter(|s| {
                        s.frames
                            .iter()
                            .find(|f| f.func.starts_with("main."))
                            .is_some_and(|f| f.func == truth.func)
                    })
                    .map(|s| s.count)
                    .sum();
                if in_debug1 as i64 != truth.count {
                    problems.push(format!(
                        "site {name}: debug=1 has {in_debug1}, the fixture says {}",
                        truth.count
                    ));
                }
            }
            ensure!(problems.is_empty(), "{}", problems.join("\n"));
            Ok(())
        });
        if let Err(e) = r {
            failures.push(format!("Go {v}: {e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
