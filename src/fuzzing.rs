//! Fuzz-target bodies: hostile bytes into every parser and into `decide()`. The cargo-fuzz
//! targets in `fuzz/` call these, and the unit tests below run every input saved in
//! `fuzz/regressions/` (crashes once found, and hand-made edge cases) on every `cargo test`.
//!
//! Each body asserts what must hold whatever the input: no panic, and for `decide()` the
//! invariants of its verdict.

use crate::forward::{
    DEFAULT_MAX_FRAME, Delivery, Ingress, Mode, ParentConfig, PortConfig, PortTable, decide,
};
use crate::wire::frame::{FrameMeta, VlanTag};
use crate::wire::mac::MacAddr;

/// A table of every mode, built from the fuzzer's first byte (which ports are up, which have
/// joined a group, the bc_cutoff, a source list), so that frames meet every branch.
fn table(knobs: u8) -> PortTable {
    let mut parent = ParentConfig::new("p0", MacAddr([2, 0, 0, 0, 1, 0]), 1500);
    parent.bc_cutoff = i32::from(knobs >> 6) - 1;
    parent.unicast_filter = knobs & 0x20 != 0;
    let modes = [
        Mode::Bridge,
        Mode::Bridge,
        Mode::Vepa,
        Mode::Private,
        Mode::Source,
    ];
    let ports = modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut p = PortConfig::new(
                format!("c{i}"),
                *m,
                MacAddr([2, 0, 0, 0, 0, u8::try_from(i).expect("a few ports")]),
            );
            p.up = knobs & (1 << i) != 0 || i == 0;
            if i % 2 == 0 {
                p.groups.insert(MacAddr([1, 0, 0x5e, 0, 0, 1]));
            }
            if *m == Mode::Source {
                p.sources.insert(MacAddr([2, 0, 0, 0, 9, 9]));
                p.flags.nodst = knobs & 0x10 != 0;
            }
            p.mtu = Some(1400 + u32::from(knobs & 0x0f));
            p
        })
        .collect();
    PortTable::build(parent, ports).expect("the fuzz table is valid")
}

/// Frame parsing and the decision, from every ingress. Byte 0 shapes the table, byte 1 picks an
/// out-of-band VLAN tag and GSO, the rest is the frame.
pub fn frame_decide(data: &[u8]) {
    let [knobs, flags, frame @ ..] = data else {
        return;
    };
    let t = table(*knobs);
    let vlan = (flags & 1 != 0).then(|| VlanTag::dot1q(u16::from(*flags)));
    let Ok(meta) = FrameMeta::parse(frame, vlan, DEFAULT_MAX_FRAME) else {
        return;
    };
    let meta = meta.with_gso(flags & 2 != 0);
    let _ = (
        meta.outer_vlan(),
        meta.inner_vlan(),
        meta.ethertype(),
        meta.is_pause(),
    );
    for ingress in std::iter::once(Ingress::Parent).chain(t.ids().map(Ingress::Port)) {
        let v = decide(&t, ingress, &meta);
        let mut receivers = Vec::new();
        v.for_each_receiver(&t, |id| receivers.push(id));
        for id in &receivers {
            assert!(id.index() < t.ports().len(), "receiver out of range");
        }
        // A flood never delivers to a port it explains as skipped.
        if let Delivery::Flood(fl) = v.deliver {
            for id in t.ids() {
                let skipped = fl.admits(&t, id).is_err();
                let copies = v.copies.iter().filter(|c| **c == id).count();
                let got = receivers.iter().filter(|r| **r == id).count();
                assert!(!skipped || got == copies, "{id:?} skipped but delivered");
            }
        }
        // Only up ports receive (source copies, floods and unicast alike).
        for id in &receivers {
            assert!(t.port(*id).is_up(), "{id:?} is down but received");
        }
        if receivers.is_empty() && !v.to_wire && !v.to_host {
            assert!(
                v.reason.is_some() || matches!(v.deliver, Delivery::Flood(_)),
                "{v:?}"
            );
        }
        let _ = v.outcomes(&t);
    }
}

/// One control-socket request line.
pub fn control_request(data: &[u8]) {
    let _ = crate::control::server::parse_request(data);
}

/// A configuration file.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::control::config::Config::parse("fuzz.toml", text);
    }
}

/// A `--port` value and a MAC address.
pub fn port_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<crate::control::spec::PortSpec>();
        let _ = text.parse::<MacAddr>();
    }
}

/// 802.1Q emulation: a parent name, whose frame is whose, and the tag put in a port's frame.
/// Byte 0 and 1 are an out-of-band tag's TCI (byte 2 bit 0: 802.1ad), byte 3 a claimed VID's low
/// byte; the rest is a name and, as bytes, a TAP read behind its headroom.
pub fn vlan(data: &[u8]) {
    use crate::wire::frame::ETH_P_8021AD;
    use crate::wire::vlan::{Claim, TAG_HEADROOM, VidSet, parse_name, tag_in_place};
    use crate::wire::vnet::{VNET_HDR_LEN, VnetHdr};
    let [a, b, kind, claimed, rest @ ..] = data else {
        return;
    };
    if let Ok(Some(v)) = std::str::from_utf8(rest)
        .map(parse_name)
        .unwrap_or(Ok(None))
    {
        assert!(v.vid <= crate::wire::vlan::VID_MAX && !v.lower.is_empty());
    }
    let tci = u16::from_be_bytes([*a, *b]);
    let tpid = if kind & 1 != 0 { ETH_P_8021AD } else { 0x8100 };
    let tag = (kind & 2 != 0).then_some(VlanTag { tpid, tci });
    let set = VidSet::new();
    set.insert(u16::from(*claimed));
    for claim in [Claim::Vid(u16::from(*claimed)), Claim::Lower(&set)] {
        // Exactly one of a sub-interface and its lower device takes a frame of this VID.
        let mine = claim.take(tag);
        if let Claim::Vid(_) = claim {
            assert_eq!(mine.is_some(), Claim::Lower(&set).take(tag).is_none());
            assert!(
                mine.is_none_or(|t| t.is_none()),
                "a sub-interface's frame is untagged"
            );
        }
    }
    let mut buf = vec![0u8; TAG_HEADROOM];
    buf.extend_from_slice(rest);
    let before = VnetHdr::parse(rest);
    if let Some(out) = tag_in_place(&mut buf, tci) {
        let n = rest.len();
        assert_eq!(out.len(), n + TAG_HEADROOM);
        assert_eq!(
            &out[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &rest[VNET_HDR_LEN..VNET_HDR_LEN + 12]
        );
        assert_eq!(out[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14], [0x81, 0x00]);
        assert_eq!(&out[VNET_HDR_LEN + 16..], &rest[VNET_HDR_LEN + 12..]);
        let after = VnetHdr::parse(out);
        assert_eq!(after, before.map(VnetHdr::with_vlan_inserted));
    } else {
        assert!(rest.len() < VNET_HDR_LEN + 12);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs `f` on every file in `fuzz/regressions/<target>/`.
    fn replay(target: &str, f: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
        n
    }

    #[test]
    fn saved_inputs_still_pass() {
        for (target, f) in [
            ("frame_decide", super::frame_decide as fn(&[u8])),
            ("control_request", super::control_request),
            ("config_file", super::config_file),
            ("port_spec", super::port_spec),
            ("vlan", super::vlan),
        ] {
            assert!(replay(target, f) > 0, "no saved inputs for {target}");
        }
    }
}
