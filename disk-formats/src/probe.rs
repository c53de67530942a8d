//! Format recognition by magic bytes, never by file name.

use std::fmt;

use serde::Serialize;

/// What the first bytes of a source say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// Anything without a known magic: a raw disk.
    Raw,
    /// An ISO 9660 filesystem image; converted as raw.
    Iso,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// gzip wrapper (possibly multi-member).
    Gzip,
    /// xz wrapper (possibly multi-stream).
    Xz,
    /// zstd wrapper (possibly multi-frame).
    Zstd,
    /// VMware VMDK (sparse extent or descriptor).
    Vmdk,
    /// Microsoft VHD dynamic disk (qemu's `vpc`).
    Vpc,
    /// Microsoft VHDX.
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
    /// LUKS-encrypted volume.
    Luks,
    /// Legacy qcow (v1).
    Qcow1,
    /// QED.
    Qed,
}

impl Format {
    /// The name qemu-img uses for the format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Iso => "iso",
            Format::Qcow2 => "qcow2",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Vmdk => "vmdk",
            Format::Vpc => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Luks => "luks",
            Format::Qcow1 => "qcow",
            Format::Qed => "qed",
        }
    }

    /// Whether this is a compression wrapper around another format.
    pub fn is_compression(self) -> bool {
        matches!(self, Format::Gzip | Format::Xz | Format::Zstd)
    }

    /// Whether the content is a raw disk that can be streamed straight into a volume.
    pub fn is_raw(self) -> bool {
        matches!(self, Format::Raw | Format::Iso)
    }

    /// Whether [`crate::open_as`] reads this format (raw, ISO, qcow2, VMDK, VHD, VHDX, VDI).
    pub fn is_readable(self) -> bool {
        self.is_raw()
            || matches!(self, Format::Qcow2 | Format::Vmdk | Format::Vpc | Format::Vhdx | Format::Vdi)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Offset of the ISO 9660 primary volume descriptor's identifier ("CD001").
const ISO_MAGIC_OFFSET: usize = 0x8001;
/// Offset of the VDI signature in the VDI pre-header.
const VDI_SIGNATURE_OFFSET: usize = 0x40;
const VDI_SIGNATURE: u32 = 0xbeda_107f;

/// A zstd stream may open with a skippable frame (magic 0x184D2A50..=0x184D2A5F, little endian).
fn is_zstd_skippable_frame(head: &[u8]) -> bool {
    head.get(..4).is_some_and(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]) & !0xf == 0x184d_2a50)
}

/// Whether `head` is VMDK descriptor text without the usual comment line: qemu recognises such a
/// file by its lines (a `version=` line and an extent line), so we must too, to refuse its extents
/// instead of converting the text as a raw disk.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    if head.len() >= crate::limits::PROBE_BYTES || head.contains(&0) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(head) else { return false };
    let mut version = false;
    let mut extent = false;
    for line in text.lines().map(str::trim) {
        version |= line.starts_with("version=");
        extent |= ["RW ", "RDONLY ", "NOACCESS "].iter().any(|p| line.starts_with(p)) && line.contains('"');
    }
    version && extent
}

/// Recognises the format from the first bytes of a source (up to
/// [`PROBE_BYTES`](crate::limits::PROBE_BYTES); fewer only when the source is shorter).
pub fn probe(head: &[u8]) -> Format {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"QFI\xfb") {
        let version = head.get(4..8).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        return if version == Some(1) { Format::Qcow1 } else { Format::Qcow2 };
    }
    if starts(&[0x1f, 0x8b]) {
        return Format::Gzip;
    }
    if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Format::Xz;
    }
    if starts(&[0x28, 0xb5, 0x2f, 0xfd]) || is_zstd_skippable_frame(head) {
        return Format::Zstd;
    }
    if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") || is_vmdk_descriptor(head) {
        return Format::Vmdk;
    }
    if starts(b"conectix") {
        return Format::Vpc;
    }
    if starts(b"vhdxfile") {
        return Format::Vhdx;
    }
    if starts(b"LUKS\xba\xbe") {
        return Format::Luks;
    }
    if starts(b"QED\0") {
        return Format::Qed;
    }
    if let Some(sig) = head.get(VDI_SIGNATURE_OFFSET..VDI_SIGNATURE_OFFSET + 4)
        && u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]) == VDI_SIGNATURE
    {
        return Format::Vdi;
    }
    if head.get(ISO_MAGIC_OFFSET..ISO_MAGIC_OFFSET + 5) == Some(b"CD001") {
        return Format::Iso;
    }
    Format::Raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_magic_with_version_3_is_qcow2() {
        let head = [b'Q', b'F', b'I', 0xfb, 0, 0, 0, 3];
        assert_eq!(probe(&head), Format::Qcow2);
    }

    #[test]
    fn qcow_magic_with_version_1_is_legacy_qcow() {
        let head = [b'Q', b'F', b'I', 0xfb, 0, 0, 0, 1];
        assert_eq!(probe(&head), Format::Qcow1);
    }

    #[test]
    fn compression_magics_are_recognised() {
        assert_eq!(probe(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(probe(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Format::Xz);
        assert_eq!(probe(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
        assert_eq!(probe(&[0x53, 0x2a, 0x4d, 0x18, 4, 0, 0, 0]), Format::Zstd);
    }

    #[test]
    fn iso_is_recognised_by_its_volume_descriptor() {
        let mut head = vec![0u8; 0x9000];
        head[ISO_MAGIC_OFFSET..ISO_MAGIC_OFFSET + 5].copy_from_slice(b"CD001");
        assert_eq!(probe(&head), Format::Iso);
    }

    #[test]
    fn vmdk_vhd_vhdx_and_vdi_magics_are_recognised() {
        assert_eq!(probe(b"KDMV\x01\0\0\0"), Format::Vmdk);
        assert_eq!(probe(b"# Disk DescriptorFile\nversion=1\n"), Format::Vmdk);
        assert_eq!(probe(b"version=1\nCID=1\nRW 8 FLAT \"/etc/passwd\" 0\n"), Format::Vmdk);
        assert_eq!(probe(b"version=1\njust text\n"), Format::Raw);
        assert_eq!(probe(b"conectix\0\0\0\x02"), Format::Vpc);
        assert_eq!(probe(b"vhdxfile\0Q\0E\0M\0U"), Format::Vhdx);
        let mut vdi = vec![0u8; 512];
        vdi[VDI_SIGNATURE_OFFSET..VDI_SIGNATURE_OFFSET + 4].copy_from_slice(&VDI_SIGNATURE.to_le_bytes());
        assert_eq!(probe(&vdi), Format::Vdi);
    }

    #[test]
    fn anything_else_is_raw_and_file_names_do_not_matter() {
        assert_eq!(probe(b""), Format::Raw);
        assert_eq!(probe(&[0u8; 512]), Format::Raw);
        assert_eq!(probe(b"QFI"), Format::Raw);
    }
}
