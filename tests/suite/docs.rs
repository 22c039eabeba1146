//! SECURITY.md backs each claim with a named test (`file::test`); every name it gives must
//! exist, so the threat model cannot silently drift away from the suite.

use std::path::Path;

fn sources() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = String::new();
    fn walk(p: &Path, out: &mut String) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&format!("\n//FILE {}\n", p.display()));
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    walk(&root.join("src"), &mut all);
    walk(&root.join("tests"), &mut all);
    all
}

#[test]
fn every_test_security_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let src = sources();
    let mut named = 0;
    for part in doc.split('`').skip(1).step_by(2) {
        let Some((module, test)) = part.rsplit_once("::") else {
            continue;
        };
        if test == "test_name" {
            continue;
        }
        if !module
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == ':')
            || module.is_empty()
        {
            continue;
        }
        if test == "*" {
            let f = root.join(format!("tests/suite/{module}.rs"));
            assert!(
                f.exists(),
                "SECURITY.md names {part}, but {} does not exist",
                f.display()
            );
            named += 1;
            continue;
        }
        if !test
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        assert!(
            src.contains(&format!("fn {test}(")),
            "SECURITY.md names the test {part}, which does not exist"
        );
        named += 1;
    }
    // Bare test names (without a module) are checked too.
    for part in doc.split('`').skip(1).step_by(2) {
        if part.starts_with("v2_vectors_") {
            assert!(
                src.contains(&format!("fn {part}(")),
                "{part} does not exist"
            );
            named += 1;
        }
    }
    assert!(named >= 30, "SECURITY.md names only {named} tests");
}
