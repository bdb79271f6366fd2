//! Loads the eBPF object into the kernel and attaches/detaches its uprobes on one Go process.

use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, UProbe};
use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::abi::{
    cancel_slot, CancelRecord, ParkRecord, WakeEvent, CTR_CANCEL_HITS, CTR_CANCEL_RECORDED,
    CTR_LOST_EVENTS, CTR_PARK_HITS, CTR_READ_ERRORS, CTR_UPDATE_ERRORS, CTR_WAKE_HITS,
    CTR_WAKE_MATCHED,
};
use crate::error::{
    classify, errno, log_excerpt, program_load_error, ProbeError, VERIFIER_LOG_LINES,
};
use crate::maps::{self, bpf_error, missing};

const PARK_PROG: &str = "park";
const WAKE_PROG: &str = "wake";
const CANCEL_PROG: &str = "cancel";
const CANCELS_MAP: &str = "cancels";
const PARKS_MAP: &str = "parks";
const WATCH_MAP: &str = "watch";
const EVENTS_MAP: &str = "events";
const COUNTERS_MAP: &str = "counters";

/// Where and how to probe one Go process.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub pid: u32,
    /// The executable to attach to; `/proc/PID/exe` works even if the file was replaced on disk.
    pub exe_path: PathBuf,
    /// File offset of the `push rbp` after `runtime.gopark`'s stack check.
    pub park_file_offset: u64,
    /// File offset of the `push rbp` after `runtime.ready`'s stack check.
    pub wake_file_offset: Option<u64>,
    /// File offset of the instruction after `context.(*cancelCtx).cancel`'s stack check; None
    /// when the binary has no such function (it never cancels a context).
    pub cancel_file_offset: Option<u64>,
    /// Offset of `err` in `context.cancelCtx`.
    pub cancelctx_err_offset: u64,
    pub g_goid_offset: u64,
    pub g_tracking_seq_offset: u64,
    /// Capacity of the LRU `parks` map (goroutines remembered).
    pub max_parks: u32,
}

/// Sums of the per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub park_hits: u64,
    pub wake_hits: u64,
    /// ready(gp) calls that found a park record for gp.
    pub wake_matched: u64,
    pub read_errors: u64,
    pub update_errors: u64,
    pub lost_events: u64,
    pub cancel_hits: u64,
    /// First cancellations recorded (the rest of the hits were repeats on cancelled contexts).
    pub cancel_recorded: u64,
}

/// The loaded programs and maps, and the uprobe links currently attached. Dropping it detaches
/// everything and frees the kernel objects.
pub struct Probes {
    // Taken out of `ebpf` so it can be drained while the other maps are borrowed.
    events: RingBuf<MapData>,
    ebpf: Ebpf,
    exe_path: PathBuf,
    scope: UProbeScope,
    park_offset: u64,
    wake_offset: Option<u64>,
    cancel_offset: Option<u64>,
    park_link: Option<UProbeLinkId>,
    wake_link: Option<UProbeLinkId>,
    cancel_link: Option<UProbeLinkId>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("exe_path", &self.exe_path)
            .field("park_attached", &self.park_link.is_some())
            .field("wake_attached", &self.wake_link.is_some())
            .field("cancel_attached", &self.cancel_link.is_some())
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// Creates the maps and verifies and loads the programs that have a site; attaches nothing.
    pub fn load(cfg: &ProbeConfig) -> Result<Probes, ProbeError> {
        let pid = NonZeroU32::new(cfg.pid)
            .ok_or_else(|| ProbeError::Config("pid must not be 0".to_string()))?;
        if !std::path::Path::new(&format!("/proc/{}", cfg.pid)).exists() {
            return Err(ProbeError::Config(format!(
                "no process with pid {}",
                cfg.pid
            )));
        }
        if cfg.max_parks == 0 {
            return Err(ProbeError::Config("max_parks must not be 0".to_string()));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("target_tgid", &cfg.pid, true)
            .override_global("g_goid_offset", &cfg.g_goid_offset, true)
            .override_global("g_tracking_seq_offset", &cfg.g_tracking_seq_offset, true)
            .override_global("cancelctx_err_offset", &cfg.cancelctx_err_offset, true)
            .map_max_entries(PARKS_MAP, cfg.max_parks)
            .load(crate::BPF_OBJECT)
            .map_err(load_error)?;
        // Only the programs that have a site are verified and loaded (verifying is most of
        // the cost of starting, and adaptive mode probes the park alone).
        let wanted = [
            (PARK_PROG, true),
            (WAKE_PROG, cfg.wake_file_offset.is_some()),
            (CANCEL_PROG, cfg.cancel_file_offset.is_some()),
        ];
        for (name, _) in wanted.into_iter().filter(|(_, w)| *w) {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|e| program_load_error(name, e))?;
        }
        let events = ebpf
            .take_map(EVENTS_MAP)
            .ok_or_else(|| missing(EVENTS_MAP))
            .and_then(|m| {
                RingBuf::try_from(m).map_err(|e| bpf_error("open the events ring buffer", &e))
            })?;
        Ok(Probes {
            events,
            ebpf,
            exe_path: cfg.exe_path.clone(),
            scope: UProbeScope::OneProcess(pid),
            park_offset: cfg.park_file_offset,
            wake_offset: cfg.wake_file_offset,
            cancel_offset: cfg.cancel_file_offset,
            park_link: None,
            wake_link: None,
            cancel_link: None,
        })
    }

    pub fn attach_park(&mut self) -> Result<(), ProbeError> {
        if self.park_link.is_none() {
            self.park_link = Some(self.attach(PARK_PROG, "gopark", self.park_offset)?);
        }
        Ok(())
    }

    pub fn detach_park(&mut self) -> Result<(), ProbeError> {
        match self.park_link.take() {
            Some(link) => self.detach(PARK_PROG, link),
            None => Ok(()),
        }
    }

    pub fn park_attached(&self) -> bool {
        self.park_link.is_some()
    }

    pub fn attach_wake(&mut self) -> Result<(), ProbeError> {
        let offset = self.wake_offset.ok_or_else(|| {
            ProbeError::Config(
                "no runtime.ready site was found, cannot attach the wake probe".to_string(),
            )
        })?;
        if self.wake_link.is_none() {
            self.wake_link = Some(self.attach(WAKE_PROG, "ready", offset)?);
        }
        Ok(())
    }

    pub fn detach_wake(&mut self) -> Result<(), ProbeError> {
        match self.wake_link.take() {
            Some(link) => self.detach(WAKE_PROG, link),
            None => Ok(()),
        }
    }

    pub fn wake_attached(&self) -> bool {
        self.wake_link.is_some()
    }

    /// Attaches the cancel probe; a no-op returning false when the binary has no
    /// `context.(*cancelCtx).cancel`.
    pub fn attach_cancel(&mut self) -> Result<bool, ProbeError> {
        let Some(offset) = self.cancel_offset else {
            return Ok(false);
        };
        if self.cancel_link.is_none() {
            self.cancel_link = Some(self.attach(CANCEL_PROG, "cancelCtx.cancel", offset)?);
        }
        Ok(true)
    }

    pub fn detach_cancel(&mut self) -> Result<(), ProbeError> {
        match self.cancel_link.take() {
            Some(link) => self.detach(CANCEL_PROG, link),
            None => Ok(()),
        }
    }

    pub fn cancel_attached(&self) -> bool {
        self.cancel_link.is_some()
    }

    /// The first cancellation seen of the `context.cancelCtx` at `addr`, unless another
    /// context's cancellation has since taken its slot.
    pub fn cancel_record(&self, addr: u64) -> Option<CancelRecord> {
        let map = self.ebpf.map(CANCELS_MAP)?;
        let cancels = Array::<&MapData, CancelRecord>::try_from(map).ok()?;
        let rec = cancels.get(&cancel_slot(addr), 0).ok()?;
        (rec.ctx == addr && addr != 0).then_some(rec)
    }

    /// Per-CPU counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        let [park_hits, wake_hits, wake_matched, read_errors, update_errors, lost_events, cancel_hits, cancel_recorded] =
            maps::sum_counters(
                &self.ebpf,
                COUNTERS_MAP,
                [
                    CTR_PARK_HITS,
                    CTR_WAKE_HITS,
                    CTR_WAKE_MATCHED,
                    CTR_READ_ERRORS,
                    CTR_UPDATE_ERRORS,
                    CTR_LOST_EVENTS,
                    CTR_CANCEL_HITS,
                    CTR_CANCEL_RECORDED,
                ],
            )?;
        Ok(Counters {
            park_hits,
            wake_hits,
            wake_matched,
            read_errors,
            update_errors,
            lost_events,
            cancel_hits,
            cancel_recorded,
        })
    }

    /// The last park seen for the goroutine whose `runtime.g` is at `g_addr`.
    pub fn park_record(&self, g_addr: u64) -> Option<ParkRecord> {
        let map = self.ebpf.map(PARKS_MAP)?;
        let parks = HashMap::<&MapData, u64, ParkRecord>::try_from(map).ok()?;
        parks.get(&g_addr, 0).ok()
    }

    /// Snapshot of all park records as (g address, record). Costs two syscalls per entry; entries
    /// that change or vanish during the walk are skipped.
    pub fn park_records(&self) -> Result<Vec<(u64, ParkRecord)>, ProbeError> {
        let map = self.ebpf.map(PARKS_MAP).ok_or_else(|| missing(PARKS_MAP))?;
        let parks = HashMap::<&MapData, u64, ParkRecord>::try_from(map)
            .map_err(|e| bpf_error("open the parks map", &e))?;
        Ok(parks.iter().filter_map(Result::ok).collect())
    }

    /// Asks for a wake event when the goroutine at `g_addr` is next made runnable.
    pub fn watch(&mut self, g_addr: u64) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(WATCH_MAP)
            .ok_or_else(|| missing(WATCH_MAP))?;
        let mut watch = HashMap::<&mut MapData, u64, u8>::try_from(map)
            .map_err(|e| bpf_error("open the watch map", &e))?;
        watch
            .insert(g_addr, 1, 0)
            .map_err(|e| bpf_error("add to the watch map (at most 1024 goroutines)", &e))
    }

    pub fn unwatch(&mut self, g_addr: u64) {
        let Some(map) = self.ebpf.map_mut(WATCH_MAP) else {
            return;
        };
        if let Ok(mut watch) = HashMap::<&mut MapData, u64, u8>::try_from(map) {
            // Not-found is fine: unwatching twice is harmless.
            let _ = watch.remove(&g_addr);
        }
    }

    /// Drains the ring buffer without blocking.
    pub fn take_wake_events(&mut self) -> Vec<WakeEvent> {
        maps::drain(&mut self.events)
    }

    /// Readable when wake events are pending (for epoll/tokio AsyncFd).
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    fn attach(
        &mut self,
        name: &str,
        what: &'static str,
        offset: u64,
    ) -> Result<UProbeLinkId, ProbeError> {
        let target = self.exe_path.clone();
        let scope = self.scope;
        let prog = uprobe(&mut self.ebpf, name)?;
        prog.attach(offset, &target, scope).map_err(|e| {
            classify(&e, &format!("attach the {what} uprobe"), |detail| {
                let hint = match errno(&e) {
                    Some(libc::ESRCH) => "the process has exited: ",
                    Some(libc::EINVAL) => "offset outside the file or not an instruction? ",
                    Some(libc::ENOENT) if detail.contains("uprobe") => {
                        "no uprobe PMU in /sys/bus/event_source/devices (kernel without CONFIG_UPROBES?): "
                    }
                    _ => "",
                };
                let detail = format!("{hint}{detail}");
                ProbeError::Attach {
                    probe: what,
                    target: target.display().to_string(),
                    offset,
                    detail,
                }
            })
        })
    }

    fn detach(&mut self, name: &str, link: UProbeLinkId) -> Result<(), ProbeError> {
        uprobe(&mut self.ebpf, name)?
            .detach(link)
            .map_err(|e| bpf_error(&format!("detach the {name} uprobe"), &e))
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        // Dropping `ebpf` would also close the links; detaching first makes the order explicit and
        // removes the breakpoints from the target before anything else is torn down.
        let _ = self.detach_park();
        let _ = self.detach_wake();
        let _ = self.detach_cancel();
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProbeError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| ProbeError::Bpf {
        action: "find program".to_string(),
        detail: format!("`{name}` is missing from the embedded eBPF object"),
    })?;
    prog.try_into()
        .map_err(|e: ProgramError| bpf_error(&format!("use `{name}` as a uprobe"), &e))
}

fn load_error(err: EbpfError) -> ProbeError {
    if let EbpfError::ProgramError(ProgramError::LoadError {
        io_error,
        verifier_log,
    }) = &err
    {
        return ProbeError::Verifier {
            program: "?".to_string(),
            detail: io_error.to_string(),
            log: log_excerpt(&verifier_log.to_string(), VERIFIER_LOG_LINES),
        };
    }
    bpf_error("load the eBPF object (create maps)", &err)
}
