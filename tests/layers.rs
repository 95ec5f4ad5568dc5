//! The layer rule of `src/lib.rs`: a module imports only from its own layer or a layer below.
//!
//! Reads every `.rs` file under `src/`, finds each `crate::X` path outside comments (`use
//! crate::X...`, `crate::X::f()`, `crate::{X, Y}`, `$crate::X`), and fails naming file:line for
//! any `X` in a higher layer than the file's own top-level module. `super::` paths are not
//! followed: they stay inside a top-level module. No root needed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The layers, bottom first: the table of `src/lib.rs`. Every top-level module is in exactly one.
const LAYERS: &[&[&str]] = &[
    &["wire", "errors"],
    &["forward"],
    &["sys"],
    &["net"],
    &["engine"],
    &["control"],
    &["cni", "cli", "lab", "fuzzing"],
];

/// Files under `src/` that belong to no module of the library: its root and the binaries.
const OUTSIDE: &[&str] = &["lib.rs", "main.rs", "bin"];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `text` without its `//` comments (doc comments included), lines kept in place.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        // A `//` not preceded by `:` (so "http://" in a string stays code).
        let cut = line
            .match_indices("//")
            .find(|(i, _)| !line[..*i].ends_with(':'))
            .map_or(line.len(), |(i, _)| i);
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The top-level modules `src` names through `crate::`, each with its 1-based line.
fn crate_refs(src: &str) -> Vec<(usize, String)> {
    let src = code(src);
    let line_of = |at: usize| src[..at].matches('\n').count() + 1;
    let mut refs = Vec::new();
    for (at, _) in src.match_indices("crate::") {
        if src[..at].chars().next_back().is_some_and(is_ident) {
            continue; // `mycrate::`
        }
        let rest = &src[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c}`: the first name of every item at the group's top level.
            let (mut depth, mut item_start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_ident(c) => {
                        let name: String =
                            group[i..].chars().take_while(|c| is_ident(*c)).collect();
                        refs.push((line_of(at + "crate::{".len() + i), name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                refs.push((line_of(at), name));
            }
        }
    }
    refs
}

/// The references in `src` (a file of top-level module `module`) to a higher layer, as
/// `line: module -> higher (layer a < b)`.
fn upward(module: &str, src: &str) -> Vec<String> {
    let own = layer(module).expect("a module of the table");
    crate_refs(src)
        .into_iter()
        .filter_map(|(line, to)| {
            let theirs = layer(&to)?; // not a module: an item of lib.rs, e.g. a macro
            (theirs > own)
                .then(|| format!("{line}: {module} (layer {own}) imports {to} (layer {theirs})"))
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = String::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let first = rel
            .components()
            .next()
            .expect("a path")
            .as_os_str()
            .to_string_lossy();
        if OUTSIDE.contains(&first.as_ref()) {
            continue;
        }
        let module = first.trim_end_matches(".rs");
        assert!(
            layer(module).is_some(),
            "src/{}: module `{module}` is in no layer: add it to LAYERS in tests/layers.rs and to \
             the table in src/lib.rs",
            rel.display()
        );
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for v in upward(module, &text) {
            let _ = writeln!(bad, "src/{}:{v}", rel.display());
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} files under {}", src.display());
    assert!(
        bad.is_empty(),
        "imports from a higher layer (the rule is in src/lib.rs):\n{bad}"
    );
}

/// Every module lib.rs declares is in the table, and every module of the table is declared.
#[test]
fn the_table_names_every_module_of_lib_rs() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("src/lib.rs");
    let declared: Vec<String> = code(&lib)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            Some(
                l.strip_prefix("mod ")?
                    .strip_suffix(';')?
                    .trim()
                    .to_string(),
            )
        })
        .collect();
    for m in &declared {
        assert!(
            layer(m).is_some(),
            "lib.rs declares `{m}`, which is in no layer of LAYERS"
        );
    }
    for m in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            declared.iter().any(|d| d == m),
            "LAYERS names `{m}`, which lib.rs does not declare"
        );
    }
}

/// The checker itself: it sees an upward path in each form, and nothing in comments.
#[test]
fn the_checker_finds_upward_paths() {
    let src = "use crate::wire::mac::MacAddr;\n\
               use crate::engine::observe;\n\
               fn f() { crate::control::daemon::run(); }\n\
               use crate::{errors::chain,\n    net::Netns};\n\
               /// See [`crate::cli`].\n\
               let x = 1; // crate::lab\n\
               macro_rules! m { () => { $crate::sys::yield_cpu_to_forwarding() } }\n\
               use mycrate::cli;\n";
    assert_eq!(
        upward("forward", src),
        [
            "2: forward (layer 1) imports engine (layer 4)",
            "3: forward (layer 1) imports control (layer 5)",
            "5: forward (layer 1) imports net (layer 3)",
            "8: forward (layer 1) imports sys (layer 2)",
        ]
    );
    assert!(upward("cli", src).is_empty());
}
