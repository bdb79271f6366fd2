//! Builds Go fixtures with a given toolchain and build mode, cached by a hash of everything that
//! goes into the binary.

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::toolchain::{BuildMode, Toolchain};
use crate::workspace_root;

/// `<workspace>/fixtures/<name>`.
pub fn fixture_source_dir(name: &str) -> PathBuf {
    workspace_root().join("fixtures").join(name)
}

/// `CTXPROBE_TEST_GOARCH`: build fixtures for another architecture (`arm64`), for tests that
/// run in a VM of that architecture.
pub fn target_goarch() -> Option<String> {
    std::env::var("CTXPROBE_TEST_GOARCH")
        .ok()
        .filter(|a| !a.is_empty())
}

/// `CTXPROBE_TEST_PREBUILT=1`: use the fixtures already built (by the host, for a VM that has
/// no Go toolchain of its architecture) and never run `go`.
pub fn prebuilt_only() -> bool {
    std::env::var("CTXPROBE_TEST_PREBUILT").is_ok_and(|v| v == "1")
}

/// Builds `fixtures/<name>` into `<workspace>/target/fixtures/<goversion>-<mode>[-<goarch>]/<name>`
/// and returns that path. Rebuilds only when the sources, the toolchain or the flags changed.
/// Safe to call from concurrent tests and processes (a file lock serialises builds of one output).
pub fn build_fixture(name: &str, tc: &Toolchain, mode: &BuildMode) -> Result<PathBuf> {
    let src = fixture_source_dir(name);
    if !src.join("main.go").is_file() {
        bail!("no fixture {name}: {} has no main.go", src.display());
    }
    let goarch = target_goarch();
    let mut cell = format!("{}-{}", tc.version, mode.name);
    if let Some(a) = &goarch {
        cell += &format!("-{a}");
    }
    let out_dir = workspace_root().join("target/fixtures").join(cell);
    if prebuilt_only() {
        let out = out_dir.join(name);
        if !out.is_file() {
            bail!(
                "CTXPROBE_TEST_PREBUILT=1 but {} was not built (build it on the host first)",
                out.display()
            );
        }
        return Ok(out);
    }
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join(name);
    let key_file = out_dir.join(format!(".{name}.key"));
    let _lock = FileLock::acquire(&out_dir.join(format!(".{name}.lock")))?;

    let key = format!("{:016x}", build_key(&src, tc, mode)?);
    if out.is_file() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(out);
    }
    let tmp = out_dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut cmd = Command::new(&tc.go);
    cmd.arg("build").arg("-o").arg(&tmp).args(&mode.args);
    go_env(&mut cmd, mode);
    if let Some(a) = &goarch {
        cmd.env("GOARCH", a);
        if mode.cgo {
            cross_cgo(&mut cmd, a)?;
        }
    }
    cmd.arg(".").current_dir(&src);
    let output = cmd
        .output()
        .with_context(|| format!("running {} build", tc.go.display()))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        bail!(
            "building fixture {name} with Go {} ({}) failed:\n{}",
            tc.version,
            mode.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, &out).with_context(|| format!("moving build output to {}", out.display()))?;
    fs::write(&key_file, &key).with_context(|| format!("writing {}", key_file.display()))?;
    Ok(out)
}

/// The environment every fixture build uses: the given toolchain only (no automatic toolchain
/// download), module mode without network needs, and a project-local build cache.
pub fn go_env(cmd: &mut Command, mode: &BuildMode) {
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOWORK", "off")
        .env("GOCACHE", workspace_root().join(".tools/gocache"))
        .env("CGO_ENABLED", if mode.cgo { "1" } else { "0" });
}

/// cgo for another architecture: Debian's cross C compiler, linked statically, because the arm64
/// VM's guest has no C library to load.
fn cross_cgo(cmd: &mut Command, goarch: &str) -> Result<()> {
    let cc = match goarch {
        "arm64" => "aarch64-linux-gnu-gcc",
        other => bail!("no C cross compiler known for GOARCH {other}"),
    };
    cmd.env("CC", cc)
        .arg("-ldflags=-linkmode=external -extldflags=-static");
    Ok(())
}

/// FNV-1a over the fixture's files (sorted by path), the toolchain and the build mode. Stable
/// across runs and Rust versions, unlike `DefaultHasher`.
fn build_key(src: &Path, tc: &Toolchain, mode: &BuildMode) -> Result<u64> {
    let mut h = Fnv::new();
    let mut files = Vec::new();
    collect_files(src, &mut files)?;
    files.sort();
    for f in &files {
        h.write(
            f.strip_prefix(src)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.write(&fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    h.write(tc.go.to_string_lossy().as_bytes());
    h.write(tc.full_version()?.as_bytes());
    for a in &mode.args {
        h.write(a.as_bytes());
    }
    h.write(&[mode.cgo as u8]);
    h.write(target_goarch().unwrap_or_default().as_bytes());
    Ok(h.0)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
        // Separator, so that ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x100_0000_01b3);
    }
}

/// An exclusive `flock` held until drop.
pub struct FileLock(File);

impl FileLock {
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release the lock anyway.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}
