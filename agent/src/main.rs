//! ctxprobe: finds stuck goroutines in a live Go process from the outside.
//!
//! `sudo ctxprobe --pid N` streams JSON lines (see README for the contract); `--once` dumps
//! every goroutine once. Errors before attaching are one line on stderr and a non-zero exit,
//! with nothing left attached.

mod cli;
mod contexts;
mod denied;
mod dump_writer;
mod frame_layout;
mod freezer;
mod fxhash;
mod gcframes;
mod goroutines;
mod groups;
mod leaks;
mod output_queue;
mod probes;
mod procmaps;
mod procmem;
mod report;
mod scan_budget;
mod session;
mod snapshot_chunks;
mod stack;
mod target;
mod threads;
mod tracker;
mod watch;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use gobinary::gobinary::OpenOptions;
use gobinary::GoBinary;

use crate::cli::Args;
use crate::probes::hitcost::HitCostMeter;
use crate::probes::{HitCosts, Mode, ProbeController, ProbeSites, ProbedInsn};
use crate::procmem::ProcessMemory;
use crate::report::{Event, Reporter};
use crate::session::{Session, Settings};
use crate::target::{monotonic_ns, TargetProcess};
use crate::threads::{ThreadMonitor, ThreadSettings};
use crate::watch::{Signals, Watch};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ctxprobe: {} (see ctxprobe --help)", cli_error_line(&e));
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

/// clap's message spans several lines; the first paragraph says what is wrong: one line of it.
fn cli_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let first = first.join(" ");
    first.strip_prefix("error: ").unwrap_or(&first).to_string()
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
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {}", path.display()))?,
        )),
        // A dump is written in large blocks (a million records would be a million writes);
        // streaming records go out line by line, as they happen.
        None if args.once => Box::new(std::io::BufWriter::with_capacity(
            ONCE_OUTPUT_BUFFER,
            std::io::stdout(),
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stdout())),
    };
    // Streaming never waits for its consumer (a stalled log pipeline must not stall probe
    // control or signals); a `--once` dump waits, since it is the whole answer.
    let mut reporter = if args.once {
        Reporter::threaded(out, args.format, target.pid)
            .context("cannot start the output writer thread")?
    } else {
        Reporter::queued(out, args.format, target.pid)
            .context("cannot start the output writer thread")?
    };
    match bin {
        // For the life of the process: the streaming leak analysis' thread borrows it and is
        // never waited for (see leaks::worker).
        Some(bin) => run_go(&args, &target, Box::leak(Box::new(bin)), &mut reporter),
        None => {
            if args.leaks {
                eprintln!("ctxprobe: --leaks: not a Go program, so no leak analysis");
            }
            run_threads_only(&args, &target, &mut reporter)
        }
    }
}

/// Bytes of `--once` output buffered before a write.
const ONCE_OUTPUT_BUFFER: usize = 256 * 1024;

fn run_go(
    args: &Args,
    target: &TargetProcess,
    bin: &'static GoBinary,
    out: &mut Reporter,
) -> Result<()> {
    let bias = target.load_bias(&bin.elf)?;
    let mem = ProcessMemory::new(target.pid);
    let settings = Settings {
        threshold: args.threshold,
        include_system: args.include_system,
        max_groups: args.max_groups,
        samples_per_group: args.samples_per_group,
        every_goroutine: args.every_goroutine,
        leaks: args.leaks && !args.once,
    };
    let mut session = Session::new(target, bin, &mem, bias, settings);

    // The first read proves we can see the goroutine list before anything is attached.
    let goroutines = match session.count_at_attach() {
        Ok(Some(n)) => n,
        Ok(None) => bail!("process {} exited", target.pid),
        Err(e) => {
            if let Some(crate::procmem::MemError::Permission) = e.downcast_ref() {
                bail!(
                    "not permitted to read the memory of process {}: {}",
                    target.pid,
                    crate::denied::cause(target.pid)
                );
            }
            return Err(e.context("cannot read the goroutine list"));
        }
    };
    let attach = Event::Attach {
        exe: target.exe_path.clone(),
        go_version: Some(bin.build_info.go_version_string.clone()),
        arch: bin.elf.arch_name().to_string(),
        goroutines: Some(goroutines),
        threads_only: false,
        mode: if args.once { "once" } else { args.mode.name() },
        threshold_ns: args.threshold.as_nanos() as u64,
        layout_source: format!("{:?}", bin.layout_source).to_lowercase(),
    };

    if args.once {
        out.emit(&attach)?;
        let leak_record = args
            .leaks
            .then(|| run_leak_analysis(&mut session, &mem, bin, bias));
        let dumped = if args.grouped {
            session.dump_grouped(out)
        } else {
            session.dump_all(out)
        };
        if let Err(e) = dumped {
            // Said in the output too, so a pipeline reading it knows the dump is partial.
            let _ = out.emit(&Event::Error {
                message: format!("{e:#}"),
            });
            let _ = out.finish(std::time::Duration::from_secs(1));
            return Err(e);
        }
        if let Some(record) = leak_record {
            out.emit(&record)?;
        }
        out.finish(std::time::Duration::MAX)?;
        return Ok(());
    }

    if args.mode != Mode::Poll {
        session.probes = Some(start_probes(target, bin, args.mode, args.probe_budget)?);
    }
    let threads = start_threads(args, target)?;
    let signals = Signals::install()?;
    let leak_stream = if args.leaks {
        Some(leaks::stream::LeakStream::start(
            target.pid,
            bin,
            bias,
            args.leak_interval.as_nanos() as i64,
            monotonic_ns(),
        )?)
    } else {
        None
    };
    // The budgeted cancel probe goes in last, just before the loop that keeps it within budget.
    if let Some(p) = &mut session.probes {
        p.begin(monotonic_ns());
    }
    out.emit(&attach)?;
    Watch::new(Some(&mut session), Some(threads))
        .with_leaks(leak_stream)
        .run(args, target, out, signals)
}

fn run_threads_only(args: &Args, target: &TargetProcess, out: &mut Reporter) -> Result<()> {
    let threads = start_threads(args, target)?;
    let signals = Signals::install()?;
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
    Watch::new(None, Some(threads)).run(args, target, out, signals)
}

fn start_threads(args: &Args, target: &TargetProcess) -> Result<ThreadMonitor> {
    ThreadMonitor::start(&ThreadSettings {
        pid: target.pid,
        threshold: args.threshold,
        tracepoints: args.mode == Mode::Precise,
        arch: gobinary::elf::Arch::of_file(&target.exe_link)
            .unwrap_or_else(gobinary::elf::Arch::host),
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
    let wake = if mode == Mode::Precise {
        Some(probe_site(bin, "runtime.ready")?)
    } else {
        None
    };
    // Precise mode also records who cancels contexts. A binary that never cancels one has no
    // cancelCtx.cancel (dead code): then there is simply no cancel probe.
    let cancel = if mode == Mode::Precise {
        cancel_site(bin)
    } else {
        None
    };
    let cfg = probe_ebpf::ProbeConfig {
        pid: target.pid,
        exe_path: target.exe_link.clone(),
        park_file_offset: park.file_offset,
        wake_file_offset: wake.as_ref().map(|w| w.file_offset),
        cancel_file_offset: cancel.as_ref().map(|c| c.0.file_offset),
        cancelctx_err_offset: cancel.as_ref().map(|c| c.1).unwrap_or(0),
        g_goid_offset: bin.layout.g_goid,
        g_tracking_seq_offset: bin.layout.g_tracking_seq,
        max_parks: 131_072,
    };
    // Where the target runs each probed instruction, to check that its breakpoint stays in
    // (without the load bias, nothing is checked: the probes work the same).
    let bias = match target.load_bias(&bin.elf) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("ctxprobe: probe breakpoints will not be checked: {e:#}");
            None
        }
    };
    let insn = |site: &ProbeSite| {
        let bytes = bin.elf.read_vaddr(site.addr, 4)?;
        ProbedInsn::new(site.addr.wrapping_add(bias?), bytes)
    };
    let sites = ProbeSites {
        park: insn(&park),
        wake: wake.as_ref().and_then(insn),
        cancel: cancel.as_ref().and_then(|c| insn(&c.0)),
    };
    let mut meter = HitCostMeter::new(bin.elf.arch(), bin.layout.g_goid, bin.layout.g_tracking_seq);
    let park_cost = meter.cost(park.emulated);
    let costs = HitCosts {
        park_ns: park_cost.ns,
        park_measured: park_cost.measured,
        cancel_trap_ns: cancel.as_ref().map_or(0.0, |c| meter.cost(c.0.emulated).ns),
    };
    ProbeController::start(&cfg, sites, mode, budget, costs, monotonic_ns())
        .context("cannot attach the eBPF probes (use --mode poll to run without BPF)")
}

/// The cancel probe's site and `cancelCtx.err`'s offset, when both are known.
fn cancel_site(bin: &GoBinary) -> Option<(ProbeSite, u64)> {
    const CANCEL: &str = "context.(*cancelCtx).cancel";
    bin.pclntab.func_by_name(CANCEL)?;
    let err = gobinary::objlayout::cancelctx_err(&bin.elf, bin.build_info.version, true);
    let site = probe_site(bin, CANCEL);
    match (site, err) {
        (Ok(site), Some(err)) => Some((site, err)),
        (site, _) => {
            // Precise mode works without it: the cancelled_* fields stay null.
            let why = match site {
                Err(e) => format!("{e:#}"),
                Ok(_) => format!(
                    "no context.cancelCtx layout for {}",
                    bin.build_info.go_version_string
                ),
            };
            eprintln!("ctxprobe: no cancel probe: {why}");
            None
        }
    }
}

/// Where a uprobe on a Go function goes.
struct ProbeSite {
    /// Link-time address of the probed instruction.
    addr: u64,
    file_offset: u64,
    /// The kernel emulates the instruction (else it single-steps it: a hit costs more).
    emulated: bool,
}

/// Where a uprobe on `func` is cheap and sees the function's entry registers
/// ([`gobinary::prologue::probe_site`]).
fn probe_site(bin: &GoBinary, func: &str) -> Result<ProbeSite> {
    let f = bin
        .pclntab
        .func_by_name(func)
        .with_context(|| format!("{func} not found in the binary's function table"))?;
    let site = gobinary::prologue::probe_site(&bin.elf, &f)
        .with_context(|| format!("cannot find a probe site in {func}"))?;
    let file_offset = bin
        .elf
        .vaddr_to_file_offset(site.addr)
        .with_context(|| format!("{func} at {:#x} is not in the file", site.addr))?;
    Ok(ProbeSite {
        addr: site.addr,
        file_offset,
        emulated: site.emulated,
    })
}

/// `--once --leaks`: runs the leak analysis before the dump, so each record carries its
/// verdict, and returns the record that closes the dump. When the analysis cannot run every
/// record says `leaked: null` and the record says why.
fn run_leak_analysis(
    session: &mut Session<'_>,
    mem: &ProcessMemory,
    bin: &GoBinary,
    bias: u64,
) -> Event {
    match leaks::analyse(mem, bin, bias) {
        Ok(analysis) => {
            let record = Event::LeakAnalysis {
                leaked: Some(analysis.stats.leaked),
                stats: analysis.stats.clone(),
                error: None,
                run: None,
            };
            session.leaks = Some(analysis);
            record
        }
        Err(e) => {
            session.leaks = Some(leaks::LeakAnalysis::empty());
            Event::LeakAnalysis {
                leaked: None,
                stats: Default::default(),
                error: Some(format!("{e:#}")),
                run: None,
            }
        }
    }
}
