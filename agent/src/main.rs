//! ctxprobe: finds stuck goroutines in a live Go process from the outside.
//!
//! `sudo ctxprobe --pid N` streams JSON lines (see README for the contract); `--once` dumps
//! every goroutine once. Errors before attaching are one line on stderr and a non-zero exit,
//! with nothing left attached.

mod cli;
mod goroutines;
mod probes;
mod procmem;
mod report;
mod session;
mod stack;
mod target;
mod threads;
mod tracker;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use gobinary::gobinary::OpenOptions;
use gobinary::GoBinary;

use crate::cli::Args;
use crate::probes::{Mode, ProbeController};
use crate::procmem::ProcessMemory;
use crate::report::{Event, Reporter};
use crate::session::{End, Session, Settings};
use crate::target::{monotonic_ns, TargetProcess};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context, then the causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("ctxprobe: {}", msg.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let target = TargetProcess::open(args.pid)?;
    let opts = OpenOptions {
        allow_nearest_layout: args.assume_layout,
    };
    let bin = GoBinary::open(&target.exe_link, &opts).map_err(|e| match e {
        gobinary::Error::NotGo(why) | gobinary::Error::NotElf(why) => anyhow::anyhow!(
            "process {} ({}) is not a Go program ({why})",
            target.pid,
            target.exe_path
        ),
        other => anyhow::anyhow!("process {} ({}): {other}", target.pid, target.exe_path),
    })?;
    let bias = target.load_bias(&bin.elf)?;
    let mem = ProcessMemory::new(target.pid);
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {}", path.display()))?,
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stdout())),
    };
    let reporter = Reporter::new(out, args.format, target.pid);
    let settings = Settings {
        threshold: args.threshold,
        include_system: args.include_system,
    };
    let mut session = Session::new(&target, &bin, &mem, bias, reporter, settings);

    // The first read proves we can see the goroutine list before anything is attached.
    let first = match session.snapshot() {
        Ok(Some(gs)) => gs,
        Ok(None) => bail!("process {} exited", target.pid),
        Err(e) => {
            if let Some(crate::procmem::MemError::Permission) = e.downcast_ref() {
                bail!(
                    "not permitted to read the memory of process {}: run ctxprobe as root (sudo)",
                    target.pid
                );
            }
            return Err(e);
        }
    };
    let goroutines = session.count_user(&first);
    let attach = Event::Attach {
        exe: target.exe_path.clone(),
        go_version: bin.build_info.go_version_string.clone(),
        arch: bin.elf.arch_name().to_string(),
        goroutines,
        mode: if args.once { "once" } else { args.mode.name() },
        threshold_ns: args.threshold.as_nanos() as u64,
        layout_source: format!("{:?}", bin.layout_source).to_lowercase(),
    };

    if args.once {
        session.reporter.emit(&attach)?;
        session.dump_all()?;
        session.reporter.flush()?;
        return Ok(());
    }

    if args.mode != Mode::Poll {
        session.probes = Some(start_probes(&target, &bin, args.mode, args.probe_budget)?);
    }
    session.reporter.emit(&attach)?;
    let end = stream(&mut session, &args)?;
    let lost = session
        .probes
        .as_ref()
        .map(|p| p.lost_events())
        .unwrap_or(0);
    // Detach before saying so.
    session.probes = None;
    let reason = match end {
        End::Duration => "duration",
        End::Signal => "signal",
        End::TargetExited => "target_exited",
    };
    session.reporter.emit(&Event::Detach {
        reason,
        lost_events: lost,
    })?;
    session.reporter.flush()?;
    Ok(())
}

fn start_probes(
    target: &TargetProcess,
    bin: &GoBinary,
    mode: Mode,
    budget: f64,
) -> Result<ProbeController> {
    let park_offset = probe_site(bin, "runtime.gopark")?;
    let wake_offset = if mode == Mode::Precise {
        Some(probe_site(bin, "runtime.ready")?)
    } else {
        None
    };
    let cfg = probe_ebpf::ProbeConfig {
        pid: target.pid,
        exe_path: target.exe_link.clone(),
        park_file_offset: park_offset,
        wake_file_offset: wake_offset,
        g_goid_offset: bin.layout.g_goid,
        g_tracking_seq_offset: bin.layout.g_tracking_seq,
        max_parks: 131_072,
    };
    ProbeController::start(&cfg, mode, budget, monotonic_ns())
        .context("cannot attach the eBPF probes (use --mode poll to run without BPF)")
}

/// File offset of the instruction after `func`'s stack check, where a uprobe is cheap.
fn probe_site(bin: &GoBinary, func: &str) -> Result<u64> {
    let f = bin
        .pclntab
        .func_by_name(func)
        .with_context(|| format!("{func} not found in the binary's function table"))?;
    let addr = gobinary::prologue::after_stack_check(&bin.elf, &f)
        .with_context(|| format!("cannot find a probe site in {func}"))?;
    bin.elf
        .vaddr_to_file_offset(addr)
        .with_context(|| format!("{func} at {addr:#x} is not in the file"))
}

fn default_poll_interval(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

fn stream(session: &mut Session<'_>, args: &Args) -> Result<End> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .context("cannot start the event loop")?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let base_poll = args.poll_interval.unwrap_or_else(|| default_poll_interval(args.threshold));
        let mut summary = tokio::time::interval(args.summary_interval);
        summary.tick().await; // the first tick is immediate; the first summary comes later
        let mut control = tokio::time::interval(Duration::from_millis(250));
        let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
        let mut next_poll = tokio::time::Instant::now();
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sigterm.recv() => return Ok(End::Signal),
                _ = sigint.recv() => return Ok(End::Signal),
                _ = until_deadline => return Ok(End::Duration),
                _ = tokio::time::sleep_until(next_poll) => {
                    if !session.poll()? {
                        return Ok(End::TargetExited);
                    }
                    // Keep our reads of a very large process under ~5% of the time.
                    let took = Duration::from_nanos(session.last_snapshot_ns.max(0) as u64);
                    next_poll = tokio::time::Instant::now() + base_poll.max(took * 20);
                }
                _ = control.tick() => {
                    if let Some(p) = &mut session.probes {
                        if let Err(e) = p.tick(monotonic_ns()) {
                            session.reporter.emit(&Event::Error { message: format!("probe control: {e:#}") })?;
                        }
                    }
                    session.drain_wake_events()?;
                    if !session.target.is_alive() {
                        return Ok(End::TargetExited);
                    }
                }
                _ = summary.tick() => {
                    let lost = session.probes.as_ref().map(|p| p.lost_events()).unwrap_or(0);
                    session.summary(lost)?;
                }
            }
        }
    })
}
