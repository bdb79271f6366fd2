//! The fixtures themselves, checked against the runtime's own dump with real toolchains (no
//! ctxprobe, no root): every goroutine the `leaky` fixture claims to have blocked is in its dump
//! with the expected wait reason, creation site and parent, and the dump parser understands
//! every line of the dumps of Go 1.19, 1.21 and the newest release.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ctxprobe_tests::compare::by_goid;
use ctxprobe_tests::fixture::Fixture;
use ctxprobe_tests::leaky::{expected_creator, Leaky, KINDS};
use ctxprobe_tests::toolchain::{version_at_least, BuildMode, Toolchain, LATEST_GO};

const VERSIONS: &[&str] = &["1.19", "1.21", LATEST_GO];

fn for_each_version(f: impl Fn(&Toolchain) -> Result<()>) {
    let mut failures = Vec::new();
    for v in VERSIONS {
        let r = Toolchain::find(v).and_then(|tc| f(&tc));
        if let Err(e) = r {
            failures.push(format!("Go {v}: {e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn leaky_population_matches_its_dump() {
    for_each_version(|tc| {
        let mut leaky = Leaky::start(tc, &BuildMode::default_build(), &[])?;
        let batch2 = leaky.batch2()?;
        ensure!(!batch2.is_empty(), "empty batch 2");
        std::thread::sleep(Duration::from_millis(300)); // a few grown goroutines
        let dump = leaky.fixture.dump()?;
        let gs = by_goid(&dump.goroutines);
        let forever = leaky.forever_blocked()?;
        ensure!(
            forever.iter().any(|l| l.kind == "grown"),
            "no grown goroutine"
        );
        for kind in KINDS {
            let n = leaky.leaked.iter().filter(|l| l.kind == *kind).count();
            ensure!(n >= 2, "kind {kind}: only {n} goroutines over two batches");
        }
        let mut problems = Vec::new();
        for l in &forever {
            let Some(g) = gs.get(&l.goid) else {
                problems.push(format!("{l:?}: not in the dump"));
                continue;
            };
            let want = leaky.expected_wait_reason(&l.kind);
            if want.is_none() || g.wait_reason.as_deref() != want {
                problems.push(format!(
                    "{l:?}: wait reason {:?}, want {want:?}",
                    g.wait_reason
                ));
            }
            let created = g.created_by.as_ref();
            if created.map(|c| c.func.as_str()) != expected_creator(&l.kind) {
                problems.push(format!("{l:?}: created by {created:?}"));
            }
            let parent = created.and_then(|c| c.parent_goid);
            let want_parent = version_at_least(&tc.version, 21).then_some(l.parent);
            if parent != want_parent || want_parent == Some(0) {
                problems.push(format!("{l:?}: parent {parent:?}, want {want_parent:?}"));
            }
            if !g.frames.iter().any(|f| f.func == l.func) {
                problems.push(format!("{l:?}: {} not on its stack", l.func));
            }
            if g.innermost_user_frame().is_none() {
                problems.push(format!("{l:?}: no non-runtime frame"));
            }
        }
        for id in leaky.busy.iter().chain(&leaky.infra) {
            if !gs.contains_key(id) {
                problems.push(format!("busy/infra goroutine {id} not in the dump"));
            }
        }
        if !problems.is_empty() {
            bail!("{} problems:\n{}", problems.len(), problems.join("\n"));
        }
        Ok(())
    });
}

#[test]
fn leaky_releases_and_exits_with_stdin() {
    for_each_version(|tc| {
        let mut leaky = Leaky::start(tc, &BuildMode::default_build(), &["-grow-every", "0"])?;
        let r = leaky
            .leaked
            .iter()
            .find(|l| l.kind == "releasable")
            .context("no releasable goroutine")?
            .goid;
        leaky.release(r)?;
        let dump = leaky.fixture.dump()?;
        ensure!(
            !by_goid(&dump.goroutines).contains_key(&r),
            "released goroutine {r} still in the dump"
        );
        leaky.fixture.process.close_stdin();
        let status = leaky.fixture.process.wait_exit(Duration::from_secs(10))?;
        ensure!(status.success(), "exit status {status}");
        Ok(())
    });
}

#[test]
fn other_fixtures_build_and_run() {
    for_each_version(|tc| {
        let mode = BuildMode::default_build();
        let _ = ctxprobe_tests::gobuild::build_fixture("demo", tc, &mode)?;

        let mut pp = Fixture::build_and_start("pingpong", tc, &mode, &[])?;
        pp.process.send_line("10000")?;
        let m = pp
            .process
            .wait_json("measurement", Duration::from_secs(10), |v| {
                v["ns_per_round_trip"].is_number()
            })?;
        ensure!(
            m.json.is_some_and(|v| v["round_trips"] == 10000),
            "bad measurement"
        );

        let mut many = Fixture::build_and_start("many", tc, &mode, &["-n", "2000"])?;
        ensure!(
            many.ready["goroutines"].as_u64() >= Some(2000),
            "many: {}",
            many.ready
        );
        many.process.signal(libc::SIGUSR1)?;
        many.process
            .wait_json("dump timing", Duration::from_secs(10), |v| {
                v["dump_ns"].is_u64()
            })?;

        let http = Fixture::build_and_start("httpserver", tc, &mode, &[])?;
        let addr = http.ready["addr"].as_str().context("httpserver: no addr")?;
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        ensure!(
            resp.contains("hello, world"),
            "httpserver answered {resp:?}"
        );
        Ok(())
    });
}

/// Builds the fixtures of the test matrix (`CTXPROBE_TEST_GO` × `CTXPROBE_TEST_BUILD`) without
/// running them: with `CTXPROBE_TEST_GOARCH=arm64`, for a VM whose guest has no Go toolchain
/// (`scripts/vm-tests-arm64.sh` runs this on the host, then the tests in the guest with
/// `CTXPROBE_TEST_PREBUILT=1`).
#[test]
#[ignore = "run by scripts/vm-tests-arm64.sh"]
fn prebuild_matrix_fixtures() {
    let cells = ctxprobe_tests::toolchain::matrix().expect("test matrix");
    for (tc, mode) in &cells {
        tc.record_version()
            .unwrap_or_else(|e| panic!("Go {}: {e:#}", tc.version));
        // The goroutine tests' fixtures (agent_once, agent_stream; agent_groups).
        for fixture in ["leaky", "groups"] {
            ctxprobe_tests::gobuild::build_fixture(fixture, tc, mode)
                .unwrap_or_else(|e| panic!("{fixture} for Go {} {}: {e:#}", tc.version, mode.name));
        }
    }
    // The threads tests' C fixture (the deadlock test) and cgo fixture (a cgo call blocked in C,
    // built by the newest Go as that test does), which VMs run.
    for c in ["deadlock", "mainexit"] {
        ctxprobe_tests::cbuild::build_c_fixture(c).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let newest = ctxprobe_tests::toolchain::Toolchain::find(ctxprobe_tests::toolchain::LATEST_GO)
        .expect("newest Go");
    newest.record_version().expect("newest Go's version");
    let cgo = ctxprobe_tests::toolchain::BuildMode::named("cgo").expect("cgo build mode");
    ctxprobe_tests::gobuild::build_fixture("cgoblock", &newest, &cgo)
        .unwrap_or_else(|e| panic!("cgoblock: {e:#}"));
    // agent_once's deleted-executable test: the newest Go's stripped PIE build.
    let pie = ctxprobe_tests::toolchain::BuildMode::named("stripped-pie").expect("PIE build mode");
    ctxprobe_tests::gobuild::build_fixture("leaky", &newest, &pie)
        .unwrap_or_else(|e| panic!("leaky (stripped PIE): {e:#}"));
    // The fault tests' fixtures (agent_faults: exec into the same fixture built by the other end
    // of the Go range, a target killed during --once) and the probe tests' (agent_probes).
    for (tc, mode) in &cells {
        let other = if tc.version == ctxprobe_tests::toolchain::LATEST_GO {
            "1.21"
        } else {
            ctxprobe_tests::toolchain::LATEST_GO
        };
        let other = ctxprobe_tests::toolchain::Toolchain::find(other).expect("toolchain");
        other.record_version().expect("Go version");
        for tc in [tc, &other] {
            ctxprobe_tests::gobuild::build_fixture("execer", tc, mode)
                .unwrap_or_else(|e| panic!("execer for Go {} {}: {e:#}", tc.version, mode.name));
        }
    }
    let default = ctxprobe_tests::toolchain::BuildMode::default_build();
    for fixture in ["many", "pingpong"] {
        ctxprobe_tests::gobuild::build_fixture(fixture, &newest, &default)
            .unwrap_or_else(|e| panic!("{fixture}: {e:#}"));
    }
    // Context diagnosis and leak verdicts against their fixtures' truth (agent_contexts,
    // agent_leaks), in the cells those tests name themselves; and the groups fixture's truth
    // against its own dumps (agent_groups), on every release's default build.
    let latest = ctxprobe_tests::toolchain::LATEST_GO;
    let mut cells = vec![(latest, "stripped-pie")];
    for v in ["1.19", "1.21", latest] {
        cells.push((v, "stripped"));
    }
    for v in [
        "1.19", "1.21", "1.22", "1.23", "1.24", "1.25", "1.26", latest,
    ] {
        cells.push((v, "default"));
    }
    for (v, m) in cells {
        let tc = ctxprobe_tests::toolchain::Toolchain::find(v).expect("toolchain");
        tc.record_version()
            .unwrap_or_else(|e| panic!("Go {v}: {e:#}"));
        let mode = ctxprobe_tests::toolchain::BuildMode::named(m).expect("build mode");
        let groups = (m == "default").then_some("groups");
        for fixture in ["contexts", "leaks"].into_iter().chain(groups) {
            ctxprobe_tests::gobuild::build_fixture(fixture, &tc, &mode)
                .unwrap_or_else(|e| panic!("{fixture} for Go {v} {m}: {e:#}"));
        }
    }
}
