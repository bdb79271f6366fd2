//! `cargo xtask gen-layouts [--arch amd64|arm64]`: regenerates `gobinary/data/layouts.json`
//! (amd64) or `gobinary/data/layouts-arm64.json` from real toolchains (cross-compiling for
//! arm64: the probe is only read, never run).
//!
//! For each toolchain a tiny probe program is compiled (module mode, no cgo, full DWARF) and
//! read back with the same code the agent uses on targets with DWARF (`layout::from_dwarf`,
//! `waitreason::from_binary`), so the tables can never drift from the parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use gobinary::buildinfo::BuildInfo;
use gobinary::elf::{Arch, ElfFile};
use gobinary::layout::{self, VersionTable};
use gobinary::objlayout;
use gobinary::waitreason;

use crate::workspace_root;

const PROBE_MAIN: &str = r#"package main

import (
	"context"
	"fmt"
)

func main() {
	ch := make(chan int)
	go func() { ch <- 1 }()
	fmt.Println(<-ch)
	// Keeps package context's types (cancelCtx) in the binary's DWARF.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	fmt.Println(ctx.Err())
}
"#;

const PROBE_GO_MOD: &str = "module ctxprobe.dev/layoutprobe\n\ngo 1.19\n";

/// Toolchains the tables are generated from, relative to the workspace root unless absolute.
const DEFAULT_TOOLCHAINS: &[&str] = &[
    "/usr/lib/go-1.19/bin/go",
    ".tools/go1.21/bin/go",
    ".tools/go1.22/bin/go",
    ".tools/go1.23/bin/go",
    ".tools/go1.24/bin/go",
    ".tools/go1.25/bin/go",
    ".tools/go1.26/bin/go",
    ".tools/go1.27/bin/go",
];

pub fn run(args: &[String]) -> Result<()> {
    let mut gos: Vec<PathBuf> = Vec::new();
    let mut check = false;
    let mut arch = Arch::X86_64;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--go" => gos.push(PathBuf::from(it.next().context("--go needs a path")?)),
            "--arch" => {
                arch = match it.next().map(String::as_str) {
                    Some("amd64" | "x86_64") => Arch::X86_64,
                    Some("arm64" | "aarch64") => Arch::Aarch64,
                    other => bail!("gen-layouts: --arch amd64|arm64, not {other:?}"),
                }
            }
            "--check" => check = true,
            other => bail!("gen-layouts: unknown argument {other:?}"),
        }
    }
    let root = workspace_root();
    if gos.is_empty() {
        gos = DEFAULT_TOOLCHAINS.iter().map(|p| root.join(p)).collect();
    }
    let out_path = root.join("gobinary").join(layout::tables_file(arch));
    let committed_text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let committed: BTreeMap<String, VersionTable> = if committed_text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(&committed_text)
            .with_context(|| format!("parsing {}", out_path.display()))?
    };

    // Entries for toolchains not regenerated now (added earlier with --go) are kept.
    let mut tables = committed.clone();
    let mut generated = Vec::new();
    for go in &gos {
        let (key, table) = generate(go, &root, arch)?;
        eprintln!(
            "{key}: {} (g size {}, {} wait reasons)",
            table.go_version,
            table.layout.g_size,
            table.wait_reasons.len()
        );
        tables.insert(key.clone(), table);
        generated.push(key);
    }
    let text = serde_json::to_string_pretty(&tables)? + "\n";

    if check {
        let diffs = diff(&committed, &tables);
        if !diffs.is_empty() || text != committed_text {
            bail!(
                "{} is out of date ({} difference(s)); run `cargo xtask gen-layouts`:\n  {}",
                out_path.display(),
                diffs.len(),
                if diffs.is_empty() {
                    "formatting only".to_string()
                } else {
                    diffs.join("\n  ")
                }
            );
        }
        eprintln!(
            "{} is up to date ({} versions)",
            out_path.display(),
            generated.len()
        );
        return Ok(());
    }
    std::fs::write(&out_path, text).with_context(|| format!("writing {}", out_path.display()))?;
    eprintln!("wrote {} ({} versions)", out_path.display(), tables.len());
    Ok(())
}

/// Builds the probe with `go` and reads its table; returns it with its key (`"1.25"`).
fn generate(go: &Path, root: &Path, arch: Arch) -> Result<(String, VersionTable)> {
    if !go.exists() {
        bail!(
            "Go toolchain {} not found (install it with scripts/setup.sh --all-go, or pass --go PATH)",
            go.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("ctxprobe-gen-layouts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = build_and_read(go, root, &dir, arch);
    let _ = std::fs::remove_dir_all(&dir);
    result.with_context(|| format!("generating layout with {}", go.display()))
}

fn build_and_read(
    go: &Path,
    root: &Path,
    dir: &Path,
    arch: Arch,
) -> Result<(String, VersionTable)> {
    std::fs::write(dir.join("main.go"), PROBE_MAIN)?;
    std::fs::write(dir.join("go.mod"), PROBE_GO_MOD)?;
    let gocache = std::env::var_os("GOCACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/gocache"));
    let bin = dir.join("probe");
    let out = Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", gocache)
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env(
            "GOARCH",
            if arch == Arch::Aarch64 {
                "arm64"
            } else {
                "amd64"
            },
        )
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    if !out.status.success() {
        bail!(
            "go build failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let elf = ElfFile::open(&bin)?;
    let info = BuildInfo::from_elf(&elf)?;
    let layout = layout::from_dwarf(&elf)?;
    let mut objects =
        objlayout::from_dwarf(&elf).context("object offsets (sudog, hchan, types)")?;
    objects.cancelctx_err =
        Some(objlayout::cancelctx_err_from_dwarf(&elf).context("context.cancelCtx.err offset")?);
    let heap = gobinary::heaplayout::from_dwarf(&elf).context("heap offsets (mspan, semaRoot)")?;
    if heap.semtable_entry_size.is_none() {
        bail!("runtime.semtable's size not found in the probe's .symtab");
    }
    let wait_reasons = waitreason::from_binary(&elf)
        .context("runtime.waitReasonStrings not found in the probe binary")?;
    let key = layout::table_key(info.version);
    Ok((
        key,
        VersionTable {
            go_version: info.go_version_string,
            layout,
            objects: Some(objects),
            heap: Some(heap),
            wait_reasons,
        },
    ))
}

/// One line per difference between two table sets.
fn diff(old: &BTreeMap<String, VersionTable>, new: &BTreeMap<String, VersionTable>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, n) in new {
        let Some(o) = old.get(key) else {
            out.push(format!("{key}: missing from the committed file"));
            continue;
        };
        if o.go_version != n.go_version {
            out.push(format!(
                "{key}: generated from {} vs {} now",
                o.go_version, n.go_version
            ));
        }
        diff_fields(key, &o.layout, &n.layout, &mut out);
        diff_fields(key, &o.objects, &n.objects, &mut out);
        diff_fields(key, &o.heap, &n.heap, &mut out);
        if o.wait_reasons != n.wait_reasons {
            let first = o
                .wait_reasons
                .iter()
                .zip(&n.wait_reasons)
                .position(|(a, b)| a != b)
                .unwrap_or(o.wait_reasons.len().min(n.wait_reasons.len()));
            out.push(format!(
                "{key}: wait reasons differ from index {first} ({} -> {} entries)",
                o.wait_reasons.len(),
                n.wait_reasons.len()
            ));
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(format!("{key}: only in the committed file"));
    }
    out
}

/// One line per field whose value differs between two serializable layouts.
fn diff_fields<T: serde::Serialize>(key: &str, old: &T, new: &T, out: &mut Vec<String>) {
    let as_map = |v: &T| match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (ov, nv) = (as_map(old), as_map(new));
    for (field, value) in &nv {
        if ov.get(field) != Some(value) {
            let was = ov
                .get(field)
                .map(|v| v.to_string())
                .unwrap_or("absent".into());
            out.push(format!("{key}: {field} {was} -> {value}"));
        }
    }
}
