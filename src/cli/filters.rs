//! The exclude options shared by `job create`, `job set` and `backup`.

use clap::Args;

use crate::engine::filter::{parse_size, Filters};

#[derive(Args, Debug, Default, Clone)]
pub struct FilterArgs {
    /// Leave out paths matching this glob (`*.tmp`, `node_modules`, `/var/cache`, `**/.git`;
    /// without `/` it matches a name at any depth); repeatable.
    #[arg(long, value_name = "PATTERN", help_heading = "Excludes")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from this file (one per line; `#` comments); repeatable.
    #[arg(long, value_name = "FILE", help_heading = "Excludes")]
    pub exclude_file: Vec<std::path::PathBuf>,
    /// Leave out every directory that contains a file of this name (e.g. `.nobackup`); repeatable.
    #[arg(long, value_name = "NAME", help_heading = "Excludes")]
    pub exclude_if_present: Vec<String>,
    /// Leave out the contents of cache directories marked by a CACHEDIR.TAG (the tag is kept).
    #[arg(long, help_heading = "Excludes")]
    pub exclude_caches: bool,
    /// Stay on the source's file system: other mounts are recorded as empty directories.
    #[arg(long, short = 'x', help_heading = "Excludes")]
    pub one_file_system: bool,
    /// Leave out files larger than this (`500M`, `2G`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Excludes")]
    pub exclude_larger_than: Option<u64>,
}

impl FilterArgs {
    /// True when any exclude option was given.
    pub fn given(&self) -> bool {
        !self.filters().is_empty()
    }

    pub fn filters(&self) -> Filters {
        Filters {
            exclude: self.exclude.clone(),
            exclude_file: self
                .exclude_file
                .iter()
                .map(|p| {
                    std::path::absolute(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                })
                .collect(),
            exclude_if_present: self.exclude_if_present.clone(),
            exclude_caches: self.exclude_caches,
            one_file_system: self.one_file_system,
            exclude_larger_than: self.exclude_larger_than,
        }
    }
}
