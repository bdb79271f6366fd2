//! `cargo xtask bench --only leaks`: what `--once --leaks` costs on heaps of about 80 MiB,
//! 800 MiB and 4 GiB (Go's HeapAlloc: fixtures/leakheap's `-mib` counts 80 bytes an object, which
//! take 64; pointer-linked objects and 1,000 leaked goroutines): the
//! analysis's wall time (its own record), ctxprobe's CPU time and peak RSS (wait4's rusage),
//! and whether it found the leaks. The target is never stopped.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{scale, start_fixture, Options};

const HEAPS_MIB: [u64; 3] = [100, 1024, 5120];

pub(super) fn bench_leaks(bin: &Path, ctxprobe: &Path, _opts: &Options) -> Result<String> {
    let mut s = String::from(
        "Leak analysis (--once --leaks; fixtures/leakheap: 64-byte linked objects, 1,000 leaked \
         goroutines)\n\n| heap (Go's HeapAlloc) | objects | analysis wall (2 passes) | ctxprobe CPU | ctxprobe peak RSS | leaked found |\n|---|---|---|---|---|---|\n",
    );
    for mib in HEAPS_MIB {
        let (fixture, ready) = start_fixture(bin, &["-mib", &mib.to_string()])?;
        let pid = fixture.pid().to_string();
        let run = scale::run(ctxprobe, &["--pid", &pid, "--once", "--leaks"])?;
        let record = run
            .lines
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["type"] == "leak_analysis")
            .context("no leak_analysis record")?;
        let heap = ready["heap_alloc"].as_u64().unwrap_or(0);
        s += &format!(
            "| {:.0} MiB | {} | {:.2} s | {:.2} s | {:.1} MiB | {} of {} |\n",
            heap as f64 / (1 << 20) as f64,
            record["heap_objects"],
            record["wall_ms"].as_f64().unwrap_or(0.0) / 1e3,
            run.cpu.as_secs_f64(),
            run.max_rss_mib,
            record["leaked"],
            ready["leaks"],
        );
        let _ = run.wall;
        fixture.stop(Duration::from_secs(5))?;
    }
    Ok(s)
}
