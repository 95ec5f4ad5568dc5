//! The control plane against the kernel's, step by step (root): the same sequence of `link add`,
//! up, address changes, a change of the parent's MAC and the parent's deletion, once with the
//! kernel's macvlan (`ip link`) and once with umacvlan (`umacvlan link` for what the control
//! socket does, `ip` in the port's namespace for what a container does to its TAP), in one test.
//! Each step's outcome (ok, or the errno) must be the same.
//!
//! Where the kernel refuses `ip link set X up` (EADDRINUSE), a TAP cannot: its `ip link set up`
//! succeeds and the engine keeps the port out of forwarding instead, saying why in `link show`
//! (`refused`). That is the outcome compared for umacvlan, and the TAP is set down again so that
//! both arms go on from the same state.

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::time::{Duration, Instant};

use common::engine::{Engine, Topo, topo};
use umacvlan::net::testutil::{ip, try_ip};

const PARENT_MAC: &str = "02:00:00:00:aa:01";
const PARENT_MAC_2: &str = "02:00:00:00:aa:02";
const M1: &str = "02:00:00:00:00:01";
const M2: &str = "02:00:00:00:00:02";

#[derive(Clone, Copy, Debug)]
enum Step {
    /// A port with this MAC (down, as created).
    Add(&'static str, &'static str),
    Up(&'static str),
    SetMac(&'static str, &'static str),
    ParentMac(&'static str),
    DeleteParent,
}

use Step::*;

const STEPS: &[Step] = &[
    Add("mv1", M1),
    Add("mv2", M1),         // two down ports share a MAC (creation checks nothing)
    Add("mv3", PARENT_MAC), // even the parent's
    Up("mv3"),              // EADDRINUSE: the parent's MAC, checked at open
    Up("mv1"),
    Up("mv2"),                   // EADDRINUSE: mv1's, which is up
    SetMac("mv2", M2),           // a down port to a free MAC
    SetMac("mv2", M1),           // EADDRINUSE: a down port to an up port's MAC
    SetMac("mv2", PARENT_MAC),   // EADDRINUSE
    SetMac("mv1", PARENT_MAC),   // EADDRINUSE: an up port to the parent's
    Up("mv2"),                   // on M2 now
    ParentMac(PARENT_MAC_2),     // the parent's MAC changes ...
    Add("mv4", PARENT_MAC),      // ... its old one is free
    Up("mv4"),                   // ok
    Add("mv5", PARENT_MAC_2),    // created, but ...
    Up("mv5"),                   // EADDRINUSE: the parent's new MAC
    SetMac("mv1", PARENT_MAC_2), // EADDRINUSE
    DeleteParent,
    Add("mv6", M2), // ENODEV: the parent is gone
];

/// The errno a failed command names, from its message.
fn errno_of(stderr: &str) -> String {
    for (text, errno) in [
        ("EADDRINUSE", "EADDRINUSE"),
        ("Address already in use", "EADDRINUSE"),
        ("EADDRNOTAVAIL", "EADDRNOTAVAIL"),
        ("Cannot assign requested address", "EADDRNOTAVAIL"),
        ("ENODEV", "ENODEV"),
        ("Cannot find device", "ENODEV"),
        ("No such device", "ENODEV"),
    ] {
        if stderr.contains(text) {
            return errno.to_string();
        }
    }
    format!("other error: {stderr}")
}

fn outcome(r: Result<String, String>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_of(&e),
    }
}

/// The kernel's arm: macvlans on `p0` in the host namespace.
fn kernel_step(t: &Topo, step: Step) -> String {
    let h = t.host.name();
    let r = match step {
        Add(name, mac) => try_ip(&[
            "-n", h, "link", "add", "link", "p0", "name", name, "address", mac, "type", "macvlan",
            "mode", "bridge",
        ]),
        Up(name) => try_ip(&["-n", h, "link", "set", name, "up"]),
        SetMac(name, mac) => try_ip(&["-n", h, "link", "set", name, "address", mac]),
        ParentMac(mac) => try_ip(&["-n", h, "link", "set", "p0", "address", mac]),
        DeleteParent => try_ip(&["-n", h, "link", "del", "p0"]),
    };
    outcome(r)
}

struct Umacvlan<'a> {
    t: &'a Topo,
    engine: &'a Engine,
}

impl Umacvlan<'_> {
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        self.t.ctl(args)
    }

    fn view(&self, name: &str) -> serde_json::Value {
        let text = self.ctl(&["link", "show", "-j", name]).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()[0]["umacvlan"].clone()
    }

    fn step(&self, step: Step) -> String {
        let (h, k) = (self.t.host.name(), self.t.kid(0));
        match step {
            Add(name, mac) => outcome(self.ctl(&[
                "link", "add", name, "parent", "p0", "address", mac, "netns", k,
            ])),
            SetMac(name, mac) => outcome(self.ctl(&["link", "set", name, "address", mac])),
            ParentMac(mac) => {
                let r = outcome(try_ip(&["-n", h, "link", "set", "p0", "address", mac]));
                // The engine learns it from rtnetlink.
                std::thread::sleep(Duration::from_millis(300));
                r
            }
            DeleteParent => {
                let r = outcome(try_ip(&["-n", h, "link", "del", "p0"]));
                std::thread::sleep(Duration::from_millis(300));
                r
            }
            Up(name) => {
                ip(&["-n", k, "link", "set", name, "up"]);
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let v = self.view(name);
                    if v["forwarding"] == true {
                        return "ok".into();
                    }
                    if let Some(why) = v["refused"].as_str() {
                        // The kernel's `ip link set up` would have failed: go back to down.
                        ip(&["-n", k, "link", "set", name, "down"]);
                        return errno_of(why);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{name} neither forwards nor is refused: {v}\n{}",
                        self.engine.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[test]
fn busy_macs_parent_mac_changes_and_a_deleted_parent_match_the_kernel() {
    let kt = topo("cpk", 0);
    let ut = topo("cpu", 1);
    for t in [&kt, &ut] {
        ip(&[
            "-n",
            t.host.name(),
            "link",
            "set",
            "p0",
            "address",
            PARENT_MAC,
        ]);
    }
    // `run --parent p0` with no port (issue #15, 8): an empty engine, driven by `link add`.
    let engine = ut.start(&[], &[]);
    let u = Umacvlan {
        t: &ut,
        engine: &engine,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while u.ctl(&["link", "show"]).is_err() {
        assert!(Instant::now() < deadline, "{}", engine.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut table = String::new();
    let mut differ = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        let (k, um) = (kernel_step(&kt, *step), u.step(*step));
        table.push_str(&format!("{i:2} {step:?}: kernel {k}, umacvlan {um}\n"));
        if k != um {
            differ.push(i);
        }
    }
    eprintln!("{table}");
    assert!(
        differ.is_empty(),
        "steps {differ:?} differ:\n{table}\n{}",
        engine.log_text()
    );
    // The kernel's answers are what this test believes they are (so neither arm is vacuous).
    let kernel_errors = table.matches("kernel EADDRINUSE").count();
    assert_eq!(kernel_errors, 7, "{table}");
    assert!(table.contains("kernel ENODEV"), "{table}");
}
