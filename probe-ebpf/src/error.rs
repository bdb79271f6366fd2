//! Errors with one-line messages an on-call engineer can act on.

use std::error::Error as StdError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not permitted to {action}: run as root or grant CAP_BPF and CAP_PERFMON ({detail})")]
    Permission { action: String, detail: String },

    #[error("this kernel lacks {feature}: need CONFIG_BPF_SYSCALL, CONFIG_UPROBES and CONFIG_BPF_EVENTS ({detail})")]
    KernelSupport { feature: String, detail: String },

    #[error(
        "the kernel verifier rejected eBPF program `{program}` ({detail}); verifier log: {log}"
    )]
    Verifier {
        program: String,
        detail: String,
        log: String,
    },

    #[error("cannot attach the {probe} uprobe to {target} at file offset {offset:#x}: {detail}")]
    Attach {
        probe: &'static str,
        target: String,
        offset: u64,
        detail: String,
    },

    #[error("invalid probe configuration: {0}")]
    Config(String),

    #[error("eBPF {action} failed: {detail}")]
    Bpf { action: String, detail: String },
}

/// The whole `source()` chain on one line.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    text.replace('\n', " ")
}

/// The first OS error number found in the `source()` chain.
pub(crate) fn errno(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = e.source();
    }
    None
}

/// Classifies a failure by errno into permission / missing kernel support, else `fallback`.
pub(crate) fn classify(
    err: &(dyn StdError + 'static),
    action: &str,
    fallback: impl FnOnce(String) -> ProbeError,
) -> ProbeError {
    let detail = chain(err);
    match errno(err) {
        Some(libc::EPERM) | Some(libc::EACCES) => ProbeError::Permission {
            action: action.to_string(),
            detail,
        },
        Some(libc::ENOSYS) => ProbeError::KernelSupport {
            feature: "the bpf() syscall".to_string(),
            detail,
        },
        _ => fallback(detail),
    }
}

/// First and last non-empty lines of a verifier log (`max_lines` in all), joined with " | ".
pub(crate) fn log_excerpt(log: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The reason for a rejection is at the end of the log; the start shows where it began.
    if lines.len() <= max_lines {
        return lines.join(" | ");
    }
    let head = &lines[..max_lines / 2];
    let tail = &lines[lines.len() - (max_lines - max_lines / 2)..];
    format!("{} | ... | {}", head.join(" | "), tail.join(" | "))
}

/// Verifier log lines kept in an error (its first and last: the reason is at the end).
pub(crate) const VERIFIER_LOG_LINES: usize = 12;

/// A program that failed to load: a verifier verdict with an excerpt of its log, or (EPERM) a
/// matter of capabilities.
pub(crate) fn program_load_error(name: &str, err: aya::programs::ProgramError) -> ProbeError {
    match &err {
        // EPERM/EACCES from BPF_PROG_LOAD usually mean missing capabilities, not a verifier verdict.
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } if !matches!(io_error.raw_os_error(), Some(libc::EPERM)) => ProbeError::Verifier {
            program: name.to_string(),
            detail: io_error.to_string(),
            log: log_excerpt(&verifier_log.to_string(), VERIFIER_LOG_LINES),
        },
        _ => classify(&err, &format!("load eBPF program `{name}`"), |detail| {
            ProbeError::Bpf {
                action: format!("load program `{name}`"),
                detail,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_are_recognised() {
        let e = io::Error::from_raw_os_error(libc::EPERM);
        let p = classify(&e, "load eBPF programs", |d| ProbeError::Bpf {
            action: "load".into(),
            detail: d,
        });
        assert!(matches!(p, ProbeError::Permission { .. }), "{p}");
        assert!(!p.to_string().contains('\n'));
    }

    #[test]
    fn log_excerpt_keeps_start_and_end() {
        let log = (0..100).map(|i| format!("line {i}\n")).collect::<String>();
        let h = log_excerpt(&log, 6);
        assert!(
            h.starts_with("line 0 | line 1 | line 2 | ... | line 97"),
            "{h}"
        );
        assert!(h.ends_with("line 99"));
    }
}
