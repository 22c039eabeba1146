//! User and group names (from `/etc/passwd` and `/etc/group`): recorded with each entry, and
//! preferred over the numeric ids when root restores on another machine (as GNU tar does).

use std::collections::HashMap;

#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    uid_of: HashMap<String, u32>,
    gid_of: HashMap<String, u32>,
}

fn parse(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_string();
            let _pw = f.next()?;
            let id = f.next()?.parse().ok()?;
            (!name.is_empty()).then_some((name, id))
        })
        .collect()
}

impl Names {
    /// This machine's names (none when the files cannot be read).
    pub fn load() -> Names {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Names::from_files(&read("/etc/passwd"), &read("/etc/group"))
    }

    pub fn from_files(passwd: &str, group: &str) -> Names {
        let mut n = Names::default();
        for (name, id) in parse(passwd) {
            n.users.entry(id).or_insert_with(|| name.clone());
            n.uid_of.entry(name).or_insert(id);
        }
        for (name, id) in parse(group) {
            n.groups.entry(id).or_insert_with(|| name.clone());
            n.gid_of.entry(name).or_insert(id);
        }
        n
    }

    pub fn user(&self, uid: u32) -> Option<String> {
        self.users.get(&uid).cloned()
    }

    pub fn group(&self, gid: u32) -> Option<String> {
        self.groups.get(&gid).cloned()
    }

    /// The uid to restore: the local id of the recorded name if this machine has it, else
    /// the recorded id.
    pub fn uid(&self, name: Option<&str>, uid: u32) -> u32 {
        name.and_then(|n| self.uid_of.get(n).copied())
            .unwrap_or(uid)
    }

    pub fn gid(&self, name: Option<&str>, gid: u32) -> u32 {
        name.and_then(|n| self.gid_of.get(n).copied())
            .unwrap_or(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_and_fall_back_to_ids() {
        let n = Names::from_files(
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n",
            "root:x:0:\nstaff:x:50:alice\n",
        );
        assert_eq!(n.user(1000).as_deref(), Some("alice"));
        assert_eq!(n.group(50).as_deref(), Some("staff"));
        assert_eq!(n.user(4242), None);
        assert_eq!(n.uid(Some("alice"), 7), 1000);
        assert_eq!(n.uid(Some("mallory"), 7), 7);
        assert_eq!(n.uid(None, 7), 7);
        assert_eq!(n.gid(Some("staff"), 1), 50);
    }
}
