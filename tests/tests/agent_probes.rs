//! The uprobes under load: the park probe keeps firing under a sustained ping-pong in precise
//! mode, a probe whose breakpoint disappears from the target is noticed, re-attached and
//! reported (never "attached" while it does not fire), and precise mode's context cancel probe
//! is detached by its budget under a cancel storm, protecting the target, with records that then
//! say who cancelled a context is unknown. Needs root and a built ctxprobe.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ctxprobe_tests::compare::goid;
use ctxprobe_tests::contract::check_record;
use ctxprobe_tests::fixture::Fixture;
use ctxprobe_tests::probe::{args, RunningProbe};
use ctxprobe_tests::process::Line;
use ctxprobe_tests::scenario::check;
use ctxprobe_tests::toolchain::{BuildMode, Toolchain, LATEST_GO};
use serde_json::Value;

/// Precise mode on a GOMAXPROCS=1 ping-pong for 25 s (millions of park hits): every summary
/// says the park probe is attached and counting, and its hits match the parks the fixture
/// made (two per round trip) over the run.
#[test]
fn park_probe_keeps_firing_under_sustained_load() {
    check(|| {
        let tc = Toolchain::find(LATEST_GO)?;
        let mut pp = Fixture::build_and_start(
            "pingpong",
            &tc,
            &BuildMode::default_build(),
            &["-repeat", "-n", "20000"],
        )?;
        let pid = pp.pid();
        let probe = RunningProbe::spawn(&args(
            pid,
            &[
                "--mode",
                "precise",
                "--summary-interval",
                "1s",
                "--duration",
                "25s",
            ],
        ))?;
        let out = probe.finish(Duration::from_secs(60))?;
        ensure!(out.status.success(), "{}", out.describe());
        let summaries: Vec<(Instant, Value)> = out
            .lines
            .iter()
            .filter_map(|l| Some((l.at, l.json.clone()?)))
            .filter(|(_, v)| v["type"] == "summary")
            .collect();
        ensure!(summaries.len() >= 20, "{} summaries", summaries.len());
        let fixture_lines = pp.process.lines().to_vec();
        let (mut hits, mut parks) = (0.0, 0.0);
        for pair in summaries.windows(2).skip(1) {
            let ((t0, _), (t1, s)) = (&pair[0], &pair[1]);
            let p = &s["probe"];
            ensure!(
                p["park_probe_attached"] == true
                    && p["parks_per_sec"].as_f64().is_some_and(|r| r > 0.0),
                "the park probe stopped counting: {s}"
            );
            let secs = t1.duration_since(*t0).as_secs_f64();
            hits += p["parks_per_sec"].as_f64().unwrap_or(0.0)
                * p["attached_fraction"].as_f64().unwrap_or(0.0)
                * secs;
            parks += 2.0 * round_trips_between(&fixture_lines, *t0, *t1);
        }
        let last = &summaries[summaries.len() - 1].1["probe"];
        eprintln!(
            "park probe hits {hits:.0} for {parks:.0} parks of the fixture; last status {last}"
        );
        ensure!(parks > 0.0, "the fixture made no round trip");
        // What the budget charges per hit was measured here, not assumed.
        ensure!(
            last["park_hit_cost"] == "measured",
            "the hit cost was not measured: {last}"
        );
        let ratio = hits / parks;
        ensure!(
            (0.8..=1.2).contains(&ratio),
            "park probe hits {hits:.0} but the fixture parked {parks:.0} times (ratio {ratio:.3})"
        );
        Ok(())
    });
}

/// Round trips the fixture reported in lines read between `t0` and `t1`.
fn round_trips_between(lines: &[Line], t0: Instant, t1: Instant) -> f64 {
    lines
        .iter()
        .filter(|l| l.at > t0 && l.at <= t1)
        .filter_map(|l| l.json.as_ref()?["round_trips"].as_f64())
        .sum()
}

/// The kernel can take a uprobe's breakpoint out of a process while the probe stays registered;
/// the probe then fires no more. Simulated by writing the original instruction back over the
/// breakpoint (as the kernel's removal does): ctxprobe notices within a tick, re-attaches,
/// says so in an `error` record and counts it in `probes_restored`, and the probe counts again.
#[test]
fn lost_breakpoint_is_restored_and_reported() {
    check(|| {
        let tc = Toolchain::find(LATEST_GO)?;
        let mut pp = Fixture::build_and_start(
            "pingpong",
            &tc,
            &BuildMode::default_build(),
            &["-repeat", "-n", "20000"],
        )?;
        let pid = pp.pid();
        let mut probe = RunningProbe::spawn(&args(
            pid,
            &[
                "--mode",
                "precise",
                "--summary-interval",
                "500ms",
                "--duration",
                "20s",
            ],
        ))?;
        probe.wait_for("a summary with park hits", Duration::from_secs(30), |v| {
            v["type"] == "summary" && v["probe"]["parks_per_sec"].as_f64() > Some(0.0)
        })?;
        let site = remove_breakpoint(pid, &pp.bin, "runtime.gopark")?;
        let note = probe.wait_for(
            "the lost breakpoint's error record",
            Duration::from_secs(5),
            |v| {
                v["type"] == "error"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("park probe had stopped firing"))
            },
        )?;
        eprintln!("{}", note.text);
        ensure!(
            breakpoint_in(pid, &pp.bin, site)?,
            "no breakpoint at {site:#x} after the re-attach"
        );
        let s = probe.wait_for("a summary after the restore", Duration::from_secs(5), |v| {
            v["type"] == "summary" && v["probe"]["probes_restored"].as_u64() >= Some(1)
        })?;
        // The summary after that covers an interval with the probe back in.
        let s2 = probe.wait_record("summary", Duration::from_secs(5))?;
        let p = &s2.json.clone().unwrap_or_default()["probe"];
        ensure!(
            p["park_probe_attached"] == true && p["parks_per_sec"].as_f64() > Some(1000.0),
            "not counting again after the restore: {} then {}",
            s.text,
            s2.text
        );
        pp.process.close_stdin();
        let out = probe.finish(Duration::from_secs(40))?;
        ensure!(out.status.success(), "{}", out.describe());
        Ok(())
    });
}

/// Where `symbol`'s uprobe breakpoint is in a running (non-PIE) fixture, and the file's bytes
/// there: the bytes where its memory differs from the file (x86's one-byte `int3`; arm64's
/// four-byte `brk`, of which only some bytes may differ).
fn breakpoint_site(pid: u32, exe: &Path, symbol: &str) -> Result<(u64, Vec<u8>)> {
    let elf = gobinary::elf::ElfFile::open(exe)?;
    let sym = elf
        .symbol(symbol)
        .with_context(|| format!("{symbol} not in {}", exe.display()))?;
    let file = elf
        .read_vaddr(sym.addr, 32)
        .context("function bytes not in the file")?;
    let mut mem = vec![0u8; 32];
    let f = OpenOptions::new()
        .read(true)
        .open(format!("/proc/{pid}/mem"))?;
    f.read_exact_at(&mut mem, sym.addr)?;
    let differ = |i: &usize| mem[*i] != file[*i];
    let (Some(first), Some(last)) = ((0..32).find(differ), (0..32).rev().find(differ)) else {
        bail!("no breakpoint in the first 32 bytes of {symbol}");
    };
    Ok((sym.addr + first as u64, file[first..=last].to_vec()))
}

/// Writes the original bytes back over the breakpoint in `symbol`; returns its address.
fn remove_breakpoint(pid: u32, exe: &Path, symbol: &str) -> Result<u64> {
    let (addr, original) = breakpoint_site(pid, exe, symbol)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    f.write_all_at(&original, addr)
        .context("write the target's code through /proc/PID/mem")?;
    // Not checked here by reading it back: ctxprobe notices within a tick and puts the
    // breakpoint back, which under emulation can be sooner than a check here. Its error record,
    // which the caller waits for, says the removal took.
    Ok(addr)
}

/// Whether the target's code at `addr` (the first byte a breakpoint changes) differs from the
/// file.
fn breakpoint_in(pid: u32, exe: &Path, addr: u64) -> Result<bool> {
    let elf = gobinary::elf::ElfFile::open(exe)?;
    let file = elf.read_vaddr(addr, 1).context("address not in the file")?;
    let mut mem = [0u8; 1];
    let f = OpenOptions::new()
        .read(true)
        .open(format!("/proc/{pid}/mem"))?;
    f.read_exact_at(&mut mem, addr)?;
    Ok(mem[0] != file[0])
}

/// Precise mode's cancel probe costs ~2.6 µs per cancelled context; a target cancelling
/// contexts as fast as it can would slow down ~10×. The budget detaches it (summaries say so),
/// the target's cancel rate comes back to what it was without ctxprobe, and a context cancelled
/// meanwhile is reported with `cancel_attribution: "unavailable"` and null cancelled_* fields.
#[test]
fn cancel_storm_detaches_the_cancel_probe() {
    check(|| {
        let tc = Toolchain::find(LATEST_GO)?;
        let mut fixture =
            Fixture::build_and_start("contexts", &tc, &BuildMode::default_build(), &[])?;
        let pid = fixture.pid();
        fixture.process.send_line("storm")?;
        let baseline = storm_rate(&mut fixture, Duration::from_millis(1500))?;

        let mut probe = RunningProbe::spawn(&args(
            pid,
            &[
                "--mode",
                "precise",
                "--threshold",
                "1s",
                "--every-goroutine",
                "--summary-interval",
                "1s",
            ],
        ))?;
        probe.wait_record("attach", Duration::from_secs(30))?;
        let detached = probe.wait_for(
            "a summary with the cancel probe detached",
            Duration::from_secs(15),
            |v| v["type"] == "summary" && v["probe"]["cancel_probe_attached"] == false,
        )?;
        let d = detached.json.clone().unwrap_or_default();
        check_record(&d, pid)?;
        ensure!(
            d["probe"]["cancel_attached_fraction"].as_f64() < Some(1.0)
                && d["probe"]["park_probe_attached"] == true,
            "summary {}",
            detached.text
        );
        fixture.process.skip_pending();
        let during = storm_rate(&mut fixture, Duration::from_millis(1500))?;
        eprintln!(
            "cancels/s: {baseline:.0} before ctxprobe, {during:.0} with the cancel probe \
             detached; summary {}",
            detached.text
        );
        ensure!(
            during >= 0.5 * baseline,
            "the target still cancels at {during:.0}/s against {baseline:.0}/s before ctxprobe"
        );

        // A context cancelled while the probe is off: nobody can say who cancelled it.
        fixture.process.send_line("cancel")?;
        let line =
            fixture
                .process
                .wait_json("cancelled_later line", Duration::from_secs(30), |v| {
                    v.get("cancelled_later").is_some()
                })?;
        let truth = line.json.unwrap_or_default()["cancelled_later"].clone();
        let worker = truth["case"]["goid"].as_u64().context("no worker goid")?;
        let rec = probe.wait_for(
            "the worker's blocked record",
            Duration::from_secs(30),
            |v| v["type"] == "blocked" && goid(v) == Some(worker),
        )?;
        let r = rec.json.unwrap_or_default();
        check_record(&r, pid)?;
        let c = &r["contexts"][0];
        ensure!(
            c["cancelled"] == true && c["cancel_attribution"] == "unavailable",
            "record {r}"
        );
        for key in ["cancelled_ago_ns", "cancelled_by_goid", "cancelled_at"] {
            ensure!(
                c[key].is_null(),
                "{key} {} while the probe was off: {r}",
                c[key]
            );
        }
        fixture.process.close_stdin();
        Ok(())
    });
}

/// Median of the fixture's `cancels_per_sec` lines over `span`.
fn storm_rate(fixture: &mut Fixture, span: Duration) -> Result<f64> {
    let end = Instant::now() + span;
    let mut rates = Vec::new();
    while Instant::now() < end || rates.len() < 3 {
        let l = fixture
            .process
            .wait_json("cancels_per_sec line", Duration::from_secs(5), |v| {
                v["cancels_per_sec"].is_number()
            })?;
        rates.extend(l.json.and_then(|v| v["cancels_per_sec"].as_f64()));
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}
