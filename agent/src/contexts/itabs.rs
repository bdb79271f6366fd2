//! `context.Context` itabs the runtime built: a conversion the compiler could not resolve (an
//! `any` or another interface converted to `context.Context`, `v.(context.Context)`) makes
//! `runtime.getitab` build the itab at run time and add it to `runtime.itabTable`; such itabs
//! are not among the linker's type data, where static itabs are recognised. Only itabs found in
//! the runtime's own table count: a stack word is never taken for an itab because of what it
//! points at.
//!
//! The table is read when a snapshot (or a dump) starts and its diagnosis first needs it, and
//! only when it changed: the runtime only ever adds itabs, so an unchanged table address and
//! count mean nothing new. Each new itab is read once.

use std::collections::{HashMap, HashSet};

use gobinary::objlayout::ObjectLayout;
use gobinary::rtype::{kind, Memory, TypeReader};

/// Most table entries read (2 MiB); a larger table is not read (said once on stderr).
pub const MAX_ENTRIES: u64 = 1 << 18;
/// Entries read per syscall.
const CHUNK_ENTRIES: u64 = 8192;
/// Most new itabs examined per refresh (one read each); the rest at the next refresh.
const MAX_NEW_PER_REFRESH: usize = 4096;
/// Bytes a refresh may read: the entries and the new itabs' heads.
pub const REFRESH_READ_BUDGET: u64 = MAX_ENTRIES * 8 + MAX_NEW_PER_REFRESH as u64 * 64;

/// What one refresh found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Context itabs added to the recognised set.
    pub added: Vec<(u64, u64)>,
    /// Why the table cannot be used (not found, implausible, too large): said once.
    pub problem: Option<String>,
    /// Part of it could not be read now (the target exiting, more new itabs than one refresh
    /// reads): the next refresh reads it again. Not said: unreadable memory is how a target
    /// that exits looks.
    pub incomplete: bool,
}

pub struct RuntimeItabs {
    /// Runtime address of `runtime.itabTable`; Err: why it is not known.
    var: Result<u64, String>,
    /// `(table, count)` when last read completely.
    seen: Option<(u64, u64)>,
    due: bool,
    /// Runtime-built itabs already examined (context ones or not): never read again.
    examined: HashSet<u64>,
    /// Interface type descriptors, by address: is it `context.Context`.
    interfaces: HashMap<u64, bool>,
}

impl RuntimeItabs {
    pub fn new(var: Result<u64, String>) -> Self {
        RuntimeItabs {
            var,
            seen: None,
            due: true,
            examined: HashSet::new(),
            interfaces: HashMap::new(),
        }
    }

    /// The next diagnosis reads the table again if it changed (a new snapshot or dump).
    pub fn mark_due(&mut self) {
        self.due = true;
    }

    pub fn is_due(&self) -> bool {
        self.due
    }

    /// Reads the table if due and changed; returns the new `(itab, concrete type)` pairs of
    /// `context.Context` itabs and any problem.
    pub fn refresh<M: Memory>(&mut self, types: &TypeReader<'_, M>) -> Refreshed {
        let mut out = Refreshed::default();
        if !std::mem::take(&mut self.due) {
            return out;
        }
        let var = match &self.var {
            Ok(v) => *v,
            Err(why) => {
                out.problem = Some(why.clone());
                return out;
            }
        };
        if types.layout.itab_fun.is_none() {
            out.problem = Some("no offset of itab.fun for this release".into());
            return out;
        }
        let mem = types.mem;
        let Some(table) = mem.read_u64(var) else {
            out.incomplete = true;
            return out;
        };
        if table == 0 {
            out.problem = Some(format!("runtime.itabTable at {var:#x} is nil"));
            return out;
        }
        let head = mem.read(table, 16);
        let word = |b: &[u8], i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let Some((size, count)) = head
            .as_deref()
            .and_then(|h| Some((word(h, 0)?, word(h, 1)?)))
        else {
            out.incomplete = true;
            return out;
        };
        if !size.is_power_of_two() || count > size {
            out.problem = Some(format!(
                "the itab table at {table:#x} is implausible (size {size}, count {count})"
            ));
            return out;
        }
        if size > MAX_ENTRIES {
            out.problem = Some(format!(
                "the itab table has {size} entries, over the {MAX_ENTRIES} read"
            ));
            return out;
        }
        if self.seen == Some((table, count)) {
            return out;
        }
        let mut fresh = Vec::new();
        let mut complete = true;
        let entries = table.saturating_add(16);
        let mut at = 0;
        while at < size {
            let n = CHUNK_ENTRIES.min(size - at);
            let Some(bytes) = mem.read(entries.saturating_add(at * 8), (n * 8) as usize) else {
                complete = false;
                break;
            };
            for e in bytes.chunks_exact(8) {
                let e = u64::from_le_bytes(e.try_into().unwrap_or_default());
                // Static itabs (the linker's, also in the table) are recognised by where
                // they are.
                if e != 0 && e.is_multiple_of(8) && !types.is_type(e) && !self.examined.contains(&e)
                {
                    fresh.push(e);
                }
            }
            at += n;
        }
        fresh.sort_unstable();
        fresh.dedup();
        if fresh.len() > MAX_NEW_PER_REFRESH {
            fresh.truncate(MAX_NEW_PER_REFRESH);
            complete = false;
        }
        for itab in fresh {
            match self.examine(types, itab) {
                Some(found) => {
                    self.examined.insert(itab);
                    if let Some(typ) = found {
                        out.added.push((itab, typ));
                    }
                }
                // Unreadable now: tried again at the next refresh.
                None => complete = false,
            }
        }
        if complete {
            self.seen = Some((table, count));
        } else {
            out.incomplete = true;
        }
        out
    }

    /// Some(Some(type)) for a `context.Context` itab of a type that implements it, Some(None)
    /// for any other itab, None when it could not be read.
    fn examine<M: Memory>(&mut self, types: &TypeReader<'_, M>, itab: u64) -> Option<Option<u64>> {
        let lay: &ObjectLayout = types.layout;
        // Without fun's offset a cached failed assertion cannot be told from a real itab.
        let fun = lay.itab_fun?;
        let len = lay.itab_inter.max(lay.itab_type).max(fun).checked_add(8)?;
        let head = types.mem.read(itab, usize::try_from(len).ok()?)?;
        let word = |off: u64| -> Option<u64> {
            let o = usize::try_from(off).ok()?;
            Some(u64::from_le_bytes(
                head.get(o..o.checked_add(8)?)?.try_into().ok()?,
            ))
        };
        let (inter, typ, fun0) = (word(lay.itab_inter)?, word(lay.itab_type)?, word(fun)?);
        let is_context = match self.interfaces.get(&inter) {
            Some(&c) => c,
            None => {
                let c = types.is_type(inter)
                    && types.kind(inter) == Some(kind::INTERFACE)
                    && types.name(inter).as_deref() == Some("context.Context");
                self.interfaces.insert(inter, c);
                c
            }
        };
        Some((is_context && fun0 != 0 && types.is_type(typ)).then_some(typ))
    }
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
    impl Mem {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn put_u64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    fn layout() -> ObjectLayout {
        gobinary::layout::tables()
            .get("1.27")
            .and_then(|t| t.objects.clone())
            .expect("1.27 object table")
    }

    const TYPES: u64 = 0x10_0000;
    const ETYPES: u64 = 0x10_1000;
    const VAR: u64 = 0x20_0000;
    const TABLE: u64 = 0x30_0000;
    const CTX_IFACE: u64 = TYPES + 0x100;
    const OTHER_IFACE: u64 = TYPES + 0x200;
    const CONCRETE: u64 = TYPES + 0x300;
    const STATIC_ITAB: u64 = TYPES + 0x400;

    /// A type descriptor of `kind` named `name` (its name at `at + 0x80`).
    fn put_type(m: &mut Mem, lay: &ObjectLayout, at: u64, kind: u8, name: &str) {
        m.put(at, &vec![0u8; lay.type_size_of as usize]);
        m.put(at + lay.type_kind, &[kind]);
        let name_at = at + 0x80;
        m.put(at + lay.type_str, &((name_at - TYPES) as i32).to_le_bytes());
        let mut n = vec![0u8, name.len() as u8];
        n.extend_from_slice(name.as_bytes());
        m.put(name_at, &n);
    }

    fn put_itab(m: &mut Mem, lay: &ObjectLayout, at: u64, inter: u64, typ: u64, fun0: u64) {
        m.put(at, &[0u8; 32]);
        m.put_u64(at + lay.itab_inter, inter);
        m.put_u64(at + lay.itab_type, typ);
        m.put_u64(at + lay.itab_fun.expect("itab_fun"), fun0);
    }

    fn put_table(m: &mut Mem, size: u64, entries: &[(u64, u64)]) {
        m.put_u64(VAR, TABLE);
        m.put_u64(TABLE, size);
        m.put_u64(TABLE + 8, entries.len() as u64);
        for i in 0..size {
            m.put_u64(TABLE + 16 + 8 * i, 0);
        }
        for &(slot, itab) in entries {
            m.put_u64(TABLE + 16 + 8 * slot, itab);
        }
    }

    #[test]
    fn finds_runtime_built_context_itabs_only() {
        let lay = layout();
        let mut m = Mem(BTreeMap::new());
        put_type(&mut m, &lay, CTX_IFACE, kind::INTERFACE, "context.Context");
        put_type(&mut m, &lay, OTHER_IFACE, kind::INTERFACE, "io.Reader");
        put_type(&mut m, &lay, CONCRETE, kind::POINTER, "*main.dynCtx");
        let ctx_itab = 0x40_0000;
        let failed = 0x40_0100; // a cached failed assertion: fun[0] == 0
        let reader = 0x40_0200;
        put_itab(&mut m, &lay, ctx_itab, CTX_IFACE, CONCRETE, 0x401000);
        put_itab(&mut m, &lay, failed, CTX_IFACE, CONCRETE, 0);
        put_itab(&mut m, &lay, reader, OTHER_IFACE, CONCRETE, 0x401000);
        put_itab(&mut m, &lay, STATIC_ITAB, CTX_IFACE, CONCRETE, 0x401000);
        put_table(
            &mut m,
            8,
            &[(1, ctx_itab), (3, failed), (4, reader), (6, STATIC_ITAB)],
        );
        let types = TypeReader {
            mem: &m,
            layout: &lay,
            types: TYPES,
            etypes: ETYPES,
        };
        let mut it = RuntimeItabs::new(Ok(VAR));
        let r = it.refresh(&types);
        assert_eq!(r.problem, None);
        assert!(!r.incomplete);
        assert_eq!(r.added, vec![(ctx_itab, CONCRETE)]);
        // Not due: nothing read.
        assert_eq!(it.refresh(&types), Refreshed::default());
        // Due but unchanged: nothing new.
        it.mark_due();
        assert_eq!(it.refresh(&types), Refreshed::default());
        // A new itab in a grown table is found; the old ones are not read again.
        let ctx_itab2 = 0x40_0300;
        put_itab(&mut m, &lay, ctx_itab2, CTX_IFACE, CONCRETE, 0x401000);
        put_table(&mut m, 16, &[(9, ctx_itab), (2, ctx_itab2), (5, failed)]);
        let types = TypeReader {
            mem: &m,
            layout: &lay,
            types: TYPES,
            etypes: ETYPES,
        };
        it.mark_due();
        let r = it.refresh(&types);
        assert_eq!(r.problem, None);
        assert!(!r.incomplete);
        assert_eq!(r.added, vec![(ctx_itab2, CONCRETE)]);
    }

    #[test]
    fn implausible_or_missing_tables_are_problems() {
        let lay = layout();
        let mut m = Mem(BTreeMap::new());
        let types = |m: &Mem| -> Refreshed {
            let t = TypeReader {
                mem: m,
                layout: &lay,
                types: TYPES,
                etypes: ETYPES,
            };
            let mut it = RuntimeItabs::new(Ok(VAR));
            it.refresh(&t)
        };
        let r = types(&m);
        assert!(
            r.incomplete && r.problem.is_none(),
            "unreadable variable: retried, not said"
        );
        m.put_u64(VAR, 0);
        assert!(types(&m).problem.is_some(), "nil table");
        m.put_u64(VAR, TABLE);
        m.put_u64(TABLE, 12); // not a power of two
        m.put_u64(TABLE + 8, 1);
        assert!(types(&m).problem.is_some(), "size not a power of two");
        m.put_u64(TABLE, MAX_ENTRIES * 2);
        assert!(types(&m).problem.is_some(), "too large");
        m.put_u64(TABLE, 4); // entries unreadable
        let r = types(&m);
        assert!(r.incomplete && r.problem.is_none() && r.added.is_empty());
        let t = TypeReader {
            mem: &m,
            layout: &lay,
            types: TYPES,
            etypes: ETYPES,
        };
        let mut it = RuntimeItabs::new(Err("not found".into()));
        assert_eq!(it.refresh(&t).problem.as_deref(), Some("not found"));
        // A table generated before itab.fun was in it: failed assertions cannot be told apart.
        let old = ObjectLayout {
            itab_fun: None,
            ..lay.clone()
        };
        let t = TypeReader {
            mem: &m,
            layout: &old,
            types: TYPES,
            etypes: ETYPES,
        };
        let mut it = RuntimeItabs::new(Ok(VAR));
        assert!(it.refresh(&t).problem.is_some());
    }
}
