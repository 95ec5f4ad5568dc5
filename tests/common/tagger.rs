//! The kernel's 802.1Q sub-interfaces without the `8021q` module: tc programs that do what
//! `vlan_do_receive` and `vlan_dev_hard_start_xmit` do, so that the kernel's macvlan on a veth
//! stands for the kernel's macvlan on `eth0.100`.
//!
//! This kernel has neither `8021q` nor a VLAN-filtering bridge (`CONFIG_BRIDGE_VLAN_FILTERING`
//! needs `CONFIG_VLAN_8021Q`), nor tc's `vlan` action; it has `cls_bpf` and the eBPF helpers
//! `bpf_skb_vlan_pop`/`bpf_skb_vlan_push`, which are the kernel's own tag handling
//! (`skb_vlan_pop`, `skb_vlan_push`). Each program is a handful of hand-assembled eBPF
//! instructions, loaded with `bpf(BPF_PROG_LOAD)`, pinned in a private bpffs mount and attached
//! with `tc filter ... bpf object-pinned ... da` to a clsact ingress:
//!
//! * on the wire-side device ([`demux`]): an 802.1Q frame whose VID has a sub-interface loses its
//!   tag and goes to that sub-interface's veth; everything else (untagged, priority-tagged, other
//!   VIDs, 802.1ad) goes, tag and all, to the lower device's own veth, as a `vlan_find_dev` miss
//!   leaves it to the lower's `rx_handler`;
//! * on a sub-interface's veth ([`tagger`]): the frame gets an outer 802.1Q tag (priority 0) and
//!   leaves on the wire-side device; on the lower's own veth, it leaves unchanged ([`tagger`]
//!   with no VID).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use super::try_run;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const MOV_X: u8 = 0xbf;
const MOV_K: u8 = 0xb7;
const LDX_W: u8 = 0x61;
const AND_K: u8 = 0x57;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

const SKB_VLAN_PUSH: i32 = 18;
const SKB_VLAN_POP: i32 = 19;
const REDIRECT: i32 = 23;

/// `struct __sk_buff` offsets.
const VLAN_PRESENT: i16 = 20;
const VLAN_TCI: i16 = 24;
const VLAN_PROTO: i16 = 28;
/// `htons(ETH_P_8021Q)` as the program sees it on a little-endian host.
const DOT1Q_BE: i32 = 0x0081;

fn index(i: u32) -> i32 {
    i32::try_from(i).unwrap()
}

/// The wire side's ingress: VID `subs[i].0` (802.1Q) goes untagged to ifindex `subs[i].1`
/// (two sub-interfaces), anything else unchanged to `lower`.
fn demux(subs: [(u16, u32); 2], lower: u32) -> Vec<Insn> {
    vec![
        insn(MOV_X, 6, 1, 0, 0),
        insn(LDX_W, 2, 6, VLAN_PRESENT, 0),
        insn(JEQ_K, 2, 0, 15, 0), // untagged: to 18
        insn(LDX_W, 3, 6, VLAN_PROTO, 0),
        insn(JNE_K, 3, 0, 13, DOT1Q_BE), // 802.1ad: to 18
        insn(LDX_W, 2, 6, VLAN_TCI, 0),
        insn(AND_K, 2, 0, 0, 0x0fff),
        insn(MOV_K, 7, 0, 0, index(subs[0].1)),
        insn(JEQ_K, 2, 0, 3, i32::from(subs[0].0)), // to 12
        insn(MOV_K, 7, 0, 0, index(subs[1].1)),
        insn(JEQ_K, 2, 0, 1, i32::from(subs[1].0)), // to 12
        insn(JA, 0, 0, 6, 0),                       // no sub-interface: to 18
        // 12: the sub-interface's: untag, then to its veth.
        insn(MOV_X, 1, 6, 0, 0),
        insn(CALL, 0, 0, 0, SKB_VLAN_POP),
        insn(MOV_X, 1, 7, 0, 0),
        insn(MOV_K, 2, 0, 0, 0),
        insn(CALL, 0, 0, 0, REDIRECT),
        insn(EXIT, 0, 0, 0, 0),
        // 18: the lower's, as it is.
        insn(MOV_K, 1, 0, 0, index(lower)),
        insn(MOV_K, 2, 0, 0, 0),
        insn(CALL, 0, 0, 0, REDIRECT),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// A sub-interface's veth ingress (`vid`) or the lower's own (`None`): tag, then out on `wire`.
fn tagger(vid: Option<u16>, wire: u32) -> Vec<Insn> {
    let mut p = Vec::new();
    if let Some(vid) = vid {
        p.push(insn(MOV_K, 2, 0, 0, DOT1Q_BE));
        p.push(insn(MOV_K, 3, 0, 0, i32::from(vid)));
        p.push(insn(CALL, 0, 0, 0, SKB_VLAN_PUSH));
    }
    p.extend([
        insn(MOV_K, 1, 0, 0, index(wire)),
        insn(MOV_K, 2, 0, 0, 0),
        insn(CALL, 0, 0, 0, REDIRECT),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix of 128 bytes that outlives the
    // call; the kernel reads at most that many bytes and follows only the pointers the caller
    // put in it, which point at live buffers.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn put(attr: &mut [u8; 128], at: usize, v: &[u8]) {
    attr[at..at + v.len()].copy_from_slice(v);
}

/// Loads `prog` as a `BPF_PROG_TYPE_SCHED_CLS` program; panics with the verifier's log.
fn load(prog: &[Insn]) -> OwnedFd {
    let license = CString::new("GPL").unwrap();
    let mut log = vec![0u8; 65_536];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    put(
        &mut attr,
        4,
        &u32::try_from(prog.len()).unwrap().to_ne_bytes(),
    );
    put(&mut attr, 8, &(prog.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes()); // log_level
    put(
        &mut attr,
        28,
        &u32::try_from(log.len()).unwrap().to_ne_bytes(),
    );
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    match bpf(5, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) },
        Err(e) => panic!(
            "loading the tagger program: {e}: {}",
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        ),
    }
}

/// A private bpffs mount, unmounted and removed on drop.
struct BpfFs(std::path::PathBuf);

impl Drop for BpfFs {
    fn drop(&mut self) {
        let dir = self.0.to_str().unwrap();
        let _ = try_run("umount", &[dir]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Attaches `prog` to the clsact ingress of `dev` in namespace `ns` (via a pinned copy).
fn attach(fs: &BpfFs, ns: &str, dev: &str, prog: &[Insn]) {
    use std::os::fd::AsRawFd;
    let fd = load(prog);
    let path = fs.0.join(format!("{ns}-{dev}"));
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &(cpath.as_ptr() as u64).to_ne_bytes());
    put(
        &mut attr,
        8,
        &u32::try_from(fd.as_raw_fd()).unwrap().to_ne_bytes(),
    );
    bpf(6, &mut attr).unwrap_or_else(|e| panic!("pinning {}: {e}", path.display())); // BPF_OBJ_PIN
    let p = path.to_str().unwrap();
    try_run("tc", &["-n", ns, "qdisc", "add", "dev", dev, "clsact"]).unwrap();
    let filter = [
        "-n",
        ns,
        "filter",
        "add",
        "dev",
        dev,
        "ingress",
        "bpf",
        "object-pinned",
        p,
        "da",
    ];
    try_run("tc", &filter).unwrap_or_else(|e| panic!("{e}"));
}

fn ifindex(ns: &str, dev: &str) -> u32 {
    super::in_netns(ns, || nix::net::if_::if_nametoindex(dev).unwrap())
}

/// Makes namespace `ns` the kernel's 802.1Q demultiplexer: `wire` is the device facing the wire,
/// `subs` the (VID, veth) of two sub-interfaces, `lower` the lower device's own veth (each veth's
/// peer is the macvlan parent that stands for the sub-interface or the lower device).
pub fn install(ns: &str, wire: &str, subs: [(u16, &str); 2], lower: &str) {
    let dir = std::env::temp_dir().join(format!("umv-bpffs-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fs = BpfFs(dir);
    try_run("mount", &["-t", "bpf", "bpf", fs.0.to_str().unwrap()]).unwrap();
    let w = ifindex(ns, wire);
    let l = ifindex(ns, lower);
    let s = subs.map(|(v, d)| (v, ifindex(ns, d)));
    attach(&fs, ns, wire, &demux(s, l));
    for (v, d) in subs {
        attach(&fs, ns, d, &tagger(Some(v), w));
    }
    attach(&fs, ns, lower, &tagger(None, w));
}
