//! Turns return addresses into frames: function (+offset), file:line where DWARF exists, library.

use serde::Serialize;

use super::modules::AddressSpace;

/// One frame of a blocked thread's stack. Inlined calls get a frame each, with the same `addr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackFrame {
    pub func: Option<String>,
    /// Offset of `addr` in the `func` symbol; None for inlined frames and DWARF-only names.
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// File name of the executable or shared library.
    pub library: Option<String>,
    /// Runtime address ("0x..."): the pc for the innermost frame, else the return address.
    #[serde(serialize_with = "super::hex")]
    pub addr: u64,
}

/// Frames for `pcs` (innermost first, as `unwind` returns them).
pub fn symbolize(space: &mut AddressSpace, pcs: &[u64]) -> Vec<StackFrame> {
    let mut out = Vec::with_capacity(pcs.len());
    for (i, &pc) in pcs.iter().enumerate() {
        let unknown = StackFrame {
            func: None,
            offset: None,
            file: None,
            line: None,
            library: None,
            addr: pc,
        };
        let Some((module, svma)) = space.lookup(pc) else {
            out.push(unknown);
            continue;
        };
        // Return addresses point after the call: its file:line is the call's.
        let probe = if i == 0 { svma } else { svma.saturating_sub(1) };
        let sym = module.symbol(svma);
        let library = Some(module.name.clone());
        let outer = StackFrame {
            func: sym
                .as_ref()
                .map(|s| addr2line::demangle_auto(s.name.into(), None).into_owned()),
            offset: sym.as_ref().map(|s| s.offset),
            library: library.clone(),
            ..unknown
        };
        let mut frames = dwarf_frames(module.dwarf.as_ref(), probe, pc, library);
        match frames.last_mut() {
            // The last DWARF frame is the real (not inlined) function: keep the symbol's name and
            // offset, which the on-call engineer can match with a disassembly.
            Some(last) => {
                if outer.func.is_some() {
                    last.func = outer.func;
                    last.offset = outer.offset;
                }
                out.extend(frames);
            }
            None => out.push(outer),
        }
    }
    out
}

fn dwarf_frames(
    dwarf: Option<&addr2line::Loader>,
    probe: u64,
    pc: u64,
    library: Option<String>,
) -> Vec<StackFrame> {
    let Some(loader) = dwarf else {
        return Vec::new();
    };
    let Ok(mut iter) = loader.find_frames(probe) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Ok(Some(frame)) = iter.next() {
        let func = frame
            .function
            .as_ref()
            .and_then(|f| f.demangle().ok().map(|n| n.into_owned()));
        let (file, line) = frame
            .location
            .as_ref()
            .map_or((None, None), |l| (l.file.map(str::to_string), l.line));
        out.push(StackFrame {
            func,
            offset: None,
            file,
            line,
            library: library.clone(),
            addr: pc,
        });
        if out.len() >= 16 {
            break;
        }
    }
    out
}
