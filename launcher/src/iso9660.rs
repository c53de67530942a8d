//! A minimal ISO9660 writer: one root directory of small files, with a Joliet tree so names
//! like `user-data` survive (the primary tree holds 8.3 upper-case names). Enough for a
//! cloud-init NoCloud seed; built in memory.
//!
//! Layout (2048-byte sectors): 0–15 system area, 16 primary volume descriptor, 17 Joliet
//! supplementary descriptor, 18 terminator, 19–22 path tables (primary L/M, Joliet L/M),
//! 23 primary root directory, 24 Joliet root directory, 25… file data.
//!
//! # Caveats
//! One directory, at most [`MAX_FILES`] files, each name at most 64 characters.

const SECTOR: usize = 2048;
/// Named limit: the root directory must fit one sector in both trees.
pub const MAX_FILES: usize = 16;
const MAX_NAME: usize = 64;
const PVD: usize = 16;
const SVD: usize = 17;
const TERM: usize = 18;
const PATH_L: usize = 19;
const PATH_M: usize = 20;
const JPATH_L: usize = 21;
const JPATH_M: usize = 22;
const ROOT: usize = 23;
const JROOT: usize = 24;
const DATA: usize = 25;

/// A UTC timestamp for the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// e.g. 2026.
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
}

impl Timestamp {
    /// The current UTC time.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(secs)
    }

    /// UTC civil time of a Unix timestamp (Howard Hinnant's days-from-civil inverse).
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        Timestamp {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// 7-byte directory-record form.
    fn record(self) -> [u8; 7] {
        [
            (self.year.saturating_sub(1900)).min(255) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// 17-byte descriptor form: `YYYYMMDDHHMMSScc` + UTC offset.
    fn descriptor(self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(&s.as_bytes()[..16]);
        out
    }
}

/// Why an image could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsoError {
    /// More than [`MAX_FILES`] files.
    TooManyFiles,
    /// A name is empty, too long, contains `/` or a control character, or repeats.
    BadName(String),
    /// The image would exceed 4 GiB.
    TooLarge,
}

impl std::fmt::Display for IsoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IsoError::TooManyFiles => write!(f, "more than {MAX_FILES} files"),
            IsoError::BadName(n) => write!(f, "bad file name {n:?}"),
            IsoError::TooLarge => write!(f, "the image would exceed 4 GiB"),
        }
    }
}

/// Builds an ISO9660 image with volume label `label` holding `files` (name, bytes) in its root.
pub fn build(label: &str, files: &[(&str, &[u8])], time: Timestamp) -> Result<Vec<u8>, IsoError> {
    if files.len() > MAX_FILES {
        return Err(IsoError::TooManyFiles);
    }
    for (i, (name, _)) in files.iter().enumerate() {
        let bad = name.is_empty()
            || name.chars().count() > MAX_NAME
            || name.chars().any(|c| c == '/' || c.is_control())
            || files[..i].iter().any(|(n, _)| n == name);
        if bad {
            return Err(IsoError::BadName((*name).to_owned()));
        }
    }
    // File extents, in the order given.
    let mut extents = Vec::with_capacity(files.len());
    let mut next = DATA;
    for (_, data) in files {
        extents.push(next);
        next += data.len().div_ceil(SECTOR).max(1);
    }
    let total = next;
    if total.checked_mul(SECTOR).is_none_or(|b| b > u32::MAX as usize) {
        return Err(IsoError::TooLarge);
    }
    let mut img = vec![0u8; total * SECTOR];
    let primary: Vec<(Vec<u8>, usize, usize)> =
        files.iter().zip(&extents).map(|((n, d), &e)| (primary_name(n, files), e, d.len())).collect();
    let joliet: Vec<(Vec<u8>, usize, usize)> =
        files.iter().zip(&extents).map(|((n, d), &e)| (ucs2(n), e, d.len())).collect();
    write_dir(sector(&mut img, ROOT), ROOT, primary, time);
    write_dir(sector(&mut img, JROOT), JROOT, joliet, time);
    path_table(sector(&mut img, PATH_L), ROOT, false);
    path_table(sector(&mut img, PATH_M), ROOT, true);
    path_table(sector(&mut img, JPATH_L), JROOT, false);
    path_table(sector(&mut img, JPATH_M), JROOT, true);
    let label_bytes: Vec<u8> = label.bytes().take(32).collect();
    descriptor(sector(&mut img, PVD), 1, total, &label_bytes, (PATH_L, PATH_M, ROOT), time, false);
    let jlabel: Vec<u8> = ucs2(label).into_iter().take(32).collect();
    descriptor(sector(&mut img, SVD), 2, total, &jlabel, (JPATH_L, JPATH_M, JROOT), time, true);
    let t = sector(&mut img, TERM);
    t[0] = 255;
    t[1..6].copy_from_slice(b"CD001");
    t[6] = 1;
    for ((_, data), &e) in files.iter().zip(&extents) {
        img[e * SECTOR..e * SECTOR + data.len()].copy_from_slice(data);
    }
    Ok(img)
}

fn sector(img: &mut [u8], n: usize) -> &mut [u8] {
    &mut img[n * SECTOR..(n + 1) * SECTOR]
}

/// 8.3 upper-case d-characters + `;1`, made unique with a digit when two collide.
fn primary_name(name: &str, all: &[(&str, &[u8])]) -> Vec<u8> {
    let base = |n: &str| -> String {
        let (stem, ext) = match n.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s, e),
            _ => (n, ""),
        };
        let clean = |s: &str, len: usize| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                .take(len)
                .collect()
        };
        let (stem, ext) = (clean(stem, 8), clean(ext, 3));
        if ext.is_empty() { stem } else { format!("{stem}.{ext}") }
    };
    let mine = base(name);
    let index = all.iter().position(|(n, _)| *n == name).unwrap_or(0);
    let clash = all[..index].iter().any(|(n, _)| base(n) == mine);
    let mut out = if clash {
        let mut s: String = mine.chars().take(6).collect();
        s.push_str(&format!("~{}", index % 10));
        s
    } else {
        mine
    };
    out.push_str(";1");
    out.into_bytes()
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

fn both32(buf: &mut [u8], v: usize) {
    let v = v as u32;
    buf[..4].copy_from_slice(&v.to_le_bytes());
    buf[4..8].copy_from_slice(&v.to_be_bytes());
}

fn both16(buf: &mut [u8], v: u16) {
    buf[..2].copy_from_slice(&v.to_le_bytes());
    buf[2..4].copy_from_slice(&v.to_be_bytes());
}

/// One directory record at the start of `buf`; returns its length.
fn record(buf: &mut [u8], name: &[u8], extent: usize, size: usize, dir: bool, time: Timestamp) -> usize {
    let len = 33 + name.len() + usize::from(name.len().is_multiple_of(2));
    buf[0] = len as u8;
    both32(&mut buf[2..10], extent);
    both32(&mut buf[10..18], size);
    buf[18..25].copy_from_slice(&time.record());
    buf[25] = if dir { 2 } else { 0 };
    both16(&mut buf[28..32], 1);
    buf[32] = name.len() as u8;
    buf[33..33 + name.len()].copy_from_slice(name);
    len
}

/// The root directory: `.`, `..`, then the files sorted by identifier.
fn write_dir(buf: &mut [u8], own: usize, mut files: Vec<(Vec<u8>, usize, usize)>, time: Timestamp) {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut at = record(buf, &[0], own, SECTOR, true, time);
    at += record(&mut buf[at..], &[1], own, SECTOR, true, time);
    for (name, extent, size) in files {
        at += record(&mut buf[at..], &name, extent, size, false, time);
    }
}

/// A path table with only the root (10 bytes).
fn path_table(buf: &mut [u8], root: usize, big_endian: bool) {
    buf[0] = 1;
    if big_endian {
        buf[2..6].copy_from_slice(&(root as u32).to_be_bytes());
        buf[6..8].copy_from_slice(&1u16.to_be_bytes());
    } else {
        buf[2..6].copy_from_slice(&(root as u32).to_le_bytes());
        buf[6..8].copy_from_slice(&1u16.to_le_bytes());
    }
}

fn descriptor(
    buf: &mut [u8],
    kind: u8,
    total: usize,
    label: &[u8],
    (path_l, path_m, root): (usize, usize, usize),
    time: Timestamp,
    joliet: bool,
) {
    buf[0] = kind;
    buf[1..6].copy_from_slice(b"CD001");
    buf[6] = 1;
    // Text fields are space-padded (UCS-2 spaces in the Joliet descriptor).
    let pad = |b: &mut [u8]| {
        if joliet {
            for pair in b.chunks_mut(2) {
                pair[0] = 0;
                if pair.len() == 2 {
                    pair[1] = b' ';
                }
            }
        } else {
            b.fill(b' ');
        }
    };
    pad(&mut buf[8..40]);
    pad(&mut buf[40..72]);
    buf[40..40 + label.len()].copy_from_slice(label);
    both32(&mut buf[80..88], total);
    if joliet {
        buf[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    both16(&mut buf[120..124], 1);
    both16(&mut buf[124..128], 1);
    both16(&mut buf[128..132], SECTOR as u16);
    both32(&mut buf[132..140], 10);
    buf[140..144].copy_from_slice(&(path_l as u32).to_le_bytes());
    buf[148..152].copy_from_slice(&(path_m as u32).to_be_bytes());
    record(&mut buf[156..190], &[0], root, SECTOR, true, time);
    pad(&mut buf[190..813]);
    let stamp = time.descriptor();
    buf[813..830].copy_from_slice(&stamp);
    buf[830..847].copy_from_slice(&stamp);
    buf[847..863].fill(b'0');
    buf[864..880].fill(b'0');
    buf[881] = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp { year: 2026, month: 11, day: 27, hour: 12, minute: 34, second: 56 };

    #[test]
    fn unix_time_to_civil() {
        assert_eq!(
            Timestamp::from_unix(0),
            Timestamp { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 }
        );
        // 2024-02-29T23:59:59Z
        assert_eq!(
            Timestamp::from_unix(1_709_251_199),
            Timestamp { year: 2024, month: 2, day: 29, hour: 23, minute: 59, second: 59 }
        );
    }

    #[test]
    fn descriptors_label_and_size() {
        let img =
            build("cidata", &[("meta-data", b"instance-id: x\n"), ("user-data", b"#cloud-config\n")], T)
                .unwrap();
        assert_eq!(img.len(), 27 * SECTOR);
        let pvd = &img[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[0..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..72], b"cidata                          ");
        assert_eq!(u32::from_le_bytes(pvd[80..84].try_into().unwrap()), 27);
        assert_eq!(u32::from_be_bytes(pvd[84..88].try_into().unwrap()), 27);
        let svd = &img[17 * SECTOR..18 * SECTOR];
        assert_eq!(&svd[0..7], b"\x02CD001\x01");
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&svd[40..52], b"\0c\0i\0d\0a\0t\0a");
        assert_eq!(&img[18 * SECTOR..18 * SECTOR + 7], b"\xffCD001\x01");
        assert_eq!(&img[25 * SECTOR..25 * SECTOR + 15], b"instance-id: x\n");
        assert_eq!(&img[26 * SECTOR..26 * SECTOR + 14], b"#cloud-config\n");
    }

    #[test]
    fn primary_names_are_8_3_and_unique() {
        let files: [(&str, &[u8]); 3] =
            [("network-config", b""), ("network-configs", b""), ("a.tar.gz", b"")];
        assert_eq!(primary_name("network-config", &files), b"NETWORK_;1");
        assert_eq!(primary_name("network-configs", &files), b"NETWOR~1;1");
        assert_eq!(primary_name("a.tar.gz", &files), b"A_TAR.GZ;1");
    }

    #[test]
    fn bad_names_and_too_many_files_are_refused() {
        assert_eq!(build("x", &[("a/b", b"")], T), Err(IsoError::BadName("a/b".into())));
        assert_eq!(build("x", &[("a", b""), ("a", b"")], T), Err(IsoError::BadName("a".into())));
        let names: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        assert_eq!(build("x", &files, T), Err(IsoError::TooManyFiles));
    }
}
