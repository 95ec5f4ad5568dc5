//! `run --spin-us` (root): the option reaches the workers (`stats -j`), traffic still crosses
//! the engine, and once traffic stops the spinning worker goes back to sleep: an idle engine
//! with spin on uses next to no CPU (`/proc/PID/stat` utime + stime over 2 s).

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::time::Duration;

use common::engine::{cpu_ticks, ping, topo};
use umacvlan::net::testutil::{try_ip, wait_until};

#[test]
fn spin_applies_and_an_idle_engine_spends_no_cpu() {
    let t = topo("sn", 1);
    let port = t.port(0, "bridge");
    let args = [&port[..], &["--spin-us".into(), "1000".into()]].concat();
    let e = t.start(&args, &[(0, "c0")]);
    assert_eq!(t.stats()["parents"][0]["spin_us"], 1000, "{}", e.log_text());
    assert!(e.log_text().contains("spin 1000 us"), "{}", e.log_text());
    t.up(0, "192.0.2.1/24");
    // Activity: the worker spins after each of these frames, then must fall asleep again.
    ping(t.wire.name(), "192.0.2.1", 3).expect("a ping from the wire through c0");
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(e.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(e.pid()) - before;
    // A worker that never stopped spinning would take about 200 ticks (a whole CPU for 2 s at
    // 100 Hz; at least ~100 on a machine shared with other work); sleeping costs 0 to 1.
    assert!(
        spent < 10,
        "idle engine with --spin-us 1000 used {spent} ticks in 2 s"
    );
}

#[test]
fn no_spin_by_default() {
    let t = topo("s0", 1);
    let _e = t.start(&t.port(0, "bridge"), &[(0, "c0")]);
    assert_eq!(t.stats()["parents"][0]["spin_us"], 0);
}

#[test]
fn the_config_key_applies_and_the_flag_wins() {
    let t = topo("sc", 1);
    let file = std::env::temp_dir().join(format!("{}.toml", t.host.name()));
    let toml = format!(
        "spin_us = 30\n\n[[ports]]\nname = \"c0\"\nparent = \"p0\"\nnetns = \"{}\"\n",
        t.kid(0)
    );
    std::fs::write(&file, toml).unwrap();
    let config = ["--config".to_string(), file.display().to_string()];
    let e = t.start(&config, &[(0, "c0")]);
    assert_eq!(t.stats()["parents"][0]["spin_us"], 30, "{}", e.log_text());
    drop(e);
    // The killed engine's TAP goes with its fd; the next one makes its own.
    wait_until("the first engine's c0 to go", || {
        try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_err()
    });
    let flag = [&config[..], &["--spin-us".into(), "7".into()]].concat();
    let e = t.start(&flag, &[(0, "c0")]);
    assert_eq!(t.stats()["parents"][0]["spin_us"], 7, "{}", e.log_text());
    drop(e);
    let _ = std::fs::remove_file(&file);
}
