//! The crate's modules depend on each other in one direction only: from the
//! `Pulse` handle down through the engine to the parts it owns. A module
//! never reaches back up into one that uses it.
//!
//! Read from the source: every `crate::module` path in a module's files
//! (doc comments aside) is an edge from that module to `module`; paths to
//! the crate root's re-exports (`crate::Pulse`) count as edges to the module
//! that defines the item. The test fails on any cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level module of `file` (relative to `src/`): `isolation/pool.rs` ->
/// `isolation`, `engine.rs` -> `engine`; `None` for `lib.rs`.
fn module_of(file: &Path, src: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let module = first.trim_end_matches(".rs").to_owned();
    (module != "lib").then_some(module)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Identifiers following each `crate::` in `line`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let ident: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !ident.is_empty() {
            found.push(ident);
        }
        rest = after;
    }
    // `use crate::{a::X, b::Y};`
    if let Some(group) = line.trim_start().strip_prefix("use crate::{") {
        for part in group.split(',') {
            let ident: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.push(ident);
            }
        }
    }
    found
}

/// The crate root's re-exports: item name -> defining module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let (path, items) = match rest.split_once("::{") {
            Some((path, items)) => (path, items.trim_end_matches('}').to_owned()),
            None => {
                let (path, item) = rest.rsplit_once("::").unwrap();
                (path, item.to_owned())
            }
        };
        let module = path.split("::").next().unwrap();
        let module = if module == "integrations" {
            path.split("::").nth(1).unwrap()
        } else {
            module
        };
        for item in items.split(',') {
            map.insert(item.trim().to_owned(), module.to_owned());
        }
    }
    map
}

#[test]
fn module_dependencies_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let items = reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeSet::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file, &src) else {
            continue;
        };
        modules.insert(from.clone());
        // `integrations` is a folder of independent modules, one per feature.
        let from = if from == "integrations" {
            file.file_stem().unwrap().to_str().unwrap().to_owned()
        } else {
            from
        };
        let text = fs::read_to_string(file).unwrap();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for ident in crate_paths(code) {
                let to = items.get(&ident).cloned().unwrap_or(ident);
                if to != from && to != "integrations" {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    assert!(
        modules.contains("engine") && edges.get("pulse").is_some_and(|e| e.contains("engine")),
        "the scan found no pulse -> engine edge: {edges:?}"
    );
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("module import cycle: {}", cycle.join(" -> "));
        }
    }
}
