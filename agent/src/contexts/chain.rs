//! One `context.Context` value decoded from the target's memory: what kind of link it is, its
//! own state, and its parent. Everything comes from the runtime's type metadata (struct field
//! names and offsets of `context.cancelCtx`, `timerCtx`, ... as the target's own release lays
//! them out), so no offset of package context is hard-coded and stripped binaries work.
//!
//! Privacy: values and keys of value contexts are never read; only type names are.

use std::collections::HashMap;
use std::rc::Rc;

use gobinary::rtype::{kind, Memory, StructField, TypeReader};

use crate::fxhash::FxHashMap;

/// A context interface value: (itab, data).
pub type Iface = (u64, u64);

/// Most bytes of one context value read (context's own structs are under 200 bytes; a user's
/// wrapper with its Context field further in is read up to here).
const MAX_VALUE_READ: u64 = 4096;
/// Longest error text read (`errors.errorString`).
const MAX_ERR_TEXT: u64 = 200;
/// Nanoseconds from year 1 to 1970 and from year 1 to 1885, as package time computes them.
const UNIX_TO_INTERNAL: i64 = (1969 * 365 + 1969 / 4 - 1969 / 100 + 1969 / 400) * 86400;
const WALL_TO_INTERNAL: i64 = (1884 * 365 + 1884 / 4 - 1884 / 100 + 1884 / 400) * 86400;

/// What a link contributes to `Done()`/`Err()`/`Deadline()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Own {
    /// `Background`/`TODO`: never cancelled, no deadline.
    Root,
    /// `WithoutCancel`: cuts cancellation and deadline from its parent.
    Detach,
    /// A `cancelCtx` (also inside `timerCtx`, `afterFuncCtx`).
    Cancel {
        err: Option<String>,
        /// The done channel, if created (`Done()` was called or the context was cancelled).
        done: Option<u64>,
        /// `timerCtx` only: Unix nanoseconds.
        deadline: Option<i64>,
    },
    /// Values, `stopCtx`, wrappers: everything comes from the parent.
    Delegate,
    /// A type ctxprobe cannot see through (no `context.Context` field): state unknown.
    Opaque,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub type_name: String,
    pub own: Own,
    pub parent: Option<Iface>,
}

/// Where a type keeps what ctxprobe reads, derived once per concrete type.
#[derive(Debug, Clone, Default)]
struct TypeShape {
    name: String,
    /// The value lives in the data word itself (pointer-shaped types).
    root: bool,
    detach: bool,
    /// Offset of the `context.Context` parent field in the value.
    parent: Option<u64>,
    /// Offsets inside the value of cancelCtx's fields.
    err: Option<FieldAt>,
    cause: Option<FieldAt>,
    done: Option<u64>,
    deadline: Option<(u64, u64)>,
    is_cancel: bool,
    /// Bytes of the value to read: up to the last field used.
    read_len: usize,
    /// Where the value is: at `data` (false) or `*data` is not needed (pointer types point at
    /// their struct; non-pointer structs are stored indirectly at `data`).
    direct_struct: bool,
}

#[derive(Debug, Clone, Copy)]
struct FieldAt {
    offset: u64,
    /// An `error` interface (≤1.24) or an `atomic.Value` holding it (1.25+).
    atomic_value: bool,
}

pub struct Decoder {
    shapes: HashMap<u64, Rc<TypeShape>>,
    itab_types: HashMap<u64, Option<u64>>,
    /// `context.Context` itabs the runtime built, found in its itab table: concrete type.
    runtime_itabs: FxHashMap<u64, u64>,
    /// Lowest and highest of them: every word of every stack is looked at, and nearly all
    /// are outside this range (runtime itabs live in a few chunks of off-heap memory).
    runtime_range: (u64, u64),
    names: HashMap<u64, Option<String>>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            shapes: HashMap::new(),
            itab_types: HashMap::new(),
            runtime_itabs: FxHashMap::default(),
            runtime_range: (u64::MAX, 0),
            names: HashMap::new(),
        }
    }

    /// A type's name, cached (type descriptors are static).
    pub fn type_name<M: Memory>(&mut self, types: &TypeReader<'_, M>, typ: u64) -> Option<String> {
        if let Some(n) = self.names.get(&typ) {
            return n.clone();
        }
        let n = types.name(typ);
        self.names.insert(typ, n.clone());
        n
    }

    /// The concrete type if `itab` is a `context.Context` itab (cached per address). The
    /// linker places static itabs among the type descriptors (`[types, etypes)`, every
    /// supported release), which also keeps return addresses and data words from being read;
    /// itabs built at run time are recognised only once found in the runtime's itab table
    /// ([`Self::add_runtime_itab`]).
    pub fn context_type<M: Memory>(&mut self, types: &TypeReader<'_, M>, itab: u64) -> Option<u64> {
        if !types.is_type(itab) {
            let (lo, hi) = self.runtime_range;
            if itab < lo || itab > hi {
                return None;
            }
            return self.runtime_itabs.get(&itab).copied();
        }
        if let Some(t) = self.itab_types.get(&itab) {
            return *t;
        }
        let t = types.context_itab_type(itab);
        self.itab_types.insert(itab, t);
        t
    }

    /// Recognises `itab`, a `context.Context` itab for `typ` from the runtime's itab table.
    pub fn add_runtime_itab(&mut self, itab: u64, typ: u64) {
        self.runtime_itabs.insert(itab, typ);
        self.runtime_range = (
            self.runtime_range.0.min(itab),
            self.runtime_range.1.max(itab),
        );
    }

    /// Decodes one link; None when its memory is unreadable.
    pub fn link<M: Memory>(
        &mut self,
        types: &TypeReader<'_, M>,
        typ: u64,
        data: u64,
    ) -> Option<Link> {
        let shape = self.shape(types, typ)?;
        let name = shape.name.clone();
        if shape.root {
            return Some(Link {
                type_name: name,
                own: Own::Root,
                parent: None,
            });
        }
        // The fields read, in one read of the value's head (one syscall per link).
        let value: Vec<u8> = if shape.direct_struct {
            data.to_le_bytes().to_vec()
        } else if shape.read_len == 0 {
            Vec::new()
        } else {
            types.mem.read(data, shape.read_len)?
        };
        let word = |off: u64| -> Option<u64> {
            let o = usize::try_from(off).ok()?;
            Some(u64::from_le_bytes(
                value.get(o..o.checked_add(8)?)?.try_into().ok()?,
            ))
        };
        let parent = match shape.parent {
            Some(off) => {
                let itab = word(off)?;
                let pdata = word(off.saturating_add(8))?;
                (itab != 0).then_some((itab, pdata))
            }
            None => None,
        };
        let own = if shape.detach {
            Own::Detach
        } else if shape.is_cancel {
            let err = shape.err.and_then(|f| {
                error_value(types, word(f.offset)?, word(f.offset.saturating_add(8))?, f)
            });
            let cause = shape.cause.and_then(|f| {
                error_value(types, word(f.offset)?, word(f.offset.saturating_add(8))?, f)
            });
            let err_text = err.map(|e| match cause {
                // A cause given by the canceller (WithCancelCause, ...): its type names it.
                Some(c) if c.1 != e.1 || c.0 != e.0 => {
                    types.name(c.0).unwrap_or_else(|| e_text(types, e))
                }
                _ => e_text(types, e),
            });
            let done = shape
                .done
                .and_then(|off| word(off.saturating_add(8)))
                .filter(|&c| c != 0);
            let deadline = shape
                .deadline
                .and_then(|(wall, ext)| Some(unix_nanos(word(wall)?, word(ext)? as i64)));
            Own::Cancel {
                err: err_text,
                done,
                deadline,
            }
        } else if shape.parent.is_some() {
            Own::Delegate
        } else {
            Own::Opaque
        };
        Some(Link {
            type_name: name,
            own,
            parent,
        })
    }

    fn shape<M: Memory>(&mut self, types: &TypeReader<'_, M>, typ: u64) -> Option<Rc<TypeShape>> {
        if let Some(s) = self.shapes.get(&typ) {
            return Some(s.clone());
        }
        let s = Rc::new(derive_shape(types, typ)?);
        self.shapes.insert(typ, s.clone());
        Some(s)
    }
}

fn derive_shape<M: Memory>(types: &TypeReader<'_, M>, typ: u64) -> Option<TypeShape> {
    let name = types.name(typ)?;
    let mut shape = TypeShape {
        name: name.clone(),
        ..TypeShape::default()
    };
    if matches!(
        name.as_str(),
        "context.backgroundCtx" | "context.todoCtx" | "*context.emptyCtx"
    ) {
        shape.root = true;
        return Some(shape);
    }
    let (st, direct) = match types.kind(typ)? {
        kind::POINTER => (types.ptr_elem(typ)?, false),
        kind::STRUCT => (typ, is_pointer_shaped(types, typ)),
        // Some other kind implementing Context (a named func or map type): opaque.
        _ => return Some(shape),
    };
    shape.direct_struct = direct;
    let fields = types.struct_fields(st).unwrap_or_default();
    shape.detach = name == "context.withoutCancelCtx";
    shape.parent = context_field(types, &fields);
    // cancelCtx itself, or a context type embedding it (timerCtx, afterFuncCtx).
    let cancel = if types.name(st).as_deref() == Some("context.cancelCtx") {
        Some((0, fields.clone()))
    } else {
        fields
            .iter()
            .find(|f| f.embedded && types.name(f.typ).as_deref() == Some("context.cancelCtx"))
            .and_then(|f| Some((f.offset, types.struct_fields(f.typ)?)))
    };
    if let Some((base, cf)) = cancel {
        shape.is_cancel = true;
        let at = |n: &str| cf.iter().find(|f| f.name == n);
        if shape.parent.is_none() {
            shape.parent = context_field(types, &cf).map(|o| o.saturating_add(base));
        }
        let err_field = |f: &StructField| FieldAt {
            offset: base.saturating_add(f.offset),
            atomic_value: types.kind(f.typ) == Some(kind::STRUCT),
        };
        shape.err = at("err").map(err_field);
        shape.cause = at("cause").map(err_field);
        // done is an atomic.Value{v any}: the channel is the eface's data word.
        shape.done = at("done").map(|f| base.saturating_add(f.offset));
        if let Some(d) = fields.iter().find(|f| f.name == "deadline") {
            let tf = types.struct_fields(d.typ).unwrap_or_default();
            let off = |n: &str| {
                tf.iter()
                    .find(|f| f.name == n)
                    .map(|f| d.offset.saturating_add(f.offset))
            };
            if let (Some(w), Some(e)) = (off("wall"), off("ext")) {
                shape.deadline = Some((w, e));
            }
        }
    }
    let ends = [
        shape.parent.map(|o| o.saturating_add(16)),
        shape.err.map(|f| f.offset.saturating_add(16)),
        shape.cause.map(|f| f.offset.saturating_add(16)),
        shape.done.map(|o| o.saturating_add(16)),
        shape.deadline.map(|(w, e)| w.max(e).saturating_add(8)),
    ];
    let end = ends.into_iter().flatten().max().unwrap_or(0);
    shape.read_len = usize::try_from(end.min(MAX_VALUE_READ)).unwrap_or(0);
    Some(shape)
}

/// Offset of the first field (embedded or named) whose type is `context.Context`.
fn context_field<M: Memory>(types: &TypeReader<'_, M>, fields: &[StructField]) -> Option<u64> {
    fields
        .iter()
        .find(|f| types.name(f.typ).as_deref() == Some("context.Context"))
        .map(|f| f.offset)
}

/// A struct stored directly in an interface's data word: one pointer-shaped field.
fn is_pointer_shaped<M: Memory>(types: &TypeReader<'_, M>, st: u64) -> bool {
    let Some(fields) = types.struct_fields(st) else {
        return false;
    };
    let [only] = fields.as_slice() else {
        return false;
    };
    // chan 18, func 19, map 21, pointer 22, unsafe.Pointer 26.
    types.size(st) == Some(8) && matches!(types.kind(only.typ), Some(18 | 19 | 21 | 22 | 26))
}

/// An error value as (dynamic type, data), from an `error` iface (word0 = itab) or an
/// `atomic.Value` (word0 = type). None when nil.
fn error_value<M: Memory>(
    types: &TypeReader<'_, M>,
    w0: u64,
    w1: u64,
    f: FieldAt,
) -> Option<(u64, u64)> {
    if w0 == 0 {
        return None;
    }
    let typ = if f.atomic_value {
        w0
    } else {
        types
            .mem
            .read_u64(w0.checked_add(types.layout.itab_type)?)?
    };
    Some((typ, w1))
}

/// The error's text: `errors.errorString`'s message (context.Canceled is one), the fixed text
/// of `context.deadlineExceededError`, else the type name.
fn e_text<M: Memory>(types: &TypeReader<'_, M>, (typ, data): (u64, u64)) -> String {
    let name = types.name(typ).unwrap_or_else(|| "?".into());
    match name.as_str() {
        "context.deadlineExceededError" => "context deadline exceeded".into(),
        "*errors.errorString" => (|| {
            let ptr = types.mem.read_u64(data)?;
            let len = types.mem.read_u64(data.checked_add(8)?)?;
            if len == 0 || len > MAX_ERR_TEXT {
                return None;
            }
            let b = types.mem.read(ptr, len as usize)?;
            Some(String::from_utf8_lossy(&b).into_owned())
        })()
        .unwrap_or(name),
        _ => name,
    }
}

/// `time.Time{wall, ext}` to Unix nanoseconds (package time's encoding since Go 1.9).
pub fn unix_nanos(wall: u64, ext: i64) -> i64 {
    const HAS_MONOTONIC: u64 = 1 << 63;
    const NSEC_MASK: u64 = (1 << 30) - 1;
    let nsec = (wall & NSEC_MASK) as i64;
    let internal_sec = if wall & HAS_MONOTONIC != 0 {
        WALL_TO_INTERNAL + ((wall << 1) >> 31) as i64
    } else {
        ext
    };
    let unix_sec = internal_sec.saturating_sub(UNIX_TO_INTERNAL);
    unix_sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_encoding() {
        // time.Unix(1_700_000_000, 5) without monotonic reading: ext = internal seconds.
        let ext = 1_700_000_000 + UNIX_TO_INTERNAL;
        assert_eq!(unix_nanos(5, ext), 1_700_000_000_000_000_005);
        // With a monotonic reading: seconds since 1885 in wall bits 30..63.
        let secs_since_1885 = (1_700_000_000 + UNIX_TO_INTERNAL - WALL_TO_INTERNAL) as u64;
        let wall = (1 << 63) | (secs_since_1885 << 30) | 7;
        assert_eq!(unix_nanos(wall, 12345), 1_700_000_000_000_000_007);
    }
}

#[cfg(test)]
mod garbage_tests {
    use super::*;
    use gobinary::objlayout::ObjectLayout;

    /// A flat region of random bytes; everything else unreadable.
    struct Garbage {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Memory for Garbage {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
            self.bytes
                .get(off..off.checked_add(len)?)
                .map(<[u8]>::to_vec)
        }
    }

    fn layout() -> ObjectLayout {
        gobinary::layout::tables()
            .get("1.27")
            .and_then(|t| t.objects.clone())
            .expect("1.27 object table")
    }

    /// Itabs outside the type data are contexts only when the runtime's table said so.
    #[test]
    fn runtime_itabs_only_when_added() {
        let lay = layout();
        let mem = Garbage {
            base: 0x1000,
            bytes: vec![0; 64],
        };
        let types = TypeReader {
            mem: &mem,
            layout: &lay,
            types: 0x1000,
            etypes: 0x1040,
        };
        let mut dec = Decoder::new();
        assert_eq!(dec.context_type(&types, 0x7f00_0000_1000), None);
        dec.add_runtime_itab(0x7f00_0000_1000, 0x1008);
        dec.add_runtime_itab(0x7f00_0000_3000, 0x1010);
        assert_eq!(dec.context_type(&types, 0x7f00_0000_1000), Some(0x1008));
        assert_eq!(dec.context_type(&types, 0x7f00_0000_3000), Some(0x1010));
        for other in [
            0x7f00_0000_2000,
            0x7f00_0000_0ff8,
            0x7f00_0000_3008,
            0x00c0_0001_0000,
        ] {
            assert_eq!(dec.context_type(&types, other), None, "{other:#x}");
        }
    }

    /// Target memory is untrusted: decoding contexts out of random bytes (words pointing back
    /// into the region, so chains and field lists are followed) must never panic or loop.
    #[test]
    fn decoding_garbage_never_panics() {
        let lay = layout();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = 0x10_0000u64;
        let len = 16 * 1024usize;
        for round in 0..300 {
            let mut bytes = vec![0u8; len];
            for w in bytes.chunks_exact_mut(8) {
                let v = match next() % 4 {
                    0 => base + next() % len as u64,
                    1 => next() % 64,
                    2 => next(),
                    _ => 0,
                };
                w.copy_from_slice(&v.to_le_bytes());
            }
            let mem = Garbage { base, bytes };
            let types = TypeReader {
                mem: &mem,
                layout: &lay,
                types: base,
                etypes: base + len as u64,
            };
            let mut dec = Decoder::new();
            for _ in 0..100 {
                let a = base + ((next() % len as u64) & !7);
                let _ = dec.context_type(&types, a);
                let _ = dec.link(&types, a, base + next() % len as u64);
            }
            let _ = round;
        }
    }
}
