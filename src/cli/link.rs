//! `umacvlan link add|del|set|show` and `umacvlan reload`: the running engine's ports, in
//! `ip link`'s words, and `ip -d -s [-j] link show`'s output shapes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{ArgAction, Args, Subcommand};
use serde_json::{Map, Value, json};

use super::{ControlArg, Failure, daemon_failure};
use crate::control::client;
use crate::control::proto::{
    Empty, LinkChange, LinkFilter, LinkName, LinkSpec, LinkView, MacaddrOp, Reply, Request,
};
use crate::control::spec::LinkPortSpec;
use crate::forward::{DropReason, Mode};
use crate::wire::mac::MacAddr;

/// Add, remove, change and show the running engine's ports, in `ip link`'s words.
///
/// Talks to the engine on its control socket (--control). -d, -s, -j and -p may come before or
/// after the subcommand, as in `ip -d -s -j link show`.
///
/// Examples:
///
///   umacvlan link add c1 parent eth0 mode bridge netns ns1
///   umacvlan link add c2 link eth0 type macvlan mode vepa address 02:00:00:00:00:02 mtu 1400
///   umacvlan link add name=c3,parent=eth0,mode=private      # the --port style, for scripts
///   umacvlan link set c1 mode private
///   umacvlan link show -d -s c1
///   umacvlan link show -j | jq -r '.[] | select(.operstate == "UP") | .ifname'
///   umacvlan link del c1
///
/// Exit status: 0 done, 1 failure (no engine, internal error), 2 the engine refused the request
/// (nothing changed) or bad words.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct LinkArgs {
    #[command(subcommand)]
    cmd: LinkCommand,
    /// Details: the macvlan line (mode, flags, bcqueuelen, source MACs) and umacvlan's state.
    #[arg(short = 'd', long = "details", global = true)]
    details: bool,
    /// Statistics (RX/TX); twice: also drops by reason.
    #[arg(short = 's', long = "stats", action = ArgAction::Count, global = true)]
    stats: u8,
    /// JSON output, with iproute2's keys (`ip -j link`).
    #[arg(short = 'j', long = "json", global = true)]
    json: bool,
    /// Pretty JSON (implies -j).
    #[arg(short = 'p', long = "pretty", global = true)]
    pretty: bool,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Debug, Subcommand)]
enum LinkCommand {
    Add(AddArgs),
    #[command(visible_alias = "delete")]
    Del(DelArgs),
    #[command(visible_alias = "change")]
    Set(SetArgs),
    #[command(visible_aliases = ["list", "ls"])]
    Show(ShowArgs),
}

/// Add a port: a TAP the engine owns, admin-down like a fresh `ip link add`; or a VM's port
/// (`kind attach`: an existing netdev such as a hypervisor's TAP; `kind stream`: a Unix socket
/// for QEMU's `-netdev stream`), whose guest MAC is pinned unless `trust_guest_mac`.
///
/// Grammar (ip link's words and order; `link P` = `parent P`, `type macvlan` is accepted):
///
///   umacvlan link add [name] NAME [parent P] [type macvlan] [mode MODE [nopromisc|nodst]]
///       [address MAC] [mtu N] [netns NS] [flag nopromisc|nodst|null] [bcqueuelen N]
///       [bclim N] [macaddr MAC [MAC ...]] [kind tap|host|attach|stream] [path SOCKET]
///       [trust_guest_mac] [ipaddr CIDR [CIDR ...]] [route CIDR [CIDR ...]]
///       [persist]
///   umacvlan link add name=N[,parent=P][,mode=M][,netns=NS][,mac=MAC][,mtu=N]
///       [,flag=nopromisc|nodst][,bcqueuelen=N][,bclim=N][,source=MAC+MAC..][,ifname=DEV]
///       [,kind=tap|host|attach|stream][,path=SOCKET][,trust_guest_mac]
///       [,address=CIDR+CIDR..][,route=CIDR+CIDR..][,persist]
///
/// NS is a name from `ip netns add` or a path (/proc/PID/ns/net); ifname=DEV names the device
/// in its namespace when it is not NAME (many containers each want an eth0).
/// MODE is private, vepa, bridge (the default here, as in Docker and CNI), passthru
/// (or passthrough) or source. Without parent, the engine uses the default route's interface.
/// Without address, the port gets a stable MAC derived from the parent's and the port's names.
/// With -j, prints the new port as `link show -j` would.
///
/// kind host makes a host port: a bridge-mode port whose TAP stays in the engine's namespace,
/// comes up with the given IP addresses (ipaddr; address stays the MAC, as in ip link) and
/// routes (`ip route add CIDR dev NAME`), so the host reaches its bridge-mode children, which
/// the kernel's macvlan never allows through the parent itself.
///
/// Examples:
///
///   umacvlan link add c1 parent eth0 mode bridge netns ns1
///   umacvlan link add shim0 parent eth0 kind host ipaddr 192.0.2.100/32 route 192.0.2.0/24
///   umacvlan link add c2 link eth0 type macvlan mode vepa address 02:00:00:00:00:02
///   umacvlan link add s1 parent eth0 mode source nodst macaddr 02:00:00:00:00:09 02:00:00:00:00:0a
///   umacvlan link add name=c3,parent=eth0,mode=private,netns=ns3
///   umacvlan link add vm1 parent eth0 kind attach address 52:54:00:12:34:56
///   umacvlan link add vm2 parent eth0 kind stream path /run/umacvlan/vm2.sock
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct AddArgs {
    #[arg(value_name = "WORD", required = true, allow_negative_numbers = true)]
    words: Vec<String>,
}

/// Remove a port (its TAP disappears from its namespace).
///
///   umacvlan link del [dev] NAME
///
/// Example:
///
///   umacvlan link del c1
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct DelArgs {
    #[arg(value_name = "WORD", required = true)]
    words: Vec<String>,
}

/// Change a port, with the kernel's changelink rules (only what is given changes).
///
///   umacvlan link set [dev] NAME [type macvlan] [mode MODE] [address MAC] [mtu N]
///       [bcqueuelen N] [bclim N] [macaddr add|del|set MAC [MAC ...] | macaddr flush]
///
/// macaddr edits a source-mode port's list of remote source MACs (add: already listed is a
/// no-op; del: not listed is a no-op; set: replace the list; flush: empty it). A mode change to
/// or from passthru is refused, as by the kernel. With -j, prints the port as it is now.
///
/// Examples:
///
///   umacvlan link set c1 mode private
///   umacvlan link set c1 address 02:00:00:00:00:11 mtu 1400
///   umacvlan link set s1 macaddr add 02:00:00:00:00:0b
///   umacvlan link set s1 macaddr flush
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct SetArgs {
    #[arg(value_name = "WORD", required = true, allow_negative_numbers = true)]
    words: Vec<String>,
}

/// Show ports like `ip link show`: every port, or one.
///
///   umacvlan link show [dev] [NAME] [-d] [-s [-s]] [-j [-p]]
///
/// -d adds the macvlan line (`macvlan mode bridge bcqueuelen 1000 usedbcqueuelen 1000`) and
/// umacvlan's own state; -s the RX/TX counters as `ip -s link` prints them; -s -s also the drops
/// by reason. -j prints JSON with iproute2's keys (ifname, ifindex, link, address, mtu,
/// operstate, flags, linkinfo.info_data.{mode,...} with -d, stats64.{rx,tx} with -s), and
/// umacvlan's extras under `umacvlan` ({netns, forwarding, drops}).
///
/// Examples:
///
///   umacvlan link show
///   umacvlan link show -d -s -s c1
///   umacvlan link show -j | jq '.[] | {ifname, mode: .linkinfo.info_data.mode}' # add -d
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct ShowArgs {
    #[arg(value_name = "WORD")]
    words: Vec<String>,
}

/// Re-read the engine's configuration file and apply only what changed.
///
/// Ports that did not change are not touched. A configuration that does not validate changes
/// nothing (exit status 2).
///
/// Example:
///
///   umacvlan reload
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ReloadArgs {
    /// Print the report as JSON.
    #[arg(short = 'j', long = "json")]
    json: bool,
    #[command(flatten)]
    control: ControlArg,
}

/// What `link show` prints besides the first two lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShowOptions {
    /// `-d`.
    pub details: bool,
    /// How many `-s`.
    pub stats: u8,
}

pub fn run(a: LinkArgs) -> Result<ExitCode, Failure> {
    let opts = ShowOptions {
        details: a.details,
        stats: a.stats,
    };
    let json = a.json || a.pretty;
    let (request, print) = match &a.cmd {
        LinkCommand::Add(w) => (Request::LinkAdd(parse_add(&w.words)?), json),
        LinkCommand::Del(w) => (Request::LinkDel(parse_del(&w.words)?), false),
        LinkCommand::Set(w) => (Request::LinkSet(parse_set(&w.words)?), json),
        LinkCommand::Show(w) => (Request::LinkShow(parse_show(&w.words)?), true),
    };
    let reply = client::request(&a.control.path, request).map_err(daemon_failure)?;
    if !print {
        return Ok(ExitCode::SUCCESS);
    }
    let links = match reply {
        Reply::Links { links } => links,
        Reply::Done => Vec::new(),
        other => return Err(anyhow!("the engine answered with {other:?}").into()),
    };
    let out = if a.pretty {
        let mut s =
            serde_json::to_string_pretty(&links_json(&links, &opts)).context("rendering JSON")?;
        s.push('\n');
        s
    } else if json {
        format!("{}\n", links_json(&links, &opts))
    } else {
        links_text(&links, &opts)
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

pub fn reload(a: ReloadArgs) -> Result<ExitCode, Failure> {
    let reply =
        client::request(&a.control.path, Request::Reload(Empty {})).map_err(daemon_failure)?;
    let Reply::Reloaded { report } = reply else {
        return Err(anyhow!("the engine answered a reload with {reply:?}").into());
    };
    let out = if a.json {
        serde_json::to_string(&report).context("rendering JSON")?
    } else {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        format!(
            "reloaded: added {} removed {} changed {} unchanged {}",
            list(&report.added),
            list(&report.removed),
            list(&report.changed),
            report.unchanged
        )
    };
    writeln!(std::io::stdout(), "{out}").context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

// ---- the ip-style grammar ----------------------------------------------------------------

fn usage(e: anyhow::Error) -> Failure {
    Failure::usage(e)
}

/// Words, one at a time, with the value of a keyword.
struct Words<'a> {
    words: &'a [String],
    at: usize,
}

impl<'a> Words<'a> {
    fn new(words: &'a [String]) -> Words<'a> {
        Words { words, at: 0 }
    }
    fn next(&mut self) -> Option<&'a str> {
        let w = self.words.get(self.at)?;
        self.at += 1;
        Some(w)
    }
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).map(String::as_str)
    }
    fn value(&mut self, key: &str, what: &str) -> anyhow::Result<&'a str> {
        self.next()
            .ok_or_else(|| anyhow!("{key} needs a value ({key} {what})"))
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> anyhow::Result<T> {
    v.parse()
        .map_err(|_| anyhow!("{key} {v:?}: not a valid number"))
}

fn parse_mac(key: &str, v: &str) -> anyhow::Result<MacAddr> {
    v.parse().map_err(|e| anyhow!("{key} {v:?}: {e}"))
}

fn parse_mode(v: &str) -> anyhow::Result<Mode> {
    v.parse().map_err(|e| anyhow!("mode {v:?}: {e}"))
}

const MODE_WORDS: &str = "private|vepa|bridge|passthru|source";

/// Values (MACs, CIDRs) up to the next word that is not one; `what` names one ("MAC address").
fn values<T: std::str::FromStr>(
    w: &mut Words<'_>,
    key: &str,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let mut v = Vec::new();
    while let Some(m) = w.peek().and_then(|s| s.parse::<T>().ok()) {
        w.next();
        v.push(m);
    }
    if v.is_empty() {
        match w.peek() {
            Some(bad) => bail!("{key} {bad:?}: not a {what}"),
            None => bail!("{key} needs at least one {what}"),
        }
    }
    Ok(v)
}

fn macs(w: &mut Words<'_>, key: &str) -> anyhow::Result<Vec<MacAddr>> {
    values(w, key, "MAC address")
}

fn set_name<'a>(name: &mut Option<&'a str>, v: &'a str, cmd: &str) -> anyhow::Result<()> {
    if let Some(old) = name {
        bail!(
            "unexpected word {v:?} (the port is already named {old:?}); see `umacvlan link {cmd} --help`"
        );
    }
    *name = Some(v);
    Ok(())
}

fn check_type(v: &str) -> anyhow::Result<()> {
    if v == "macvlan" {
        Ok(())
    } else {
        bail!("type {v:?}: umacvlan only makes macvlan ports (type macvlan)")
    }
}

/// `link add`'s words (or one `key=value,...` word) as a request.
pub fn parse_add(words: &[String]) -> Result<LinkSpec, Failure> {
    parse_add_inner(words).map_err(usage)
}

fn parse_add_inner(words: &[String]) -> anyhow::Result<LinkSpec> {
    if let [one] = words
        && one.contains('=')
    {
        return Ok(one.parse::<LinkPortSpec>()?.into());
    }
    let mut name = None;
    let mut s = LinkSpec::default();
    let mut w = Words::new(words);
    while let Some(word) = w.next() {
        match word {
            "name" | "dev" => set_name(&mut name, w.value(word, "NAME")?, "add")?,
            "parent" | "link" => {
                if s.parent.is_some() {
                    bail!("{word} is given twice");
                }
                s.parent = Some(w.value(word, "P")?.to_string());
            }
            "type" => check_type(w.value(word, "macvlan")?)?,
            "mode" => {
                let m = parse_mode(w.value(word, MODE_WORDS)?)?;
                s.mode = Some(m);
                // ip's `mode passthru nopromisc`, `mode source nodst`.
                match (m, w.peek()) {
                    (Mode::Passthru, Some("nopromisc")) => {
                        w.next();
                        s.nopromisc = true;
                    }
                    (Mode::Source, Some("nodst")) => {
                        w.next();
                        s.nodst = true;
                    }
                    _ => {}
                }
            }
            "address" => s.address = Some(parse_mac(word, w.value(word, "MAC")?)?),
            "mtu" => s.mtu = Some(parse_num(word, w.value(word, "N")?)?),
            "netns" => s.netns = Some(w.value(word, "NS")?.to_string()),
            "flag" => match w.value(word, "nopromisc|nodst|null")? {
                "nopromisc" => s.nopromisc = true,
                "nodst" => s.nodst = true,
                "null" => (s.nopromisc, s.nodst) = (false, false),
                other => bail!("flag {other:?}: flags are nopromisc, nodst and null"),
            },
            "nopromisc" => s.nopromisc = true,
            "nodst" => s.nodst = true,
            "bcqueuelen" => s.bcqueuelen = Some(parse_num(word, w.value(word, "N")?)?),
            "bclim" => s.bclim = Some(parse_num(word, w.value(word, "N")?)?),
            "macaddr" => s.macaddr.extend(macs(&mut w, word)?),
            "kind" => {
                s.kind = w
                    .value(word, "tap|host|attach|stream")?
                    .parse()
                    .map_err(|e: String| anyhow!(e))?
            }
            "path" => s.path = Some(w.value(word, "SOCKET")?.into()),
            "trust_guest_mac" => s.trust_guest_mac = true,
            "persist" => s.persist = true,
            "ipaddr" => s.addresses.extend(values::<crate::net::Cidr>(
                &mut w,
                word,
                "CIDR (ADDRESS/PREFIX)",
            )?),
            "route" => s.routes.extend(values::<crate::net::Cidr>(
                &mut w,
                word,
                "CIDR (NETWORK/PREFIX)",
            )?),
            other if other.contains('=') => bail!(
                "{other:?}: the key=value form is one word by itself (name=c1,parent=eth0,...)"
            ),
            other => set_name(&mut name, other, "add")?,
        }
    }
    s.name = name
        .ok_or_else(|| anyhow!("which port? umacvlan link add NAME [parent P] [mode M] ..."))?
        .to_string();
    Ok(s)
}

/// `link del`'s words.
pub fn parse_del(words: &[String]) -> Result<LinkName, Failure> {
    let name = only_name(words, "del").map_err(usage)?;
    name.map(|name| LinkName { name })
        .ok_or_else(|| usage(anyhow!("which port? umacvlan link del NAME")))
}

/// `link show`'s words.
pub fn parse_show(words: &[String]) -> Result<LinkFilter, Failure> {
    Ok(LinkFilter {
        name: only_name(words, "show").map_err(usage)?,
    })
}

/// `[dev] [NAME]` (and a no-op `type macvlan`).
fn only_name(words: &[String], cmd: &str) -> anyhow::Result<Option<String>> {
    let mut name = None;
    let mut w = Words::new(words);
    while let Some(word) = w.next() {
        match word {
            "dev" | "name" => set_name(&mut name, w.value(word, "NAME")?, cmd)?,
            "type" => check_type(w.value(word, "macvlan")?)?,
            other => set_name(&mut name, other, cmd)?,
        }
    }
    Ok(name.map(str::to_string))
}

/// `link set`'s words.
pub fn parse_set(words: &[String]) -> Result<LinkChange, Failure> {
    parse_set_inner(words).map_err(usage)
}

fn parse_set_inner(words: &[String]) -> anyhow::Result<LinkChange> {
    let mut name = None;
    let mut c = LinkChange::default();
    let mut w = Words::new(words);
    while let Some(word) = w.next() {
        match word {
            "dev" | "name" if name.is_none() => set_name(&mut name, w.value(word, "NAME")?, "set")?,
            "type" => check_type(w.value(word, "macvlan")?)?,
            "mode" => c.mode = Some(parse_mode(w.value(word, MODE_WORDS)?)?),
            "address" => c.address = Some(parse_mac(word, w.value(word, "MAC")?)?),
            "mtu" => c.mtu = Some(parse_num(word, w.value(word, "N")?)?),
            "bcqueuelen" => c.bcqueuelen = Some(parse_num(word, w.value(word, "N")?)?),
            "bclim" => c.bclim = Some(parse_num(word, w.value(word, "N")?)?),
            "macaddr" => {
                if c.macaddr.is_some() {
                    bail!("macaddr is given twice");
                }
                c.macaddr = Some(match w.value(word, "add|del|set|flush")? {
                    "add" => MacaddrOp::Add(macs(&mut w, "macaddr add")?),
                    "del" => MacaddrOp::Del(macs(&mut w, "macaddr del")?),
                    "set" => MacaddrOp::Set(macs(&mut w, "macaddr set")?),
                    "flush" => MacaddrOp::Flush,
                    other => bail!("macaddr {other:?}: expected add, del, set or flush"),
                });
            }
            other if name.is_none() && !is_set_keyword(other) => name = Some(other),
            other => bail!(
                "unexpected word {other:?}: `link set NAME` takes mode, address, mtu, bcqueuelen, bclim and macaddr"
            ),
        }
    }
    c.name = name
        .ok_or_else(|| anyhow!("which port? umacvlan link set NAME [mode M] ..."))?
        .to_string();
    if c == (LinkChange {
        name: c.name.clone(),
        ..LinkChange::default()
    }) {
        bail!(
            "nothing to change: umacvlan link set {} [mode M] [address MAC] [mtu N] [bcqueuelen N] [bclim N] [macaddr ...]",
            c.name
        );
    }
    Ok(c)
}

fn is_set_keyword(w: &str) -> bool {
    matches!(
        w,
        "mode" | "address" | "mtu" | "bcqueuelen" | "bclim" | "macaddr" | "type"
    )
}

// ---- rendering -----------------------------------------------------------------------------

const BROADCAST: &str = "ff:ff:ff:ff:ff:ff";

/// The interface flags as `ip link` prints them, in its order.
fn flag_words(l: &LinkView) -> Vec<&'static str> {
    let mut v = Vec::new();
    if l.up && !l.lower_up {
        v.push("NO-CARRIER");
    }
    v.extend(["BROADCAST", "MULTICAST"]);
    if l.allmulti {
        v.push("ALLMULTI");
    }
    if l.promisc {
        v.push("PROMISC");
    }
    if l.up {
        v.push("UP");
    }
    if l.lower_up {
        v.push("LOWER_UP");
    }
    v
}

fn operstate(l: &LinkView) -> &'static str {
    if l.up && l.lower_up { "UP" } else { "DOWN" }
}

/// The `macvlan ...` words of `ip -d link`.
fn macvlan_words(l: &LinkView) -> String {
    let mut s = format!("macvlan mode {}", l.mode.name());
    if l.nopromisc {
        s.push_str(" nopromisc");
    }
    if l.nodst {
        s.push_str(" nodst");
    }
    let _ = write!(
        s,
        " bcqueuelen {} usedbcqueuelen {}",
        l.bcqueuelen, l.usedbcqueuelen
    );
    if l.bclim != crate::forward::DEFAULT_BC_CUTOFF {
        let _ = write!(s, " bclim {}", l.bclim);
    }
    if l.mode == Mode::Source {
        let _ = write!(s, " remotes ({})", l.macaddr.len());
        for m in &l.macaddr {
            let _ = write!(s, " {m}");
        }
    }
    if l.kind.is_vm() {
        let _ = write!(s, " kind {}", l.kind);
        if let Some(p) = &l.path {
            let _ = write!(s, " path {}", p.display());
        }
        if l.trust_guest_mac {
            s.push_str(" trust_guest_mac");
        }
    }
    s
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n > 9 {
        n /= 10;
        d += 1;
    }
    d
}

/// `ip -s link`'s two blocks, with its column widths.
fn stats_text(s: &mut String, l: &LinkView) {
    let st = &l.stats;
    let rx = [
        st.rx_bytes,
        st.rx_packets,
        0,
        st.rx_dropped,
        0,
        st.rx_multicast,
    ];
    let tx = [st.tx_bytes, st.tx_packets, 0, st.tx_dropped, 0, 0];
    // iproute2's minimum widths: "*X errors:", "packets", "errors", "dropped", "heartbt", "overrun".
    let mut cols = [10usize, 7, 6, 7, 7, 7];
    for (i, c) in cols.iter_mut().enumerate() {
        *c = (*c).max(digits(rx[i])).max(digits(tx[i]));
    }
    let head = |s: &mut String, dir: &str, names: [&str; 6]| {
        let _ = write!(s, "    {dir}: {:>w$}", names[0], w = cols[0] - 4);
        for (n, w) in names.iter().zip(cols).skip(1) {
            let _ = write!(s, " {n:>w$}");
        }
        s.push('\n');
    };
    let row = |s: &mut String, vals: [u64; 6]| {
        let _ = write!(s, "    {:>w$}", vals[0], w = cols[0]);
        for (v, w) in vals.iter().zip(cols).skip(1) {
            let _ = write!(s, " {v:>w$}");
        }
        s.push('\n');
    };
    head(
        s,
        "RX",
        ["bytes", "packets", "errors", "dropped", "missed", "mcast"],
    );
    row(s, rx);
    head(
        s,
        "TX",
        [
            "bytes", "packets", "errors", "dropped", "carrier", "collsns",
        ],
    );
    row(s, tx);
}

fn drops_text(s: &mut String, l: &LinkView) {
    if l.stats.drops.is_empty() {
        s.push_str("    drops: none\n");
        return;
    }
    s.push_str("    drops:\n");
    let w = l.stats.drops.keys().map(String::len).max().unwrap_or(0);
    for (reason, n) in &l.stats.drops {
        let meaning = DropReason::ALL
            .into_iter()
            .find(|r| r.name() == reason)
            .map(|r| format!("  {}", r.meaning()))
            .unwrap_or_default();
        let _ = writeln!(s, "      {reason:<w$} {n:>10}{meaning}");
    }
}

/// The ports as `ip [-d] [-s [-s]] link show` prints them.
pub fn links_text(links: &[LinkView], o: &ShowOptions) -> String {
    let mut s = String::new();
    for l in links {
        let index = l.ifindex.map_or_else(|| "?".to_string(), |i| i.to_string());
        let _ = writeln!(
            s,
            "{index}: {}@{}: <{}> mtu {} state {}",
            l.name,
            l.parent,
            flag_words(l).join(","),
            l.mtu,
            operstate(l)
        );
        let _ = write!(s, "    link/ether {} brd {BROADCAST}", l.address);
        if let Some(ns) = &l.netns {
            let _ = write!(s, " netns {ns}");
        }
        if let Some(dev) = &l.ifname {
            let _ = write!(s, " ifname {dev}");
        }
        if let Some(owner) = &l.owner {
            let _ = write!(s, " owner {owner}");
        }
        if l.persist {
            s.push_str(" persist");
        }
        if o.details {
            let _ = write!(
                s,
                " promiscuity {} allmulti {}",
                u8::from(l.promisc),
                u8::from(l.allmulti)
            );
        }
        s.push('\n');
        if o.details {
            let _ = writeln!(s, "    {}", macvlan_words(l));
            let _ = write!(
                s,
                "    umacvlan forwarding {}",
                if l.forwarding { "yes" } else { "no" }
            );
            if let Some(why) = &l.refused {
                let _ = write!(s, " (refused: {why})");
            }
            s.push('\n');
        }
        if o.stats > 0 {
            stats_text(&mut s, l);
        }
        if o.stats > 1 {
            drops_text(&mut s, l);
        }
    }
    s
}

/// One port as `ip [-d] [-s [-s]] -j link show` prints it (iproute2's keys), plus umacvlan's
/// extras under `umacvlan`.
pub fn link_json(l: &LinkView, o: &ShowOptions) -> Value {
    let mut m = Map::new();
    if let Some(i) = l.ifindex {
        m.insert("ifindex".into(), json!(i));
    }
    m.insert("link".into(), json!(l.parent));
    m.insert("ifname".into(), json!(l.name));
    m.insert("flags".into(), json!(flag_words(l)));
    m.insert("mtu".into(), json!(l.mtu));
    m.insert("operstate".into(), json!(operstate(l)));
    m.insert("link_type".into(), json!("ether"));
    m.insert("address".into(), json!(l.address));
    m.insert("broadcast".into(), json!(BROADCAST));
    if o.details {
        m.insert("promiscuity".into(), json!(u8::from(l.promisc)));
        m.insert("allmulti".into(), json!(u8::from(l.allmulti)));
        let mut d = Map::new();
        d.insert("mode".into(), json!(l.mode.name()));
        // iproute2 prints each set flag as `"nopromisc": true`, absent when clear.
        if l.nopromisc {
            d.insert("nopromisc".into(), json!(true));
        }
        if l.nodst {
            d.insert("nodst".into(), json!(true));
        }
        d.insert("bcqueuelen".into(), json!(l.bcqueuelen));
        d.insert("usedbcqueuelen".into(), json!(l.usedbcqueuelen));
        d.insert("bclim".into(), json!(l.bclim));
        if l.mode == Mode::Source {
            d.insert("macaddr_count".into(), json!(l.macaddr.len()));
            if !l.macaddr.is_empty() {
                d.insert("macaddr_data".into(), json!(l.macaddr));
            }
        }
        m.insert(
            "linkinfo".into(),
            json!({"info_kind": "macvlan", "info_data": d}),
        );
    }
    let mut extra = Map::new();
    extra.insert("netns".into(), json!(l.netns));
    for (key, v) in [("ifname", &l.ifname), ("owner", &l.owner)] {
        if let Some(v) = v {
            extra.insert(key.into(), json!(v));
        }
    }
    extra.insert("forwarding".into(), json!(l.forwarding));
    extra.insert("persist".into(), json!(l.persist));
    if let Some(why) = &l.refused {
        extra.insert("refused".into(), json!(why));
    }
    extra.insert("kind".into(), json!(l.kind));
    if let Some(p) = &l.path {
        extra.insert("path".into(), json!(p));
    }
    if l.kind.is_vm() {
        extra.insert("trust_guest_mac".into(), json!(l.trust_guest_mac));
    }
    if o.stats > 0 {
        let st = &l.stats;
        let mut rx = json!({
            "bytes": st.rx_bytes, "packets": st.rx_packets, "errors": 0,
            "dropped": st.rx_dropped, "over_errors": 0, "multicast": st.rx_multicast,
        });
        let mut tx = json!({
            "bytes": st.tx_bytes, "packets": st.tx_packets, "errors": 0,
            "dropped": st.tx_dropped, "carrier_errors": 0, "collisions": 0,
        });
        if o.stats > 1 {
            for k in [
                "length_errors",
                "crc_errors",
                "frame_errors",
                "fifo_errors",
                "missed_errors",
            ] {
                rx[k] = json!(0);
            }
            for k in [
                "aborted_errors",
                "fifo_errors",
                "window_errors",
                "heartbeat_errors",
                "carrier_changes",
            ] {
                tx[k] = json!(0);
            }
        }
        m.insert("stats64".into(), json!({"rx": rx, "tx": tx}));
        extra.insert("drops".into(), json!(st.drops));
    }
    m.insert("umacvlan".into(), Value::Object(extra));
    Value::Object(m)
}

/// Every port, as `ip -j link show`'s array.
pub fn links_json(links: &[LinkView], o: &ShowOptions) -> Value {
    Value::Array(links.iter().map(|l| link_json(l, o)).collect())
}

#[cfg(test)]
mod tests;
