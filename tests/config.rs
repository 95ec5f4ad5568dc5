//! `umacvlan config check` and `run --config` with SIGHUP reloads (root): malformed files are
//! refused with FILE:LINE:COL and change nothing; a reload applies only the difference, and an
//! untouched port keeps forwarding with zero loss through ten reloads.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use umacvlan::net::testutil::{Topology, ip, ip_json, topology, try_ip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");

/// A wire namespace and a host namespace joined by a veth (`p0` is the parent), plus children.
struct Topo {
    topo: Topology,
    dir: tempdir::Dir,
}

impl std::ops::Deref for Topo {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topo
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn topo(tag: &str, kids: usize) -> Topo {
    let topo = topology(tag, kids);
    let dir = std::env::temp_dir().join(format!("umv-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Topo {
        topo,
        dir: tempdir::Dir(dir),
    }
}

impl Topo {
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn in_host(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.host.name(), BIN]).args(args);
        c.env("UMACVLAN_CONTROL", self.dir.0.join("control.sock"));
        c
    }

    fn port(&self, name: &str, kid: usize, extra: &str) -> String {
        format!(
            "[[ports]]\nname = \"{name}\"\nparent = \"p0\"\nnetns = \"{}\"\n{extra}\n",
            self.kids[kid].name()
        )
    }
}

#[test]
fn config_check_names_file_line_column_and_changes_nothing() {
    let t = topo("cfck", 1);
    let good = t.port("c0", 0, "mode = \"vepa\"");
    let cases: Vec<(&str, String, String)> = vec![
        ("bad TOML", "[[ports]\nname = \"c0\"\n".into(), ":1:".into()),
        (
            "unknown key",
            format!("{good}colour = \"red\"\n"),
            ":6:1: unknown field `colour`".into(),
        ),
        (
            "duplicate MAC",
            format!(
                "{}{}",
                t.port("c0", 0, "mac = \"02:00:00:00:00:05\""),
                t.port("c1", 0, "mac = \"02:00:00:00:00:05\"")
            ),
            ":7:8: parent p0: ports c0 and c1 cannot both be up with MAC 02:00:00:00:00:05".into(),
        ),
        (
            "bad mode",
            t.port("c0", 0, "mode = \"bridged\""),
            ":5:8: ports.mode: unknown mode \"bridged\"".into(),
        ),
        (
            "MTU too big",
            t.port("c0", 0, "mtu = 9000"),
            ":5:7: parent p0: port c0: MTU 9000 is outside 68..=1500".into(),
        ),
        (
            "unknown parent",
            good.replace("\"p0\"", "\"nosuch\""),
            ":3:10: ports.parent: unknown parent \"nosuch\"".into(),
        ),
        (
            "reserved VID",
            good.replace("\"p0\"", "\"p0.4095\""),
            ":3:10: ports.parent: parent p0.4095: VID 4095 is out of range".into(),
        ),
        (
            "no lower device for a VLAN parent",
            good.replace("\"p0\"", "\"nosuch.100\""),
            ":3:10: ports.parent: unknown parent \"nosuch.100\": no such network interface in this namespace, and no \"nosuch\" to emulate it on".into(),
        ),
        (
            "unknown namespace",
            good.replace(t.kids[0].name(), "umv-no-such-ns"),
            ":4:9: ports.netns: no network namespace named \"umv-no-such-ns\"".into(),
        ),
    ];
    for (what, text, want) in cases {
        let file = t.write("bad.toml", &text);
        let o = t.in_host(&["config", "check", &file]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains(&format!("{file}{want}")),
            "{what}: want {file}{want} in: {err}"
        );
        let o = t.in_host(&["run", "--config", &file]).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{what}: run --config must refuse it too"
        );
        assert!(
            try_ip(&["-n", t.kids[0].name(), "link", "show", "c0"]).is_err(),
            "{what}: a port was created"
        );
    }
    let file = t.write("good.toml", &good);
    let o = t.in_host(&["config", "check", &file]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok: 1 ports on 1 parents"));
    // 802.1Q parents emulated on p0, beside p0 itself.
    let vlans = format!(
        "{good}{}{}",
        t.port("c1", 0, "").replace("\"p0\"", "\"p0.100\""),
        t.port("c2", 0, "").replace("\"p0\"", "\"p0.0200\"")
    );
    let file = t.write("vlans.toml", &vlans);
    let o = t.in_host(&["config", "check", &file]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok: 3 ports on 3 parents"));
}

struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(e: &Engine, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(e.0.id()).unwrap()),
        sig,
    )
    .unwrap();
}

fn exists(ns: &str, dev: &str) -> bool {
    try_ip(&["-n", ns, "link", "show", dev]).is_ok()
}

fn mtu(ns: &str, dev: &str) -> u64 {
    ip_json(&["-n", ns, "link", "show", dev])[0]["mtu"]
        .as_u64()
        .unwrap()
}

#[test]
fn reloads_apply_only_the_difference_with_zero_loss_on_untouched_ports() {
    let t = topo("cfrl", 3);
    let (k0, k1, k2) = (t.kids[0].name(), t.kids[1].name(), t.kids[2].name());
    let base = format!(
        "{}{}",
        t.port("c0", 0, ""),
        t.port("c1", 1, "mode = \"vepa\"")
    );
    let with_c2 = format!("{base}{}", t.port("c2", 2, ""));
    let file = t.write("u.toml", &base);
    let e = Engine(
        t.in_host(&["run", "--config", &file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("c0 and c1", || exists(k0, "c0") && exists(k1, "c1"));
    ip(&["-n", k0, "link", "set", "c0", "up"]);
    ip(&["-n", k0, "addr", "add", "192.0.2.1/24", "dev", "c0"]);
    std::thread::sleep(Duration::from_millis(300));
    // 400 pings over about 4 s to the untouched port, while the file changes ten times.
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            t.wire.name(),
            "ping",
            "-c",
            "400",
            "-i",
            "0.01",
            "-W",
            "1",
            "192.0.2.1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping (apt-get install iputils-ping)");
    for i in 0..10 {
        let text = match i % 3 {
            0 => with_c2.clone(),
            1 => with_c2.replace(
                "mode = \"vepa\"",
                &format!("mode = \"vepa\"\nmtu = {}", 1400 - i),
            ),
            _ => base.clone(),
        };
        std::fs::write(Path::new(&file), &text).unwrap();
        signal(&e, nix::sys::signal::Signal::SIGHUP);
        match i % 3 {
            0 => wait_until("c2 added", || exists(k2, "c2")),
            1 => wait_until("c1's MTU changed in place", || {
                mtu(k1, "c1") == 1400 - u64::try_from(i).unwrap()
            }),
            _ => wait_until("c2 removed", || !exists(k2, "c2")),
        }
        assert!(exists(k1, "c1"), "reload {i}: c1 must never be re-created");
    }
    // A file that does not validate changes nothing, and the engine keeps running.
    std::fs::write(Path::new(&file), "[[ports]]\nname = \"c9\"\n").unwrap();
    signal(&e, nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        exists(k0, "c0") && exists(k1, "c1"),
        "a bad file removed ports"
    );
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "the untouched port lost frames:\n{text}"
    );
    signal(&e, nix::sys::signal::Signal::SIGTERM);
}
