//! `cargo xtask bench`: the cost of ctxprobe to its target, measured side by side in one run.
//!
//! 1. Unbuffered-channel ping-pong (fixtures/pingpong, GOMAXPROCS=1): ns per round trip
//!    without ctxprobe and with it attached in each mode; a round trip is 2 parks.
//! 2. A net/http hello-world (fixtures/httpserver) under `wrk -t1 -c32 -d5s`: requests/s
//!    without and with ctxprobe, as ratios. Runs are interleaved (none, default, precise, none,
//!    ...) and medians reported, so drift on a shared machine hits every mode alike.
//! 4. A futex-heavy C program (fixtures/c/busy.c: threads locking one contended mutex): ops/s
//!    without and with ctxprobe attached (thread mode: futex tracepoints).
//! 3. `ctxprobe --once` wall time on fixtures/many (100,000 parked goroutines) next to the
//!    target's own `pprof.Lookup("goroutine").WriteTo(w, 2)` time.
//! 5. Context diagnosis: `ctxprobe --once` wall time on fixtures/contexts with as many
//!    goroutines, each holding a three-link context chain in a select on its Done channel
//!    (compare with 3: the same count without contexts).
//!
//! 6. Scale (only with `--scale` or `--only scale`; see bench/scale.rs): fixtures/groups at 10k,
//!    100k and 1M goroutines, `--once` and streaming resources beside the target's own dumps.
//!
//! 7. Leaks (only with `--only leaks`; see bench/leaks.rs): `--once --leaks` on heaps of 100 MiB
//!    and 1 GiB: analysis wall time, ctxprobe's CPU and peak RSS; then a million goroutines
//!    (fixtures/many) with `--once --leaks` and 90 s of streaming `--leaks`.
//!
//! Needs root, wrk, a Go toolchain (scripts/setup.sh) and a release build of ctxprobe
//! (`cargo build --release -p ctxprobe`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

mod leaks;
mod scale;
mod soak;

const USAGE: &str = "usage: cargo xtask bench [--go 1.27] [--rounds 3] [--modes default,precise]
    [--pingpong-n 1000000] [--wrk-duration 5s] [--wrk-connections 32] [--many-n 100000]
    [--only pingpong,wrk,many,futex,contexts,scale,soak,leaks] [--futex-threads 4] [--ctxprobe PATH]
    [--scale] [--scale-sizes 10000,100000,1000000] [--scale-duration 60s] [--soak-cycles 1000]
--scale runs only the scale section (fixtures/groups up to 1M goroutines, ~10 minutes;
--scale-duration 0s skips its streaming runs);
the default run leaves it out, and --only soak (attach/detach cycles under load, ~10 minutes for 1000).
Build ctxprobe first: cargo build --release -p ctxprobe";

#[derive(Clone)]
struct Options {
    go: String,
    rounds: usize,
    modes: Vec<String>,
    pingpong_n: u64,
    wrk_duration: Duration,
    wrk_connections: u32,
    many_n: u64,
    only: Vec<String>,
    futex_threads: u32,
    ctxprobe: Option<PathBuf>,
    scale_sizes: Vec<u64>,
    scale_duration: Duration,
    soak_cycles: usize,
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = workspace_root();
    let ctxprobe = find_ctxprobe(&root, opts.ctxprobe.as_deref())?;
    let go = find_go(&root, &opts.go)?;
    eprintln!("bench: ctxprobe {}, Go {}", ctxprobe.display(), opts.go);
    // The scale and soak sections take ~10 minutes each: only when asked for by name.
    let want = |s: &str| {
        (opts.only.is_empty() && s != "scale" && s != "soak" && s != "leaks")
            || opts.only.iter().any(|o| o == s)
    };
    let mut report = Vec::new();
    if want("pingpong") {
        let bin = build_fixture(&root, &go, &opts.go, "pingpong")?;
        report.push(bench_pingpong(&bin, &ctxprobe, &opts)?);
    }
    if want("wrk") {
        let bin = build_fixture(&root, &go, &opts.go, "httpserver")?;
        report.push(bench_wrk(&bin, &ctxprobe, &opts)?);
    }
    if want("futex") {
        let bin = build_c(&root, "busy")?;
        report.push(bench_futex(&bin, &ctxprobe, &opts)?);
    }
    if want("many") {
        let bin = build_fixture(&root, &go, &opts.go, "many")?;
        report.push(bench_many(&bin, &ctxprobe, &opts)?);
    }
    if want("contexts") {
        let bin = build_fixture(&root, &go, &opts.go, "contexts")?;
        report.push(bench_contexts(&bin, &ctxprobe, &opts)?);
    }
    if want("scale") {
        let bin = build_fixture(&root, &go, &opts.go, "groups")?;
        report.push(scale::bench_scale(&bin, &ctxprobe, &opts)?);
    }
    if want("leaks") {
        let bin = build_fixture(&root, &go, &opts.go, "leakheap")?;
        report.push(leaks::bench_leaks(&bin, &ctxprobe, &opts)?);
        let many = build_fixture(&root, &go, &opts.go, "many")?;
        report.push(leaks::bench_leaks_at_scale(&many, &ctxprobe)?);
    }
    if want("soak") {
        let bin = build_fixture(&root, &go, &opts.go, "httpserver")?;
        report.push(soak::bench_soak(&bin, &ctxprobe, &opts)?);
    }
    println!();
    for section in report {
        println!("{section}");
    }
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        go: "1.27".into(),
        rounds: 3,
        modes: vec!["default".into(), "precise".into()],
        pingpong_n: 1_000_000,
        wrk_duration: Duration::from_secs(5),
        wrk_connections: 32,
        many_n: 100_000,
        only: Vec::new(),
        futex_threads: 4,
        ctxprobe: None,
        scale_sizes: vec![10_000, 100_000, 1_000_000],
        scale_duration: Duration::from_secs(60),
        soak_cycles: 1000,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--scale" {
            o.only = vec!["scale".into()];
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let list = || value.split(',').map(str::to_string).collect::<Vec<_>>();
        match flag.as_str() {
            "--go" => o.go = value.clone(),
            "--rounds" => o.rounds = value.parse().context("--rounds")?,
            "--modes" => o.modes = list(),
            "--pingpong-n" => o.pingpong_n = value.parse().context("--pingpong-n")?,
            "--wrk-duration" => o.wrk_duration = parse_duration(value)?,
            "--wrk-connections" => {
                o.wrk_connections = value.parse().context("--wrk-connections")?
            }
            "--many-n" => o.many_n = value.parse().context("--many-n")?,
            "--only" => o.only = list(),
            "--futex-threads" => o.futex_threads = value.parse().context("--futex-threads")?,
            "--ctxprobe" => o.ctxprobe = Some(PathBuf::from(value)),
            "--scale-sizes" => {
                o.scale_sizes = value
                    .split(',')
                    .map(|n| n.trim().parse::<u64>())
                    .collect::<Result<_, _>>()
                    .context("--scale-sizes")?
            }
            "--scale-duration" => o.scale_duration = parse_duration(value)?,
            "--soak-cycles" => o.soak_cycles = value.parse().context("--soak-cycles")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    Ok(o)
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .with_context(|| format!("duration {s:?} needs a unit (ms, s)"))?;
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => bail!("bad duration unit in {s:?} (ms, s, m)"),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn find_ctxprobe(root: &Path, flag: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match (flag, std::env::var_os("CTXPROBE_BIN")) {
        (Some(p), _) => vec![p.to_path_buf()],
        (None, Some(p)) => vec![PathBuf::from(p)],
        (None, None) => vec![root.join("target/release/ctxprobe")],
    };
    candidates.into_iter().find(|p| p.is_file()).context(
        "ctxprobe release binary not found: run `cargo build --release -p ctxprobe` first \
         (or pass --ctxprobe PATH)",
    )
}

fn find_go(root: &Path, version: &str) -> Result<PathBuf> {
    let go = if version == "1.19" {
        PathBuf::from("/usr/lib/go-1.19/bin/go")
    } else {
        root.join(format!(".tools/go{version}/bin/go"))
    };
    if !go.is_file() {
        bail!(
            "Go {version} not found at {}: run scripts/setup.sh --all-go",
            go.display()
        );
    }
    Ok(go)
}

/// `go build` (Go's own cache makes repeats cheap) into target/fixtures/bench-<v>/<name>.
fn build_fixture(root: &Path, go: &Path, version: &str, name: &str) -> Result<PathBuf> {
    let out = root.join(format!("target/fixtures/bench-{version}/{name}"));
    let status = Command::new(go)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(root.join("fixtures").join(name))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", root.join(".tools/gocache"))
        .status()
        .with_context(|| format!("running {}", go.display()))?;
    if !status.success() {
        bail!("building fixtures/{name} failed");
    }
    Ok(out)
}

/// `gcc -O2` of fixtures/c/NAME.c into target/fixtures/bench-c/NAME.
fn build_c(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join("target/fixtures/bench-c");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-pthread"])
        .arg(root.join(format!("fixtures/c/{name}.c")))
        .arg("-o")
        .arg(&out)
        .status()
        .context("running gcc")?;
    if !status.success() {
        bail!("building fixtures/c/{name}.c failed");
    }
    Ok(out)
}

// ---- processes ----

/// A child whose stdout lines arrive on a channel (read on a thread, so the pipe never fills).
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next JSON line satisfying `pred`, skipping others.
    fn wait_json(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        if pred(&v) {
                            return Ok(v);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("{}: timed out", self.name),
                Err(RecvTimeoutError::Disconnected) => bail!("{}: exited early", self.name),
            }
        }
    }

    fn send_line(&mut self, s: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{s}")?;
        stdin.flush()?;
        Ok(())
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} {} failed", self.name);
        }
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits, killing it after `grace`.
    fn stop(mut self, grace: Duration) -> Result<()> {
        self.signal("TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not exit within {grace:?} of SIGTERM", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a fixture and returns it with its ready line.
fn start_fixture(bin: &Path, args: &[&str]) -> Result<(Proc, Value)> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let p = Proc::spawn(&bin.display().to_string(), cmd)?;
    let ready = p.wait_json(Duration::from_secs(180), |v| v["ready"] == true)?;
    Ok((p, ready))
}

/// ctxprobe attached to `pid` in `mode` ("default" adds no flag), once it reported `attach`.
fn attach(ctxprobe: &Path, pid: u32, mode: &str) -> Result<Proc> {
    let mut cmd = Command::new(ctxprobe);
    cmd.args(["--pid", &pid.to_string(), "--threshold", "10s"]);
    if mode != "default" {
        cmd.args(["--mode", mode]);
    }
    let p = Proc::spawn("ctxprobe", cmd)?;
    p.wait_json(Duration::from_secs(60), |v| v["type"] == "attach")
        .with_context(|| format!("ctxprobe --mode {mode} did not attach"))?;
    // Measure the steady state ctxprobe runs in for hours, not its first probe-budget window
    // (adaptive mode samples the park rate for ~100 ms after attaching).
    std::thread::sleep(Duration::from_millis(500));
    Ok(p)
}

/// Runs `f` once per round per mode, interleaved, with ctxprobe attached for the modes other
/// than "none". Returns the samples per mode, in `modes` order.
fn interleaved(
    opts: &Options,
    ctxprobe: &Path,
    pid: u32,
    mut f: impl FnMut() -> Result<f64>,
) -> Result<Vec<(String, Vec<f64>)>> {
    let mut modes = vec!["none".to_string()];
    modes.extend(opts.modes.iter().cloned());
    let mut samples: Vec<(String, Vec<f64>)> =
        modes.iter().map(|m| (m.clone(), Vec::new())).collect();
    for round in 0..opts.rounds {
        for (mode, v) in samples.iter_mut() {
            let probe = match mode.as_str() {
                "none" => None,
                m => Some(attach(ctxprobe, pid, m)?),
            };
            let x = f()?;
            eprintln!("bench:   round {} {mode:>8}: {x:.1}", round + 1);
            v.push(x);
            if let Some(p) = probe {
                p.stop(Duration::from_secs(15))?;
            }
        }
    }
    Ok(samples)
}

/// `ctxprobe --pid PID --once`: its wall time in milliseconds and its output.
fn timed_once(ctxprobe: &Path, pid: u32) -> Result<(f64, Vec<u8>)> {
    let start = Instant::now();
    let out = Command::new(ctxprobe)
        .args(["--pid", &pid.to_string(), "--once"])
        .stderr(Stdio::inherit())
        .output()
        .context("running ctxprobe --once")?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("ctxprobe --once failed: {}", out.status);
    }
    Ok((ms, out.stdout))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

// ---- the three benchmarks ----

fn bench_pingpong(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    eprintln!(
        "bench: pingpong ({} round trips per sample)",
        opts.pingpong_n
    );
    let (mut pp, _) = start_fixture(bin, &[])?;
    let pid = pp.pid();
    let n = opts.pingpong_n;
    let measure = |pp: &mut Proc| -> Result<f64> {
        pp.send_line(&n.to_string())?;
        let v = pp.wait_json(Duration::from_secs(300), |v| {
            v["ns_per_round_trip"].is_number()
        })?;
        Ok(v["ns_per_round_trip"].as_f64().unwrap_or(f64::NAN))
    };
    measure(&mut pp)?; // warm-up
    let samples = interleaved(opts, ctxprobe, pid, || measure(&mut pp))?;
    let base = median(&samples[0].1);
    let mut s =
        String::from("Ping-pong, unbuffered channel, GOMAXPROCS=1 (2 parks per round trip)\n");
    s.push_str(&format!(
        "  {:<10} {:>14} {:>14} {:>16}\n",
        "mode", "ns/round trip", "vs none", "extra ns/park"
    ));
    for (mode, v) in &samples {
        let m = median(v);
        s.push_str(&format!(
            "  {:<10} {:>14.1} {:>13.2}x {:>16.1}\n",
            mode,
            m,
            m / base,
            (m - base) / 2.0
        ));
    }
    Ok(s)
}

fn bench_wrk(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    let secs = opts.wrk_duration.as_secs().max(1);
    eprintln!("bench: wrk -t1 -c{} -d{secs}s", opts.wrk_connections);
    let (server, ready) = start_fixture(bin, &[])?;
    let addr = ready["addr"]
        .as_str()
        .context("httpserver printed no addr")?;
    let url = format!("http://{addr}/");
    let run_wrk = || -> Result<f64> {
        let out = Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{}", opts.wrk_connections),
                &format!("-d{secs}s"),
                &url,
            ])
            .output()
            .context("running wrk (install it: scripts/setup.sh)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
    };
    run_wrk()?; // warm-up
    let samples = interleaved(opts, ctxprobe, server.pid(), run_wrk)?;
    let title = format!(
        "net/http hello-world under wrk -t1 -c{} -d{secs}s (medians of {} interleaved runs)",
        opts.wrk_connections, opts.rounds
    );
    Ok(ratio_table(&title, "requests/s", &samples))
}

/// Medians per mode and their ratio to the first ("none") row.
fn ratio_table(title: &str, unit: &str, samples: &[(String, Vec<f64>)]) -> String {
    let base = samples.first().map(|s| median(&s.1)).unwrap_or(f64::NAN);
    let mut s = format!("{title}\n  {:<10} {:>14} {:>10}\n", "mode", unit, "ratio");
    for (mode, v) in samples {
        let m = median(v);
        s.push_str(&format!("  {:<10} {:>14.0} {:>10.3}\n", mode, m, m / base));
    }
    s
}

fn bench_futex(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    let secs = opts.wrk_duration.as_secs().max(1);
    eprintln!(
        "bench: futex: {} threads on one mutex, {secs}s samples",
        opts.futex_threads
    );
    let mut cmd = Command::new(bin);
    cmd.args([opts.futex_threads.to_string().as_str(), "serve"]);
    let mut busy = Proc::spawn("busy", cmd)?;
    busy.wait_json(Duration::from_secs(10), |v| v["tids"].is_array())?;
    let pid = busy.pid();
    let mut measure = || -> Result<f64> {
        busy.send_line(&secs.to_string())?;
        let v = busy.wait_json(Duration::from_secs(secs + 30), |v| {
            v["ops_per_sec"].is_number()
        })?;
        Ok(v["ops_per_sec"].as_f64().unwrap_or(f64::NAN))
    };
    measure()?; // warm-up
                // A C program has no goroutines: ctxprobe watches its threads (from /proc by default, with
                // the futex tracepoints in precise mode).
    let samples = interleaved(opts, ctxprobe, pid, measure)?;
    let title = format!(
        "Futex-heavy C program ({} threads, one contended pthread mutex; medians of {})",
        opts.futex_threads, opts.rounds
    );
    Ok(ratio_table(&title, "ops/s", &samples))
}

fn bench_many(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    eprintln!("bench: --once on {} parked goroutines", opts.many_n);
    let (many, _) = start_fixture(bin, &["-n", &opts.many_n.to_string()])?;
    let mut dump_ms = Vec::new();
    let mut once_ms = Vec::new();
    let mut records = 0usize;
    for round in 0..opts.rounds {
        many.signal("USR1")?;
        let v = many.wait_json(Duration::from_secs(300), |v| v["dump_ns"].is_u64())?;
        let d = v["dump_ns"].as_u64().unwrap_or(0) as f64 / 1e6;
        dump_ms.push(d);

        let (o, stdout) = timed_once(ctxprobe, many.pid())?;
        records = stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        once_ms.push(o);
        eprintln!(
            "bench:   round {}: debug=2 dump {d:.0} ms, ctxprobe --once {o:.0} ms ({records} lines)",
            round + 1
        );
    }
    let (d, o) = (median(&dump_ms), median(&once_ms));
    let mut s = format!(
        "Snapshot of {} parked goroutines (medians of {})\n",
        opts.many_n, opts.rounds
    );
    s.push_str(&format!("  {:<42} {:>10}\n", "", "ms"));
    s.push_str(&format!(
        "  {:<42} {:>10.0}\n",
        "target's own pprof debug=2 dump (in-process)", d
    ));
    s.push_str(&format!(
        "  {:<42} {:>10.0}   ({:.2}x, {records} lines)\n",
        "ctxprobe --once (external, wall time)",
        o,
        o / d
    ));
    Ok(s)
}

/// `--once` over goroutines that each hold a context (the cost of context diagnosis).
fn bench_contexts(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    eprintln!(
        "bench: --once on {} goroutines holding contexts",
        opts.many_n
    );
    let (fixture, _) = start_fixture(bin, &["-extra", &opts.many_n.to_string()])?;
    let mut once_ms = Vec::new();
    let mut verdicts = 0usize;
    for round in 0..opts.rounds {
        let (o, stdout) = timed_once(ctxprobe, fixture.pid())?;
        verdicts = stdout
            .split(|b| *b == b'\n')
            .filter(|l| {
                let want: &[u8] = b"\"context_verdict\":\"waits_for_cancel\"";
                l.windows(want.len()).any(|w| w == want)
            })
            .count();
        once_ms.push(o);
        eprintln!(
            "bench:   round {}: ctxprobe --once {o:.0} ms ({verdicts} waits_for_cancel)",
            round + 1
        );
    }
    Ok(format!(
        "Context diagnosis: {} goroutines each holding a 3-link context (medians of {})\n  {:<42} {:>10.0} ms   ({verdicts} waits_for_cancel verdicts)\n",
        opts.many_n,
        opts.rounds,
        "ctxprobe --once (external, wall time)",
        median(&once_ms)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_durations() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
