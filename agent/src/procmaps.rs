//! The memory mappings of a process, as /proc/PID/maps lists them.

use std::fs;
use std::path::PathBuf;

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub executable: bool,
    /// The mapped file; None for anonymous and special ([stack], [vdso], ...) mappings.
    pub path: Option<String>,
}

impl Mapping {
    /// A path to open the mapped file by, also when the target runs in another mount namespace
    /// or the file was deleted: map_files first, then through the target's root.
    pub fn open_paths(&self, pid: u32) -> Vec<PathBuf> {
        let mut paths = vec![PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))];
        if let Some(p) = &self.path {
            paths.push(PathBuf::from(format!("/proc/{pid}/root{p}")));
            paths.push(PathBuf::from(p));
        }
        paths
    }
}

pub fn mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let s = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(s.lines().filter_map(parse_mapping).collect())
}

/// "start-end perms offset dev inode   path"
pub fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut f = line.splitn(6, ' ');
    let (start, end) = f.next()?.split_once('-')?;
    let perms = f.next()?;
    let offset = f.next()?;
    let _dev = f.next()?;
    let inode = f.next()?;
    let path = f.next().map(str::trim).unwrap_or("");
    let path = (inode != "0" && path.starts_with('/'))
        .then(|| path.trim_end_matches(" (deleted)").to_string());
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = parse_mapping(
            "7f2b3d000000-7f2b3d028000 r-xp 00028000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .expect("line");
        assert_eq!(m.start, 0x7f2b3d000000);
        assert_eq!(m.offset, 0x28000);
        assert!(m.executable);
        assert_eq!(
            m.path.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        let anon =
            parse_mapping("7ffd1000-7ffd2000 rw-p 00000000 00:00 0   [stack]").expect("line");
        assert_eq!(anon.path, None);
        assert!(!anon.executable);
        assert_eq!(parse_mapping("garbage"), None);
    }
}
