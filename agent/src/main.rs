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

use std::collections::HashSet;
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
use crate::threads::{ThreadEvent, ThreadMonitor, ThreadSettings};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own message spans several lines; the first says what is wrong.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("ctxprobe: {first} (see ctxprobe --help)");
            return ExitCode::from(2);
        }
    };
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
    let bin = match GoBinary::open(&target.exe_link, &opts) {
        Ok(bin) => Some(bin),
        // Not a Go program: watch its threads only (any language can deadlock on a futex).
        Err(gobinary::Error::NotGo(why) | gobinary::Error::NotElf(why)) => {
            if args.once {
                bail!(
                    "process {} ({}) is not a Go program ({why}): --once lists goroutines; \
                     run without --once to watch its threads",
                    target.pid,
                    target.exe_path
                );
            }
            None
        }
        Err(other) => bail!("process {} ({}): {other}", target.pid, target.exe_path),
    };
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {}", path.display()))?,
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stdout())),
    };
    let mut reporter = Reporter::new(out, args.format, target.pid);
    match &bin {
        Some(bin) => run_go(&args, &target, bin, &mut reporter),
        None => run_threads_only(&args, &target, &mut reporter),
    }
}

fn run_go(args: &Args, target: &TargetProcess, bin: &GoBinary, out: &mut Reporter) -> Result<()> {
    let bias = target.load_bias(&bin.elf)?;
    let mem = ProcessMemory::new(target.pid);
    let settings = Settings {
        threshold: args.threshold,
        include_system: args.include_system,
    };
    let mut session = Session::new(target, bin, &mem, bias, settings);

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
    let attach = Event::Attach {
        exe: target.exe_path.clone(),
        go_version: Some(bin.build_info.go_version_string.clone()),
        arch: bin.elf.arch_name().to_string(),
        goroutines: Some(session.count_user(&first)),
        threads_only: false,
        mode: if args.once { "once" } else { args.mode.name() },
        threshold_ns: args.threshold.as_nanos() as u64,
        layout_source: format!("{:?}", bin.layout_source).to_lowercase(),
    };

    if args.once {
        out.emit(&attach)?;
        session.dump_all(out)?;
        out.flush()?;
        return Ok(());
    }

    if args.mode != Mode::Poll {
        session.probes = Some(start_probes(target, bin, args.mode, args.probe_budget)?);
    }
    let threads = start_threads(args, target)?;
    out.emit(&attach)?;
    Watch::new(Some(&mut session), Some(threads)).run(args, target, out)
}

fn run_threads_only(args: &Args, target: &TargetProcess, out: &mut Reporter) -> Result<()> {
    let threads = start_threads(args, target)?;
    out.emit(&Event::Attach {
        exe: target.exe_path.clone(),
        go_version: None,
        arch: std::env::consts::ARCH.to_string(),
        goroutines: None,
        threads_only: true,
        mode: "threads",
        threshold_ns: args.threshold.as_nanos() as u64,
        layout_source: "none".into(),
    })?;
    Watch::new(None, Some(threads)).run(args, target, out)
}

fn start_threads(args: &Args, target: &TargetProcess) -> Result<ThreadMonitor> {
    ThreadMonitor::start(&ThreadSettings {
        pid: target.pid,
        threshold: args.threshold,
        tracepoints: args.mode == Mode::Precise,
    })
    .context("cannot watch the target's threads")
}

fn start_probes(
    target: &TargetProcess,
    bin: &GoBinary,
    mode: Mode,
    budget: f64,
) -> Result<ProbeController> {
    let park = probe_site(bin, "runtime.gopark")?;
    let wake_offset = if mode == Mode::Precise {
        Some(probe_site(bin, "runtime.ready")?.file_offset)
    } else {
        None
    };
    let cfg = probe_ebpf::ProbeConfig {
        pid: target.pid,
        exe_path: target.exe_link.clone(),
        park_file_offset: park.file_offset,
        wake_file_offset: wake_offset,
        g_goid_offset: bin.layout.g_goid,
        g_tracking_seq_offset: bin.layout.g_tracking_seq,
        max_parks: 131_072,
    };
    ProbeController::start(&cfg, mode, budget, park.hit_cost_ns, monotonic_ns())
        .context("cannot attach the eBPF probes (use --mode poll to run without BPF)")
}

/// Where a uprobe on a Go function goes, and what each hit will cost the target.
struct ProbeSite {
    file_offset: u64,
    hit_cost_ns: f64,
}

/// The instruction after `func`'s stack check, where a uprobe is cheap: the kernel emulates a
/// `push rbp` (~0.9 µs a hit, measured), but single-steps anything else (~10 µs), which is what
/// Go 1.19's prologue (`sub rsp` first) gets.
fn probe_site(bin: &GoBinary, func: &str) -> Result<ProbeSite> {
    let f = bin
        .pclntab
        .func_by_name(func)
        .with_context(|| format!("{func} not found in the binary's function table"))?;
    let addr = gobinary::prologue::after_stack_check(&bin.elf, &f)
        .with_context(|| format!("cannot find a probe site in {func}"))?;
    let file_offset = bin
        .elf
        .vaddr_to_file_offset(addr)
        .with_context(|| format!("{func} at {addr:#x} is not in the file"))?;
    const PUSH_RBP: u8 = 0x55;
    let emulated = bin.elf.read_vaddr(addr, 1) == Some(&[PUSH_RBP][..]);
    Ok(ProbeSite {
        file_offset,
        hit_cost_ns: if emulated { 900.0 } else { 10_000.0 },
    })
}

fn default_poll_interval(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// What the streaming loop drives: the goroutine session (Go programs) and the thread monitor.
struct Watch<'s, 'a> {
    session: Option<&'s mut Session<'a>>,
    threads: Option<ThreadMonitor>,
    /// Threads with a `thread_blocked` out and no `thread_unblocked` yet.
    reported_threads: HashSet<u32>,
    /// The last `error` record sent, so a persistent failure is not repeated every poll.
    last_error: Option<String>,
    /// Futex call count and when, at the previous summary.
    futex_calls_at: Option<(u64, i64)>,
    started_ns: i64,
}

impl<'s, 'a> Watch<'s, 'a> {
    fn new(session: Option<&'s mut Session<'a>>, threads: Option<ThreadMonitor>) -> Self {
        Watch {
            session,
            threads,
            reported_threads: HashSet::new(),
            last_error: None,
            futex_calls_at: None,
            started_ns: monotonic_ns(),
        }
    }

    /// Streams until the end, detaches every probe, then says so.
    fn run(mut self, args: &Args, target: &TargetProcess, out: &mut Reporter) -> Result<()> {
        let end = self.stream(args, target, out)?;
        let lost = self.lost_events();
        if let Some(session) = self.session.take() {
            session.probes = None;
        }
        self.threads = None;
        out.emit(&Event::Detach {
            reason: end.name(),
            lost_events: lost,
        })?;
        out.flush()?;
        Ok(())
    }

    fn lost_events(&self) -> u64 {
        let goroutine_lost = self
            .session
            .as_ref()
            .and_then(|s| s.probes.as_ref())
            .map(|p| p.lost_events());
        goroutine_lost.unwrap_or(0) + self.threads.as_ref().map(|t| t.lost_events()).unwrap_or(0)
    }

    fn poll_threads(&mut self, out: &mut Reporter) -> Result<()> {
        let Some(threads) = &mut self.threads else {
            return Ok(());
        };
        let events = match threads.poll() {
            Ok(ev) => ev,
            Err(e) => {
                out.emit(&Event::Error {
                    message: format!("threads: {e:#}"),
                })?;
                return Ok(());
            }
        };
        for ev in events {
            match ev {
                ThreadEvent::Blocked(mut b) => {
                    if let Some(session) = &self.session {
                        session.name_go_frames(&mut b.stack);
                        b.goid = session.goid_on_thread(b.tid);
                        // In a Go program, threads idle in the scheduler sleep on futexes all
                        // the time: only threads holding a goroutine, or in non-Go code, matter.
                        if b.goid.is_none() && is_go_runtime_idle(&b.stack) {
                            continue;
                        }
                    }
                    self.reported_threads.insert(b.tid);
                    out.emit(&Event::ThreadBlocked(b))?;
                }
                ThreadEvent::Unblocked(u) => {
                    if self.reported_threads.remove(&u.tid) {
                        out.emit(&Event::ThreadUnblocked(u))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn summary(&mut self, out: &mut Reporter) -> Result<()> {
        let lost = self.lost_events();
        let goroutines = self.session.as_mut().map(|s| s.summary());
        let contended_futexes = self.threads.as_ref().map(|t| t.top_contended(5));
        let futex_calls_per_sec = self.threads.as_ref().and_then(|t| t.counters()).map(|c| {
            let calls = c.calls;
            let now = monotonic_ns();
            let (prev_calls, prev_ns) = self
                .futex_calls_at
                .replace((calls, now))
                .unwrap_or((0, self.started_ns));
            let secs = (now - prev_ns) as f64 / 1e9;
            if secs > 0.0 {
                calls.saturating_sub(prev_calls) as f64 / secs
            } else {
                0.0
            }
        });
        out.emit(&Event::Summary {
            goroutines,
            lost_events: lost,
            contended_futexes,
            futex_calls_per_sec,
        })?;
        Ok(())
    }

    fn stream(&mut self, args: &Args, target: &TargetProcess, out: &mut Reporter) -> Result<End> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .enable_io()
            .build()
            .context("cannot start the event loop")?;
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
            let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
            let base_poll =
                args.poll_interval.unwrap_or_else(|| default_poll_interval(args.threshold));
            let mut summary = tokio::time::interval(args.summary_interval);
            summary.tick().await; // the first tick is immediate; the first summary comes later
            // Often enough that a burst of parks costs at most ~25 ms of probing before the park
            // probe is detached (each tick is one counters read).
            let mut control = tokio::time::interval(Duration::from_millis(25));
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
                        let mut took = Duration::ZERO;
                        if let Some(session) = &mut self.session {
                            match session.poll(out) {
                                Ok(true) => {}
                                Ok(false) => {
                                    self.poll_threads(out)?;
                                    return Ok(End::TargetExited);
                                }
                                // A racy read of a live process can fail now and then: say so
                                // (once per kind of failure) and try again at the next poll.
                                Err(e) => {
                                    let message = format!("{e:#}");
                                    if self.last_error.as_ref() != Some(&message) {
                                        out.emit(&Event::Error { message: message.clone() })?;
                                        self.last_error = Some(message);
                                    }
                                }
                            }
                            took = Duration::from_nanos(session.last_snapshot_ns.max(0) as u64);
                        }
                        self.poll_threads(out)?;
                        // Keep our reads of a very large process under ~5% of the time.
                        next_poll = tokio::time::Instant::now() + base_poll.max(took * 20);
                    }
                    _ = control.tick() => {
                        if let Some(session) = &mut self.session {
                            if let Some(p) = &mut session.probes {
                                if let Err(e) = p.tick(monotonic_ns()) {
                                    out.emit(&Event::Error { message: format!("probe control: {e:#}") })?;
                                }
                            }
                            session.drain_wake_events(out)?;
                        }
                        if !target.is_alive() {
                            // Waits that ended as it exited are still in the ring buffer.
                            self.poll_threads(out)?;
                            return Ok(End::TargetExited);
                        }
                    }
                    _ = summary.tick() => self.summary(out)?,
                }
            }
        })
    }
}

/// A thread whose stack is only Go runtime code (an idle M in `futexsleep`, for example).
fn is_go_runtime_idle(stack: &[threads::StackFrame]) -> bool {
    stack
        .iter()
        .filter_map(|f| f.func.as_deref())
        .all(|name| name.starts_with("runtime."))
}
