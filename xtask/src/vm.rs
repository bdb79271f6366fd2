//! `cargo xtask vm`: boot one of Debian's kernels under QEMU, run a command in it as root, print
//! its output and exit with its status.
//!
//! Everything comes from Debian's packages, fetched with `apt-get download` (`scripts/setup.sh
//! --vm` installs QEMU and enables the arm64 package lists) and cached under `target/vm/`:
//! the kernel image, the few modules the guest needs before it can mount anything (virtio-pci
//! and 9p are modules in Debian's kernels) and a static busybox, packed into an initramfs. A warm
//! run only starts QEMU.
//!
//! The guest's userland:
//! - x86_64: the host's own root filesystem, shared read-only over 9p, so host-built binaries,
//!   the Go toolchains under `.tools/` and glibc work unchanged in the guest;
//! - arm64: the busybox initramfs itself (statically linked programs, e.g. Go with
//!   `CGO_ENABLED=0 GOARCH=arm64`, run there).
//!
//! Each `--share DIR` is mounted read-write at the same absolute path in the guest. The guest
//! mounts /proc, /sys, devtmpfs, tracefs, debugfs and the bpf filesystem, like a host, and
//! Debian's kernels have BTF, so BPF probes behave as on a host.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const USAGE: &str = "usage: cargo xtask vm --arch x86_64|arm64 [--kernel 6.1|6.12] [--share DIR]...
                      [--timeout SECONDS] [--mem MiB] [--cpus N] [--accel tcg|kvm] -- CMD...
Boots Debian's kernel for that architecture under QEMU, with each DIR mounted read-write at the
same path, runs CMD as root (in the current directory when it is inside the host's root, x86_64),
prints its output and exits with CMD's status. x86_64 defaults to TCG: under this machine's
nested KVM, Debian's kernels hang in early boot (--accel kvm tries it).";

/// One architecture's names in Debian and QEMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    fn parse(s: &str) -> Result<Arch> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => bail!("unknown --arch {s:?} (x86_64 or arm64)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
    fn is_host(self) -> bool {
        (cfg!(target_arch = "x86_64") && self == Arch::X86_64)
            || (cfg!(target_arch = "aarch64") && self == Arch::Arm64)
    }
}

/// What one `cargo xtask vm` run does.
pub struct VmRun {
    pub arch: Arch,
    pub kernel: String,
    pub shares: Vec<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub command: Vec<String>,
    pub timeout: Duration,
    pub mem_mib: u32,
    pub cpus: u32,
    /// x86_64 only: hardware virtualization instead of TCG emulation.
    pub kvm: bool,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut arch = None;
    let mut kernel = "6.1".to_string();
    let mut shares = Vec::new();
    let mut timeout = Duration::from_secs(1200);
    let mut mem_mib = 4096;
    let mut cpus = 2;
    let mut accel = "tcg".to_string();
    let mut it = args.iter();
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "--arch" => arch = Some(Arch::parse(&value()?)?),
            "--kernel" => kernel = value()?,
            "--share" => {
                let dir = value()?;
                let dir = fs::canonicalize(&dir).with_context(|| format!("--share {dir}"))?;
                shares.push(dir);
            }
            "--timeout" => timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            "--mem" => mem_mib = value()?.parse().context("--mem")?,
            "--cpus" => cpus = value()?.parse().context("--cpus")?,
            "--accel" => accel = value()?,
            "--" => {
                command = it.by_ref().cloned().collect();
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let arch = arch.with_context(|| format!("--arch is required\n\n{USAGE}"))?;
    ensure!(!command.is_empty(), "no command after --\n\n{USAGE}");
    let kvm = match accel.as_str() {
        "kvm" => {
            ensure!(
                kvm_usable(),
                "--accel kvm: /dev/kvm cannot be opened read-write"
            );
            true
        }
        "tcg" => false,
        other => bail!("--accel {other:?}: kvm or tcg"),
    };
    let status = VmRun {
        arch,
        kernel,
        shares,
        cwd: std::env::current_dir().ok(),
        command,
        timeout,
        mem_mib,
        cpus,
        kvm,
    }
    .run()?;
    std::process::exit(status);
}

impl VmRun {
    /// Boots the VM, runs the command, returns its exit status.
    pub fn run(&self) -> Result<i32> {
        let t0 = Instant::now();
        let image = KernelImage::prepare(self.arch, &self.kernel)?;
        let prepared = t0.elapsed();
        let run_dir = crate::workspace_root()
            .join("target/vm/runs")
            .join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
        let result = self.boot(&image, &run_dir);
        let _ = fs::remove_dir_all(&run_dir);
        let status = result?;
        eprintln!(
            "vm: {} kernel {} ({}): status {status}, {:.1}s ({:.1}s preparing the image)",
            self.arch.name(),
            self.kernel,
            image.package,
            t0.elapsed().as_secs_f64(),
            prepared.as_secs_f64()
        );
        Ok(status)
    }

    fn boot(&self, image: &KernelImage, run_dir: &Path) -> Result<i32> {
        fs::write(run_dir.join("cmd.sh"), self.guest_script(run_dir))
            .context("write the guest's command script")?;
        let mut qemu = self.qemu_command(image, run_dir)?;
        qemu.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = qemu
            .spawn()
            .with_context(|| format!("start {:?} (scripts/setup.sh --vm installs QEMU)", qemu))?;
        let stdout = child.stdout.take().context("QEMU's stdout")?;
        // Copy the serial console to our stdout on a thread, so the timeout below can kill QEMU
        // while the console is silent.
        let copier = std::thread::spawn(move || {
            let mut out = std::io::stdout();
            for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
                let line = strip_cr(&line);
                if is_reboot_message(line) {
                    continue;
                }
                let _ = out.write_all(line);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
        });
        let deadline = Instant::now() + self.timeout;
        let exited = loop {
            if let Some(st) = child.try_wait().context("wait for QEMU")? {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = copier.join();
        let Some(qemu_status) = exited else {
            bail!(
                "the VM did not finish within {:?}; QEMU killed",
                self.timeout
            );
        };
        let status_file = run_dir.join("status");
        let text = fs::read_to_string(&status_file).with_context(|| {
            format!(
                "the guest wrote no exit status (QEMU exited with {qemu_status}; kernel panic or \
                 init failure: see the console output above)"
            )
        })?;
        text.trim()
            .parse()
            .with_context(|| format!("bad exit status {text:?} from the guest"))
    }

    /// The shell script the guest's init runs (from the run directory, shared over 9p): mounts
    /// the shares, then runs the command in the host's working directory.
    fn guest_script(&self, run_dir: &Path) -> String {
        let mut s = String::from("# written by cargo xtask vm\n");
        // Mount points of the shares, in order (tag shareN).
        for (i, dir) in self.shares.iter().enumerate() {
            s += &format!(
                "vm_share share{i} {}\n",
                shell_quote(&dir.to_string_lossy())
            );
        }
        s += &format!("vm_share run {}\n", shell_quote(&run_dir.to_string_lossy()));
        let cwd = match &self.cwd {
            Some(c) if self.arch.is_host() => c.to_string_lossy().into_owned(),
            _ => "/".into(),
        };
        s += &format!("VM_CWD={}\n", shell_quote(&cwd));
        s += &format!(
            "VM_STATUS={}\n",
            shell_quote(&run_dir.join("status").to_string_lossy())
        );
        let cmd: Vec<String> = self.command.iter().map(|a| shell_quote(a)).collect();
        s += &format!("VM_CMD={}\n", shell_quote(&cmd.join(" ")));
        s
    }

    fn qemu_command(&self, image: &KernelImage, run_dir: &Path) -> Result<Command> {
        let mut cmd;
        let console;
        match self.arch {
            Arch::X86_64 => {
                cmd = Command::new("qemu-system-x86_64");
                if self.kvm {
                    cmd.args([
                        "-machine",
                        "q35,accel=kvm",
                        "-cpu",
                        "host,-arch-capabilities",
                    ]);
                } else {
                    cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max"]);
                }
                console = "ttyS0";
            }
            Arch::Arm64 => {
                cmd = Command::new("qemu-system-aarch64");
                // pauth-impdef: QEMU's default pointer-authentication algorithm (QARMA) is
                // several times slower to emulate.
                cmd.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]);
                console = "ttyAMA0";
            }
        }
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .args(["-m", &self.mem_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
            .arg("-append")
            .arg(format!(
                "console={console} quiet loglevel=3 panic=-1 rdinit=/init vm_arch={}",
                self.arch.name()
            ));
        // The host's root, read-only: the x86_64 guest's userland.
        if self.arch.is_host() {
            cmd.arg("-virtfs").arg(
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            );
        }
        for (i, dir) in self.shares.iter().enumerate() {
            cmd.arg("-virtfs").arg(format!(
                "local,path={},mount_tag=share{i},security_model=none,multidevs=remap",
                qemu_escape(dir)
            ));
        }
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=run,security_model=none,multidevs=remap",
            qemu_escape(run_dir)
        ));
        Ok(cmd)
    }
}

/// The kernel's own last words at the guest's `reboot -f`, not the command's output.
fn is_reboot_message(line: &[u8]) -> bool {
    line.starts_with(b"[") && line.ends_with(b"reboot: Restarting system")
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// QEMU's option parser splits on commas; a comma in a path is written twice.
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A bootable kernel and initramfs, cached under `target/vm/ARCH/KERNEL/`.
pub struct KernelImage {
    pub package: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Modules the initramfs loads (with their dependencies) when the kernel has them as modules.
const GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_mmio", "9pnet_virtio", "9p"];

/// Bumped whenever the initramfs's contents change, so stale caches are rebuilt.
const INITRAMFS_VERSION: &str = "4";

impl KernelImage {
    pub fn prepare(arch: Arch, kernel: &str) -> Result<KernelImage> {
        ensure!(
            !kernel.is_empty() && kernel.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "--kernel {kernel:?}: want a series such as 6.1 or 6.12"
        );
        let dir = crate::workspace_root()
            .join("target/vm")
            .join(arch.name())
            .join(kernel);
        let stamp = dir.join("ready");
        let want_stamp = format!("{INITRAMFS_VERSION}\n");
        let image = KernelImage {
            package: fs::read_to_string(dir.join("package"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio"),
        };
        if fs::read_to_string(&stamp).ok().as_deref() == Some(&want_stamp) {
            return Ok(image);
        }
        eprintln!(
            "vm: preparing Debian's {kernel} kernel for {} in {}",
            arch.name(),
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let package = kernel_package(arch, kernel)?;
        let debs = dir.join("debs");
        fs::create_dir_all(&debs)?;
        let kernel_deb = apt_download(&debs, &format!("{package}:{}", arch.debian()))?;
        let busybox_deb = apt_download(&debs, &format!("busybox-static:{}", arch.debian()))?;
        let tree = dir.join("tree");
        dpkg_extract(&kernel_deb, &tree)?;
        dpkg_extract(&busybox_deb, &tree)?;
        // A foreign architecture's guest has no host root to borrow: give it glibc, so
        // dynamically linked programs (a cross-built ctxprobe) run in the initramfs.
        let libs = dir.join("libs");
        if !arch.is_host() {
            for pkg in ["libc6", "libgcc-s1"] {
                let deb = apt_download(&debs, &format!("{pkg}:{}", arch.debian()))?;
                dpkg_extract(&deb, &libs)?;
            }
        }

        let vmlinuz = find_file(&tree.join("boot"), |n| n.starts_with("vmlinuz-"))?
            .context("the kernel package has no /boot/vmlinuz-*")?;
        fs::copy(&vmlinuz, &image.kernel).context("copy vmlinuz")?;
        let modules_root = find_file(&tree.join("lib/modules"), |_| true)?
            .or(find_file(&tree.join("usr/lib/modules"), |_| true)?)
            .context("the kernel package has no lib/modules/VERSION")?;
        let modules = resolve_modules(&modules_root, GUEST_MODULES)?;
        let mut cpio = Cpio::default();
        for d in [
            "bin", "dev", "proc", "sys", "tmp", "run", "mnt", "modules", "newroot", "root",
        ] {
            cpio.dir(d);
        }
        cpio.file(
            "bin/busybox",
            &fs::read(tree.join("bin/busybox")).context("busybox-static has no /bin/busybox")?,
            0o755,
        );
        cpio.symlink("bin/sh", "busybox");
        for top in ["lib", "usr"] {
            add_tree(&mut cpio, &libs, Path::new(top))?;
        }
        let mut order = String::new();
        for m in &modules {
            let name = format!("{}.ko", m.name);
            cpio.file(&format!("modules/{name}"), &decompressed(&m.path)?, 0o644);
            order += &name;
            order += "\n";
        }
        cpio.file("modules/order", order.as_bytes(), 0o644);
        cpio.file("init", INIT.as_bytes(), 0o755);
        fs::write(&image.initramfs, cpio.finish()).context("write the initramfs")?;
        fs::write(dir.join("package"), format!("{package}\n"))?;
        fs::remove_dir_all(&tree).ok();
        fs::remove_dir_all(&libs).ok();
        fs::remove_dir_all(&debs).ok();
        fs::write(&stamp, want_stamp)?;
        Ok(KernelImage { package, ..image })
    }
}

/// The newest Debian package with that kernel series for that architecture (the generic
/// flavour, unsigned: the same kernel as the signed one).
fn kernel_package(arch: Arch, series: &str) -> Result<String> {
    let pattern = format!(
        "^linux-image-{}[.-].*-{}-unsigned$",
        series.replace('.', r"\."),
        arch.debian()
    );
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("run apt-cache")?;
    ensure!(out.status.success(), "apt-cache search {pattern} failed");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| !n.contains("-cloud-") && !n.contains("-rt-") && !n.contains("-16k-"))
        .filter(|n| {
            n[12..].starts_with(&format!("{series}.")) || n[12..].starts_with(&format!("{series}-"))
        })
        .collect();
    names.sort_by_key(|a| version_key(a));
    names.pop().with_context(|| {
        format!(
            "no Debian package matches {pattern} (run scripts/setup.sh --vm, which runs apt-get \
             update and enables the arm64 package lists)"
        )
    })
}

/// Numeric runs of a package name, for "newest" ordering (6.1.0-57 after 6.1.0-9).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

fn apt_download(dir: &Path, package: &str) -> Result<PathBuf> {
    let status = Command::new("apt-get")
        .args(["download", "-qq", "-o", "APT::Sandbox::User=root", package])
        .current_dir(dir)
        .status()
        .context("run apt-get download")?;
    ensure!(
        status.success(),
        "apt-get download {package} failed (scripts/setup.sh --vm enables the package lists)"
    );
    let base = package.split(':').next().unwrap_or(package);
    find_file(dir, |n| {
        n.starts_with(&format!("{base}_")) && n.ends_with(".deb")
    })?
    .with_context(|| format!("apt-get download {package} left no .deb"))
}

fn dpkg_extract(deb: &Path, into: &Path) -> Result<()> {
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(into)
        .status()
        .context("run dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb -x {} failed", deb.display());
    Ok(())
}

/// Adds `root/rel` and everything below it to the archive (directories, files, symlinks),
/// leaving out documentation and locale data; a missing `root/rel` adds nothing.
fn add_tree(cpio: &mut Cpio, root: &Path, rel: &Path) -> Result<()> {
    let path = root.join(rel);
    let Ok(meta) = fs::symlink_metadata(&path) else {
        return Ok(());
    };
    let name = rel.to_string_lossy();
    if ["usr/share", "gconv"]
        .iter()
        .any(|skip| name.ends_with(skip))
    {
        return Ok(());
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&path).with_context(|| format!("read {}", path.display()))?;
        cpio.symlink(&name, &target.to_string_lossy());
    } else if meta.is_dir() {
        cpio.dir(&name);
        let mut entries: Vec<PathBuf> = fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| rel.join(e.file_name())))
            .collect();
        entries.sort();
        for e in entries {
            add_tree(cpio, root, &e)?;
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        let data = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        cpio.file(&name, &data, meta.permissions().mode() & 0o7777);
    }
    Ok(())
}

/// The first entry of `dir` (sorted by name) whose file name satisfies `want`.
fn find_file(dir: &Path, want: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut names: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&want))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

struct Module {
    name: String,
    path: PathBuf,
}

/// The modules `wanted` and their dependencies, dependencies first; ones built into the kernel
/// or absent from it are left out (the guest's init fails loudly if 9p does not mount).
fn resolve_modules(root: &Path, wanted: &[&str]) -> Result<Vec<Module>> {
    let mut index = std::collections::HashMap::new();
    index_modules(&root.join("kernel"), &mut index)?;
    let mut out: Vec<Module> = Vec::new();
    fn visit(
        name: &str,
        index: &std::collections::HashMap<String, PathBuf>,
        out: &mut Vec<Module>,
        depth: usize,
    ) -> Result<()> {
        let key = name.replace('-', "_");
        ensure!(depth < 32, "module dependency loop at {name}");
        if out.iter().any(|m| m.name.replace('-', "_") == key) {
            return Ok(());
        }
        let Some(path) = index.get(&key) else {
            return Ok(()); // built in, or not in this kernel
        };
        let o = Command::new("modinfo")
            .args(["-F", "depends"])
            .arg(path)
            .output()
            .context("run modinfo (Debian's kmod)")?;
        ensure!(o.status.success(), "modinfo {} failed", path.display());
        for dep in String::from_utf8_lossy(&o.stdout)
            .trim()
            .split(',')
            .filter(|d| !d.is_empty())
        {
            visit(dep, index, out, depth + 1)?;
        }
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        out.push(Module {
            name: file.split(".ko").next().unwrap_or(file).to_string(),
            path: path.clone(),
        });
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &mut out, 0)?;
    }
    Ok(out)
}

fn index_modules(dir: &Path, index: &mut std::collections::HashMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = e?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if let Some((base, _)) = name.split_once(".ko") {
                index.insert(base.replace('-', "_"), path.clone());
            }
        }
    }
    Ok(())
}

/// A module file's bytes, decompressed (busybox's insmod takes plain ELF).
fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("read {name}"));
    };
    let o = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("run {tool}"))?;
    ensure!(o.status.success(), "{tool} -dc {name} failed");
    Ok(o.stdout)
}

/// A "newc" cpio archive, the format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, data);
    }
    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The guest's /init: load the modules, mount what a host has, mount the run directory and
/// the shares, run the command, record its status, power off.
const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 >/proc/sys/kernel/printk
stty -onlcr 2>/dev/null
fail() { echo "vm init: $*" >&2; reboot -f; sleep 5; }
while read -r m; do insmod "/modules/$m" || fail "insmod $m"; done </modules/order
P9=trans=virtio,version=9p2000.L,msize=512000
arch=$(sed -n 's/.*vm_arch=\([^ ]*\).*/\1/p' /proc/cmdline)
if grep -q hostroot /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null; then
  mount -t 9p -o "$P9,ro,cache=loose" hostroot /newroot || fail "mount the host's root"
  R=/newroot
else
  R=
fi
if [ -n "$R" ]; then
  mount -t proc proc $R/proc
  mount -t sysfs sysfs $R/sys
  mount -t devtmpfs devtmpfs $R/dev
fi
mkdir -p $R/dev/pts $R/dev/shm 2>/dev/null
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/tmp
mount -t tmpfs tmpfs $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t bpf bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
ulimit -l unlimited
hostname vm-$arch
ip link set lo up
# The run directory holds cmd.sh: read it, then unmount (a 9p tag mounts once at a time).
mount -t 9p -o "$P9,cache=none" run /mnt || fail "mount the run directory"
cp /mnt/cmd.sh /cmd.sh
umount /mnt
vm_share() {
  mkdir -p "$R$2" 2>/dev/null
  mount -t 9p -o "$P9,cache=mmap" "$1" "$R$2" || fail "mount $1 at $2"
}
. /cmd.sh
export HOME=/tmp TMPDIR=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ -n "$R" ]; then
  chroot $R /bin/sh -c "cd \"\$1\" && eval \"\$2\"" vm "$VM_CWD" "$VM_CMD" </dev/null
else
  (cd "$VM_CWD" && eval "$VM_CMD") </dev/null
fi
echo $? >"$R$VM_STATUS"
sync
reboot -f
"#;
