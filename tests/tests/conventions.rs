//! The workspace's own conventions that no tool checks for us (needs neither root nor KVM):
//! - private `use` statements come in groups, std/core/alloc first, then other crates, then
//!   this crate (`crate::`, `super::`, `self::`), one kind per group, groups separated by a
//!   blank line (see `rustfmt.toml`);
//! - no two modules of the product (outside tests and benchmarks) share a name, in files or
//!   inline;
//! - `docs/architecture.md`'s crate table lists exactly the workspace's crates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// Where a `use` path starts: 0 the standard library, 1 another crate, 2 this crate.
fn kind(root: &str) -> u8 {
    match root {
        "std" | "core" | "alloc" => 0,
        "crate" | "super" | "self" => 2,
        _ => 1,
    }
}

/// The root of a private `use` statement that starts on `line`, with its indentation.
fn use_root(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start().strip_prefix("use ")?;
    let rest = rest.trim_start_matches("::");
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some((indent, &rest[..end]))
}

/// Every place in `text` where the grouping is broken, as "line N: why".
fn misgrouped(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Per run of `use` groups: its indentation, the kinds seen so far, the current group's kind.
    let mut run: Option<(usize, Vec<u8>)> = None;
    let mut in_group = false;
    let mut continuation = false;
    for (n, line) in text.lines().enumerate() {
        if continuation {
            continuation = !line.trim_end().ends_with(';');
            continue;
        }
        if let Some((indent, root)) = use_root(line) {
            continuation = !line.trim_end().ends_with(';');
            let k = kind(root);
            match &mut run {
                Some((run_indent, kinds)) if *run_indent == indent => {
                    let last = kinds.last().copied();
                    if in_group && last != Some(k) {
                        problems.push(format!(
                            "line {}: `{root}` in a group of another kind",
                            n + 1
                        ));
                    } else if !in_group {
                        if last.is_some_and(|l| l >= k) {
                            problems.push(format!(
                                "line {}: group of `{root}` after a group of its kind or a later one",
                                n + 1
                            ));
                        }
                        kinds.push(k);
                    }
                }
                _ => run = Some((indent, vec![k])),
            }
            in_group = true;
        } else if line.trim().is_empty() {
            in_group = false;
        } else if !line.trim_start().starts_with("#[") && !line.trim_start().starts_with("//") {
            run = None;
            in_group = false;
        }
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !(name == "target" || name.starts_with('.')) {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_are_grouped_std_then_other_crates_then_this_crate() {
    let root = workspace();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for p in misgrouped(&text) {
            problems.push(format!("{}: {p}", file.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_finds_what_it_should() {
    let good = "use std::io;\n\nuse serde::X;\n\nuse crate::a;\nuse super::b;\n\nfn f() {}\n";
    assert!(misgrouped(good).is_empty(), "{:?}", misgrouped(good));
    let mixed = "use std::io;\nuse serde::X;\n";
    assert_eq!(misgrouped(mixed).len(), 1, "{:?}", misgrouped(mixed));
    let order = "use crate::a;\n\nuse std::io;\n";
    assert_eq!(misgrouped(order).len(), 1, "{:?}", misgrouped(order));
    let multi = "use std::{\n    io,\n    fs,\n};\n\nuse serde::{A,\n    B};\n";
    assert!(misgrouped(multi).is_empty(), "{:?}", misgrouped(multi));
    let nested = "mod tests {\n    use super::*;\n    use std::io;\n}\n";
    assert_eq!(misgrouped(nested).len(), 1, "{:?}", misgrouped(nested));
    let mods = "pub(crate) mod a {\n    mod b {\n    }\n}\nmod c;\npub mod d;\n";
    assert_eq!(inline_modules(mods), ["a", "b"]);
}

/// Module names every crate may have once, with the same meaning everywhere.
const CONVENTIONAL: [&str; 5] = ["lib", "main", "mod", "error", "tests"];

/// The names of the modules written inline in `text` (`mod name {`).
fn inline_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(" {")?;
            Some(name.to_string())
        })
        .collect()
}

/// Whether `path` (relative to the workspace) is test or benchmark code.
fn is_test_code(path: &Path) -> bool {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next().unwrap_or_default();
    first == "tests" || first == "benches" || first == "fuzz" || parts.any(|p| p == "tests")
}

#[test]
fn product_modules_have_names_of_their_own() {
    let root = workspace();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("inside the workspace");
        if is_test_code(rel) {
            continue;
        }
        let stem = rel
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        if !CONVENTIONAL.contains(&stem.as_str()) {
            by_name
                .entry(stem)
                .or_default()
                .push(rel.display().to_string());
        }
    }
    let shared: Vec<_> = by_name.values().filter(|paths| paths.len() > 1).collect();
    assert!(shared.is_empty(), "module names used twice: {shared:?}");
}

/// The workspace members' package names, from the root and member manifests.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let list = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .expect("a one-line members list");
    let mut names: Vec<String> = list
        .trim_end_matches(']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|dir| {
            let member = std::fs::read_to_string(root.join(dir).join("Cargo.toml"))
                .expect("member manifest");
            member
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .expect("package name")
                .trim_matches('"')
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_architecture_documents_exactly_the_workspace_crates() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("architecture");
    let section = doc
        .split("\n## Crates\n")
        .nth(1)
        .expect("a Crates section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    // Table rows: | `crate` | `folder/` | what it is |
    let mut documented: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    documented.sort();
    assert_eq!(documented, members(&root));
}
