//! The runtime's own type metadata (`runtime._type` / `internal/abi.Type`), read from a running
//! process: type names as `%T` prints them, kinds, pointer element types, struct fields, and
//! whether an itab is one for `context.Context`.
//!
//! Type descriptors are static data of the executable, so this works on stripped binaries.
//! Memory comes through [`Memory`] (the target's memory in the agent, a byte map in tests);
//! everything read is untrusted: lengths are capped and nothing here panics.

use crate::objlayout::ObjectLayout;

/// Reads of the target's address space. `None` when the range is not readable.
pub trait Memory {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>>;

    fn read_u64(&self, addr: u64) -> Option<u64> {
        let b = self.read(addr, 8)?;
        Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
    }
}

/// `abi.Kind` values ctxprobe looks at (stable since Go 1.0); the low 5 bits of `kind`.
pub mod kind {
    pub const INTERFACE: u8 = 20;
    pub const POINTER: u8 = 22;
    pub const STRUCT: u8 = 25;
    pub const MASK: u8 = (1 << 5) - 1;
}

/// `tflagExtraStar`: the stored name has a leading `*` that is not part of the type's name.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
/// Name flag byte: the struct field is embedded.
const NAME_EMBEDDED: u8 = 1 << 3;
/// Longest type or field name read (generic instantiations can be long; beyond this it is noise).
const MAX_NAME: usize = 1024;
/// Most struct fields decoded per type.
pub const MAX_FIELDS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructField {
    pub name: String,
    pub typ: u64,
    pub offset: u64,
    pub embedded: bool,
}

/// Decodes types of one module: names are offsets from its `moduledata.types`.
pub struct TypeReader<'a, M: Memory> {
    pub mem: &'a M,
    pub layout: &'a ObjectLayout,
    /// `[types, etypes)` of the module (runtime addresses).
    pub types: u64,
    pub etypes: u64,
}

impl<'a, M: Memory> TypeReader<'a, M> {
    /// Reads `types`/`etypes` from the module data at `moduledata` (a runtime address).
    pub fn new(mem: &'a M, layout: &'a ObjectLayout, moduledata: u64) -> Option<Self> {
        let types = mem.read_u64(moduledata.checked_add(layout.moduledata_types)?)?;
        let etypes = mem.read_u64(moduledata.checked_add(layout.moduledata_etypes)?)?;
        (types != 0 && types < etypes && etypes - types < (1 << 32)).then_some(TypeReader {
            mem,
            layout,
            types,
            etypes,
        })
    }

    /// True if `addr` lies in this module's type data (every static type descriptor does).
    pub fn is_type(&self, addr: u64) -> bool {
        addr >= self.types && addr < self.etypes && addr.is_multiple_of(8)
    }

    fn header(&self, typ: u64) -> Option<Vec<u8>> {
        if !self.is_type(typ) {
            return None;
        }
        self.mem
            .read(typ, usize::try_from(self.layout.type_size_of).ok()?)
    }

    /// The type's kind (`kind::*`).
    pub fn kind(&self, typ: u64) -> Option<u8> {
        let h = self.header(typ)?;
        Some(h.get(usize::try_from(self.layout.type_kind).ok()?)? & kind::MASK)
    }

    /// The type's size in bytes.
    pub fn size(&self, typ: u64) -> Option<u64> {
        let h = self.header(typ)?;
        let at = usize::try_from(self.layout.type_size).ok()?;
        Some(u64::from_le_bytes(
            h.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    }

    /// The name as `%T` prints it (`*context.cancelCtx`, `context.backgroundCtx`).
    pub fn name(&self, typ: u64) -> Option<String> {
        let h = self.header(typ)?;
        let tflag = *h.get(usize::try_from(self.layout.type_tflag).ok()?)?;
        let at = usize::try_from(self.layout.type_str).ok()?;
        let off = i32::from_le_bytes(h.get(at..at.checked_add(4)?)?.try_into().ok()?);
        let addr = self.types.checked_add_signed(i64::from(off))?;
        if addr >= self.etypes {
            return None;
        }
        let (name, _) = self.read_name(addr)?;
        if tflag & TFLAG_EXTRA_STAR != 0 {
            return name.strip_prefix('*').map(str::to_string);
        }
        Some(name)
    }

    /// A `runtime.name`: flag byte, uvarint length, bytes. Returns the name and its flag byte.
    pub fn read_name(&self, addr: u64) -> Option<(String, u8)> {
        let head = self.mem.read(addr, 1 + 10)?;
        let flags = *head.first()?;
        let (len, used) = uvarint(head.get(1..)?)?;
        let len = usize::try_from(len).ok().filter(|&l| l <= MAX_NAME)?;
        let start = addr.checked_add(1 + used as u64)?;
        let bytes = if len == 0 {
            Vec::new()
        } else {
            self.mem.read(start, len)?
        };
        Some((String::from_utf8_lossy(&bytes).into_owned(), flags))
    }

    /// The element type of a pointer type.
    pub fn ptr_elem(&self, typ: u64) -> Option<u64> {
        if self.kind(typ)? != kind::POINTER {
            return None;
        }
        let elem = self
            .mem
            .read_u64(typ.checked_add(self.layout.ptrtype_elem)?)?;
        self.is_type(elem).then_some(elem)
    }

    /// The fields of a struct type (at most [`MAX_FIELDS`]).
    pub fn struct_fields(&self, typ: u64) -> Option<Vec<StructField>> {
        if self.kind(typ)? != kind::STRUCT {
            return None;
        }
        let at = typ.checked_add(self.layout.structtype_fields)?;
        let ptr = self.mem.read_u64(at)?;
        let len = self.mem.read_u64(at.checked_add(8)?)?;
        let n = usize::try_from(len).ok().filter(|&n| n <= MAX_FIELDS)?;
        let each = usize::try_from(self.layout.structfield_size_of)
            .ok()
            .filter(|&s| s >= 24)?;
        if n == 0 {
            return Some(Vec::new());
        }
        let bytes = self.mem.read(ptr, n.checked_mul(each)?)?;
        let word = |rec: &[u8], off: u64| -> Option<u64> {
            let o = usize::try_from(off).ok()?;
            Some(u64::from_le_bytes(
                rec.get(o..o.checked_add(8)?)?.try_into().ok()?,
            ))
        };
        let mut out = Vec::with_capacity(n);
        for rec in bytes.chunks_exact(each) {
            let name_ptr = word(rec, self.layout.structfield_name)?;
            let (name, flags) = self.read_name(name_ptr)?;
            out.push(StructField {
                name,
                typ: word(rec, self.layout.structfield_typ)?,
                offset: word(rec, self.layout.structfield_offset)?,
                embedded: flags & NAME_EMBEDDED != 0,
            });
        }
        Some(out)
    }

    /// If `itab` is an itab whose interface is `context.Context`, its concrete type.
    pub fn context_itab_type(&self, itab: u64) -> Option<u64> {
        if !itab.is_multiple_of(8) {
            return None;
        }
        let inter = self
            .mem
            .read_u64(itab.checked_add(self.layout.itab_inter)?)?;
        if !self.is_type(inter) || self.kind(inter)? != kind::INTERFACE {
            return None;
        }
        if self.name(inter)? != "context.Context" {
            return None;
        }
        let typ = self
            .mem
            .read_u64(itab.checked_add(self.layout.itab_type)?)?;
        self.is_type(typ).then_some(typ)
    }
}

/// Go's `encoding/binary.Uvarint`, at most 10 bytes.
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x: u64 = 0;
    for (i, &byte) in b.iter().take(10).enumerate() {
        x |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte < 0x80 {
            return Some((x, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Sparse memory: byte map.
    struct Mem(BTreeMap<u64, u8>);
    impl Memory for Mem {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            (0..len as u64)
                .map(|i| self.0.get(&addr.checked_add(i)?).copied())
                .collect()
        }
    }

    fn layout() -> ObjectLayout {
        crate::layout::tables()
            .get("1.27")
            .and_then(|t| t.objects.clone())
            .expect("1.27 table has object offsets")
    }

    #[test]
    fn uvarint_decodes_and_rejects_overlong() {
        assert_eq!(uvarint(&[5]), Some((5, 1)));
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0xff; 12]), None);
        assert_eq!(uvarint(&[]), None);
    }

    #[test]
    fn garbage_memory_never_panics() {
        let lay = layout();
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..200 {
            let base = 0x1000u64;
            let mut bytes = BTreeMap::new();
            for i in 0..4096u64 {
                // Mostly small words pointing back into the region, sometimes pure noise.
                let b = if round % 2 == 0 {
                    next() as u8
                } else if i % 8 == 0 {
                    (base + next() % 4096) as u8
                } else {
                    (next() % 3) as u8
                };
                bytes.insert(base + i, b);
            }
            let mem = Mem(bytes);
            let md = base + next() % 4096;
            let reader = TypeReader::new(&mem, &lay, md).unwrap_or(TypeReader {
                mem: &mem,
                layout: &lay,
                types: base,
                etypes: base + 4096,
            });
            for _ in 0..50 {
                let a = base + next() % 4200;
                let _ = reader.name(a);
                let _ = reader.kind(a);
                let _ = reader.size(a);
                let _ = reader.ptr_elem(a);
                let _ = reader.struct_fields(a);
                let _ = reader.context_itab_type(a);
                let _ = reader.read_name(a);
            }
        }
    }
}
