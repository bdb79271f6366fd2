//! Parser for the runtime's goroutine dump: `pprof.Lookup("goroutine").WriteTo(w, 2)`, which is
//! `runtime.Stack(buf, true)`, the same text as a SIGQUIT or panic traceback.
//!
//! Formats handled (Go 1.19 to 1.27, `runtime/traceback.go`: goroutineheader, traceback2,
//! printcreatedby1, printAncestorTraceback):
//!
//! ```text
//! goroutine 18 [chan receive]:
//! goroutine 18 [chan receive, 2 minutes]:
//! goroutine 1 [running, locked to thread]:
//! goroutine 7 [select (no cases)]:
//! goroutine 9 gp=0xc000007c00 m=nil [sync.Mutex.Lock]:       (1.24+, GOTRACEBACK>=crash / throw)
//! goroutine 9 [chan receive (leaked), 3 minutes]: {k: v}       (1.26+: leaked, labels)
//! goroutine 9 [chan receive (scan)]:
//! main.f(0xc000012345, ...)            a frame: function and arguments
//! \t/src/main.go:42 +0x1d              its location; no "+0x.." for inlined frames
//! \t/src/main.go:42 +0x1d fp=0x.. sp=0x.. pc=0x..     (GOTRACEBACK=system)
//! ...4 frames elided...                 (1.21+; "...additional frames elided..." before)
//! created by main.g in goroutine 7     (" in goroutine N" from 1.21)
//! \t/src/main.go:40 +0x7c
//! [originating from goroutine 3]:      (GODEBUG=tracebackancestors=N; ignored)
//! \tgoroutine running on other thread; stack unavailable
//! ```
//!
//! Goroutines are separated by blank lines. A line the parser does not recognise is an error,
//! so that a format change in a new Go release shows up in the unit tests rather than as
//! silently missing data.

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub func: String,
    pub file: String,
    pub line: u32,
    /// The `+0x..` offset from the function entry; absent for inlined frames (and for a PC at
    /// the very entry).
    pub pc_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedBy {
    pub func: String,
    pub file: String,
    pub line: u32,
    /// Printed from Go 1.21 on, and only when the creator was not the runtime's bootstrap.
    pub parent_goid: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Goroutine {
    pub goid: u64,
    /// The status text as printed: a wait reason or a state name.
    pub status: String,
    /// `waiting`, `runnable`, `running`, `syscall`, ... (a wait reason implies `waiting`,
    /// or `leaked` when marked so).
    pub state: String,
    /// The wait reason, for goroutines printed with one.
    pub wait_reason: Option<String>,
    /// The runtime's ", N minutes" (from `g.waitsince`, shown only when N >= 1).
    pub wait_minutes: Option<u64>,
    pub locked_to_thread: bool,
    pub scan: bool,
    /// Header items this parser does not interpret (e.g. "synctest bubble 3").
    pub header_extras: Vec<String>,
    /// Innermost first, as printed (the runtime hides most runtime.* frames).
    pub frames: Vec<Frame>,
    pub created_by: Option<CreatedBy>,
    pub frames_elided: bool,
    pub stack_unavailable: bool,
}

/// The state names of `runtime.gStatusStrings`, 1.19 to 1.27.
const STATE_NAMES: &[&str] = &[
    "idle",
    "runnable",
    "running",
    "syscall",
    "waiting",
    "dead",
    "copystack",
    "preempted",
    "leaked",
    "waiting for cgo callback",
    "???",
];

pub fn parse_dump(text: &str) -> Result<Vec<Goroutine>> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let mut g = parse_header(line).with_context(|| format!("dump line {}: {line:?}", n + 1))?;
        let mut body = Vec::new();
        while let Some((n, l)) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            body.push((*n, *l));
            lines.next();
        }
        parse_body(&mut g, &body, lines.peek().is_none())?;
        out.push(g);
    }
    Ok(out)
}

/// `goroutine N [fields-]status[, N minutes][, locked to thread][, ...]][ {labels}]:`
pub fn parse_header(line: &str) -> Result<Goroutine> {
    let rest = line
        .strip_prefix("goroutine ")
        .context("expected a \"goroutine N [...]:\" header")?;
    let (id, rest) = rest
        .split_once(' ')
        .context("no space after the goroutine id")?;
    let goid: u64 = id.parse().context("goroutine id is not a number")?;
    let open = rest.find('[').context("no '[' in header")?;
    let inner_and_tail = &rest[open + 1..];
    let close = inner_and_tail.find(']').context("no ']' in header")?;
    let inner = &inner_and_tail[..close];
    let tail = inner_and_tail[close + 1..].trim();
    if !tail.ends_with(':') {
        bail!("header does not end with ':'");
    }
    let tail = tail.trim_end_matches(':').trim();
    let labels = tail.starts_with('{') && tail.ends_with('}');
    if !tail.is_empty() && !labels {
        bail!("unexpected text after ']': {tail:?}");
    }
    let mut parts = inner.split(", ");
    let mut status = parts.next().unwrap_or("").to_string();
    let mut scan = false;
    let mut leaked = false;
    loop {
        if let Some(s) = status.strip_suffix(" (scan)") {
            scan = true;
            status = s.to_string();
        } else if let Some(s) = status.strip_suffix(" (leaked)") {
            leaked = true;
            status = s.to_string();
        } else {
            break;
        }
    }
    if status.is_empty() {
        bail!("empty status");
    }
    let mut g = Goroutine {
        goid,
        status: status.clone(),
        state: String::new(),
        wait_reason: None,
        wait_minutes: None,
        locked_to_thread: false,
        scan,
        header_extras: Vec::new(),
        frames: Vec::new(),
        created_by: None,
        frames_elided: false,
        stack_unavailable: false,
    };
    if STATE_NAMES.contains(&status.as_str()) {
        g.state = status;
    } else {
        g.state = if leaked { "leaked" } else { "waiting" }.to_string();
        g.wait_reason = Some(status);
    }
    for p in parts {
        if let Some(m) = p.strip_suffix(" minutes") {
            g.wait_minutes = Some(m.parse().with_context(|| format!("bad minutes {p:?}"))?);
        } else if p == "locked to thread" {
            g.locked_to_thread = true;
        } else {
            g.header_extras.push(p.to_string());
        }
    }
    Ok(g)
}

fn parse_body(g: &mut Goroutine, body: &[(usize, &str)], at_eof: bool) -> Result<()> {
    enum Pending {
        None,
        Frame(String),
        CreatedBy(String, Option<u64>),
    }
    let mut pending = Pending::None;
    let mut in_ancestors = false;
    for (n, line) in body {
        let ctx = || format!("dump line {}: {line:?}", n + 1);
        if in_ancestors {
            continue;
        }
        if let Some(loc) = line.strip_prefix('\t') {
            match std::mem::replace(&mut pending, Pending::None) {
                Pending::Frame(func) => {
                    let (file, line, pc_offset) = parse_location(loc).with_context(ctx)?;
                    g.frames.push(Frame {
                        func,
                        file,
                        line,
                        pc_offset,
                    });
                }
                Pending::CreatedBy(func, parent_goid) => {
                    let (file, line, _) = parse_location(loc).with_context(ctx)?;
                    g.created_by = Some(CreatedBy {
                        func,
                        file,
                        line,
                        parent_goid,
                    });
                }
                Pending::None if loc.starts_with("goroutine running on other thread") => {
                    g.stack_unavailable = true;
                }
                Pending::None => bail!("{}: location without a function", ctx()),
            }
            continue;
        }
        if !matches!(pending, Pending::None) {
            bail!("{}: function line without a location line", ctx());
        }
        if let Some(rest) = line.strip_prefix("created by ") {
            let (func, parent) = match rest.split_once(" in goroutine ") {
                Some((f, p)) => (f, Some(p.parse().with_context(ctx)?)),
                None => (rest, None),
            };
            pending = Pending::CreatedBy(func.to_string(), parent);
        } else if line.starts_with("...") && line.ends_with("...") {
            g.frames_elided = true;
        } else if line.starts_with("[originating from goroutine ") {
            in_ancestors = true;
        } else {
            pending = Pending::Frame(strip_args(line).to_string());
        }
    }
    // The runtime truncates a huge dump (64 MB); only the very last goroutine may end early.
    if !matches!(pending, Pending::None) && !at_eof {
        bail!("goroutine {}: last function has no location line", g.goid);
    }
    Ok(())
}

/// `main.(*T).m[...](0xc000010000, {0x1, 0x2})` -> `main.(*T).m[...]`.
fn strip_args(line: &str) -> &str {
    let bytes = line.as_bytes();
    if bytes.last() != Some(&b')') {
        return line;
    }
    let mut depth = 0usize;
    for i in (0..bytes.len()).rev() {
        match bytes[i] {
            b')' => depth += 1,
            b'(' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &line[..i];
                }
            }
            _ => {}
        }
    }
    line
}

/// `/src/main.go:42 +0x1d[ fp=.. sp=.. pc=..]` -> (file, line, offset).
fn parse_location(loc: &str) -> Result<(String, u32, Option<u64>)> {
    let loc = match loc.find(" fp=") {
        Some(i) => &loc[..i],
        None => loc,
    };
    let (place, offset) = match loc.rfind(" +0x") {
        Some(i) => {
            let hex = &loc[i + 4..];
            let off =
                u64::from_str_radix(hex, 16).with_context(|| format!("bad offset {hex:?}"))?;
            (&loc[..i], Some(off))
        }
        None => (loc, None),
    };
    let (file, line) = place
        .rsplit_once(':')
        .with_context(|| format!("no ':line' in {place:?}"))?;
    let line: u32 = line.parse().with_context(|| format!("bad line {line:?}"))?;
    if file.is_empty() {
        bail!("empty file name");
    }
    Ok((file.to_string(), line, offset))
}

impl Goroutine {
    /// The innermost frame outside package runtime: the first frame that means something to a
    /// user, and the one the runtime's dump and ctxprobe must agree on whether or not they show
    /// the runtime's own frames.
    pub fn innermost_user_frame(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| !is_runtime_func(&f.func))
    }
}

/// Functions of package runtime (`runtime.gopark`, `runtime.(*mheap).alloc`), not
/// `runtime/pprof.*` nor the linkname'd `sync.runtime_Semacquire` (which the runtime prints).
pub fn is_runtime_func(func: &str) -> bool {
    func.starts_with("runtime.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let g = parse_header("goroutine 18 [chan receive, 2 minutes]:").unwrap();
        assert_eq!(g.goid, 18);
        assert_eq!(g.state, "waiting");
        assert_eq!(g.wait_reason.as_deref(), Some("chan receive"));
        assert_eq!(g.wait_minutes, Some(2));

        let g = parse_header("goroutine 1 [running, locked to thread]:").unwrap();
        assert_eq!((g.state.as_str(), g.wait_reason.clone()), ("running", None));
        assert!(g.locked_to_thread);

        let g = parse_header("goroutine 7 [select (no cases)]:").unwrap();
        assert_eq!(g.wait_reason.as_deref(), Some("select (no cases)"));

        let g = parse_header("goroutine 9 gp=0x3351be1b5a40 m=nil [sync.Mutex.Lock]:").unwrap();
        assert_eq!(
            (g.goid, g.wait_reason.as_deref()),
            (9, Some("sync.Mutex.Lock"))
        );

        let g =
            parse_header("goroutine 9 [chan receive (leaked) (scan), 3 minutes] {k: v}:").unwrap();
        assert_eq!(g.state, "leaked");
        assert!(g.scan);
        assert_eq!(g.wait_reason.as_deref(), Some("chan receive"));
        assert_eq!(g.wait_minutes, Some(3));

        let g = parse_header("goroutine 4 [waiting for cgo callback]:").unwrap();
        assert_eq!(
            (g.state.as_str(), g.wait_reason.clone()),
            ("waiting for cgo callback", None)
        );

        let g = parse_header("goroutine 5 [chan receive (nil chan)]:").unwrap();
        assert_eq!(g.wait_reason.as_deref(), Some("chan receive (nil chan)"));

        assert!(parse_header("goroutine x [running]:").is_err());
        assert!(parse_header("goroutine 1 running:").is_err());
        assert!(parse_header("goroutine 1 [running] trailing").is_err());
    }

    #[test]
    fn bodies() {
        let text = "goroutine 41 [sync.Mutex.Lock]:\n\
            internal/sync.runtime_SemacquireMutex(0x0?, 0x29?, 0x1?)\n\
            \t/go/src/runtime/sema.go:95 +0x25\n\
            sync.(*Mutex).Lock(...)\n\
            \t/go/src/sync/mutex.go:46\n\
            main.blockMutex(0x0?, {0x1, 0x2})\n\
            \t/f/main.go:181 +0x54 fp=0xc000 sp=0xc000 pc=0x4000\n\
            ...2 frames elided...\n\
            created by main.spawnMutex in goroutine 1\n\
            \t/f/main.go:298 +0xe7\n\
            \n\
            goroutine 20 [chan receive]:\n\
            main.blockChanRecv(0x0?, 0x0?)\n\
            \t/f/main.go:140 +0x45\n\
            created by main.spawnChans\n\
            \t/f/main.go:269 +0x2b\n\
            [originating from goroutine 1]:\n\
            main.main(...)\n\
            \t/f/main.go:1 +0x1\n\
            \n\
            goroutine 3 [running]:\n\
            \tgoroutine running on other thread; stack unavailable\n";
        let gs = parse_dump(text).unwrap();
        assert_eq!(gs.len(), 3);
        let g = &gs[0];
        assert_eq!(g.frames.len(), 3);
        assert_eq!(g.frames[1].func, "sync.(*Mutex).Lock");
        assert_eq!(g.frames[1].pc_offset, None);
        assert_eq!(g.frames[2].line, 181);
        assert_eq!(g.frames[2].pc_offset, Some(0x54));
        assert!(g.frames_elided);
        assert_eq!(
            g.created_by,
            Some(CreatedBy {
                func: "main.spawnMutex".into(),
                file: "/f/main.go".into(),
                line: 298,
                parent_goid: Some(1)
            })
        );
        assert_eq!(
            g.innermost_user_frame().unwrap().func,
            "internal/sync.runtime_SemacquireMutex"
        );
        assert_eq!(gs[1].created_by.as_ref().unwrap().parent_goid, None);
        assert_eq!(gs[1].frames.len(), 1);
        assert!(gs[2].stack_unavailable);
    }

    #[test]
    fn strips_arguments() {
        assert_eq!(strip_args("main.(*T).m(0x1, {0x2, 0x3})"), "main.(*T).m");
        assert_eq!(strip_args("main.F[...](...)"), "main.F[...]");
        assert_eq!(strip_args("main.main()"), "main.main");
        assert_eq!(strip_args("weird"), "weird");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_dump("hello\n").is_err());
        assert!(parse_dump("goroutine 1 [running]:\n\tfile.go:1 +0x1\n").is_err());
        assert!(parse_dump("goroutine 1 [running]:\nf()\nf()\n\tfile.go:1\n").is_err());
        // A truncated final goroutine is what the runtime does past 64 MB: accepted.
        assert!(parse_dump("goroutine 1 [running]:\nmain.f()\n").is_ok());
    }

    /// Real dumps of the leaky fixture (two batches, a few grown goroutines), captured with
    /// `CTXPROBE_FIXTURE_DUMP=... target/fixtures/<v>-default/leaky` and SIGUSR2, SIGUSR1.
    fn real(text: &str, go_minor: &str) {
        let gs = parse_dump(text).unwrap();
        assert!(gs.len() > 100, "{} goroutines", gs.len());
        let reasons: std::collections::BTreeSet<_> =
            gs.iter().filter_map(|g| g.wait_reason.as_deref()).collect();
        for kind in crate::leaky::KINDS {
            let want = crate::leaky::expected_wait_reason(kind, go_minor).unwrap();
            assert!(
                reasons.contains(want),
                "Go {go_minor}: no {want:?} in {reasons:?}"
            );
        }
        let main = gs.iter().find(|g| g.goid == 1).unwrap();
        assert_eq!(main.created_by, None);
        assert!(main.frames.iter().any(|f| f.func == "main.main"));
        let spawned: Vec<_> = gs
            .iter()
            .filter(|g| {
                g.created_by
                    .as_ref()
                    .is_some_and(|c| c.func == "main.spawnChans")
            })
            .collect();
        assert_eq!(spawned.len(), 24, "Go {go_minor}: 4 kinds x 3 x 2 batches");
        for g in &spawned {
            let c = g.created_by.as_ref().unwrap();
            assert!(c.file.ends_with("fixtures/leaky/main.go") && c.line > 0);
            assert_eq!(c.parent_goid.is_some(), go_minor != "1.19");
            let f = g.innermost_user_frame().unwrap();
            assert!(f.func.starts_with("main.block"), "{f:?}");
        }
        // Inlined frames are printed without an offset.
        assert!(gs
            .iter()
            .flat_map(|g| &g.frames)
            .any(|f| f.pc_offset.is_none()));
    }

    #[test]
    fn real_dump_go1_19() {
        real(include_str!("../testdata/leaky-go1.19.dump.txt"), "1.19");
    }

    #[test]
    fn real_dump_go1_21() {
        real(include_str!("../testdata/leaky-go1.21.dump.txt"), "1.21");
    }

    #[test]
    fn real_dump_go1_27() {
        real(include_str!("../testdata/leaky-go1.27.dump.txt"), "1.27");
    }

    /// A SIGQUIT traceback of the demo (Go 1.27): "gp=.. m=.." headers, fp/sp/pc suffixes,
    /// runtime frames and goroutine 0.
    #[test]
    fn real_sigquit_go1_27() {
        let gs = parse_dump(include_str!("../testdata/demo-go1.27-sigquit.dump.txt")).unwrap();
        assert_eq!(gs.len(), 22);
        assert_eq!((gs[0].goid, gs[0].state.as_str()), (0, "idle"));
        assert!(gs
            .iter()
            .any(|g| g.wait_reason.as_deref() == Some("sync.WaitGroup.Wait")));
        assert!(gs
            .iter()
            .any(|g| g.wait_reason.as_deref() == Some("sync.Mutex.Lock")));
        assert!(gs
            .iter()
            .flat_map(|g| &g.frames)
            .any(|f| f.func == "runtime.goexit"));
        assert!(gs
            .iter()
            .filter_map(|g| g.created_by.as_ref())
            .any(|c| c.func == "main.handleOrder" && c.parent_goid.is_some()));
    }
}
