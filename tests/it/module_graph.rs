//! Modules point one way: the graph of `use` lines between the files of
//! each crate (`src/`, `crates/*/src/`) has no circle. Run with
//! `cargo test --test it module_graph`.
//!
//! An edge goes from a file to the file of the module a path names: every
//! `use` line (re-exports included) and every `crate::`/`super::`/`self::`
//! path in code, outside comments and outside inline `mod … { }` blocks
//! (test modules). Edges between a module and its own ancestors or
//! descendants are left out: a directory's `mod.rs` (or `lib.rs`) is the
//! room its files live in, declaring them and sharing its types with them;
//! the circles that matter are between files side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file holds (`lib.rs`: the root; `main.rs`: its own crate).
fn module_of(root: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut segs: Module = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    match segs.last().map(String::as_str) {
        Some("main") if segs.len() == 1 => return None,
        Some("lib") if segs.len() == 1 => segs.clear(),
        Some("mod") => {
            segs.pop();
        }
        _ => {}
    }
    Some(segs)
}

/// `a::{b, c::{d}}` as `a::b`, `a::c::d`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap()]);
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for ch in inner.chars() {
        match ch {
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p))
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// The paths a file names: its `use` trees and its inline paths.
fn paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    let mut skip_until: Option<String> = None;
    while let Some(line) = lines.next() {
        if let Some(close) = &skip_until {
            if line == close {
                skip_until = None;
            }
            continue;
        }
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let bare = trimmed
            .strip_prefix("pub(crate) ")
            .or_else(|| trimmed.strip_prefix("pub(super) "))
            .or_else(|| trimmed.strip_prefix("pub "))
            .unwrap_or(trimmed);
        if bare.starts_with("mod ") && bare.trim_end().ends_with('{') {
            skip_until = Some(format!("{indent}}}"));
            continue;
        }
        if let Some(rest) = bare.strip_prefix("use ") {
            let mut tree = rest.to_string();
            while !tree.contains(';') {
                tree.push_str(lines.next().unwrap_or(";"));
            }
            let tree: String = tree[..tree.find(';').unwrap()]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            out.extend(expand(&tree));
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        for start in ["crate::", "super::", "self::"] {
            let mut from = 0;
            while let Some(at) = code[from..].find(start).map(|i| i + from) {
                let before = code[..at].chars().next_back();
                from = at + start.len();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let end = code[at..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .map_or(code.len(), |i| i + at);
                out.push(code[at..end].trim_end_matches(':').to_string());
            }
        }
    }
    out
}

fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .iter()
        .filter_map(|f| Some((module_of(root, f)?, f.clone())))
        .collect();
    let mut g = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let mut edges = BTreeSet::new();
        for path in paths(&text) {
            let mut segs: Vec<&str> = path.split("::").collect();
            let mut base = match segs[0] {
                "crate" => {
                    segs.remove(0);
                    Module::new()
                }
                "self" | "super" => {
                    let mut base = module.clone();
                    if segs[0] == "self" {
                        segs.remove(0);
                    }
                    while segs.first() == Some(&"super") {
                        segs.remove(0);
                        base.pop();
                    }
                    base
                }
                first => {
                    let mut child = module.clone();
                    child.push(first.to_string());
                    if !modules.contains_key(&child) {
                        continue; // another crate
                    }
                    module.clone()
                }
            };
            base.extend(
                segs.iter()
                    .map(|s| s.split(" as ").next().unwrap().to_string()),
            );
            let target = (0..=base.len())
                .rev()
                .map(|k| base[..k].to_vec())
                .find(|m| modules.contains_key(m))
                .unwrap();
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                edges.insert(target);
            }
        }
        g.insert(module.clone(), edges);
    }
    g
}

/// A circle of `g`, if there is one (depth-first search).
fn circle(g: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        g: &BTreeMap<Module, BTreeSet<Module>>,
        m: &Module,
        done: &mut BTreeSet<Module>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            return Some(stack[at..].to_vec());
        }
        if !done.insert(m.clone()) {
            return None;
        }
        stack.push(m.clone());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut done, &mut Vec::new()))
}

fn show(c: &[Module]) -> String {
    c.iter()
        .map(|m| {
            if m.is_empty() {
                "lib".into()
            } else {
                m.join("/")
            }
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_file_imports_its_way_back_to_itself() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![here.join("src")];
    for e in std::fs::read_dir(here.join("crates")).unwrap() {
        roots.push(e.unwrap().path().join("src"));
    }
    for root in roots {
        let g = graph(&root);
        assert!(g.len() > 3, "{} has too few files: {g:?}", root.display());
        if let Some(c) = circle(&g) {
            panic!("{}: an import circle: {}", root.display(), show(&c));
        }
    }
}

#[test]
fn the_graph_sees_a_circle_between_siblings() {
    // The checker itself: two files naming each other are a circle, a
    // parent and its child are not.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("room")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod room;\nuse crate::room::a::A;\n").unwrap();
    std::fs::write(
        src.join("room/mod.rs"),
        "pub mod a;\npub mod b;\npub use a::A;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("room/a.rs"),
        "use super::b::{B, other::{C}};\npub struct A;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("room/b.rs"),
        "// crate::room::a is only named here\npub fn f() { let _ = super::super::room::a::A; }\n\
         #[cfg(test)]\nmod tests {\n    use crate::lib;\n}\n",
    )
    .unwrap();
    let c = circle(&graph(src)).expect("a -> b -> a");
    assert_eq!(show(&c), "room/a -> room/b");
    std::fs::write(src.join("room/b.rs"), "use super::A;\npub struct B;\n").unwrap();
    assert_eq!(
        circle(&graph(src)),
        None,
        "b -> room (its parent) is no circle"
    );
}
