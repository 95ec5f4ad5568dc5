//! The Docker front door against a real dockerd (Debian's docker.io 20.10): the same script with
//! the built-in `-d macvlan` and with umacvlan's driver, results compared; then umacvlan's own
//! lifecycle (host port, stop/start/restart, connect/disconnect, the engine killed and
//! restarted under running containers, dockerd restarted) and a check that nothing is left.
//!
//! The test runs its own dockerd (own socket, data root, exec root, pid file, containerd
//! namespaces; no iptables, no bridge, no forwarding changes) with an image imported from
//! busybox-static, and its own engine serving the driver as `umv<pid>` (Docker looks plugins up
//! by name in /run/docker/plugins only). The "LAN" is a namespace with a bridge holding the
//! gateway; the two parents are veths into it. Root only; needs `dockerd`, `docker` (20.10)
//! and `/bin/busybox` (tools/test installs docker.io and busybox-static).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use umacvlan::net::testutil::{NetnsGuard, ip, netns, require_root, try_ip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");

/// Debian's 20.10 client when there (another client on PATH may be newer than the daemon).
fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

fn run(prog: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A log file, opened for appending (created if missing).
fn append(path: impl AsRef<Path>) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Waits up to `secs` for `cond`.
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private dockerd; dropping it removes every container and network, stops it and deletes
/// its directories.
struct Dockerd {
    tag: String,
    run_dir: PathBuf,
    data_dir: PathBuf,
    host: String,
    child: Option<Child>,
}

impl Dockerd {
    fn new(tag: &str) -> Dockerd {
        let run_dir = PathBuf::from(format!("/run/{tag}"));
        let data_dir = PathBuf::from(format!("/var/lib/{tag}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut d = Dockerd {
            tag: tag.into(),
            host: format!("unix://{}/docker.sock", run_dir.display()),
            run_dir,
            data_dir,
            child: None,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        let log = append(self.run_dir.join("dockerd.log"));
        let t = &self.tag;
        let child = Command::new("dockerd")
            .args(["-H", &self.host])
            .args(["-p", &format!("{}/docker.pid", self.run_dir.display())])
            .args(["--data-root", &self.data_dir.display().to_string()])
            .args(["--exec-root", &format!("{}/x", self.run_dir.display())])
            .args(["--iptables=false", "--ip6tables=false", "--ip-masq=false"])
            .args(["--ip-forward=false", "--bridge=none"])
            .args(["--containerd-namespace", t])
            .args(["--containerd-plugins-namespace", &format!("{t}-plugins")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (apt-get install docker.io)");
        self.child = Some(child);
        wait_for("dockerd to answer", 60, || self.docker(&["info"]).is_ok());
    }

    /// Stops dockerd (SIGTERM: it stops its containers) and waits for it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id().cast_signed()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        run(docker_bin(), args, &[("DOCKER_HOST", &self.host)])
    }

    fn ok(&self, args: &[&str]) -> String {
        self.docker(args)
            .unwrap_or_else(|e| panic!("docker {}: {e}\n{}", args.join(" "), self.log()))
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.run_dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The sandboxes' namespace files Docker still holds.
    fn sandboxes(&self) -> Vec<String> {
        std::fs::read_dir(self.run_dir.join("x/netns"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The busybox image `bb:local`, imported without a registry.
    fn import_busybox(&self) {
        let root = self.run_dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (apt-get install busybox-static)");
        for a in ["sh", "ip", "ping", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let mut tar = Command::new("tar")
            .args(["-C", &root.display().to_string(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new(docker_bin())
            .args(["import", "-c", r#"CMD ["/bin/sh"]"#, "-", "bb:local"])
            .env("DOCKER_HOST", &self.host)
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the busybox root");
        assert!(out.status.success(), "docker import: {out:?}");
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Ok(ids) = self.docker(&["ps", "-aq"])
                && !ids.is_empty()
            {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.lines());
                let _ = self.docker(&args);
            }
            let _ = self.docker(&["network", "prune", "-f"]);
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The engine serving the driver `umv<pid>`; killed (SIGKILL) or stopped (SIGTERM) on drop.
struct Engine {
    args: Vec<String>,
    socket: PathBuf,
    plugin: PathBuf,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Engine {
    fn new(dir: &Path, driver: &str) -> Engine {
        let socket = dir.join("umv.sock");
        let plugin = PathBuf::from(format!("/run/docker/plugins/{driver}.sock"));
        let state = dir.join("docker.json");
        let mut e = Engine {
            args: vec![
                "run".into(),
                "--control".into(),
                socket.display().to_string(),
                "--docker-plugin".into(),
                plugin.display().to_string(),
                "--docker-state".into(),
                state.display().to_string(),
            ],
            socket,
            plugin,
            state,
            log: dir.join("engine.log"),
            child: None,
        };
        e.start();
        e
    }

    fn start(&mut self) {
        let log = append(&self.log);
        let child = Command::new(BIN)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let plugin = self.plugin.clone();
        wait_until("the plugin socket", || {
            std::os::unix::net::UnixStream::connect(&plugin).is_ok()
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `umacvlan stats` as a user reads it.
    fn stats_text(&self) -> String {
        let socket = self.socket.display().to_string();
        run(BIN, &["stats", "--control", &socket], &[]).unwrap_or_else(|e| panic!("stats: {e}"))
    }

    fn link_show(&self) -> serde_json::Value {
        let out = run(
            BIN,
            &[
                "link",
                "--control",
                &self.socket.display().to_string(),
                "show",
                "-j",
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("link show: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id().cast_signed()),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The LAN: a namespace with a bridge holding the gateway, and two veth parents into it.
struct Lan {
    _ns: NetnsGuard,
    parents: [String; 2],
}

impl Lan {
    fn new(tag: &str, gateway: &str) -> Lan {
        let ns = netns("dklan");
        let n = ns.name();
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", gateway, "dev", "br0"]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        let parents = [format!("{tag}a"), format!("{tag}b")];
        for (i, p) in parents.iter().enumerate() {
            let peer = format!("lan{i}");
            ip(&[
                "link", "add", p, "type", "veth", "peer", "name", &peer, "netns", n,
            ]);
            ip(&["-n", n, "link", "set", &peer, "master", "br0", "up"]);
            ip(&["link", "set", p, "up"]);
        }
        Lan { _ns: ns, parents }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for p in &self.parents {
            let _ = try_ip(&["link", "del", p]);
        }
    }
}

/// Everything a run made, removed in field order.
struct Lab {
    d: Dockerd,
    engine: Engine,
    _lan: Lan,
}

/// What one driver gave the same script.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// The refusals of a bad mode, a missing parent (whether it names it) and `parent=lo`.
    bad_mode: String,
    missing_parent_named: bool,
    lo: String,
    /// Per container: `eth0`'s MAC and addresses, and its routes.
    c1: (String, Vec<String>, String),
    c2: (String, Vec<String>, String),
    ping_c1_c2: bool,
    ping_c1_gateway: bool,
    ping_host_c1: bool,
    /// `ip route` in a container of an `--internal` network.
    internal_routes: String,
    /// `docker network inspect`, without IDs, dates, the driver and the parent's name.
    inspect: serde_json::Value,
}

/// A refusal as the user reads it, without the remote driver's `remote: ` prefix.
fn refusal(r: Result<String, String>) -> String {
    let e = r.expect_err("refused");
    let e = e.trim_start_matches("Error response from daemon: ");
    e.trim_start_matches("remote: ").to_string()
}

fn iface(d: &Dockerd, c: &str) -> (String, Vec<String>, String) {
    let text = d.ok(&["exec", c, "ip", "addr", "show", "eth0"]);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let addrs = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("inet ").or_else(|| {
                l.strip_prefix("inet6 ")
                    .filter(|a| a.contains("scope global"))
            })
        })
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    (mac, addrs, d.ok(&["exec", c, "ip", "route"]))
}

/// `docker run -d --name NAME --network NET EXTRA bb:local sleep 1d`.
fn start(d: &Dockerd, name: &str, net: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", net];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["bb:local", "sleep", "1d"]);
    d.ok(&args);
}

fn ping_from(d: &Dockerd, c: &str, to: &str) -> bool {
    d.docker(&["exec", c, "ping", "-c1", "-W2", to]).is_ok()
}

fn ping_host(to: &str) -> bool {
    run("ping", &["-c1", "-W1", to], &[]).is_ok()
}

fn inspect(d: &Dockerd, net: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["network", "inspect", net])).unwrap();
    let n = &v[0];
    let mut containers: Vec<serde_json::Value> = n["Containers"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|c| {
                    serde_json::json!({
                        "Name": c["Name"], "MacAddress": c["MacAddress"],
                        "IPv4Address": c["IPv4Address"], "IPv6Address": c["IPv6Address"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    containers.sort_by_key(|c| c["Name"].to_string());
    let mut options = n["Options"].clone();
    if let Some(o) = options.as_object_mut() {
        o.remove("parent");
    }
    serde_json::json!({
        "Name": n["Name"], "Scope": n["Scope"], "EnableIPv6": n["EnableIPv6"],
        "IPAM": n["IPAM"], "Internal": n["Internal"], "Attachable": n["Attachable"],
        "Containers": containers, "Options": options,
    })
}

/// The seeds' walkthrough with `-d driver` on `parent`, observed, then removed.
fn script(d: &Dockerd, driver: &str, parent: &str, net: &Net) -> Outcome {
    let create = |opts: &[&str]| {
        let mut a = vec!["network", "create", "-d", driver, "--subnet", &net.subnet];
        a.extend_from_slice(opts);
        a.push("netx");
        d.docker(&a)
    };
    let parent_opt = format!("parent={parent}");
    let bad_mode = refusal(create(&["-o", &parent_opt, "-o", "macvlan_mode=bogus"]));
    let missing = refusal(create(&["-o", "parent=nosuch0"]));
    let lo = refusal(create(&["-o", "parent=lo"]));
    // IPv6 beside IPv4 (Docker's IPAM gives both), and an address kept out of its pool.
    let aux = format!("router={}", net.aux);
    d.ok(&[
        "network",
        "create",
        "-d",
        driver,
        "--subnet",
        &net.subnet,
        "--gateway",
        &net.gw_ip,
        "--aux-address",
        &aux,
        "--ipv6",
        "--subnet",
        &net.subnet6,
        "-o",
        &parent_opt,
        "net1",
    ]);
    start(d, "c1", "net1", &["--ip", &net.c1, "--ip6", &net.c1_6]);
    start(
        d,
        "c2",
        "net1",
        &["--ip", &net.c2, "--mac-address", "02:42:0a:0b:0c:0d"],
    );
    let mut outcome = Outcome {
        internal_routes: String::new(),
        bad_mode,
        missing_parent_named: missing.contains("nosuch0"),
        lo,
        c1: iface(d, "c1"),
        c2: iface(d, "c2"),
        ping_c1_c2: ping_from(d, "c1", &net.c2),
        ping_c1_gateway: ping_from(d, "c1", &net.gw_ip),
        ping_host_c1: ping_host(&net.c1),
        inspect: inspect(d, "net1"),
    };
    d.ok(&["rm", "-f", "c1", "c2"]);
    d.ok(&["network", "rm", "net1"]);
    // --internal: no gateway, so no default route (macvlan also swaps the parent for a dummy;
    // 20.10 macvlan allows one network per parent, so net1 is gone first).
    d.ok(&[
        "network",
        "create",
        "-d",
        driver,
        "--internal",
        "--subnet",
        &net.subnet_internal,
        "-o",
        &parent_opt,
        "neti",
    ]);
    start(d, "c5", "neti", &[]);
    outcome.internal_routes = d.ok(&["exec", "c5", "ip", "route"]);
    d.ok(&["rm", "-f", "c5"]);
    d.ok(&["network", "rm", "neti"]);
    outcome
}

/// The test's subnet: unusual, and another per process (the host port routes it on the host).
struct Net {
    subnet: String,
    gw_ip: String,
    gw: String,
    c1: String,
    c2: String,
    c3: String,
    host: String,
    /// `--aux-address`: kept out of the pool.
    aux: String,
    subnet_internal: String,
    subnet6: String,
    c1_6: String,
}

impl Net {
    fn new() -> Net {
        let n = std::process::id() % 250;
        let a = |i: u32| format!("10.199.{n}.{i}");
        Net {
            subnet: format!("10.199.{n}.0/24"),
            gw_ip: a(1),
            gw: format!("{}/24", a(1)),
            c1: a(100),
            c2: a(101),
            c3: a(103),
            host: format!("{}/24", a(254)),
            aux: a(2),
            subnet_internal: format!("10.196.{n}.0/24"),
            subnet6: format!("fd77:{n:x}::/64"),
            c1_6: format!("fd77:{n:x}::100"),
        }
    }
}

fn assert_no_gwbridge(d: &Dockerd) {
    let nets = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("docker_gwbridge"), "{nets}");
    assert!(try_ip(&["link", "show", "docker_gwbridge"]).is_err());
}

#[test]
fn docker_umacvlan_is_macvlan_and_survives_restarts() {
    require_root();
    let pid = std::process::id();
    let tag = format!("umvdk{pid}");
    let driver = format!("umv{pid}");
    let net = Net::new();
    let lan = Lan::new(&format!("dk{pid}"), &net.gw);
    let d = Dockerd::new(&tag);
    d.import_busybox();
    let engine = Engine::new(&d.run_dir, &driver);
    // Dropped in this order on failure too: dockerd removes its containers while the engine
    // still answers (so their persistent TAPs are deleted), then the engine, then the LAN.
    let mut lab = Lab {
        d,
        engine,
        _lan: lan,
    };
    let Lab {
        d,
        engine,
        _lan: lan,
    } = &mut lab;

    // 1. The same script, both drivers, compared.
    let kernel = script(d, "macvlan", &lan.parents[0], &net);
    let ours = script(d, &driver, &lan.parents[1], &net);
    assert_eq!(
        kernel.c1.0,
        format!("02:42:0a:c7:{:02x}:64", pid % 250),
        "Docker 20.10's MAC rule: 02:42 + the IPv4 address"
    );
    assert!(kernel.ping_c1_c2 && kernel.ping_c1_gateway, "{kernel:?}");
    assert!(
        !kernel.ping_host_c1,
        "macvlan: the host cannot reach its containers"
    );
    assert!(kernel.missing_parent_named, "{kernel:?}");
    assert!(
        kernel.c1.1.contains(&format!("{}/64", net.c1_6)),
        "--ip6 reaches the container: {kernel:?}"
    );
    assert!(!kernel.internal_routes.contains("default"), "{kernel:?}");
    assert!(
        kernel.inspect.to_string().contains(&net.aux),
        "--aux-address: {kernel:?}"
    );
    assert_eq!(
        ours,
        kernel,
        "umacvlan (left) against macvlan (right)\n{}",
        engine.log()
    );
    assert_no_gwbridge(d);

    // 2. The host option: the host reaches its containers; the port goes with the network.
    let host_opt = format!("host={}", net.host);
    let parent_opt = format!("parent={}", lan.parents[1]);
    d.ok(&[
        "network",
        "create",
        "-d",
        &driver,
        "--subnet",
        &net.subnet,
        "--gateway",
        &net.gw_ip,
        "-o",
        &parent_opt,
        "-o",
        &host_opt,
        "net1",
    ]);
    start(d, "c1", "net1", &["--ip", &net.c1]);
    wait_for("host -> c1 through the host port", 10, || {
        ping_host(&net.c1)
    });
    let links = engine.link_show();
    let owners: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["umacvlan"]["owner"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(owners.len(), 2, "{links}");
    assert!(
        owners.iter().all(|o| o.starts_with("docker:")),
        "{owners:?}"
    );
    assert!(owners.iter().any(|o| o.ends_with("/host")), "{owners:?}");
    // `stats` names each port's network and endpoint too.
    let stats = engine.stats_text();
    for o in &owners {
        assert!(stats.contains(&format!("({o})")), "{o} in\n{stats}");
    }

    // 3. stop / start / restart.
    d.ok(&["stop", "-t", "0", "c1"]);
    assert_eq!(
        engine.link_show().as_array().unwrap().len(),
        1,
        "only the host port"
    );
    d.ok(&["start", "c1"]);
    assert!(
        ping_from(d, "c1", &net.gw_ip),
        "after start\n{}",
        engine.log()
    );
    d.ok(&["restart", "-t", "0", "c1"]);
    assert!(
        ping_from(d, "c1", &net.gw_ip),
        "after restart\n{}",
        engine.log()
    );

    // 4. network disconnect / connect.
    start(d, "c3", "net1", &["--ip", &net.c3]);
    assert_eq!(
        engine.link_show().as_array().unwrap().len(),
        3,
        "c1, c3 and the host port"
    );
    d.ok(&["network", "disconnect", "net1", "c3"]);
    assert!(
        d.docker(&["exec", "c3", "ip", "link", "show", "eth0"])
            .is_err()
    );
    assert_eq!(
        engine.link_show().as_array().unwrap().len(),
        2,
        "c1's port and the host port"
    );
    d.ok(&["network", "connect", "--ip", &net.c3, "net1", "c3"]);
    assert!(
        ping_from(d, "c3", &net.c1),
        "c3 -> c1 after connect\n{}",
        engine.log()
    );

    // 4b. A VLAN parent (`IF.VID`): emulated by the engine, nothing created on the host.
    let vlan_parent = format!("parent={}.7", lan.parents[1]);
    let subnet2 = net.subnet.replacen("10.199.", "10.198.", 1);
    d.ok(&[
        "network",
        "create",
        "-d",
        &driver,
        "--subnet",
        &subnet2,
        "-o",
        &vlan_parent,
        "net2",
    ]);
    start(d, "c4", "net2", &[]);
    let parents: Vec<String> = engine
        .link_show()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["link"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        parents.contains(&format!("{}.7", lan.parents[1])),
        "{parents:?}"
    );
    assert!(try_ip(&["link", "show", &format!("{}.7", lan.parents[1])]).is_err());
    d.ok(&["rm", "-f", "c4"]);
    d.ok(&["network", "rm", "net2"]);

    // 5. The engine killed under a running container, then restarted: eth0 stays, and
    // forwarding resumes once the restarted engine adopts it.
    engine.kill();
    assert!(
        d.docker(&["exec", "c1", "ip", "link", "show", "eth0"])
            .is_ok(),
        "eth0 survives"
    );
    engine.start();
    wait_for("c1 -> gateway after the engine's restart", 15, || {
        ping_from(d, "c1", &net.gw_ip)
    });
    wait_for("host -> c1 through the host port made again", 10, || {
        ping_host(&net.c1)
    });

    // 6. dockerd restarted (it stops its containers): the network stays, c1 starts again.
    d.stop();
    d.start();
    d.ok(&["start", "c1"]);
    assert!(
        ping_from(d, "c1", &net.gw_ip),
        "after dockerd's restart\n{}",
        engine.log()
    );
    assert_no_gwbridge(d);

    // 7. Everything removed: no port, no TAP, no state entry, no sandbox left.
    d.ok(&["rm", "-f", "c1", "c3"]);
    d.ok(&["network", "rm", "net1"]);
    assert_eq!(engine.link_show(), serde_json::json!([]));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&engine.state).unwrap()).unwrap();
    assert_eq!(state, serde_json::json!({"networks": {}, "endpoints": {}}));
    let taps = ip(&["-br", "link", "show", "type", "tun"]);
    let ours = format!(
        "02:42:{}",
        net.c1
            .split('.')
            .take(3)
            .map(|b| format!("{:02x}", b.parse::<u8>().unwrap()))
            .collect::<Vec<_>>()
            .join(":")
    );
    assert!(!taps.contains(&ours), "TAPs left ({ours}...): {taps}");
    // libnetwork unmounts a sandbox's namespace file lazily (a collector every 60 s): one still
    // there must hold nothing but its loopback.
    for sb in d.sandboxes() {
        let file = d.run_dir.join("x/netns").join(&sb);
        let links = run(
            "nsenter",
            &[&format!("--net={}", file.display()), "ip", "-br", "link"],
            &[],
        );
        let links = links.unwrap_or_default();
        assert!(
            links.lines().all(|l| l.starts_with("lo ")),
            "sandbox {sb}: {links}"
        );
    }
    assert!(!ping_host(&net.c1));
    drop(lab);
}

/// The plugin socket without Docker: HTTP as Docker's client speaks it (no Content-Type), a 404
/// for an unknown method, a 405 for another verb, and a refusal as `{"Err"}`.
#[test]
fn plugin_socket_speaks_docker_http() {
    use std::io::{Read, Write};
    require_root();
    let dir = std::env::temp_dir().join(format!("umvdkh{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let engine = Engine::new(&dir, &format!("umvh{}", std::process::id()));
    let call = |head: &str, body: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&engine.plugin).unwrap();
        let req = format!(
            "{head} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (status, body) = out.split_once("\r\n\r\n").unwrap();
        let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        (
            code,
            serde_json::from_str::<serde_json::Value>(body).unwrap(),
        )
    };
    assert_eq!(
        call("POST /Plugin.Activate", ""),
        (200, serde_json::json!({"Implements": ["NetworkDriver"]}))
    );
    assert_eq!(
        call("POST /NetworkDriver.GetCapabilities", ""),
        (
            200,
            serde_json::json!({"Scope": "local", "ConnectivityScope": "global"})
        )
    );
    assert_eq!(call("POST /NetworkDriver.Nope", "{}").0, 404);
    assert_eq!(call("GET /Plugin.Activate", "").0, 405);
    let (code, body) = call(
        "POST /NetworkDriver.CreateNetwork",
        r#"{"NetworkID":"0123456789abcdef0123","Options":{"com.docker.network.generic":{"parent":"lo"}},"IPv4Data":[{"Pool":"10.0.0.0/24"}],"IPv6Data":[]}
"#,
    );
    assert_eq!(code, 200);
    assert_eq!(
        body["Err"],
        "loopback interface is not a valid macvlan parent link"
    );
    assert_eq!(
        call(
            "POST /NetworkDriver.DeleteEndpoint",
            r#"{"NetworkID":"0123456789abcdef0123","EndpointID":"0123456789abcdef0123"}"#
        ),
        (200, serde_json::json!({})),
        "an unknown endpoint is deleted"
    );
    drop(engine);
    assert!(
        !PathBuf::from(format!(
            "/run/docker/plugins/umvh{}.sock",
            std::process::id()
        ))
        .exists()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
