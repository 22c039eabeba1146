//! What a tree backup leaves out: `--exclude PATTERN`, `--exclude-file FILE`,
//! `--exclude-if-present NAME`, `--exclude-caches`, `--one-file-system`,
//! `--exclude-larger-than SIZE`. Stored per job (in the catalog) and added to per run.
//!
//! Patterns are globs over paths relative to the backup source, `/`-separated: `*` matches
//! within one name, `**` across names, `?` one character, `[abc]`/`[a-z]`/`[!a]` one of a
//! set. A pattern without `/` matches a name at any depth (`*.tmp`, `node_modules`); one with
//! `/` matches the whole relative path (a leading `/` is allowed: `/var/cache`), and a
//! directory it matches is left out with everything below it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The tag `--exclude-caches` looks for (https://bford.info/cachedir/).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Exclusion settings, as stored with a job and given per run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Files of patterns (one per line; blank lines and lines starting with `#` ignored),
    /// read at each backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_file: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_caches: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_file_system: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_larger_than: Option<u64>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }

    /// These filters with `more` added (a run's options on top of the job's).
    pub fn merged(&self, more: &Filters) -> Filters {
        let mut f = self.clone();
        f.exclude.extend(more.exclude.iter().cloned());
        f.exclude_file.extend(more.exclude_file.iter().cloned());
        f.exclude_if_present
            .extend(more.exclude_if_present.iter().cloned());
        f.exclude_caches |= more.exclude_caches;
        f.one_file_system |= more.one_file_system;
        f.exclude_larger_than = match (f.exclude_larger_than, more.exclude_larger_than) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        f
    }

    /// Checks the patterns and reads the pattern files.
    pub fn compile(&self, root: &Path) -> Result<Compiled> {
        let mut patterns = Vec::new();
        for p in &self.exclude {
            patterns.push(Pattern::new(p)?);
        }
        for file in &self.exclude_file {
            let text = fs::read_to_string(file)
                .map_err(|e| Error::io(format!("read --exclude-file {file}"), e))?;
            for line in text.lines() {
                let l = line.trim_end();
                if l.trim().is_empty() || l.trim_start().starts_with('#') {
                    continue;
                }
                patterns.push(Pattern::new(l)?);
            }
        }
        for n in &self.exclude_if_present {
            if n.is_empty() || n.contains('/') {
                return Err(Error::Usage(format!(
                    "--exclude-if-present takes a file name, not a path: {n:?}"
                )));
            }
        }
        let root_dev = if self.one_file_system {
            Some(
                fs::metadata(root)
                    .map_err(|e| Error::io(format!("read backup source {}", root.display()), e))?
                    .dev(),
            )
        } else {
            None
        };
        Ok(Compiled {
            patterns,
            if_present: self.exclude_if_present.clone(),
            caches: self.exclude_caches,
            root_dev,
            larger_than: self.exclude_larger_than,
        })
    }
}

/// Parses `500M`, `2G`, `1.5GiB`, `4096` (bytes; K/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (e.g. 500M, 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit in {s:?} (K, M, G or T)")),
    };
    Ok((n * mult as f64) as u64)
}

/// Why an entry was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Pattern,
    LargerThan,
}

/// What to do with a directory's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirContents {
    All,
    /// Leave the directory out entirely (`--exclude-if-present`).
    Nothing,
    /// Record the directory and its CACHEDIR.TAG only (`--exclude-caches`, as GNU tar).
    TagOnly,
    /// Record the directory, not its contents (another file system, `--one-file-system`).
    Empty,
}

#[derive(Clone)]
pub struct Compiled {
    patterns: Vec<Pattern>,
    if_present: Vec<String>,
    caches: bool,
    root_dev: Option<u64>,
    larger_than: Option<u64>,
}

impl Compiled {
    /// A filter that leaves nothing out.
    pub fn none() -> Compiled {
        Compiled {
            patterns: Vec::new(),
            if_present: Vec::new(),
            caches: false,
            root_dev: None,
            larger_than: None,
        }
    }

    /// Whether the entry at `rel` (relative path bytes) is left out.
    pub fn skip(&self, rel: &[u8], m: &fs::Metadata) -> Option<Skip> {
        if self.patterns.iter().any(|p| p.matches(rel)) {
            return Some(Skip::Pattern);
        }
        if m.is_file() && self.larger_than.is_some_and(|n| m.len() > n) {
            return Some(Skip::LargerThan);
        }
        None
    }

    /// What of directory `abs` (with metadata `m`) is backed up.
    pub fn dir_contents(&self, abs: &Path, m: &fs::Metadata) -> DirContents {
        if self
            .if_present
            .iter()
            .any(|n| fs::symlink_metadata(abs.join(n)).is_ok())
        {
            return DirContents::Nothing;
        }
        if self.root_dev.is_some_and(|d| d != m.dev()) {
            return DirContents::Empty;
        }
        if self.caches && is_cache_dir(abs) {
            return DirContents::TagOnly;
        }
        DirContents::All
    }
}

fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a symlink, and a FIFO there does not block.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(dir.join(CACHEDIR_TAG))
    else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = Vec::with_capacity(CACHEDIR_SIGNATURE.len());
    let _ = f
        .take(CACHEDIR_SIGNATURE.len() as u64)
        .read_to_end(&mut head);
    head == CACHEDIR_SIGNATURE
}

/// One compiled glob.
#[derive(Clone, Debug)]
pub struct Pattern {
    glob: Vec<u8>,
    /// No `/`: matched against each name; else against the whole relative path.
    name_only: bool,
}

impl Pattern {
    pub fn new(p: &str) -> Result<Pattern> {
        let t = p.trim_start_matches('/');
        let t = t.trim_end_matches('/');
        if t.is_empty() {
            return Err(Error::Usage(format!("empty --exclude pattern {p:?}")));
        }
        let mut depth = 0i32;
        for c in t.bytes() {
            match c {
                b'[' => depth += 1,
                b']' if depth > 0 => depth -= 1,
                _ => {}
            }
        }
        if depth != 0 {
            return Err(Error::Usage(format!(
                "--exclude pattern {p:?} has an unclosed '['"
            )));
        }
        Ok(Pattern {
            glob: t.as_bytes().to_vec(),
            name_only: !p.trim_end_matches('/').contains('/'),
        })
    }

    pub fn matches(&self, rel: &[u8]) -> bool {
        if self.name_only {
            let name = rel.rsplit(|c| *c == b'/').next().unwrap_or(rel);
            glob(&self.glob, name)
        } else {
            glob(&self.glob, rel)
        }
    }
}

/// Glob match over bytes: `**` crosses `/`, `*` and `?` do not.
fn glob(p: &[u8], s: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    if p.starts_with(b"**") {
        let mut rest = &p[2..];
        // `**/` also matches no directory at all.
        if rest.first() == Some(&b'/') {
            if glob(&rest[1..], s) {
                return true;
            }
            rest = &p[2..];
        }
        return (0..=s.len()).any(|i| glob(rest, &s[i..]));
    }
    match p[0] {
        b'*' => {
            for i in 0..=s.len() {
                if glob(&p[1..], &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        b'?' => !s.is_empty() && s[0] != b'/' && glob(&p[1..], &s[1..]),
        b'[' => {
            let Some(end) = p[1..].iter().position(|c| *c == b']').map(|i| i + 1) else {
                return !s.is_empty() && s[0] == b'[' && glob(&p[1..], &s[1..]);
            };
            if s.is_empty() || s[0] == b'/' {
                return false;
            }
            let mut set = &p[1..end];
            let negate = matches!(set.first(), Some(b'!') | Some(b'^'));
            if negate {
                set = &set[1..];
            }
            let c = s[0];
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(&p[end + 1..], &s[1..])
        }
        c => !s.is_empty() && s[0] == c && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p).unwrap().matches(s.as_bytes())
    }

    #[test]
    fn globs() {
        assert!(m("*.tmp", "a/b/c.tmp"));
        assert!(!m("*.tmp", "a/b/c.tmpx"));
        assert!(m("node_modules", "web/node_modules"));
        assert!(m("docs/*.txt", "docs/a.txt"));
        assert!(!m("docs/*.txt", "docs/x/a.txt"));
        assert!(m("docs/**/*.txt", "docs/x/y/a.txt"));
        assert!(m("docs/**/*.txt", "docs/a.txt"));
        assert!(m("/var/cache", "var/cache"));
        assert!(!m("/var/cache", "x/var/cache"));
        assert!(m("**/cache", "x/y/cache"));
        assert!(m("file?.log", "d/file1.log"));
        assert!(!m("file?.log", "d/file10.log"));
        assert!(m("[ab]*.c", "b1.c") && !m("[ab]*.c", "c1.c"));
        assert!(m("[!ab]*.c", "c1.c") && !m("[!ab]*.c", "a1.c"));
        assert!(m("[0-9].txt", "7.txt") && !m("[0-9].txt", "x.txt"));
        assert!(m("build/", "src/build"));
        assert!(Pattern::new("").is_err() && Pattern::new("[abc").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("12 parsecs").is_err() && parse_size("M").is_err());
    }

    #[test]
    fn merging_adds_and_takes_the_stricter_size() {
        let a = Filters {
            exclude: vec!["*.o".into()],
            exclude_larger_than: Some(100),
            ..Default::default()
        };
        let b = Filters {
            exclude: vec!["*.tmp".into()],
            one_file_system: true,
            exclude_larger_than: Some(50),
            ..Default::default()
        };
        let c = a.merged(&b);
        assert_eq!(c.exclude, ["*.o", "*.tmp"]);
        assert!(c.one_file_system);
        assert_eq!(c.exclude_larger_than, Some(50));
    }
}
