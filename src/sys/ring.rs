//! `RxRing`: the parent's receive path, a TPACKET_V3 `AF_PACKET` ring.
//!
//! Set up as docs/performance.md#how-the-engine-sets-up-its-sockets says, in this order (the kernel
//! refuses `PACKET_VNET_HDR` and `PACKET_VERSION` with EBUSY once a ring exists):
//!
//! 1. `socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL))`;
//! 2. `PACKET_VNET_HDR = 1`: a 10-byte `virtio_net_hdr` sits immediately before every frame;
//! 3. `PACKET_VERSION = TPACKET_V3`;
//! 4. `PACKET_IGNORE_OUTGOING = 1`: frames sent on the parent (by the engine's own TX socket or
//!    the host) are not looped back into the ring;
//! 5. `PACKET_RX_RING` with a [`RingConfig`] validated beforehand, `tp_retire_blk_tov` explicit;
//! 6. `mmap(MAP_SHARED)` of exactly `block_size × block_nr` bytes;
//! 7. `bind` to the parent's ifindex (0, "every interface", is refused).
//!
//! A ring takes no membership: it sees what the parent accepts. The parent's promiscuity and
//! filters follow the ports, as the kernel's macvlan sets its lower's
//! ([`Memberships`](super::Memberships), which the engine holds beside its rings).
//!
//! A V2 ring additionally turns on `PACKET_COPY_THRESH` and raises its socket's receive buffer
//! to the ring's size (`SO_RCVBUFFORCE`, else `SO_RCVBUF`): its slots are small (2 KiB: an
//! MTU-sized frame fits), and the kernel's `tpacket_rcv` puts a frame too large for a slot in the
//! slot truncated, flagged `TP_STATUS_COPY`, and queues the whole frame on the socket's receive
//! queue, under the same lock and in the same order as it hands out slots. So reading the slots
//! in order and, for each `TP_STATUS_COPY` slot, the next frame of the queue (`recv`, which also
//! writes the vnet header first) keeps the stream in order ([`RxRing::next_block`]). When the
//! queue is over its limit the kernel copies nothing: the slot's frame stays truncated, and is
//! counted so.
//!
//! Ownership protocol of a block: the kernel fills it while `block_status` is `TP_STATUS_KERNEL`
//! and hands it over by setting `TP_STATUS_USER`. [`RxRing::next_block`] Acquire-loads that word;
//! the returned [`Block`] guard gives the block back (Release-store of `TP_STATUS_KERNEL`) when
//! dropped. Every frame slice borrows the guard, so no slice can outlive the hand-back.
//!
//! This file is the part that touches the socket and the shared mapping: setup, `mmap`, the
//! ownership protocol above, steering and fanout, statistics and the copy path. Reading a block
//! it owns is safe code in [`wire::ring_format`](crate::wire::ring_format): `Block::view`
//! hands it the unit's bytes without the status word, and [`Block::frames`] walks them there,
//! never trusting the kernel's offsets.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::SockProtocol;

use crate::wire::frame::ETH_P_8021Q;
use crate::wire::ring_format::{
    BLOCK_STATUS_OFF, BlockView, Frames, MIN_TP_MAC, MIN_TP2_MAC, NUM_PKTS_OFF, TP2_STATUS_OFF,
};

use super::{bind_packet, get_packet_opt, packet_socket, set_opt, set_packet_opt};

/// `ETH_P_ALL` as the 16-bit protocol a packet socket binds to.
const ETH_P_ALL: u16 = 0x0003;
const _: () = assert!(ETH_P_ALL as libc::c_int == libc::ETH_P_ALL);
/// The classic BPF `ret #k` opcode (`BPF_RET | BPF_K`) as `sock_filter.code` holds it.
const BPF_RET_K: u16 = 0x06;
const _: () = assert!(BPF_RET_K as u32 == libc::BPF_RET | libc::BPF_K);

/// Which ring the kernel fills.
///
/// * **V3** hands over whole blocks: cheap under load (one wake-up per block), but a lone frame
///   waits until its block's retire timer fires (`retire_tov_ms`, at least 1 ms): sparse
///   traffic sees up to that much added latency (docs/performance.md#the-rings-latency).
/// * **V2** hands over every frame as it arrives: one wake-up per frame, in fixed 2 KiB slots
///   ([`V2_SLOT`]); a larger frame (a GSO super-frame) waits whole in the socket's receive queue,
///   its slot marking its place in the stream (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingVersion {
    V2,
    V3,
}

/// A V2 ring's slot (`tp_frame_size`): a frame of up to 1972 bytes fits (2048 minus the frame
/// header, address and vnet header, 76 bytes), so does any frame of a 1500-byte MTU, tagged or
/// not; larger frames take the socket's receive queue (module docs).
pub const V2_SLOT: u32 = 2048;

/// Geometry of the receive ring.
///
/// The **block** caps the frame size. In V3 a frame must fit in one (`block_size - 48 - tp_mac`,
/// docs/performance.md#super-frames-and-truncation-in-the-ring); in V2 a frame larger than its
/// slot is read from the socket's queue into a buffer of `block_size` bytes. Larger frames arrive
/// truncated (`tp_snaplen < tp_len`), and are counted so. 256 KiB covers 64 KiB GSO/GRO
/// super-frames; BIG TCP needs
/// `page_round(max(gso_max_size, gro_max_size) + 4 KiB)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingConfig {
    pub version: RingVersion,
    /// Bytes per block: a multiple of the page size.
    pub block_size: u32,
    /// Number of blocks.
    pub block_nr: u32,
    /// `tp_frame_size`: for V3 it only has to be a multiple of 16 that divides the block and
    /// holds the frame headers; it does not limit frame length. For V2 it is the slot
    /// ([`V2_SLOT`]).
    pub frame_size: u32,
    /// `tp_retire_blk_tov` in ms: how long a partly filled block waits before it is handed over.
    /// It is the added latency under sparse traffic. Must be explicit (0 lets the kernel choose,
    /// 8 ms when the ring is set up before `bind`).
    pub retire_tov_ms: u32,
}

impl RingConfig {
    /// 256 KiB × 64 blocks (16 MiB), frame size 2048, retire timeout 1 ms
    /// (docs/performance.md#how-the-engine-sets-up-its-sockets).
    pub const DEFAULT: RingConfig = RingConfig {
        version: RingVersion::V3,
        block_size: 256 * 1024,
        block_nr: 64,
        frame_size: 2048,
        retire_tov_ms: 1,
    };

    /// A V2 ring of the same memory as [`RingConfig::DEFAULT`], 256 KiB × 64 blocks (16 MiB),
    /// in 8192 slots of [`V2_SLOT`] bytes: a burst of 8192 small frames fits even if the worker
    /// reads none of it meanwhile. Frames larger than a slot, up to a block, go through the
    /// socket's receive queue, which may hold as much again (its receive buffer is the ring's
    /// size).
    pub const V2: RingConfig = RingConfig {
        version: RingVersion::V2,
        block_size: 256 * 1024,
        block_nr: 64,
        frame_size: V2_SLOT,
        retire_tov_ms: 1,
    };

    /// Same as [`RingConfig::DEFAULT`].
    pub const fn new() -> RingConfig {
        RingConfig::DEFAULT
    }

    /// Checks the geometry the kernel's `packet_set_ring` would check, plus the engine's own
    /// rules, and returns why it is unusable. Runs before any mapping.
    pub fn validate(&self) -> Result<(), &'static str> {
        let page = page_size();
        if self.block_size == 0 || self.block_nr == 0 {
            return Err("block_size and block_nr must be non-zero");
        }
        if !(self.block_size as usize).is_multiple_of(page) {
            return Err("block_size must be a multiple of the page size");
        }
        if self.block_size > i32::MAX as u32 {
            return Err("block_size must fit in a C int");
        }
        if !self.frame_size.is_multiple_of(16) {
            return Err("frame_size must be a multiple of TPACKET_ALIGNMENT (16)");
        }
        // The frame header, the address, the vnet header and an Ethernet header.
        let headers = match self.version {
            RingVersion::V2 => MIN_TP2_MAC,
            RingVersion::V3 => MIN_TP_MAC,
        };
        if (self.frame_size as usize) < headers + crate::wire::frame::ETH_HLEN {
            return Err("frame_size is smaller than the ring's frame headers");
        }
        if self.frame_size > self.block_size || !self.block_size.is_multiple_of(self.frame_size) {
            return Err("frame_size must divide block_size");
        }
        if self.frame_nr().is_none() {
            return Err("block_size / frame_size × block_nr overflows u32");
        }
        if self.map_len().is_none() {
            return Err("block_size × block_nr overflows the address space");
        }
        if self.retire_tov_ms == 0 {
            return Err("retire_tov_ms must be explicit (0 means 8 ms of added latency)");
        }
        Ok(())
    }

    /// `tp_frame_nr` as the kernel expects it.
    fn frame_nr(&self) -> Option<u32> {
        (self.block_size / self.frame_size).checked_mul(self.block_nr)
    }

    /// Bytes to map: `block_size × block_nr`.
    pub fn map_len(&self) -> Option<usize> {
        (self.block_size as usize).checked_mul(self.block_nr as usize)
    }
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig::DEFAULT
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096)
}

/// Why an [`RxRing`] could not be set up; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring for ifindex {ifindex}: invalid configuration {config:?}: {reason}")]
    InvalidConfig {
        ifindex: u32,
        config: RingConfig,
        reason: &'static str,
    },
    #[error("refusing to open a ring on ifindex 0: binding to it would capture every interface")]
    ZeroIfindex,
    #[error("ring for ifindex {ifindex}: socket(AF_PACKET, SOCK_RAW, ETH_P_ALL) failed")]
    Socket {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: setsockopt(PACKET_VNET_HDR) failed")]
    VnetHdr {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: setsockopt(PACKET_VERSION, TPACKET_V3) failed")]
    Version {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: setsockopt(PACKET_IGNORE_OUTGOING) failed")]
    IgnoreOutgoing {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: setsockopt(PACKET_RX_RING, {config:?}) failed")]
    RxRing {
        ifindex: u32,
        config: RingConfig,
        #[source]
        source: io::Error,
    },
    #[error(
        "ring for ifindex {ifindex}: setsockopt(PACKET_COPY_THRESH) or the receive buffer \
         (SO_RCVBUFFORCE, SO_RCVBUF) failed"
    )]
    CopyPath {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: mmap of {len} bytes failed")]
    Mmap {
        ifindex: u32,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: bind failed")]
    Bind {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("ring for ifindex {ifindex}: joining the PACKET_FANOUT group failed")]
    Fanout {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// Counters from `PACKET_STATISTICS` (`struct tpacket_stats_v3`).
///
/// The kernel **clears them on every read**: each value is the count since the previous
/// [`RxRing::stats`] call, so accumulate them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames the socket accepted or dropped: `tp_packets` **includes** `drops`.
    pub packets: u32,
    /// Frames dropped: no free block, or a GSO type a vnet header cannot express.
    pub drops: u32,
    /// How often the kernel found the next block still owned by userspace (ring full).
    pub freeze_q_cnt: u32,
}

/// A TPACKET_V3 (or V2) receive ring on one interface. See the module docs.
#[derive(Debug)]
pub struct RxRing {
    map: NonNull<u8>,
    map_len: usize,
    config: RingConfig,
    ifindex: u32,
    /// Index of the next block to look at; the kernel fills blocks in order.
    next: u32,
    /// V2: where a frame larger than its slot is read from the socket's queue (`block_size`
    /// bytes, allocated at the first such frame).
    copy_buf: Vec<u8>,
    fd: OwnedFd,
}

// SAFETY: `RxRing` owns its mapping and socket exclusively; the raw pointer is only an address
// into that mapping and carries no thread affinity, so moving the ring to another thread is sound.
// It is not `Sync`: `next_block` needs `&mut self`.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Opens the ring on `ifindex` with the steps listed in the module docs.
    pub fn open(ifindex: u32, config: RingConfig) -> Result<RxRing, RingError> {
        config
            .validate()
            .map_err(|reason| RingError::InvalidConfig {
                ifindex,
                config,
                reason,
            })?;
        if ifindex == 0 {
            return Err(RingError::ZeroIfindex);
        }
        let (map_len, frame_nr) = match (config.map_len(), config.frame_nr()) {
            (Some(l), Some(n)) => (l, n),
            _ => unreachable!("validate() checked both products"),
        };

        let fd = packet_socket(Some(SockProtocol::EthAll))
            .map_err(|source| RingError::Socket { ifindex, source })?;
        set_packet_opt(fd.as_fd(), libc::PACKET_VNET_HDR, &1 as &libc::c_int)
            .map_err(|source| RingError::VnetHdr { ifindex, source })?;
        let version = match config.version {
            RingVersion::V2 => libc::tpacket_versions::TPACKET_V2,
            RingVersion::V3 => libc::tpacket_versions::TPACKET_V3,
        } as libc::c_int;
        set_packet_opt(fd.as_fd(), libc::PACKET_VERSION, &version)
            .map_err(|source| RingError::Version { ifindex, source })?;
        set_packet_opt(fd.as_fd(), libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)
            .map_err(|source| RingError::IgnoreOutgoing { ifindex, source })?;
        let ring_error = |source| RingError::RxRing {
            ifindex,
            config,
            source,
        };
        match config.version {
            RingVersion::V3 => {
                let req = libc::tpacket_req3 {
                    tp_block_size: config.block_size,
                    tp_block_nr: config.block_nr,
                    tp_frame_size: config.frame_size,
                    tp_frame_nr: frame_nr,
                    tp_retire_blk_tov: config.retire_tov_ms,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                set_packet_opt(fd.as_fd(), libc::PACKET_RX_RING, &req).map_err(ring_error)?;
            }
            RingVersion::V2 => {
                let req = libc::tpacket_req {
                    tp_block_size: config.block_size,
                    tp_block_nr: config.block_nr,
                    tp_frame_size: config.frame_size,
                    tp_frame_nr: frame_nr,
                };
                set_packet_opt(fd.as_fd(), libc::PACKET_RX_RING, &req).map_err(ring_error)?;
                copy_path(fd.as_fd(), map_len)
                    .map_err(|source| RingError::CopyPath { ifindex, source })?;
            }
        }

        // SAFETY: a fresh mapping (addr NULL, no MAP_FIXED) cannot alias any Rust object; the fd
        // is a packet socket whose RX ring of exactly `map_len` bytes was configured just above,
        // which is what a mmap of that socket at offset 0 maps.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(RingError::Mmap {
                ifindex,
                len: map_len,
                source: io::Error::last_os_error(),
            });
        }
        let Some(map) = NonNull::new(addr.cast::<u8>()) else {
            unreachable!("mmap without MAP_FIXED never returns address 0 on success")
        };
        // From here on, Drop unmaps.
        let ring = RxRing {
            map,
            map_len,
            config,
            ifindex,
            next: 0,
            copy_buf: Vec::new(),
            fd,
        };

        bind_packet(ring.fd.as_fd(), ifindex, ETH_P_ALL)
            .map_err(|source| RingError::Bind { ifindex, source })?;
        Ok(ring)
    }

    /// The socket, for `poll` (readable when a block is user-owned).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// The next block the kernel has handed over, if any. Its frames borrow the guard; dropping
    /// the guard gives the block back to the kernel.
    ///
    /// A handed-over block can be **empty** (`num_pkts` 0): measured on 6.18, a frame clamped to
    /// the block size does not fit the current block even when that block is empty, so the kernel
    /// retires it and puts the frame in the next one.
    ///
    /// With a V2 ring, each "block" is one frame slot holding exactly one frame.
    pub fn next_block(&mut self) -> Option<Block<'_>> {
        let (slot_size, slots) = self.slots();
        let offset = self.next as usize * slot_size;
        // SAFETY: `next < slots`, and `slot_size × slots <= map_len` (a V3 block is a slot; V2
        // slots are whole frames, `frames_per_block` of them per block, never crossing one), so
        // the pointer stays inside the mapping we own.
        let base = unsafe { self.map.add(offset) };
        let status_off = status_offset(self.config.version);
        // SAFETY: `base` is 16-aligned (page-aligned blocks, frame sizes a multiple of 16) and
        // inside the mapping (above), so the status word at `status_off` is in bounds and
        // 4-aligned; the kernel writes it concurrently, which is why it is only ever accessed
        // through an `AtomicU32`.
        let status = unsafe { status_word(base, status_off) }.load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        self.next = (self.next + 1) % slots;
        let version = self.config.version;
        let copy = match version {
            RingVersion::V2 if status & libc::TP_STATUS_COPY != 0 => self.recv_copy(),
            _ => None,
        };
        Some(Block {
            base,
            block_size: slot_size,
            version,
            status,
            copy,
            _ring: PhantomData,
        })
    }

    /// The whole frame of a V2 slot flagged `TP_STATUS_COPY`: the next one in the socket's
    /// receive queue (module docs), with its vnet header, read into the copy buffer; at most
    /// `block_size` bytes of it (a longer one comes back cut short, and counts as truncated).
    /// `None` if the queue is empty, which the kernel never allows (it queues the frame before
    /// it hands the slot over); the slot's truncated frame is used then.
    fn recv_copy(&mut self) -> Option<&[u8]> {
        use nix::sys::socket::{MsgFlags, recv};
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0; self.config.block_size as usize];
        }
        // MSG_TRUNC: the length returned is the whole frame's (with its vnet header), even
        // when the buffer held less of it.
        let flags = MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT;
        match recv(self.fd.as_raw_fd(), &mut self.copy_buf, flags) {
            Ok(n) => Some(&self.copy_buf[..n.min(self.copy_buf.len())]),
            Err(e) => {
                tracing::warn!(
                    ifindex = self.ifindex,
                    "a ring slot flagged TP_STATUS_COPY, but no frame to read: {e}"
                );
                None
            }
        }
    }

    /// The size and number of the units the kernel hands over: blocks (V3) or frames (V2).
    fn slots(&self) -> (usize, u32) {
        let c = &self.config;
        match c.version {
            RingVersion::V3 => (c.block_size as usize, c.block_nr),
            RingVersion::V2 => (c.frame_size as usize, c.frame_nr().unwrap_or(0)),
        }
    }

    /// Reads and **clears** the socket's counters (`PACKET_STATISTICS`): each call returns the
    /// counts since the previous one.
    pub fn stats(&self) -> io::Result<RingStats> {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        get_packet_opt(self.fd.as_fd(), libc::PACKET_STATISTICS, &mut st)?;
        Ok(RingStats {
            packets: st.tp_packets,
            drops: st.tp_drops,
            freeze_q_cnt: st.tp_freeze_q_cnt,
        })
    }

    /// Opens `n` rings on `ifindex` that share the parent's frames: with `n > 1` they form one
    /// `PACKET_FANOUT` group in HASH mode, so every frame reaches exactly one ring, and both
    /// directions of a flow always the same one (`__skb_get_hash_symmetric`): a flow stays in
    /// order. `n == 1` is a plain [`RxRing::open`].
    pub fn open_fanout(
        ifindex: u32,
        config: RingConfig,
        n: usize,
    ) -> Result<Vec<RxRing>, RingError> {
        if n <= 1 {
            return Ok(vec![RxRing::open(ifindex, config)?]);
        }
        RxRing::open_group(ifindex, &vec![config; n], libc::PACKET_FANOUT_HASH)
    }

    /// Opens a TPACKET_V3 ring (`batch`) and a TPACKET_V2 ring (`per_frame`) on `ifindex` as
    /// one `PACKET_FANOUT_CBPF` group, members 0 and 1 in that order, and steers every frame to
    /// `per_frame` ([`Steering::V2`]). [`RxRing::steer`] on either moves the whole stream.
    pub fn open_steered(
        ifindex: u32,
        batch: RingConfig,
        per_frame: RingConfig,
    ) -> Result<(RxRing, RxRing), RingError> {
        if batch.version != RingVersion::V3 || per_frame.version != RingVersion::V2 {
            return Err(RingError::InvalidConfig {
                ifindex,
                config: batch,
                reason: "a steered pair is one V3 ring and one V2 ring",
            });
        }
        let mut rings = RxRing::open_group(ifindex, &[batch, per_frame], libc::PACKET_FANOUT_CBPF)?;
        let v2 = rings.pop().expect("two members");
        let v3 = rings.pop().expect("two members");
        v3.steer(Steering::V2)
            .map_err(|source| RingError::Fanout { ifindex, source })?;
        Ok((v3, v2))
    }

    /// One ring per config, joined in that order (member `i` is `configs[i]`) into a new fanout
    /// group of `mode`. The group id is picked
    /// by the kernel (`FLAG_UNIQUEID`), so it cannot collide with another engine's group;
    /// `FLAG_IGNORE_OUTGOING` replaces the per-socket option, which a fanout member loses
    /// (docs/performance.md#packet-socket-options).
    fn open_group(
        ifindex: u32,
        configs: &[RingConfig],
        mode: u32,
    ) -> Result<Vec<RxRing>, RingError> {
        let fanout_error = |source| RingError::Fanout { ifindex, source };
        let mode = mode | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
        let mut rings = Vec::with_capacity(configs.len());
        let mut arg = 0;
        for (i, config) in configs.iter().enumerate() {
            let ring = RxRing::open(ifindex, *config)?;
            if i == 0 {
                // id 0 with UNIQUEID: the kernel assigns a free id, which the group's getsockopt
                // returns in its low 16 bits.
                let first = (mode | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16;
                set_packet_opt(ring.fd.as_fd(), libc::PACKET_FANOUT, &first)
                    .map_err(fanout_error)?;
                let mut joined: libc::c_uint = 0;
                get_packet_opt(ring.fd.as_fd(), libc::PACKET_FANOUT, &mut joined)
                    .map_err(fanout_error)?;
                arg = (mode << 16) | (joined & 0xffff);
            } else {
                set_packet_opt(ring.fd.as_fd(), libc::PACKET_FANOUT, &arg).map_err(fanout_error)?;
            }
            rings.push(ring);
        }
        Ok(rings)
    }

    /// Steers every frame of this ring's `PACKET_FANOUT_CBPF` group to one member: the group's
    /// classic BPF program becomes `ret #member` (`PACKET_FANOUT_DATA`, which needs no
    /// capability beyond the socket: a cBPF program is checked and run like a socket filter).
    /// Replacing a program waits for an RCU grace period (`__fanout_set_data_bpf` calls
    /// `synchronize_net`), so when this returns every frame the old program steered is already
    /// in its member's ring: in a V2 slot handed over, or in a V3 block (maybe still open).
    pub fn steer(&self, to: Steering) -> io::Result<()> {
        steer(self.fd.as_fd(), to)
    }

    /// Lets only the 802.1Q frames with VID `vid` into the ring: the kernel's socket filter
    /// drops every other frame before it is copied (the ring of a sub-interface emulated on its
    /// lower device, which need not pay for the lower's other traffic).
    pub fn keep_only_vid(&self, vid: u16) -> io::Result<()> {
        let mut program = vid_filter(vid);
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).expect("a short program"),
            filter: program.as_mut_ptr(),
        };
        // `program` outlives the call: the kernel copies it (`copy_bpf_fprog_from_user`).
        set_opt(
            self.fd.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
        )
    }

    /// A second handle on this ring's socket (a dup of its fd, no mapping) that can steer its
    /// group from another thread: [`SteerHandle::steer`] is [`RxRing::steer`].
    pub fn steer_handle(&self) -> io::Result<SteerHandle> {
        Ok(SteerHandle(self.fd.try_clone()?))
    }

    /// For a V3 ring whose frames have all been read (`next_block` returned `None`): true when
    /// the block the kernel fills now holds no frame either, so nothing of this ring can arrive
    /// later than what was read. Meaningful once nothing is steered here any more (after
    /// [`RxRing::steer`] away from it), when the kernel no longer writes the block; a block that
    /// was never opened may report stale frames, which only makes the caller wait for the
    /// retire timer. Always true for a V2 ring (it has no open block).
    pub fn open_block_is_empty(&self) -> bool {
        if self.config.version == RingVersion::V2 {
            return true;
        }
        let offset = self.next as usize * self.config.block_size as usize;
        // SAFETY: `next < block_nr`, so the block at `offset` is inside the mapping we own.
        let base = unsafe { self.map.add(offset) };
        // SAFETY: the block is inside the live mapping (above) and page-aligned, so its status
        // word (offset 8) is in bounds and 4-aligned; the kernel may write it concurrently, so it
        // is only read through an atomic.
        let status = unsafe { status_word(base, BLOCK_STATUS_OFF) }.load(Ordering::Acquire);
        // SAFETY: as above, for `num_pkts` at offset 12.
        let n = unsafe { status_word(base, NUM_PKTS_OFF) }.load(Ordering::Acquire);
        status & libc::TP_STATUS_USER == 0 && n == 0
    }
}

/// The kernel's ancillary loads of classic BPF (`SKF_AD_OFF + SKF_AD_VLAN_*`,
/// `include/uapi/linux/filter.h`): the outer tag the kernel took out of the frame.
const SKF_AD_OFF: u32 = (-0x1000i32).cast_unsigned();
const SKF_AD_VLAN_TAG: u32 = SKF_AD_OFF + 44;
const SKF_AD_VLAN_TAG_PRESENT: u32 = SKF_AD_OFF + 48;
const SKF_AD_VLAN_TPID: u32 = SKF_AD_OFF + 60;

/// A socket filter that lets through the 802.1Q frames with VID `vid` and nothing else.
fn vid_filter(vid: u16) -> [libc::sock_filter; 9] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: u16::try_from(code).expect("a cBPF opcode"),
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    [
        op(ld, 0, 0, SKF_AD_VLAN_TAG_PRESENT),
        op(jeq, 5, 0, 0), // untagged: drop
        op(ld, 0, 0, SKF_AD_VLAN_TPID),
        op(jeq, 0, 3, u32::from(ETH_P_8021Q)), // 802.1ad: drop
        op(ld, 0, 0, SKF_AD_VLAN_TAG),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0x0fff),
        op(jeq, 1, 0, u32::from(vid)),
        op(ret, 0, 0, 0),        // drop
        op(ret, 0, 0, u32::MAX), // the whole frame
    ]
}

/// [`RxRing::steer`] on the ring's socket `fd`.
fn steer(fd: BorrowedFd<'_>, to: Steering) -> io::Result<()> {
    let mut program = [libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: to as u32,
    }];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    // `program` outlives the call: the kernel copies it (`copy_bpf_fprog_from_user`).
    set_packet_opt(fd, libc::PACKET_FANOUT_DATA, &fprog)
}

/// Turns on a V2 ring's path for frames larger than a slot (module docs): `PACKET_COPY_THRESH`
/// (any non-zero value: the kernel does not compare it with anything) and a receive buffer of
/// `bytes` for the frames it queues, forced past `net.core.rmem_max` when the engine may
/// (CAP_NET_ADMIN), else as much of it as `rmem_max` allows.
fn copy_path(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    set_packet_opt(fd, libc::PACKET_COPY_THRESH, &1 as &libc::c_int)?;
    // The kernel doubles the value it is given (bookkeeping overhead): ask for half.
    let half = (bytes / 2).min(i32::MAX as usize / 2);
    if setsockopt(&fd, sockopt::RcvBufForce, &half).is_err() {
        setsockopt(&fd, sockopt::RcvBuf, &half)?;
    }
    Ok(())
}

/// A steered ring's socket without its mapping ([`RxRing::steer_handle`]): the socket stays
/// open, and its group steerable, for as long as either lives.
#[derive(Debug)]
pub struct SteerHandle(OwnedFd);

impl SteerHandle {
    /// [`RxRing::steer`]: blocks for an RCU grace period.
    pub fn steer(&self, to: Steering) -> io::Result<()> {
        steer(self.0.as_fd(), to)
    }
}

/// Which member of a steered pair ([`RxRing::open_steered`]) gets the frames: the value is the
/// member index the group's program returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Steering {
    /// The TPACKET_V3 ring (member 0): block batching.
    V3 = 0,
    /// The TPACKET_V2 ring (member 1): a wake-up per frame.
    V2 = 1,
}

impl AsFd for RxRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly what mmap returned in `open`; every `Block` borrows
        // the ring mutably, so none is alive here and no slice into the mapping remains.
        let rc = unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
        debug_assert_eq!(rc, 0, "munmap of the ring failed");
    }
}

/// The 32-bit word at `off` in the unit (block or V2 slot) at `base`: its status word, or a V3
/// block's `num_pkts`.
///
/// # Safety
/// `base` must point to the start of a unit inside a live ring mapping (16-aligned), `off` must
/// be 0, 8 or 12 and inside the unit, and the mapping must outlive `'a`.
unsafe fn status_word<'a>(base: NonNull<u8>, off: usize) -> &'a AtomicU32 {
    // SAFETY: by the caller's contract `base + off` is inside the mapping.
    let word = unsafe { base.as_ptr().add(off) };
    // SAFETY: `word .. word + 4` is inside the mapping, which outlives `'a` (caller's contract),
    // and 4-aligned (units are 16-aligned, `off` is 0, 8 or 12); every Rust access that may race
    // with the kernel's writes to it is atomic.
    unsafe { AtomicU32::from_ptr(word.cast::<u32>()) }
}

/// Where the status word of a handed-over unit is: `block_status` in a V3 block descriptor,
/// `tp_status` at the start of a V2 frame.
const fn status_offset(v: RingVersion) -> usize {
    match v {
        RingVersion::V3 => BLOCK_STATUS_OFF,
        RingVersion::V2 => TP2_STATUS_OFF,
    }
}

/// A block handed over by the kernel. Dropping it returns the block (Release store of
/// `TP_STATUS_KERNEL`), so every frame read from it happens before the kernel may refill it.
#[derive(Debug)]
pub struct Block<'a> {
    base: NonNull<u8>,
    /// The unit's size: a block (V3) or a frame slot (V2).
    block_size: usize,
    version: RingVersion,
    /// The status word as `next_block` read it (a V2 frame's `tp_status` flags live here).
    status: u32,
    /// V2, `TP_STATUS_COPY`: the whole frame (vnet header first), read from the socket's queue.
    copy: Option<&'a [u8]>,
    _ring: PhantomData<&'a mut RxRing>,
}

impl Block<'_> {
    /// The unit's bytes after its status word, indexed by offsets from the unit's start.
    fn view(&self) -> BlockView<'_> {
        let skip = status_offset(self.version) + 4;
        // SAFETY: `skip <= 12 < block_size`, and the unit lies inside the live mapping
        // (`next_block` checked the index; the guard borrows the ring mutably).
        let start = unsafe { self.base.as_ptr().add(skip) };
        // SAFETY: `start .. base + block_size` is inside the mapping (above). The Acquire load of
        // `TP_STATUS_USER` in `next_block` made the kernel's writes visible, and the kernel does
        // not write this unit again until `Drop` stores `TP_STATUS_KERNEL`, which cannot happen
        // while the returned slice (which borrows `self`) lives. The slice starts after the
        // status word, the only word the kernel touches meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(start, self.block_size - skip) };
        BlockView::new(bytes, skip)
    }

    /// `num_pkts`: how many frames the kernel says the block holds (a V2 slot holds one).
    pub fn num_pkts(&self) -> u32 {
        match self.version {
            RingVersion::V3 => self.view().num_pkts(),
            RingVersion::V2 => 1,
        }
    }

    /// `seq_num`: the kernel's running block sequence number (gaps mean nothing; it is per ring);
    /// 0 for a V2 slot.
    pub fn seq_num(&self) -> u64 {
        match self.version {
            RingVersion::V3 => self.view().seq_num(),
            RingVersion::V2 => 0,
        }
    }

    /// The frames in the block. Iteration stops early, without reading outside the block, if the
    /// kernel's offsets are inconsistent; compare the count with [`Block::num_pkts`] to detect it.
    pub fn frames(&self) -> Frames<'_> {
        let view = self.view();
        match self.version {
            RingVersion::V3 => Frames::v3(view),
            RingVersion::V2 => Frames::v2(view, self.status, self.copy),
        }
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of a unit in the ring mapping, which outlives this guard
        // (it borrows the ring); its status word is where `next_block` found it.
        let status = unsafe { status_word(self.base, status_offset(self.version)) };
        // Release: our reads of this block happen before the kernel may refill it.
        status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_the_recommended_one_and_valid() {
        let c = RingConfig::default();
        assert_eq!(c, RingConfig::new());
        assert_eq!(
            (c.block_size, c.block_nr, c.frame_size, c.retire_tov_ms),
            (256 * 1024, 64, 2048, 1)
        );
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.map_len(), Some(16 * 1024 * 1024));
        assert_eq!(c.frame_nr(), Some(128 * 64));
        // The V2 ring: the same memory in 8192 slots of 2 KiB.
        let v2 = RingConfig::V2;
        assert_eq!(v2.validate(), Ok(()));
        assert_eq!(v2.map_len(), Some(16 * 1024 * 1024));
        assert_eq!((v2.frame_size, v2.frame_nr()), (V2_SLOT, Some(8192)));
    }

    #[test]
    fn bad_configs_are_refused_before_any_syscall() {
        let ok = RingConfig::DEFAULT;
        let bad = [
            RingConfig {
                block_size: 0,
                ..ok
            },
            RingConfig { block_nr: 0, ..ok },
            RingConfig {
                block_size: 256 * 1024 + 100,
                ..ok
            },
            RingConfig {
                frame_size: 2040,
                ..ok
            },
            RingConfig {
                frame_size: 64,
                ..ok
            },
            RingConfig {
                frame_size: 512 * 1024,
                ..ok
            },
            RingConfig {
                frame_size: 3072,
                ..ok
            },
            RingConfig {
                block_size: 1 << 31,
                ..ok
            },
            RingConfig {
                retire_tov_ms: 0,
                ..ok
            },
            RingConfig {
                block_size: 1 << 30,
                block_nr: u32::MAX,
                frame_size: 16 * 1024,
                ..ok
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?} should be invalid");
            // Refused before a socket exists: works without privileges and names the ifindex.
            match RxRing::open(7, c) {
                Err(RingError::InvalidConfig { ifindex: 7, .. }) => {}
                other => panic!("{c:?}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn ifindex_zero_is_refused() {
        assert!(matches!(
            RxRing::open(0, RingConfig::DEFAULT),
            Err(RingError::ZeroIfindex)
        ));
    }

    /// Root tests: everything inside a private network namespace (see `sys::testns`).
    mod root {
        use std::io::IoSlice;
        use std::time::Duration;

        use super::super::super::testns::{
            NetNs, Seen, collect, ifindex, udp_flow_frame, udp_frame,
        };
        use super::super::super::{RingError, TxSocket};
        use super::*;
        use crate::wire::frame::VlanTag;
        use crate::wire::vnet::{F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr};

        const WAIT: Duration = Duration::from_secs(3);

        fn csum_hdr(csum_start: u16) -> VnetHdr {
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start,
                csum_offset: 6, // UDP checksum
                ..VnetHdr::NONE
            }
        }

        #[test]
        fn tx_on_one_veth_end_reaches_the_ring_on_the_other() {
            tx_reaches_the_ring(RingConfig::DEFAULT);
        }

        #[test]
        fn the_same_through_a_v2_ring() {
            tx_reaches_the_ring(RingConfig::V2);
        }

        fn tx_reaches_the_ring(config: RingConfig) {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            ns.run(|| {
                let mut ring = RxRing::open(ifindex("vb"), config).expect("ring on vb");
                let tx = TxSocket::open(ifindex("va")).expect("tx on va");

                // 1. Untagged, partial checksum: bytes and vnet header arrive unchanged.
                let plain = udp_frame(None, b"umv-plain");
                let vnet = csum_hdr(14 + 20).to_bytes();
                tx.send(&[&vnet[..], &plain].concat()).expect("send");

                // 2. 802.1Q-tagged (prio 3, vid 100), gathered from four slices the way the
                //    engine reinserts a tag: vnet header, MACs, tag, rest.
                let tag = VlanTag {
                    tpid: 0x8100,
                    tci: 0x6064,
                };
                let tagged = udp_frame(Some(tag), b"umv-tagged");
                let tvnet = csum_hdr(14 + 4 + 20).to_bytes();
                let tag_bytes = tag.to_bytes();
                tx.send_vectored(&[
                    IoSlice::new(&tvnet),
                    IoSlice::new(&tagged[..12]),
                    IoSlice::new(&tag_bytes),
                    IoSlice::new(&tagged[16..]),
                ])
                .expect("send_vectored");

                // 3. Two more in one sendmmsg, without any offload.
                let b1 = [
                    &VnetHdr::NONE.to_bytes()[..],
                    &udp_frame(None, b"umv-batch-1"),
                ]
                .concat();
                let b2 = [
                    &VnetHdr::NONE.to_bytes()[..],
                    &udp_frame(None, b"umv-batch-2"),
                ]
                .concat();
                let scratch = &mut crate::sys::tx::MmsgScratch::default();
                assert_eq!(
                    tx.send_batch([&b1[..], &b2[..]], scratch)
                        .expect("sendmmsg"),
                    2
                );

                let markers: [&[u8]; 4] =
                    [b"umv-plain", b"umv-tagged", b"umv-batch-1", b"umv-batch-2"];
                let seen = collect(&mut ring, WAIT, |s| {
                    markers.iter().all(|m| s.iter().any(|f| f.has_marker(m)))
                });
                let find = |m: &[u8]| {
                    seen.iter().find(|f| f.has_marker(m)).unwrap_or_else(|| {
                        panic!(
                            "{} never reached the ring: {seen:?}",
                            String::from_utf8_lossy(m)
                        )
                    })
                };

                let p = find(b"umv-plain");
                assert_eq!(p.frame, plain, "bytes from the MAC header on");
                assert!(!p.truncated);
                assert_eq!(p.vlan, None);
                assert_eq!(p.pkt_type, libc::PACKET_OTHERHOST);
                assert_eq!(
                    VnetHdr::parse(&p.vnet),
                    Some(csum_hdr(34)),
                    "vnet header precedes the frame"
                );

                let t = find(b"umv-tagged");
                assert_eq!(t.vlan, Some(tag), "outer tag reported out of band");
                let mut untagged = tagged.clone();
                untagged.drain(12..16);
                assert_eq!(t.frame, untagged, "the slot holds the untagged frame");
                let tv = VnetHdr::parse(&t.vnet).expect("vnet");
                assert_eq!(
                    tv.csum_start, 34,
                    "csum_start is relative to the untagged frame: {tv:?}"
                );
                assert_eq!(
                    tv.with_vlan_inserted(),
                    csum_hdr(38),
                    "reinserting the tag restores it"
                );

                for m in [&b"umv-batch-1"[..], b"umv-batch-2"] {
                    let b = find(m);
                    assert!(!VnetHdr::parse(&b.vnet).expect("vnet").needs_csum());
                }

                // PACKET_STATISTICS is clear-on-read.
                let first = ring.stats().expect("stats");
                assert!(first.packets >= 4, "{first:?}");
                assert_eq!(first.drops, 0, "{first:?}");
                let second = ring.stats().expect("stats");
                assert!(
                    second.packets < first.packets,
                    "not cleared: {first:?} then {second:?}"
                );
            });
        }

        #[test]
        fn a_fanout_group_splits_by_flow_and_ignores_outgoing() {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            ns.run(|| {
                let mut rings =
                    RxRing::open_fanout(ifindex("va"), RingConfig::DEFAULT, 2).expect("fanout");
                assert_eq!(rings.len(), 2);
                let tx_a = TxSocket::open(ifindex("va")).expect("tx on va");
                let tx_b = TxSocket::open(ifindex("vb")).expect("tx on vb");
                let none = VnetHdr::NONE.to_bytes();
                const FLOWS: u16 = 32;
                const PER_FLOW: u16 = 4;
                for i in 0..FLOWS * PER_FLOW {
                    let f = udp_flow_frame(i % FLOWS, format!("umv-fan-{}", i % FLOWS).as_bytes());
                    tx_b.send(&[&none[..], &f].concat()).expect("send b");
                }
                tx_a.send(&[&none[..], &udp_frame(None, b"umv-out-a")].concat())
                    .expect("send a");
                let total = usize::from(FLOWS * PER_FLOW);
                let mut seen: Vec<Vec<_>> = vec![Vec::new(), Vec::new()];
                let deadline = std::time::Instant::now() + WAIT;
                while seen.iter().map(Vec::len).sum::<usize>() < total
                    && std::time::Instant::now() < deadline
                {
                    for (ring, got) in rings.iter_mut().zip(&mut seen) {
                        let more = collect(ring, Duration::from_millis(20), |_| false);
                        got.extend(more.into_iter().filter(|f| f.ours()));
                    }
                }
                let flow_of = |f: &super::super::super::testns::Seen| f.frame[34..36].to_vec();
                let flows: Vec<std::collections::BTreeSet<Vec<u8>>> = seen
                    .iter()
                    .map(|s| s.iter().map(flow_of).collect())
                    .collect();
                assert_eq!(
                    seen[0].len() + seen[1].len(),
                    total,
                    "every frame reaches exactly one member"
                );
                assert!(
                    flows[0].is_disjoint(&flows[1]),
                    "a flow was split across members: {flows:?}"
                );
                assert!(
                    !flows[0].is_empty() && !flows[1].is_empty(),
                    "32 flows all hashed to one member: {flows:?}"
                );
                assert!(
                    !seen.iter().flatten().any(|f| f.has_marker(b"umv-out-a")),
                    "FLAG_IGNORE_OUTGOING failed: a member saw va's own TX"
                );
                // Each member's flows arrive in order.
                for s in &seen {
                    for flow in 0..FLOWS {
                        let marker = format!("umv-fan-{flow}");
                        let n = s.iter().filter(|f| f.has_marker(marker.as_bytes())).count();
                        assert!(n == 0 || n == usize::from(PER_FLOW), "flow {flow}: {n}");
                    }
                }
            });
        }

        #[test]
        fn a_steered_pair_moves_the_stream_between_its_rings() {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            ns.run(|| {
                let (mut v3, mut v2) =
                    RxRing::open_steered(ifindex("va"), RingConfig::DEFAULT, RingConfig::V2)
                        .expect("steered pair");
                assert!(v3.open_block_is_empty(), "nothing sent yet, nothing in V3");
                let tx = TxSocket::open(ifindex("vb")).expect("tx on vb");
                let none = VnetHdr::NONE.to_bytes();
                let send = |m: &[u8]| {
                    tx.send(&[&none[..], &udp_frame(None, m)].concat())
                        .expect("send")
                };
                let ours = |r: &mut RxRing, m: &'static [u8]| {
                    let seen = collect(r, WAIT, |s| s.iter().any(|f| f.has_marker(m)));
                    seen.into_iter().filter(|f| f.ours()).count()
                };
                let quiet = Duration::from_millis(30);

                // Steered to V2 from the start: every frame there, none in V3.
                send(b"umv-first");
                assert_eq!(ours(&mut v2, b"umv-first"), 1);
                assert!(collect(&mut v3, quiet, |_| false).iter().all(|f| !f.ours()));
                assert!(v3.open_block_is_empty());

                // Steered to V3: the frame sits in V3's open block (or a retired one) until
                // it is read; V2 gets nothing.
                v2.steer(Steering::V3).expect("steer to V3");
                send(b"umv-second");
                send(b"umv-third");
                assert!(!v3.open_block_is_empty(), "two frames are in V3, unread");
                let seen = collect(&mut v3, WAIT, |s| {
                    s.iter().any(|f| f.has_marker(b"umv-third"))
                });
                let order: Vec<bool> = seen
                    .iter()
                    .filter(|f| f.ours())
                    .map(|f| f.has_marker(b"umv-second"))
                    .collect();
                assert_eq!(order, [true, false], "second, then third, and nothing else");
                assert!(collect(&mut v2, quiet, |_| false).iter().all(|f| !f.ours()));

                // Back to V2: once V3 is read, its open block is empty.
                v3.steer(Steering::V2).expect("steer to V2");
                assert!(v3.open_block_is_empty(), "V3 was drained");
                send(b"umv-fourth");
                assert_eq!(ours(&mut v2, b"umv-fourth"), 1);
                assert!(v3.open_block_is_empty(), "nothing more reaches V3");
            });
        }

        #[test]
        fn ring_ignores_what_is_sent_on_its_own_interface() {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            ns.run(|| {
                let mut ring_a =
                    RxRing::open(ifindex("va"), RingConfig::DEFAULT).expect("ring on va");
                let mut ring_b =
                    RxRing::open(ifindex("vb"), RingConfig::DEFAULT).expect("ring on vb");
                let tx_a = TxSocket::open(ifindex("va")).expect("tx on va");
                let tx_b = TxSocket::open(ifindex("vb")).expect("tx on vb");
                let none = VnetHdr::NONE.to_bytes();

                // Sent on A first, then a frame arriving on A from B.
                tx_a.send(&[&none[..], &udp_frame(None, b"umv-out-a")].concat())
                    .expect("send a");
                tx_b.send(&[&none[..], &udp_frame(None, b"umv-in-a")].concat())
                    .expect("send b");

                let on_a = collect(&mut ring_a, WAIT, |s| {
                    s.iter().any(|f| f.has_marker(b"umv-in-a"))
                });
                assert!(
                    on_a.iter().any(|f| f.has_marker(b"umv-in-a")),
                    "ring on va is deaf: {on_a:?}"
                );
                assert!(
                    !on_a.iter().any(|f| f.has_marker(b"umv-out-a")),
                    "PACKET_IGNORE_OUTGOING failed: the ring on va saw its own interface's TX"
                );
                // The frame did go out: the other end received it.
                let on_b = collect(&mut ring_b, WAIT, |s| {
                    s.iter().any(|f| f.has_marker(b"umv-out-a"))
                });
                assert!(on_b.iter().any(|f| f.has_marker(b"umv-out-a")), "{on_b:?}");
                assert!(!on_b.iter().any(|f| f.has_marker(b"umv-in-a")), "{on_b:?}");
            });
        }

        #[test]
        fn ring_on_a_missing_interface_fails_at_bind() {
            let ns = NetNs::new();
            ns.run(|| match RxRing::open(4_000_000, RingConfig::DEFAULT) {
                Err(RingError::Bind {
                    ifindex: 4_000_000,
                    source,
                }) => {
                    assert_eq!(source.raw_os_error(), Some(libc::ENODEV), "{source}");
                }
                other => panic!("expected a Bind error, got {other:?}"),
            });
        }

        /// A V2 ring's frames larger than a slot come whole through the socket's queue, in their
        /// place in the stream; larger than a block, they arrive truncated, as in V3.
        #[test]
        fn a_v2_ring_carries_frames_larger_than_a_slot_whole_and_in_order() {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            ns.ip(&["link", "set", "dev", "va", "mtu", "9000"]);
            ns.ip(&["link", "set", "dev", "vb", "mtu", "9000"]);
            ns.run(|| {
                // 16 slots of 2 KiB, frames up to 8 KiB.
                let cfg = RingConfig {
                    block_size: 8192,
                    block_nr: 4,
                    ..RingConfig::V2
                };
                let mut ring = RxRing::open(ifindex("vb"), cfg).expect("ring on vb");
                let tx = TxSocket::open(ifindex("va")).expect("tx on va");
                // Small, large, small, large, small, and too large (over the 8 KiB buffer).
                let sizes = [0, 6000, 100, 3000, 0, 8500];
                let frames: Vec<Vec<u8>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let mut f = udp_frame(None, &vec![0x55; *n]);
                        f.extend_from_slice(format!("umv-copy-{i}").as_bytes());
                        f
                    })
                    .collect();
                for f in &frames {
                    tx.send(&[&VnetHdr::NONE.to_bytes()[..], f].concat())
                        .expect("send");
                }
                let seen = collect(&mut ring, WAIT, |s| {
                    s.iter().filter(|f| f.ours()).count() == frames.len()
                });
                let ours: Vec<&Seen> = seen.iter().filter(|f| f.ours()).collect();
                assert_eq!(ours.len(), frames.len(), "{seen:?}");
                for (i, (got, sent)) in ours.iter().zip(&frames).enumerate() {
                    if i == 5 {
                        assert!(got.truncated, "over the buffer: counted as truncated");
                        assert_eq!(got.frame[..], sent[..8192 - VNET_HDR_LEN]);
                    } else {
                        assert!(!got.truncated, "frame {i}: {} bytes", got.frame.len());
                        assert!(got.frame == *sent, "frame {i} differs or is out of order");
                        let vnet = VnetHdr::parse(&got.vnet).expect("a vnet header first");
                        assert!(!vnet.needs_csum(), "frame {i}: {vnet:?}");
                    }
                }
                let st = ring.stats().expect("stats");
                assert_eq!(st.drops, 0, "{st:?}");
            });
        }

        #[test]
        fn frames_larger_than_a_block_arrive_truncated() {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            ns.ip(&["link", "set", "dev", "va", "mtu", "9000"]);
            ns.ip(&["link", "set", "dev", "vb", "mtu", "9000"]);
            ns.run(|| {
                let cfg = RingConfig {
                    block_size: 4096,
                    block_nr: 4,
                    frame_size: 2048,
                    ..RingConfig::DEFAULT
                };
                let mut ring = RxRing::open(ifindex("vb"), cfg).expect("ring on vb");
                let tx = TxSocket::open(ifindex("va")).expect("tx on va");
                let mut big = udp_frame(None, &[0x55; 6000]);
                big.extend_from_slice(b"umv-big");
                tx.send(&[&VnetHdr::NONE.to_bytes()[..], &big].concat())
                    .expect("send");
                let seen = collect(&mut ring, WAIT, |s| s.iter().any(|f| f.ours()));
                let f = seen
                    .iter()
                    .find(|f| f.ours())
                    .expect("the big frame never arrived");
                assert!(f.truncated, "{} of {} bytes", f.frame.len(), big.len());
                // block - block descriptor - tp_mac (92 with a vnet header).
                assert_eq!(f.frame.len(), 4096 - 48 - 92);
                assert_eq!(f.frame[..], big[..f.frame.len()]);
            });
        }
    }
}
