//! `ctxprobe --once` against the leaky fixture, compared goroutine by goroutine with the
//! runtime's own debug=2 dump taken right after. Needs root and a built ctxprobe.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, ensure};
use ctxprobe_tests::compare::{by_goid, goid, mismatches};
use ctxprobe_tests::gobuild::build_fixture;
use ctxprobe_tests::leaky::Leaky;
use ctxprobe_tests::probe::{args, run_ctxprobe};
use ctxprobe_tests::scenario::{check, check_all_records, ensure_success, for_each_cell};
use ctxprobe_tests::toolchain::{version_at_least, BuildMode, Toolchain, LATEST_GO};

/// A program upgraded in place runs on from a deleted file (/proc says "/path (deleted)"): a
/// PIE one is read all the same, `--once` and streaming (whose probes attach through
/// /proc/PID/exe).
#[test]
fn a_program_whose_executable_was_deleted_is_read() {
    check(|| {
        let tc = Toolchain::find(LATEST_GO)?;
        let built = build_fixture("leaky", &tc, &BuildMode::named("stripped-pie")?)?;
        let copy = std::env::temp_dir().join(format!("ctxprobe-deleted-{}", std::process::id()));
        std::fs::copy(&built, &copy)?;
        let started = Leaky::start_binary(&copy, &tc, &["-grow-every", "0"]);
        std::fs::remove_file(&copy)?;
        let mut leaky = started?;
        let out = run_ctxprobe(&args(leaky.pid(), &["--once"]), Duration::from_secs(60))?;
        let dump = leaky.fixture.dump()?;
        ensure_success(&out)?;
        let records = check_all_records(&out, leaky.pid())?;
        ensure!(
            records[0]["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with(" (deleted)")),
            "attach record: {}",
            records[0]
        );
        let recs: HashMap<u64, &serde_json::Value> = records
            .iter()
            .filter(|r| r["type"] == "goroutine")
            .filter_map(|r| Some((goid(r)?, r)))
            .collect();
        let dump_gs = by_goid(&dump.goroutines);
        let mut problems = Vec::new();
        for l in &leaky.leaked {
            match (recs.get(&l.goid), dump_gs.get(&l.goid)) {
                (Some(r), Some(g)) => problems.extend(mismatches(r, g, true)),
                (None, _) => problems.push(format!("goroutine {} not reported", l.goid)),
                (_, None) => problems.push(format!("goroutine {} not in the dump", l.goid)),
            }
        }
        ensure!(problems.is_empty(), "{}", problems.join("\n"));

        let out = run_ctxprobe(
            &args(leaky.pid(), &["--duration", "2s", "--threshold", "1s"]),
            Duration::from_secs(60),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, leaky.pid())?;
        ensure!(
            records.iter().any(|r| r["type"] == "group"),
            "no group while streaming: {}",
            out.describe()
        );
        Ok(())
    });
}

#[test]
fn once_matches_runtime_dump() {
    for_each_cell(|tc, mode| {
        let mut leaky = Leaky::start(tc, mode, &[])?;
        // Let every goroutine park and a couple of GCs stamp waitsince, as in a real service.
        std::thread::sleep(Duration::from_millis(1200));
        let grown_before: Vec<_> = leaky.grown()?.into_iter().map(|(l, _)| l).collect();
        let out = run_ctxprobe(&args(leaky.pid(), &["--once"]), Duration::from_secs(60))?;
        let dump = leaky.fixture.dump()?;
        ensure_success(&out)?;
        let records = check_all_records(&out, leaky.pid())?;
        let gs: Vec<_> = records
            .iter()
            .filter(|r| r["type"] == "goroutine")
            .collect();
        ensure!(!gs.is_empty(), "no goroutine records: {}", out.describe());
        if let Some(r) = records.iter().find(|r| r["type"] == "blocked") {
            bail!("--once printed a blocked record: {r}");
        }

        let mut recs: HashMap<u64, &serde_json::Value> = HashMap::new();
        for r in &gs {
            let id = goid(r).unwrap_or(u64::MAX);
            if recs.insert(id, r).is_some() {
                bail!("goroutine {id} reported twice");
            }
        }
        let dump_gs = by_goid(&dump.goroutines);
        let mut problems = Vec::new();

        // Exact comparison for the goroutines that cannot have moved between the two snapshots.
        let mut forever = leaky.leaked.clone();
        forever.extend(grown_before);
        for l in &forever {
            let Some(g) = dump_gs.get(&l.goid) else {
                problems.push(format!(
                    "fixture goroutine {l:?} missing from the runtime's dump"
                ));
                continue;
            };
            let Some(r) = recs.get(&l.goid) else {
                problems.push(format!("{} goroutine {} not reported", l.kind, l.goid));
                continue;
            };
            for m in mismatches(r, g, true) {
                problems.push(format!("{} goroutine {}: {m}", l.kind, l.goid));
            }
            if version_at_least(&tc.version, 21) && r["parent_goid"].as_u64() != Some(l.parent) {
                problems.push(format!(
                    "{} goroutine {}: parent_goid {} but the fixture saw {}",
                    l.kind, l.goid, r["parent_goid"], l.parent
                ));
            }
            if !r["stack"]
                .as_array()
                .is_some_and(|s| s.iter().any(|f| f["func"] == l.func.as_str()))
            {
                problems.push(format!(
                    "{} goroutine {}: {} not on its stack",
                    l.kind, l.goid, l.func
                ));
            }
        }

        // Loose comparison for the rest: every goroutine the runtime shows existed when
        // ctxprobe looked (fixture goroutines never exit here), except those grown since.
        let grown_after: HashSet<u64> = leaky.grown()?.iter().map(|(l, _)| l.goid).collect();
        for g in &dump.goroutines {
            if !recs.contains_key(&g.goid) && !grown_after.contains(&g.goid) {
                problems.push(format!(
                    "goroutine {} [{}] in the runtime's dump but not reported",
                    g.goid, g.status
                ));
            }
        }
        for id in leaky.busy.iter().chain(&leaky.infra) {
            if !recs.contains_key(id) {
                problems.push(format!("busy/infra goroutine {id} not reported"));
            }
        }
        // Reported goroutines created by the fixture's code must still exist.
        for (id, r) in &recs {
            let by_main = r["created_by"]["func"]
                .as_str()
                .is_some_and(|f| f.starts_with("main."));
            if by_main && !dump_gs.contains_key(id) {
                problems.push(format!("reported goroutine {id} does not exist: {r}"));
            }
        }
        if !problems.is_empty() {
            bail!("{} problems:\n{}", problems.len(), problems.join("\n"));
        }
        Ok(())
    });
}
