//! The shape of the code, checked: `cargo test --test architecture`.
//!
//! - No two modules depend on each other, directly or round about: the
//!   graph of `crate::…`/`super::…` paths between the files of `src/` has no
//!   cycle, and neither has the graph of its top-level modules (`http`,
//!   `ws`, `app`, `domain`, …). Test code (`#[cfg(test)]` modules and
//!   `tests/` folders inside `src/`) is left out.
//! - The business does not see the server: nothing in `src/domain` or
//!   `src/rules` names `AppState`, and `src/rules` does no I/O (no `sqlx`,
//!   no `tokio`, no store).
//! - Every transaction of a command begins in one place, the runner.
//!
//! It reads the source as text, so it needs no tool beyond the test itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files of the crate, by module path (`app::runner`, `lib` → "").
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // Test-only folders inside src/.
                if path.file_name().is_some_and(|n| n == "tests") {
                    continue;
                }
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "main.rs"))
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            (
                parts.join("::"),
                without_tests(&std::fs::read_to_string(&p).unwrap()),
            )
        })
        .collect()
}

/// The text of a file without its `#[cfg(test)]` items (test modules and
/// test-only helpers), and without comments.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            // Skip the next item: to the end of its braces or its `;`.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                opened |= l.contains('{');
                if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The module paths a file refers to, resolved against the known modules.
fn references(
    module: &str,
    is_mod_file: bool,
    text: &str,
    known: &BTreeSet<String>,
) -> BTreeSet<String> {
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_string())
    };
    // `super` of `a::b` (in a::b.rs) is `a`; of `a::b` in a/b/mod.rs it is also `a`.
    let _ = is_mod_file;
    let sup = parent(module);
    let mut paths = Vec::new();
    let tokens: Vec<&str> = text
        .split(|c: char| {
            !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{' || c == '}' || c == ',')
        })
        .collect();
    for t in tokens {
        for (prefix, base) in [("crate::", String::new()), ("super::", sup.clone())] {
            let mut rest = t;
            while let Some(i) = rest.find(prefix) {
                let tail = &rest[i + prefix.len()..];
                expand(&base, tail, &mut paths);
                rest = tail;
            }
        }
    }
    let mut out = BTreeSet::new();
    for p in paths {
        // The longest known module that is a prefix of the path.
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segs.len()).rev() {
            let candidate = segs[..n].join("::");
            if known.contains(&candidate) {
                if candidate != module {
                    out.insert(candidate);
                }
                break;
            }
        }
    }
    out
}

/// `a::{b, c::d}` after a prefix, as full paths from `base`.
fn expand(base: &str, tail: &str, out: &mut Vec<String>) {
    let join = |p: &str| {
        if base.is_empty() {
            p.to_string()
        } else {
            format!("{base}::{p}")
        }
    };
    match tail.find('{') {
        Some(i) if !tail[..i].contains(',') && !tail[..i].contains('}') => {
            let head = tail[..i].trim_end_matches("::");
            let inner = tail[i + 1..].split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let item = item.trim().trim_start_matches('{');
                if !item.is_empty() {
                    out.push(join(&format!("{head}::{item}")));
                }
            }
        }
        _ => {
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(join(path.trim_end_matches(':')));
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = modules();
    let known: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, text)| (m.clone(), references(m, false, text, &known)))
        .collect()
}

/// Every cycle's members (strongly connected components of more than one).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The edges of `g` among the members of `scc`, to show a cycle.
fn show(g: &BTreeMap<String, BTreeSet<String>>, scc: &[String]) -> String {
    let mut lines = Vec::new();
    for a in scc {
        for b in &g[a] {
            if scc.contains(b) {
                lines.push(format!("  {a} -> {b}"));
            }
        }
    }
    lines.join("\n")
}

#[test]
fn no_two_files_depend_on_each_other() {
    let g = graph();
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between files of src/:\n{}",
        found
            .iter()
            .map(|c| show(&g, c))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in graph() {
        if m.is_empty() {
            continue; // lib.rs assembles everything
        }
        let entry = g.entry(top(&m)).or_default();
        for d in deps {
            if !d.is_empty() && top(&d) != top(&m) {
                entry.insert(top(&d));
            }
        }
    }
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules:\n{}",
        found
            .iter()
            .map(|c| show(&g, c))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn the_business_does_not_see_the_server() {
    for (m, text) in modules() {
        let business = m.starts_with("domain") || m.starts_with("rules");
        if business {
            assert!(!text.contains("AppState"), "{m} names AppState");
            assert!(!text.contains("crate::app"), "{m} reaches into app");
            assert!(!text.contains("crate::hub"), "{m} reaches into the hub");
        }
        if m.starts_with("rules") {
            for io in ["sqlx", "tokio", "crate::store", "MySqlPool"] {
                assert!(!text.contains(io), "{m} is a rule but uses {io}");
            }
        }
    }
}

#[test]
fn every_command_transaction_begins_in_the_runner() {
    // Start-up seeding is not a command; everything else goes through
    // `app::runner`.
    let allowed = ["app::runner", "seed"];
    for (m, text) in modules() {
        if text.contains(".begin()") {
            assert!(allowed.contains(&m.as_str()), "{m} begins a transaction");
        }
    }
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    g.insert("d".into(), ["a".to_string()].into());
    assert_eq!(
        cycles(&g),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    let known: BTreeSet<String> = ["ws", "ws::session", "ws::commands", "http::extract", "http"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let refs = references(
        "ws::session",
        false,
        "use super::commands::{self, Change};\nuse crate::http::extract::{ApiQuery, bearer_token};",
        &known,
    );
    assert_eq!(
        refs,
        ["http::extract", "ws::commands"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
