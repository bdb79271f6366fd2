//! Streaming mode against the leaky fixture: blocked goroutines from before and after attach
//! and from a growing population are each reported once, matching the runtime's dump; busy
//! goroutines never are; resumed goroutines produce `unblocked`; ctxprobe detaches cleanly.
//! Needs root and a built ctxprobe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ctxprobe_tests::compare::{by_goid, goid, mismatches};
use ctxprobe_tests::contract::{str_field, u64_field};
use ctxprobe_tests::leaky::{Leak, Leaky};
use ctxprobe_tests::probe::{args, RunningProbe};
use ctxprobe_tests::scaled;
use ctxprobe_tests::scenario::{check_all_records, ensure_success, for_each_cell};

const THRESHOLD: Duration = Duration::from_secs(1);
/// How long after crossing the threshold ctxprobe may take to report it ("within a couple of
/// seconds", issue 2), on real hardware; stretched under emulation, where scans come further
/// apart and goroutines the park probe did not time need three of them.
fn detect_slack() -> Duration {
    scaled(Duration::from_millis(2500))
}

/// `--duration` of `d` stretched by the time scale.
fn duration_arg(d: Duration) -> String {
    format!("{}ms", scaled(d).as_millis())
}
/// Timing tolerance between the harness's clock readings and ctxprobe's.
const CLOCK_SLACK: Duration = Duration::from_millis(500);

#[test]
fn streams_blocked_goroutines() {
    for_each_cell(|tc, mode| {
        let mut leaky = Leaky::start(tc, mode, &[])?;
        let batch1_count = leaky.leaked.len() as u64;
        let batch1_since = leaky.fixture.started;
        let duration = duration_arg(Duration::from_secs(8));
        let mut probe = RunningProbe::spawn(&args(
            leaky.pid(),
            &[
                "--threshold",
                "1s",
                "--duration",
                &duration,
                "--summary-interval",
                "1s",
                // Every leaked goroutine is checked, not samples of each group.
                "--every-goroutine",
            ],
        ))?;
        let attach = probe.wait_record("attach", Duration::from_secs(20))?;
        let batch2_at = attach.at + scaled(Duration::from_secs(2));
        std::thread::sleep(batch2_at.saturating_duration_since(Instant::now()));
        let batch2_since = Instant::now();
        leaky.batch2()?;
        let out = probe.finish(Duration::from_secs(40))?;
        let dump = leaky.fixture.dump()?;
        ensure_success(&out)?;
        let pid = leaky.pid();
        let records = check_all_records(&out, pid)?;
        let mut problems = Vec::new();

        // attach first, detach (duration) last, summaries in between.
        let first = records.first().context("no output")?;
        ensure!(
            first["type"] == "attach",
            "first record is not attach: {first}"
        );
        let want_version = tc.full_version()?;
        let got_version = str_field(first, "go_version")?;
        if !want_version.contains(got_version.trim_start_matches("go")) {
            problems.push(format!(
                "attach go_version {got_version:?}, target is {want_version}"
            ));
        }
        if u64_field(first, "goroutines")? < batch1_count {
            problems.push(format!("attach counts {} goroutines", first["goroutines"]));
        }
        let last = records.last().context("no output")?;
        if last["type"] != "detach" || last["reason"] != "duration" {
            problems.push(format!("last record is not a detach for duration: {last}"));
        }
        let summaries = out.of_type("summary");
        if summaries.is_empty() {
            problems.push("no summary record".into());
        }
        for s in &summaries {
            if u64_field(s, "goroutines")? < batch1_count {
                problems.push(format!("summary undercounts goroutines: {s}"));
            }
        }

        // Blocked records by goid, with the time each line arrived.
        let mut flagged: HashMap<u64, Vec<(serde_json::Value, Instant)>> = HashMap::new();
        for l in &out.lines {
            if let Some(v) = l.json.as_ref().filter(|v| v["type"] == "blocked") {
                flagged
                    .entry(goid(v).unwrap_or(u64::MAX))
                    .or_default()
                    .push((v.clone(), l.at));
            }
        }
        let end = out.lines.last().map_or(Instant::now(), |l| l.at);
        let dump_gs = by_goid(&dump.goroutines);

        // Every forever-blocked goroutine old enough: exactly one matching record.
        let mut expected: Vec<(Leak, Instant)> = Vec::new();
        for l in &leaky.leaked {
            let since = if l.batch == 2 {
                batch2_since
            } else {
                batch1_since
            };
            expected.push((l.clone(), since));
        }
        // A grown goroutine prints its line just before it blocks.
        expected.extend(
            leaky
                .grown()?
                .into_iter()
                .map(|(l, at)| (l, at - Duration::from_millis(50))),
        );
        for (l, since) in &expected {
            let must = *since + THRESHOLD + detect_slack() <= end;
            let recs = flagged.get(&l.goid).map(Vec::as_slice).unwrap_or(&[]);
            let what = format!("{} goroutine {} (batch {})", l.kind, l.goid, l.batch);
            match recs {
                [] if must => problems.push(format!("{what}: never flagged")),
                [] => {}
                [(r, at)] => {
                    match dump_gs.get(&l.goid) {
                        Some(g) => {
                            for m in mismatches(r, g, true) {
                                problems.push(format!("{what}: {m}"));
                            }
                        }
                        None => problems.push(format!("{what}: not in the runtime's dump")),
                    }
                    if r["threshold_ns"].as_u64() != Some(THRESHOLD.as_nanos() as u64) {
                        problems.push(format!("{what}: threshold_ns {}", r["threshold_ns"]));
                    }
                    let blocked = Duration::from_nanos(r["blocked_ns"].as_u64().unwrap_or(0));
                    let age = at.saturating_duration_since(*since);
                    if blocked < THRESHOLD || blocked > age + CLOCK_SLACK {
                        problems.push(format!(
                            "{what}: blocked_ns {blocked:?} but it had been blocked at most {age:?}"
                        ));
                    }
                    if age + CLOCK_SLACK < THRESHOLD {
                        problems.push(format!("{what}: flagged after only {age:?}"));
                    }
                }
                many => problems.push(format!("{what}: flagged {} times", many.len())),
            }
        }

        // Busy goroutines are never flagged; anything else flagged must be shown by the
        // runtime as waiting for the same reason (a goroutine the runtime hides, such as its
        // own GC workers, must not be flagged either).
        let busy_waits = leaky.busy_max_wait()?;
        for id in &leaky.busy {
            if let Some(recs) = flagged.get(id) {
                let real = busy_waits.get(id).copied().unwrap_or_default();
                problems.push(format!(
                    "busy goroutine {id} flagged (its own longest wait was {real:?}{}): {}",
                    if real >= THRESHOLD {
                        ", a real stall: machine overloaded?"
                    } else {
                        ""
                    },
                    recs[0].0
                ));
            }
        }
        let known: Vec<u64> = expected.iter().map(|(l, _)| l.goid).collect();
        for (id, recs) in &flagged {
            // The fixture's own machinery (main, the signal loop that writes the dump, ...)
            // legitimately parks for long and then runs when the test talks to it.
            if known.contains(id) || leaky.busy.contains(id) || leaky.infra.contains(id) {
                continue;
            }
            let r = &recs[0].0;
            match dump_gs.get(id) {
                Some(g) if g.wait_reason.as_deref() == r["wait_reason"].as_str() => {}
                Some(g) => problems.push(format!(
                    "goroutine {id} flagged as {} but the runtime shows [{}]",
                    r["wait_reason"], g.status
                )),
                None => problems.push(format!(
                    "goroutine {id} flagged but not shown by the runtime's dump: {r}"
                )),
            }
        }
        for u in out.of_type("unblocked") {
            if known.contains(&goid(&u).unwrap_or(u64::MAX)) {
                problems.push(format!(
                    "a forever-blocked goroutine reported unblocked: {u}"
                ));
            }
        }
        if !problems.is_empty() {
            bail!("{} problems:\n{}", problems.len(), problems.join("\n"));
        }
        Ok(())
    });
}

#[test]
fn reports_unblocked_when_a_flagged_goroutine_resumes() {
    for_each_cell(|tc, mode| {
        let mut leaky = Leaky::start(tc, mode, &["-grow-every", "0"])?;
        let mut releasable = leaky.leaked.iter().filter(|l| l.kind == "releasable");
        let target = releasable.next().context("no releasable goroutine")?.goid;
        let other = releasable
            .next()
            .context("need two releasable goroutines")?
            .goid;
        let duration = duration_arg(Duration::from_secs(6));
        let mut probe = RunningProbe::spawn(&args(
            leaky.pid(),
            // That one goroutine's record, not samples of its group.
            &[
                "--threshold",
                "1s",
                "--duration",
                &duration,
                "--every-goroutine",
            ],
        ))?;
        probe.wait_record("attach", Duration::from_secs(20))?;
        let blocked = probe.wait_for(
            &format!("blocked record for goroutine {target}"),
            THRESHOLD + detect_slack() + scaled(Duration::from_millis(1500)),
            |v| v["type"] == "blocked" && goid(v) == Some(target),
        )?;
        let released_at = leaky.release(target)?;
        let unblocked = probe.wait_for(
            &format!("unblocked record for goroutine {target}"),
            scaled(Duration::from_secs(4)),
            |v| v["type"] == "unblocked" && goid(v) == Some(target),
        )?;
        let out = probe.finish(Duration::from_secs(30))?;
        ensure_success(&out)?;
        check_all_records(&out, leaky.pid())?;

        let u = unblocked.json.unwrap_or_default();
        let b = blocked.json.unwrap_or_default();
        ensure!(u["wait_reason"] == "chan receive", "unblocked: {u}");
        let total = Duration::from_nanos(u64_field(&u, "blocked_ns")?);
        let at_flag = Duration::from_nanos(u64_field(&b, "blocked_ns")?);
        let max = released_at.duration_since(leaky.fixture.started) + CLOCK_SLACK;
        ensure!(
            total >= at_flag && total >= THRESHOLD && total <= max,
            "unblocked blocked_ns {total:?}: flagged at {at_flag:?}, released after at most {max:?}"
        );
        let n = out
            .of_type("unblocked")
            .iter()
            .filter(|v| goid(v) == Some(target))
            .count();
        ensure!(n == 1, "{n} unblocked records for goroutine {target}");
        if let Some(v) = out
            .of_type("unblocked")
            .iter()
            .find(|v| goid(v) == Some(other))
        {
            bail!("goroutine {other} was never released but reported: {v}");
        }
        Ok(())
    });
}

#[test]
fn detaches_when_the_target_exits() {
    for_each_cell(|tc, mode| {
        let mut leaky = Leaky::start(tc, mode, &["-grow-every", "0"])?;
        let mut probe = RunningProbe::spawn(&args(leaky.pid(), &["--threshold", "1s"]))?;
        probe.wait_record("attach", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(1500));
        leaky.fixture.process.close_stdin(); // the fixture exits
        leaky.fixture.process.wait_exit(Duration::from_secs(10))?;
        let out = probe.finish(Duration::from_secs(15))?;
        ensure_success(&out)?;
        let records = check_all_records(&out, leaky.pid())?;
        let last = records.last().context("no output")?;
        ensure!(
            last["type"] == "detach" && last["reason"] == "target_exited",
            "last record is not a detach for target_exited: {last}"
        );
        Ok(())
    });
}

#[test]
fn detaches_on_sigterm() {
    for_each_cell(|tc, mode| {
        let mut leaky = Leaky::start(tc, mode, &["-grow-every", "0"])?;
        let mut probe = RunningProbe::spawn(&args(leaky.pid(), &["--threshold", "1s"]))?;
        probe.wait_record("attach", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(1500));
        probe.process.signal(libc::SIGTERM)?;
        let out = probe.finish(Duration::from_secs(15))?;
        ensure_success(&out)?;
        let records = check_all_records(&out, leaky.pid())?;
        let last = records.last().context("no output")?;
        ensure!(
            last["type"] == "detach" && last["reason"] == "signal",
            "last record is not a detach for signal: {last}"
        );
        // The target outlives the probe, unharmed.
        std::thread::sleep(Duration::from_millis(300));
        ensure!(
            leaky.fixture.process.try_exit()?.is_none(),
            "the target exited"
        );
        ensure!(
            leaky.fixture.process.stderr().is_empty(),
            "the target complained: {}",
            leaky.fixture.process.stderr()
        );
        Ok(())
    });
}
