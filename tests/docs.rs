//! The tables in docs/ that mirror the code, checked against it (no root needed): a drop reason,
//! rule, `--port` key, configuration key, metric or command added to (or removed from) the code
//! without its row in docs/ fails here, and so does a row the code does not have.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use umacvlan::control::config::Config;
use umacvlan::control::proto::StatsView;
use umacvlan::forward::{DropReason, Rule};

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the first table after the heading line `heading` (exact), as trimmed cells.
fn table(text: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| *l == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let rows: Vec<Vec<String>> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its |---| line
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(!rows.is_empty(), "no table under {heading:?}");
    rows
}

/// `` `x` `` → `x`; panics on a cell that is not one code span.
fn code(cell: &str) -> String {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .filter(|c| !c.contains('`'))
        .unwrap_or_else(|| panic!("{cell:?} is not one `code` span"))
        .to_string()
}

/// Asserts that `documented` holds exactly `expected`, in any order, with no duplicate.
fn same(what: &str, documented: Vec<String>, expected: Vec<String>) {
    let doc: BTreeSet<_> = documented.iter().cloned().collect();
    assert_eq!(doc.len(), documented.len(), "{what}: a row appears twice");
    let code: BTreeSet<_> = expected.into_iter().collect();
    let missing: Vec<_> = code.difference(&doc).collect();
    let extra: Vec<_> = doc.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing from docs/: {missing:?}; in docs/ but not in the code: {extra:?}"
    );
}

#[test]
fn drop_reason_table_is_drop_reason_all() {
    let rows = table(&doc("reference.md"), "### Drop reasons");
    let documented = rows.iter().map(|r| code(&r[0])).collect();
    same(
        "drop reasons (docs/reference.md)",
        documented,
        DropReason::ALL
            .iter()
            .map(|r| r.name().to_string())
            .collect(),
    );
    // The meaning column is the code's, word for word.
    for r in DropReason::ALL {
        let row = rows.iter().find(|row| code(&row[0]) == r.name()).unwrap();
        assert_eq!(
            row[1],
            r.meaning(),
            "meaning of {} in docs/reference.md",
            r.name()
        );
    }
}

#[test]
fn every_rule_has_its_section_in_design() {
    let design = doc("design.md");
    let documented = design
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .filter(|n| n.starts_with("rx_") || n.starts_with("tx_"))
        .map(str::to_string)
        .collect();
    same(
        "rule sections (docs/design.md)",
        documented,
        Rule::ALL.iter().map(|r| r.name().to_string()).collect(),
    );
    // Each section quotes the rule's own text (Rule::text).
    for r in Rule::ALL {
        let heading = format!("### `{}`", r.name());
        let section: String = design
            .lines()
            .skip_while(|l| *l != heading)
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            section.contains(&format!("> {}", r.text())),
            "docs/design.md, {heading}: does not quote the rule's text {:?}",
            r.text()
        );
    }
}

#[test]
fn port_keys_table_is_config_keys() {
    let rows = table(&doc("reference.md"), "### `--port` keys");
    same(
        "--port keys (docs/reference.md)",
        rows.iter().map(|r| code(&r[0])).collect(),
        umacvlan::control::spec::CONFIG_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect(),
    );
    // The keys beyond --port's are named in the paragraph after the table.
    let reference = doc("reference.md");
    for k in umacvlan::control::spec::LINK_KEYS
        .iter()
        .chain(umacvlan::control::spec::STATE_KEYS)
    {
        assert!(
            reference.contains(&format!("`{k}`")),
            "docs/reference.md does not name the link/trace key {k:?}"
        );
    }
}

/// The keys a table of the configuration file accepts, from its own refusal of an unknown key
/// (serde lists the expected fields).
fn config_keys(toml: &str) -> Vec<String> {
    let err = Config::parse("t.toml", toml).unwrap_err().to_string();
    let expected = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("{err}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn config_keys_table_is_the_config_files_keys() {
    let rows = table(&doc("reference.md"), "## Configuration keys");
    let documented = rows
        .iter()
        .map(|r| format!("{} {}", r[1], code(&r[0])))
        .collect();
    let mut expected = Vec::new();
    let tables = [
        ("top level", "zz_unknown = 1\n"),
        ("`[parents.NAME]`", "[parents.eth0]\nzz_unknown = 1\n"),
        (
            "`[[ports]]`",
            "[[ports]]\nname = \"a\"\nparent = \"eth0\"\nzz_unknown = 1\n",
        ),
    ];
    for (place, toml) in tables {
        let keys = config_keys(toml);
        assert!(!keys.is_empty(), "{place}");
        expected.extend(keys.into_iter().map(|k| format!("{place} {k}")));
    }
    same(
        "configuration keys (docs/reference.md)",
        documented,
        expected,
    );
}

#[test]
fn metrics_table_is_what_metrics_serves() {
    // Every family is described even with nothing to count: take the names from the encoder.
    let text = umacvlan::control::metrics::encode(&StatsView::default());
    let served = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            }
        })
        .collect::<Vec<_>>();
    assert!(served.len() > 10, "{text}");
    let rows = table(&doc("reference.md"), "## Metrics");
    same(
        "metrics (docs/reference.md)",
        rows.iter().map(|r| code(&r[0])).collect(),
        served,
    );
}

#[test]
fn commands_table_is_the_cli() {
    let cli = umacvlan::cli::Cli::command();
    let mut expected = vec!["umacvlan-cni".to_string()];
    for sub in cli.get_subcommands() {
        let nested: Vec<_> = sub
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if nested.is_empty() {
            expected.push(format!("umacvlan {}", sub.get_name()));
        } else {
            for n in nested {
                expected.push(format!("umacvlan {} {}", sub.get_name(), n.get_name()));
            }
        }
    }
    let rows = table(&doc("reference.md"), "## Commands");
    same(
        "commands (docs/reference.md)",
        rows.iter().map(|r| code(&r[0])).collect(),
        expected,
    );
}

#[test]
fn relative_links_between_docs_resolve() {
    // Every `](file.md#anchor)` and `](#anchor)` in README.md and docs/ names a heading that
    // exists (GitHub's anchor rules: lower case, spaces to '-', punctuation dropped).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        "README.md",
        "docs/guide.md",
        "docs/reference.md",
        "docs/design.md",
        "docs/performance.md",
    ];
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let anchors = |text: &str| -> BTreeSet<String> {
        let mut fence = false;
        text.lines()
            .filter(|l| {
                if l.starts_with("```") {
                    fence = !fence;
                }
                !fence && l.starts_with('#')
            })
            .map(|l| {
                l.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter_map(|c| match c {
                        ' ' => Some('-'),
                        c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    };
    let mut broken = Vec::new();
    for f in files {
        let text = read(f);
        let dir = Path::new(f).parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let Some(end) = target.find(')') else {
                continue;
            };
            let target = &target[..end];
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file_path = if file.is_empty() {
                f.to_string()
            } else {
                dir.join(file).to_string_lossy().into_owned()
            };
            let Ok(other) = std::fs::read_to_string(root.join(&file_path)) else {
                broken.push(format!("{f}: {target} (no file {file_path})"));
                continue;
            };
            if !anchor.is_empty() && !anchors(&other).contains(anchor) {
                broken.push(format!("{f}: {target}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

/// The names serde expects where it refuses `bad` (its "expected one of `a`, `b`" list).
fn serde_expected<T: serde::de::DeserializeOwned + std::fmt::Debug>(bad: &str) -> Vec<String> {
    let err = serde_json::from_str::<T>(bad).unwrap_err().to_string();
    let list = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("{err}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn control_protocol_names_are_documented() {
    use umacvlan::control::proto::{ErrorKind, LinkSpec, Request};
    let reference = doc("reference.md");
    let section: String = reference
        .lines()
        .skip_while(|l| *l != "## The control protocol")
        .take_while(|l| !l.starts_with("## ") || *l == "## The control protocol")
        .collect::<Vec<_>>()
        .join("\n");
    let names = [
        (
            "command",
            serde_expected::<Request>(r#"{"cmd":"zz-unknown"}"#),
        ),
        (
            "link-add field",
            serde_expected::<LinkSpec>(r#"{"name":"a","zz_unknown":1}"#),
        ),
        ("error kind", serde_expected::<ErrorKind>(r#""zz-unknown""#)),
    ];
    for (what, list) in names {
        assert!(list.len() > 2, "{what}: {list:?}");
        let missing: Vec<_> = list
            .iter()
            .filter(|n| !section.contains(&format!("`{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/reference.md, The control protocol: {what}s not named: {missing:?}"
        );
    }
}
