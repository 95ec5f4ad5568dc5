use super::*;
use crate::control::metrics::tests::sample_stats;

#[test]
fn the_text_view_shows_ports_parents_and_top_drops() {
    let text = render(&sample_stats(), None);
    let want = "\
port  parent  mode    state       rx_packets  rx_bytes  tx_packets  tx_bytes  top drops
c0    p0      bridge  forwarding          10       600           4       256  mtu=3 mode_isolation=2 own_source=1
c1    p0      vepa    down                 0         0           0         0  -

parent  ports  rx_packets  rx_bytes  tx_packets  tx_bytes  top drops
p0          2          17      1100           4       256  no_receiver=7 unknown_destination=5 multicast_not_joined=2 (+1 more)
ring of p0 (kernel): packets 18 drops 1 freezes 0; broadcast queue: length 1000 depth 0
ring of p0: auto, reading v2 now, 6 mode switches, 1 failed
";
    assert_eq!(text, want, "\n{text}");
}

#[test]
fn rates_come_from_two_samples() {
    let old = sample_stats();
    let mut new = sample_stats();
    new.ports[0].stats.rx_packets += 20;
    new.ports[0].stats.rx_bytes += 1250;
    new.parents[0].tx_packets += 2000;
    new.parents[0].tx_bytes += 2_000_000;
    // A port re-created in between: its counters start again.
    new.ports[1].stats.tx_packets = 0;
    let r = rates(&old, &new, Duration::from_secs(2));
    assert_eq!(r.interval, 2.0);
    let c0 = r.ports["c0"];
    assert_eq!(c0.rx_packets_per_sec, 10.0);
    assert_eq!(c0.rx_bits_per_sec, 5000.0);
    assert_eq!(c0.tx_packets_per_sec, 0.0);
    assert_eq!(r.parents["p0"].tx_bits_per_sec, 8_000_000.0);
    let text = render(&new, Some(&r));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "port  parent  mode    state       rx_packets  rx_bytes  tx_packets  tx_bytes  rx_pkt/s  rx_bit/s  tx_pkt/s  tx_bit/s  top drops"
    );
    assert_eq!(
        lines[1],
        "c0    p0      bridge  forwarding          30      1850           4       256        10      5.0k         0         0  mtu=3 mode_isolation=2 own_source=1"
    );
    assert!(lines[5].starts_with("p0 "), "{text}");
    assert!(lines[5].contains("  1.0k      8.0M  "), "{text}");
}

#[test]
fn json_is_the_stats_view_and_watch_lines_add_time_and_rates() {
    let s = sample_stats();
    let j: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(j["parents"][0]["drops"]["unknown_destination"], 5);
    assert_eq!(j["parents"][0]["broadcast_queue_depth"], 0);
    assert_eq!(j["parents"][0]["bcqueuelen_used"], 1000);
    assert_eq!(j["ports"][0]["stats"]["rx_packets"], 10);
    let back: StatsView = serde_json::from_value(j).unwrap();
    assert_eq!(back, s);

    let r = rates(&s, &s, Duration::from_secs(1));
    let line = serde_json::to_value(Sample {
        time: timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
        stats: &s,
        rates: Some(&r),
    })
    .unwrap();
    assert_eq!(line["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(line["ports"][1]["name"], "c1");
    assert_eq!(line["rates"]["ports"]["c0"]["rx_packets_per_sec"], 0.0);
    assert_eq!(line["rates"]["interval"], 1.0);
    let first = serde_json::to_value(Sample {
        time: String::new(),
        stats: &s,
        rates: None,
    })
    .unwrap();
    assert!(first["rates"].is_null());
}

#[test]
fn small_helpers() {
    assert_eq!(si(0.0), "0");
    assert_eq!(si(12.5), "12.5");
    assert_eq!(si(999.0), "999");
    assert_eq!(si(1234.0), "1.2k");
    assert_eq!(si(34_600_000.0), "34.6M");
    assert_eq!(si(2.5e9), "2.5G");
    assert_eq!(top_drops(&BTreeMap::new()), "-");
    assert_eq!(
        timestamp(SystemTime::UNIX_EPOCH),
        "1970-01-01T00:00:00.000Z"
    );
    assert_eq!(
        timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000Z"
    );
}

#[test]
fn the_command_line() {
    use clap::Parser;
    let cli =
        crate::cli::Cli::try_parse_from(["umacvlan", "stats", "-j", "--watch", "0.5", "-c", "3"])
            .unwrap();
    let crate::cli::Command::Stats(a) = cli.command else {
        panic!("not stats");
    };
    assert!(a.json);
    assert_eq!((a.watch, a.count), (Some(0.5), Some(3)));
    assert!(crate::cli::Cli::try_parse_from(["umacvlan", "stats", "-c", "3"]).is_err());
}
