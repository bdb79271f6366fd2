//! Soak: many attach/detach cycles of ctxprobe on an HTTP server under load (issue 11).
//!
//! Each cycle starts ctxprobe, waits for its `attach`, then ends it with SIGTERM (odd cycles)
//! or `--duration` (even cycles) and checks it exited 0 with a `detach`. Meanwhile wrk keeps
//! loading the server; its socket errors and non-2xx responses are the target's side of the
//! check. The server's throughput without ctxprobe, before and after, says whether anything
//! was left attached (a forgotten uprobe on `gopark` would cost every park).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{start_fixture, Options, Proc};

#[derive(Default, Debug)]
struct WrkTotals {
    runs: u64,
    requests: u64,
    socket_errors: u64,
    non_2xx: u64,
}

/// One wrk run: requests/s, requests, socket errors, non-2xx responses.
fn wrk(url: &str, secs: u64) -> Result<(f64, u64, u64, u64)> {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s"), url])
        .output()
        .context("running wrk (install it: scripts/setup.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_end_matches(',').parse().ok())
    };
    let rps = num("Requests/sec:").with_context(|| format!("no Requests/sec in:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split(" requests in ")
                .next()
                .filter(|_| l.contains(" requests in "))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket_errors = text
        .lines()
        .find(|l| l.trim().starts_with("Socket errors:"))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non_2xx = num("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    Ok((rps, requests, socket_errors, non_2xx))
}

pub fn bench_soak(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    let cycles = opts.soak_cycles;
    eprintln!("bench: soak, {cycles} attach/detach cycles under wrk load");
    let (server, ready) = start_fixture(bin, &[])?;
    let addr = ready["addr"]
        .as_str()
        .context("httpserver printed no addr")?;
    let url = format!("http://{addr}/");
    wrk(&url, 2)?; // warm-up
    let before = wrk(&url, 5)?.0;

    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(WrkTotals::default()));
    let load = {
        let (stop, totals, url) = (stop.clone(), totals.clone(), url.clone());
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let (_, requests, socket_errors, non_2xx) = wrk(&url, 5)?;
                let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                t.runs += 1;
                t.requests += requests;
                t.socket_errors += socket_errors;
                t.non_2xx += non_2xx;
            }
            Ok(())
        })
    };

    let mut failures = Vec::new();
    let mut attach_ms = Vec::with_capacity(cycles);
    let mut exit_ms = Vec::with_capacity(cycles);
    let started = Instant::now();
    for i in 0..cycles {
        let by_signal = i % 2 == 1;
        let mut cmd = Command::new(ctxprobe);
        cmd.args(["--pid", &server.pid().to_string(), "--threshold", "10s"]);
        if !by_signal {
            cmd.args(["--duration", "200ms"]);
        }
        let t0 = Instant::now();
        let mut p = Proc::spawn("ctxprobe", cmd)?;
        if let Err(e) = p.wait_json(Duration::from_secs(30), |v| v["type"] == "attach") {
            failures.push(format!("cycle {i}: no attach: {e:#}"));
            continue;
        }
        attach_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let t1 = Instant::now();
        if by_signal {
            p.signal("TERM")?;
        }
        let detached = p.wait_json(Duration::from_secs(30), |v| v["type"] == "detach");
        let status = p.child.wait()?;
        exit_ms.push(t1.elapsed().as_secs_f64() * 1e3);
        if detached.is_err() || !status.success() {
            failures.push(format!(
                "cycle {i}: exit {status}, detach record: {}",
                detached.is_ok()
            ));
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "bench:   soak {} cycles, {} failures",
                i + 1,
                failures.len()
            );
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    match load.join() {
        Ok(r) => r?,
        Err(_) => bail!("the wrk load thread panicked"),
    }
    let after = wrk(&url, 5)?.0;
    let t = totals.lock().unwrap_or_else(|e| e.into_inner());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let mut s = format!(
        "Soak: {cycles} attach/detach cycles (odd: SIGTERM, even: --duration 200ms) on \
         net/http under wrk -t1 -c16, {:.0} s\n",
        elapsed.as_secs_f64()
    );
    s.push_str(&format!(
        "  ctxprobe failures: {} (non-zero exit or no detach record)\n",
        failures.len()
    ));
    for f in failures.iter().take(5) {
        s.push_str(&format!("    {f}\n"));
    }
    s.push_str(&format!(
        "  attach: mean {:.0} ms, max {:.0} ms; exit after SIGTERM/duration: mean {:.0} ms, max {:.0} ms\n",
        mean(&attach_ms),
        max(&attach_ms),
        mean(&exit_ms),
        max(&exit_ms)
    ));
    s.push_str(&format!(
        "  target under load: {} requests, {} socket errors, {} non-2xx responses\n",
        t.requests, t.socket_errors, t.non_2xx
    ));
    s.push_str(&format!(
        "  requests/s without ctxprobe: before {before:.0}, after {after:.0} (ratio {:.3})\n",
        after / before
    ));
    drop(server);
    Ok(s)
}
