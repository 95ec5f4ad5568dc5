//! TEMPORARY stand-in until the sys branch lands its vnet module.
pub const VNET_HDR_LEN: usize = 10;
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr { pub flags: u8, pub gso_type: u8, pub hdr_len: u16, pub gso_size: u16, pub csum_start: u16, pub csum_offset: u16 }
impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; 10] = b.get(..10)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }
    pub fn to_bytes(self) -> [u8; 10] {
        let mut o = [0u8; 10];
        o[0] = self.flags; o[1] = self.gso_type;
        o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        o
    }
    pub fn is_gso(&self) -> bool { self.gso_type & 0x7f != 0 }
    pub fn with_vlan_inserted(mut self) -> VnetHdr {
        if self.flags & 1 != 0 { self.csum_start += 4; }
        if self.is_gso() { self.hdr_len += 4; }
        self
    }
}
