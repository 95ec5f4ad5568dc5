//! Finishing in software what a virtio-net header leaves undone, for a peer that has no such
//! header (a stream port): the checksum of a `NEEDS_CSUM` frame, and the segmentation of a TCP
//! super-frame (`GSO_TCPV4`, `GSO_TCPV6`) into frames of `gso_size` payload bytes each, as the
//! kernel's `skb_checksum_help` and `tcp_gso_segment` would.
//!
//! Not handled (refused with [`OffloadError`], which the caller counts): UDP fragmentation
//! offload (`GSO_UDP`, obsolete), UDP segmentation (`GSO_UDP_L4`), IPv6 extension headers before
//! TCP, and tunnels. The engine's TAPs never announce USO, so Linux does not send them.
//!
//! Pure and safe: no I/O.

use crate::wire::vnet::{GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VnetHdr};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a frame could not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("checksum offsets {start}+{offset} lie outside the {len}-byte frame")]
    CsumOutside {
        start: usize,
        offset: usize,
        len: usize,
    },
    #[error("GSO type {0} is not segmented in software (only TCPv4 and TCPv6)")]
    GsoType(u8),
    #[error("a GSO frame whose headers are not Ethernet/IP/TCP as announced")]
    Headers,
    #[error("GSO size 0")]
    ZeroGsoSize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The ones'-complement sum of `bytes` (big-endian 16-bit words, odd byte padded), added to
/// `sum`, not folded.
fn sum(bytes: &[u8], mut sum: u64) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits and complements it: the value stored in a checksum field.
fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !u16::try_from(s).expect("folded to 16 bits above")
}

/// A length for a 16-bit header field. Segments are at most MTU-sized; were that ever broken,
/// the field saturates instead of wrapping to a small, plausible-looking value.
fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Hands `frame` (no vnet header) to `emit` as one or more complete frames: as it is when `hdr`
/// asks for nothing, with its checksum filled in for `NEEDS_CSUM`, cut into segments for TCP GSO.
/// `scratch` is reused between calls. An error means nothing was emitted.
pub fn complete<E>(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut Vec<u8>,
    emit: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<(), E>, OffloadError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE if !hdr.needs_csum() => Ok(emit(frame)),
        GSO_NONE => {
            scratch.clear();
            scratch.extend_from_slice(frame);
            let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            if start + offset + 2 > frame.len() {
                return Err(OffloadError::CsumOutside {
                    start,
                    offset,
                    len: frame.len(),
                });
            }
            let c = fold(sum(&scratch[start..], 0));
            // As skb_checksum_help: a computed 0 is sent as 0xffff (CSUM_MANGLED_0; for UDP 0
            // would mean "no checksum").
            put16(scratch, start + offset, if c == 0 { 0xffff } else { c });
            Ok(emit(scratch))
        }
        t @ (GSO_TCPV4 | GSO_TCPV6) => segment(t == GSO_TCPV6, hdr.gso_size, frame, scratch, emit),
        other => Err(OffloadError::GsoType(other)),
    }
}

/// Where the headers of a TCP frame are.
struct Layout {
    ip: usize,
    tcp: usize,
    payload: usize,
}

fn layout(v6: bool, f: &[u8]) -> Option<Layout> {
    let mut ip = 14;
    let mut ethertype = be16(f, 12);
    // 802.1Q / 802.1ad tags inline.
    while matches!(ethertype, 0x8100 | 0x88a8) {
        ethertype = be16(f.get(..ip + 4)?, ip + 2);
        ip += 4;
    }
    let (tcp, proto) = if v6 {
        (ethertype == ETHERTYPE_IPV6).then_some(())?;
        (ip + 40, *f.get(ip + 6)?)
    } else {
        (ethertype == ETHERTYPE_IPV4).then_some(())?;
        let ihl = usize::from(f.get(ip)? & 0x0f) * 4;
        (ihl >= 20).then_some(())?;
        (ip + ihl, *f.get(ip + 9)?)
    };
    (proto == PROTO_TCP).then_some(())?;
    let payload = tcp + usize::from(f.get(tcp + 12)? >> 4) * 4;
    (payload >= tcp + 20 && payload <= f.len()).then_some(Layout { ip, tcp, payload })
}

/// `tcp_gso_segment`: one frame per `mss` bytes of payload, headers copied and fixed up (IP
/// lengths, IPv4 id and header checksum, TCP sequence, flags, checksum).
fn segment<E>(
    v6: bool,
    mss: u16,
    f: &[u8],
    buf: &mut Vec<u8>,
    emit: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<(), E>, OffloadError> {
    if mss == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    if f.len() < 14 {
        return Err(OffloadError::Headers);
    }
    let Layout { ip, tcp, payload } = layout(v6, f).ok_or(OffloadError::Headers)?;
    let (head, data) = f.split_at(payload);
    let seq = u32::from_be_bytes([f[tcp + 4], f[tcp + 5], f[tcp + 6], f[tcp + 7]]);
    let flags = f[tcp + 13];
    let id = be16(f, ip + 4);
    let chunks = data.chunks(usize::from(mss)).collect::<Vec<_>>();
    let n = chunks.len().max(1);
    // The IP ID goes up by one per segment and the sequence number by the payload before it,
    // both modulo their field width.
    let (mut seg_id, mut off) = (id, 0u32);
    for i in 0..n {
        let chunk = chunks.get(i).copied().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(head);
        buf.extend_from_slice(chunk);
        let (len, tcp_len) = (buf.len(), buf.len() - tcp);
        let last = i + 1 == n;
        if v6 {
            put16(buf, ip + 4, len16(len - ip - 40));
        } else {
            put16(buf, ip + 2, len16(len - ip));
            put16(buf, ip + 4, seg_id);
            put16(buf, ip + 10, 0);
            let c = fold(sum(&buf[ip..tcp], 0));
            put16(buf, ip + 10, c);
        }
        buf[tcp + 4..tcp + 8].copy_from_slice(&seq.wrapping_add(off).to_be_bytes());
        (seg_id, off) = (seg_id.wrapping_add(1), off.wrapping_add(u32::from(mss)));
        let mut fl = flags;
        if !last {
            fl &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            fl &= !TCP_CWR;
        }
        buf[tcp + 13] = fl;
        // The pseudo-header: addresses, protocol, TCP length.
        let addrs = if v6 {
            &buf[ip + 8..ip + 40]
        } else {
            &buf[ip + 12..ip + 20]
        };
        let pseudo = sum(addrs, u64::from(PROTO_TCP) + tcp_len as u64);
        put16(buf, tcp + 16, 0);
        let c = fold(sum(&buf[tcp..], pseudo));
        put16(buf, tcp + 16, c);
        if let Err(e) = emit(buf) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet::F_NEEDS_CSUM;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_frame(v6: bool, payload: &[u8], flags_fin_psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            b.ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
        };
        let mut b = b.tcp(40000, 5201, 1_000_000, 64000).ack(7);
        if flags_fin_psh {
            b = b.psh().fin();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// The frame as a sender with checksum offload hands it over: TCP checksum = the folded
    /// pseudo-header sum, not complemented.
    fn partial(v6: bool, f: &mut [u8]) -> VnetHdr {
        let l = layout(v6, f).unwrap();
        let tcp_len = (f.len() - l.tcp) as u64;
        let addrs = if v6 {
            &f[l.ip + 8..l.ip + 40]
        } else {
            &f[l.ip + 12..l.ip + 20]
        };
        let p = !fold(sum(addrs, u64::from(PROTO_TCP) + tcp_len));
        put16(f, l.tcp + 16, p);
        VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: len16(l.tcp),
            csum_offset: 16,
            ..VnetHdr::NONE
        }
    }

    fn run(hdr: &VnetHdr, f: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        complete::<()>(hdr, f, &mut scratch, &mut |b| {
            out.push(b.to_vec());
            Ok(())
        })?
        .unwrap();
        Ok(out)
    }

    /// Checks the IP and TCP checksums with etherparse's own computation.
    fn checksums_ok(f: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            return false;
        };
        let want = match p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                if h.calc_header_checksum() != h.header_checksum {
                    return false;
                }
                t.calc_checksum_ipv4(h.source, h.destination).unwrap()
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                let h = ip.header().to_header();
                t.calc_checksum_ipv6(h.source, h.destination).unwrap()
            }
            _ => return false,
        };
        want == t.checksum()
    }

    #[test]
    fn a_frame_without_offload_state_passes_unchanged() {
        let f = tcp_frame(false, b"hello", false);
        assert_eq!(run(&VnetHdr::NONE, &f).unwrap(), vec![f]);
    }

    #[test]
    fn needs_csum_is_completed_for_v4_and_v6() {
        for v6 in [false, true] {
            let good = tcp_frame(v6, b"some payload, odd length", false);
            assert!(checksums_ok(&good));
            let mut f = good.clone();
            let hdr = partial(v6, &mut f);
            assert!(
                !checksums_ok(&f),
                "v6={v6}: the partial frame is not valid yet"
            );
            assert_eq!(run(&hdr, &f).unwrap(), vec![good], "v6={v6}");
        }
    }

    #[test]
    fn tso_cuts_at_gso_size_and_fixes_every_header() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..3000u32).map(|i| i.to_le_bytes()[0]).collect();
            let mut f = tcp_frame(v6, &payload, true);
            let mut hdr = partial(v6, &mut f);
            hdr.gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            hdr.gso_size = 1448;
            let segs = run(&hdr, &f).unwrap();
            assert_eq!(segs.len(), 3, "v6={v6}: 1448 + 1448 + 104");
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(checksums_ok(s), "v6={v6} segment {i}");
                let p = SlicedPacket::from_ethernet(s).unwrap();
                let Some(TransportSlice::Tcp(t)) = p.transport else {
                    panic!("not TCP")
                };
                assert_eq!(
                    t.sequence_number(),
                    1_000_000 + 1448 * u32::try_from(i).unwrap()
                );
                let last = i == 2;
                assert_eq!((t.fin(), t.psh()), (last, last), "v6={v6} segment {i}");
                assert!(t.ack());
                joined.extend_from_slice(t.payload());
                if let Some(etherparse::NetSlice::Ipv4(ip)) = p.net {
                    assert_eq!(ip.header().identification(), u16::try_from(i).unwrap());
                    assert_eq!(usize::from(ip.header().total_len()), s.len() - 14);
                }
            }
            assert_eq!(joined, payload, "v6={v6}: the payload, in order");
        }
    }

    #[test]
    fn unsupported_and_malformed_frames_are_refused() {
        let f = tcp_frame(false, b"x", false);
        let udp = VnetHdr {
            gso_type: crate::wire::vnet::GSO_UDP_L4,
            gso_size: 100,
            ..VnetHdr::NONE
        };
        assert_eq!(run(&udp, &f), Err(OffloadError::GsoType(5)));
        let zero = VnetHdr {
            gso_type: GSO_TCPV4,
            ..VnetHdr::NONE
        };
        assert_eq!(run(&zero, &f), Err(OffloadError::ZeroGsoSize));
        let v6_on_v4 = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 100,
            ..VnetHdr::NONE
        };
        assert_eq!(run(&v6_on_v4, &f), Err(OffloadError::Headers));
        let outside = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 60,
            csum_offset: 16,
            ..VnetHdr::NONE
        };
        assert!(matches!(
            run(&outside, &f),
            Err(OffloadError::CsumOutside { .. })
        ));
        let tso = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 100,
            ..VnetHdr::NONE
        };
        assert_eq!(
            run(&tso, &f[..30]),
            Err(OffloadError::Headers),
            "cut headers"
        );
    }
}
