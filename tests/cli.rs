//! Drives the built `umacvlan` binary: `--help`, `trace` answers and errors, exit codes.
//! These need no root.

use std::process::{Command, Output};

fn umacvlan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_umacvlan"))
        .args(args)
        .output()
        .expect("run umacvlan")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TABLE: &[&str] = &[
    "trace",
    "--parent-mac",
    "02:00:00:00:01:00",
    "--port",
    "name=c1,mode=bridge,mac=02:00:00:00:00:01",
    "--port",
    "name=c2,mode=vepa,mac=02:00:00:00:00:02",
    "--port",
    "name=c3,mode=private,mac=02:00:00:00:00:03",
    "--port",
    "name=c4,mode=bridge,mac=02:00:00:00:00:04",
];

fn trace_json(extra: &[&str]) -> serde_json::Value {
    let mut args = TABLE.to_vec();
    args.extend_from_slice(extra);
    args.push("-j");
    let o = umacvlan(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

#[test]
fn trace_reflected_bridge_broadcast_reaches_only_vepa() {
    let v = trace_json(&["--src", "02:00:00:00:00:01", "--dst", "ff:ff:ff:ff:ff:ff"]);
    assert_eq!(v["receivers"], serde_json::json!(["c2"]));
    assert_eq!(v["rule"]["name"], "rx_group_from_bridge");
    assert_eq!(v["to_host"], true);
    let skipped = v["skipped"].as_array().unwrap();
    let reason = |port: &str| {
        skipped
            .iter()
            .find(|s| s["port"] == port)
            .map(|s| s["reason"].as_str().unwrap().to_string())
    };
    assert_eq!(reason("c1").as_deref(), Some("own_source"));
    assert_eq!(reason("c3").as_deref(), Some("mode_isolation"));
    assert_eq!(reason("c4").as_deref(), Some("mode_isolation"));
}

#[test]
fn trace_bridge_unicast_stays_local() {
    let v = trace_json(&[
        "--from",
        "c1",
        "--src",
        "02:00:00:00:00:01",
        "--dst",
        "02:00:00:00:00:04",
    ]);
    assert_eq!(v["receivers"], serde_json::json!(["c4"]));
    assert_eq!(v["to_wire"], false);
    assert_eq!(v["rule"]["name"], "tx_bridge_unicast_local");
}

#[test]
fn trace_text_names_rule_and_reasons() {
    let mut args = TABLE.to_vec();
    args.extend_from_slice(&["--src", "02:00:00:00:00:09", "--dst", "02:00:00:00:00:77"]);
    let o = umacvlan(&args);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("§2 step 2.3"), "{out}");
    assert!(out.contains("unknown_destination"), "{out}");
    assert!(out.contains("host   yes"), "{out}");
}

#[test]
fn trace_runt_is_a_drop_not_a_decision() {
    let v = trace_json(&[
        "--src",
        "02:00:00:00:00:09",
        "--dst",
        "02:00:00:00:00:01",
        "--len",
        "13",
    ]);
    assert_eq!(v["dropped"], "runt");
}

#[test]
fn bad_input_exits_2_with_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--port", "name=c9,mode=bridged"],
            "unknown mode \"bridged\"",
        ),
        (
            &["--port", "name=c9,mac=02:00:00:00:00:01"],
            "c1 and c9 cannot both be up with MAC",
        ),
        (&["--from", "nosuch"], "--from nosuch: no such port"),
        (
            &["--port", "name=c9,mode=passthru"],
            "must be the parent's only port",
        ),
    ];
    for (extra, want) in cases {
        let mut args = TABLE.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--src", "02:00:00:00:00:09", "--dst", "ff:ff:ff:ff:ff:ff"]);
        let o = umacvlan(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

#[test]
fn help_teaches_the_grammar() {
    let o = umacvlan(&["trace", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("name=N[,mode=M]") && out.contains("Example"),
        "{out}"
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    let o = umacvlan(&["completions", "bash"]);
    assert!(o.status.success());
    let script = stdout(&o);
    assert!(
        script.contains("_umacvlan()") && script.contains("link"),
        "{script}"
    );
    let dir = std::env::temp_dir().join(format!("umv-{}-man", std::process::id()));
    let o = umacvlan(&["man", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(dir.join("umacvlan-link-add.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("ip link"), "{page}");
    assert!(dir.join("umacvlan-run.1").exists() && dir.join("umacvlan.1").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn top_level_help_lists_every_command() {
    let o = umacvlan(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for c in [
        "lab",
        "run",
        "link",
        "trace",
        "config",
        "reload",
        "stats",
        "completions",
        "man",
    ] {
        assert!(out.contains(&format!("  {c} ")), "{c} missing from:\n{out}");
    }
}

/// Issue #15 (10): an error whose message already names its cause printed that cause again
/// (`unknown mode "bogus": expected ...: unknown mode "bogus": expected ...`).
#[test]
fn each_cause_is_said_once() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "run",
                "--parent",
                "umv-none0",
                "--port",
                "name=x1,mode=bogus",
            ],
            "unknown mode \"bogus\"",
        ),
        (
            &["run", "--parent", "umv-none0", "--port", "name=x1,mac=zz"],
            "\"zz\" is not a MAC address",
        ),
        (
            &[
                "trace",
                "--port",
                "name=x1,mode=bogus",
                "--src",
                "02:00:00:00:00:09",
                "--dst",
                "ff:ff:ff:ff:ff:ff",
            ],
            "unknown mode \"bogus\"",
        ),
        (
            &[
                "trace",
                "--parent-mac",
                "02:00:00:00:01:00",
                "--port",
                "name=x1,mac=01:00:5e:00:00:01",
                "--src",
                "02:00:00:00:00:09",
                "--dst",
                "ff:ff:ff:ff:ff:ff",
            ],
            "01:00:5e:00:00:01 is a group or zero address",
        ),
    ];
    for (args, cause) in cases {
        let o = umacvlan(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
    }
}

/// Issue #15 (8): `run --parent P` alone starts an empty engine (tests/control_parity.rs runs
/// one); with `--no-control` nothing could ever add a port, so that is refused before anything
/// is opened.
#[test]
fn run_with_no_port_and_no_control_is_refused() {
    let o = umacvlan(&["run", "--parent", "umv-none0", "--no-control"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--no-control and no --port"),
        "{}",
        stderr(&o)
    );
}
