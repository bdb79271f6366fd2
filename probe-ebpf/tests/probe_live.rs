//! Live tests: build tests/go/parker.go with real Go toolchains, attach the uprobes to the running
//! process and check what the kernel side records. Needs root (or CAP_BPF+CAP_PERFMON) and a kernel
//! with BPF + uprobes; skipped with a message when not root or a toolchain is missing.
//!
//! The prologue lookup here is test-only (symtab + byte pattern); the agent has the real one.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::Duration;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use probe_ebpf::{ProbeConfig, Probes};

/// Tests share 2 CPUs and measure timings: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const G_GOID_OFFSET: u64 = 152; // 1.21 and 1.27 (reference go-runtime.md §1.1)
const INT3: u8 = 0xcc;
const PUSH_RBP: u8 = 0x55;

struct GoVersion {
    name: &'static str,
    /// g.trackingSeq, read from the DWARF of a build (readelf -wi).
    tracking_seq_offset: u64,
    reason_chan_receive: u8,
    reason_sleep: u8,
}

const GO121: GoVersion = GoVersion {
    name: "go1.21",
    tracking_seq_offset: 188,
    reason_chan_receive: 14,
    reason_sleep: 19,
};
const GO127: GoVersion = GoVersion {
    name: "go1.27",
    tracking_seq_offset: 191,
    reason_chan_receive: 19,
    reason_sleep: 14,
};

#[test]
fn park_and_wake_records_go121() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(exe) = prepare(&GO121) {
        workers_scenario(&GO121, &exe);
    }
}

#[test]
fn park_and_wake_records_go127() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(exe) = prepare(&GO127) {
        workers_scenario(&GO127, &exe);
    }
}

/// The self-measurement of a hit's cost runs at both kinds of site (its value is printed:
/// timings are the benchmark's business).
#[test]
fn hit_cost_is_measured_at_both_kinds_of_site() {
    use probe_ebpf::calibrate::{measure_park_hit, SiteKind};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: live eBPF tests need root");
        return;
    }
    let exe = std::env::current_exe().expect("own executable");
    let data = std::fs::read(&exe).expect("read own executable");
    let elf = object::File::parse(&*data).expect("parse own executable");
    for (kind, name) in [
        (SiteKind::Emulated, "ctxprobe_calib_emulated_site"),
        (SiteKind::Stepped, "ctxprobe_calib_stepped_site"),
    ] {
        // Where the site is in the file: its link-time address in the segment that holds it.
        let sym = elf
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{name} not in the test binary"));
        let seg = elf
            .segments()
            .find(|s| (s.address()..s.address() + s.size()).contains(&sym.address()))
            .expect("segment of the site");
        let offset = sym.address() - seg.address() + seg.file_range().0;
        let ns = measure_park_hit(
            exe.clone(),
            offset,
            G_GOID_OFFSET,
            GO127.tracking_seq_offset,
            kind,
        )
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        eprintln!("{kind:?} site: {ns:.0} ns per hit");
        assert!(ns >= 100.0);
    }
}

/// Reports the cost of the probes on a ping-pong loop (printed, not asserted).
#[test]
fn park_probe_cost_go127() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(exe) = prepare(&GO127) {
        bench_scenario(&GO127, &exe);
    }
}

/// Sustained load: the park probe counts every park, round after round, for millions of hits
/// (3 million by default, past the ~2.4 million after which a session saw a probe stop firing;
/// `CTXPROBE_SUSTAINED_ROUNDS` of 200,000 parks each, `CTXPROBE_SUSTAINED_WAKE=1` adds the
/// wake probe as precise mode does).
#[test]
fn park_probe_keeps_counting_go127() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(exe) = prepare(&GO127) {
        sustained_scenario(&GO127, &exe);
    }
}

fn sustained_scenario(ver: &GoVersion, exe: &Path) {
    const ROUND_TRIPS: u64 = 100_000;
    let rounds: usize = std::env::var("CTXPROBE_SUSTAINED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let sites = find_sites(exe);
    let mut target = Target::spawn(exe, "bench");
    let mut probes = Probes::load(&config(ver, target.pid(), &sites)).expect("load probes");
    probes.attach_park().expect("attach park");
    if std::env::var("CTXPROBE_SUSTAINED_WAKE").is_ok() {
        probes.attach_wake().expect("attach wake");
    }
    let mut short = Vec::new();
    for round in 0..rounds {
        let before = probes.counters().expect("counters").park_hits;
        let ns = target.round(ROUND_TRIPS);
        let hits = probes.counters().expect("counters").park_hits - before;
        eprintln!(
            "{}: round {round}: {ns} ns per round trip, {hits} park hits, byte {:#x}",
            ver.name,
            code_byte(target.pid(), sites.park_vaddr)
        );
        if hits < 2 * ROUND_TRIPS - 1 {
            short.push((round, hits));
        }
    }
    assert!(short.is_empty(), "rounds with missed parks: {short:?}");
}

fn workers_scenario(ver: &GoVersion, exe: &Path) {
    let sites = find_sites(exe);
    let start_ns = monotonic_ns();
    let mut target = Target::spawn(exe, "workers");
    let mut worker_goids = Vec::new();
    loop {
        let line = target.line(Duration::from_secs(10));
        if line == "ready" {
            break;
        }
        let goid = line.strip_prefix("worker ").expect("worker line");
        worker_goids.push(goid.parse::<u64>().expect("goid"));
    }
    assert_eq!(worker_goids.len(), 3);
    let pid = target.pid();

    let mut probes = Probes::load(&config(ver, pid, &sites)).expect("load probes");
    assert_eq!(
        code_byte(pid, sites.park_vaddr),
        PUSH_RBP,
        "loading must not attach"
    );
    probes.attach_park().expect("attach park");
    probes.attach_wake().expect("attach wake");
    assert!(probes.park_attached());
    assert_eq!(code_byte(pid, sites.park_vaddr), INT3);
    assert_eq!(code_byte(pid, sites.ready_vaddr), INT3);

    std::thread::sleep(Duration::from_millis(400));
    let c = probes.counters().expect("counters");
    eprintln!("{}: counters after 400ms: {c:?}", ver.name);
    assert!(
        c.park_hits > 0 && c.wake_hits > 0 && c.wake_matched > 0,
        "{c:?}"
    );
    assert_eq!(
        (c.read_errors, c.update_errors, c.lost_events),
        (0, 0, 0),
        "{c:?}"
    );

    // Every worker has a record with the right goid, reason and a plausible timestamp.
    let records = probes.park_records().expect("park records");
    let now = monotonic_ns();
    let mut worker_gs = Vec::new();
    for goid in &worker_goids {
        let (g, rec) = records
            .iter()
            .find(|(_, r)| r.goid == *goid)
            .unwrap_or_else(|| panic!("no park record for worker goid {goid}: {records:?}"));
        assert_eq!(rec.reason, ver.reason_chan_receive, "{rec:?}");
        assert!(
            rec.park_ns > start_ns && rec.park_ns <= now,
            "{rec:?} start {start_ns} now {now}"
        );
        assert!(rec.wake_ns == 0 || rec.wake_ns >= rec.park_ns, "{rec:?}");
        worker_gs.push(*g);
    }
    let main_rec = records.iter().find(|(_, r)| r.goid == 1).map(|(_, r)| *r);
    assert_eq!(
        main_rec.map(|r| r.reason),
        Some(ver.reason_sleep),
        "main sleeps: {main_rec:?}"
    );

    check_tracking_seq(ver, &probes, pid, worker_gs[0]);

    // Wake events arrive only for the watched goroutine.
    let watched = worker_gs[0];
    probes.take_wake_events();
    probes.watch(watched).expect("watch");
    std::thread::sleep(Duration::from_millis(300));
    let events = probes.take_wake_events();
    eprintln!(
        "{}: {} wake events, first {:?}",
        ver.name,
        events.len(),
        events.first()
    );
    assert!(!events.is_empty(), "no wake event for the watched g");
    for ev in &events {
        assert_eq!(ev.g, watched);
        assert_eq!(ev.goid, worker_goids[0]);
        assert_eq!(ev.reason, ver.reason_chan_receive);
        assert!(ev.park_ns > 0 && ev.wake_ns >= ev.park_ns, "{ev:?}");
        // Main wakes workers every 50ms: a worker is parked for about that long.
        assert!(ev.wake_ns - ev.park_ns < 2_000_000_000, "{ev:?}");
    }
    probes.unwatch(watched);
    std::thread::sleep(Duration::from_millis(20));
    probes.take_wake_events();
    std::thread::sleep(Duration::from_millis(200));
    assert!(probes.take_wake_events().is_empty(), "events after unwatch");

    // Detaching removes the breakpoint and stops the counting.
    probes.detach_park().expect("detach park");
    assert!(!probes.park_attached());
    assert_eq!(code_byte(pid, sites.park_vaddr), PUSH_RBP);
    let before = probes.counters().expect("counters").park_hits;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(probes.counters().expect("counters").park_hits, before);

    // Dropping detaches the rest; the target keeps running.
    assert_eq!(code_byte(pid, sites.ready_vaddr), INT3);
    drop(probes);
    assert_eq!(code_byte(pid, sites.ready_vaddr), PUSH_RBP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(target.alive(), "target died");
}

/// The runtime bumps g.trackingSeq when a park completes, so while a goroutine stays parked its live
/// value is the recorded one + 1. Proves the configured offset points at trackingSeq.
fn check_tracking_seq(ver: &GoVersion, probes: &Probes, pid: u32, g: u64) {
    let mut agreed = 0;
    for _ in 0..50 {
        let rec_before = probes.park_record(g);
        let live = read_mem(pid, g + ver.tracking_seq_offset, 1)[0];
        let rec_after = probes.park_record(g);
        match (rec_before, rec_after) {
            (Some(a), Some(b)) if a == b && a.wake_ns == 0 => {
                assert_eq!(live, a.seq.wrapping_add(1), "{a:?}");
                agreed += 1;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(agreed > 0, "never saw a stable parked record for g {g:#x}");
}

fn bench_scenario(ver: &GoVersion, exe: &Path) {
    const ROUND_TRIPS: u64 = 100_000;
    const ROUNDS: usize = 5;
    let sites = find_sites(exe);
    let mut target = Target::spawn(exe, "bench");
    let mut probes = Probes::load(&config(ver, target.pid(), &sites)).expect("load probes");
    target.round(ROUND_TRIPS); // warm up

    let measure = |target: &mut Target, label: &str| -> f64 {
        let mut v: Vec<u64> = (0..ROUNDS).map(|_| target.round(ROUND_TRIPS)).collect();
        v.sort_unstable();
        let median = v[ROUNDS / 2] as f64;
        eprintln!(
            "{}: {label:<22} ns per round trip: median {median} (all {v:?})",
            ver.name
        );
        median
    };
    let base = measure(&mut target, "no probe");
    probes.attach_park().expect("attach park");
    let hits_before = probes.counters().expect("counters").park_hits;
    let park = measure(&mut target, "park probe");
    let hits = probes.counters().expect("counters").park_hits - hits_before;
    probes.attach_wake().expect("attach wake");
    let both = measure(&mut target, "park + wake probes");
    probes.detach_park().expect("detach park");
    probes.detach_wake().expect("detach wake");
    let after = measure(&mut target, "after detach");
    let c = probes.counters().expect("counters");
    drop(probes);

    // One round trip = 2 parks + 2 readies.
    eprintln!(
        "{}: park probe ≈ {:.0} ns per park, wake probe ≈ {:.0} ns per ready; \
         park hits during {} round trips: {hits}; after detach {:.0} ns vs {:.0} ns before; {c:?}",
        ver.name,
        (park - base) / 2.0,
        (both - park) / 2.0,
        ROUND_TRIPS * ROUNDS as u64,
        after,
        base,
    );
    // The echo goroutine's first park happened before the attach.
    assert!(
        hits + 1 >= 2 * ROUND_TRIPS * ROUNDS as u64,
        "park hits {hits}"
    );
    assert!(target.alive());
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn prepare(ver: &GoVersion) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: live eBPF tests need root");
        return None;
    }
    let go = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../.tools/{}/bin/go", ver.name));
    if !go.exists() {
        eprintln!(
            "skipping: {} missing (run scripts/setup.sh --all-go)",
            go.display()
        );
        return None;
    }
    // Rebuilt on every run (cheap with the persistent GOCACHE) so edits to parker.go are picked up.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe-ebpf-live");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join(format!("parker-{}", ver.name));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/parker.go");
    let out = Command::new(&go)
        .arg("build")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("gocache"))
        .current_dir(&dir)
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

struct Sites {
    park_vaddr: u64,
    park_offset: u64,
    ready_vaddr: u64,
    ready_offset: u64,
}

fn find_sites(exe: &Path) -> Sites {
    let data = std::fs::read(exe).expect("read exe");
    let file = object::File::parse(&*data).expect("parse exe");
    let site = |name: &str| -> (u64, u64) {
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{name} not in .symtab"));
        let section = file
            .section_by_index(sym.section_index().expect("symbol section"))
            .expect("section");
        let bytes = section
            .data_range(sym.address(), 32)
            .expect("section data")
            .expect("32 bytes");
        let push = bytes
            .windows(4)
            .position(|w| w == [0x55, 0x48, 0x89, 0xe5])
            .unwrap_or_else(|| panic!("no push rbp; mov rbp,rsp in the first 32 bytes of {name}"));
        let vaddr = sym.address() + push as u64;
        let offset = file
            .segments()
            .find_map(|seg| {
                let (off, size) = seg.file_range();
                let start = seg.address();
                (vaddr >= start && vaddr < start + size).then(|| off + (vaddr - start))
            })
            .expect("vaddr in a PT_LOAD segment");
        (vaddr, offset)
    };
    let (park_vaddr, park_offset) = site("runtime.gopark");
    let (ready_vaddr, ready_offset) = site("runtime.ready");
    Sites {
        park_vaddr,
        park_offset,
        ready_vaddr,
        ready_offset,
    }
}

fn config(ver: &GoVersion, pid: u32, sites: &Sites) -> ProbeConfig {
    ProbeConfig {
        pid,
        exe_path: PathBuf::from(format!("/proc/{pid}/exe")),
        park_file_offset: sites.park_offset,
        wake_file_offset: Some(sites.ready_offset),
        cancel_file_offset: None,
        cancelctx_err_offset: 0,
        g_goid_offset: G_GOID_OFFSET,
        g_tracking_seq_offset: ver.tracking_seq_offset,
        max_parks: 4096,
    }
}

struct Target {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Target {
    fn spawn(exe: &Path, mode: &str) -> Target {
        let mut child = Command::new(exe)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn target");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Target {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).expect("line from target")
    }

    /// Runs `n` ping-pong round trips in the bench target; returns ns per round trip.
    fn round(&mut self, n: u64) -> u64 {
        writeln!(self.stdin, "{n}").expect("write to target");
        self.line(Duration::from_secs(60))
            .parse()
            .expect("ns per round trip")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut buf = vec![0; len];
    mem.read_exact_at(&mut buf, addr)
        .expect("read target memory");
    buf
}

/// First byte of the instruction at `vaddr` as the target sees it (0xcc while a uprobe is there).
/// Go executables are not PIE by default, so the ELF vaddr is the runtime address.
fn code_byte(pid: u32, vaddr: u64) -> u8 {
    read_mem(pid, vaddr, 1)[0]
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
