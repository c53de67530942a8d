//! Where the fixed metadata lives in the file (header cluster, L1 table, refcount table,
//! snapshot table), and the checks that keep everything else out of it.
//!
//! An image whose L2 tables or data clusters point into metadata is corrupt or hostile: qemu
//! would hand metadata bytes to the guest. We refuse it with the region named.

use crate::{Error, Result};

/// One metadata region `[start, end)` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    /// "the image header", "the L1 table", ...
    pub name: &'static str,
    pub start: u64,
    pub end: u64,
}

impl Region {
    /// The region of `len` bytes at `start`, checked for overflow and against the end of file.
    pub(crate) fn new(name: &'static str, start: u64, len: u64, file_size: u64) -> Result<Region> {
        let end = start
            .checked_add(len)
            .ok_or_else(|| Error::invalid(format!("{name} at offset {start} ({len} bytes) overflows")))?;
        if end > file_size {
            return Err(Error::invalid(format!(
                "image is truncated: {name} at offset {start} ({len} bytes) lies past end of file ({file_size} bytes)"
            )));
        }
        Ok(Region { name, start, end })
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        start < end && self.start < self.end && start < self.end && self.start < end
    }
}

/// The fixed metadata regions of an image.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    regions: Vec<Region>,
}

impl Layout {
    /// Adds `region`, refusing it when it overlaps one already added.
    pub(crate) fn add(&mut self, region: Region) -> Result<()> {
        if let Some(other) = self.regions.iter().find(|r| r.overlaps(region.start, region.end)) {
            return Err(Error::invalid(format!(
                "{} at offset {} ({} bytes) overlaps {} at offset {} ({} bytes)",
                region.name,
                region.start,
                region.end - region.start,
                other.name,
                other.start,
                other.end - other.start
            )));
        }
        self.regions.push(region);
        Ok(())
    }

    /// The metadata region that `[start, start + len)` overlaps, if any.
    pub(crate) fn overlapping(&self, start: u64, len: u64) -> Option<&'static str> {
        let end = start.saturating_add(len);
        self.regions.iter().find(|r| r.overlaps(start, end)).map(|r| r.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_that_touch_do_not_overlap() {
        let mut layout = Layout::default();
        let header = Region::new("the image header", 0, 512, 4096).ok();
        let l1 = Region::new("the L1 table", 512, 8, 4096).ok();
        assert!(header.is_some_and(|r| layout.add(r).is_ok()));
        assert!(l1.is_some_and(|r| layout.add(r).is_ok()));
    }

    #[test]
    fn overlapping_tables_are_rejected_naming_both() {
        let mut layout = Layout::default();
        let _ = Region::new("the L1 table", 1024, 1024, 4096).map(|r| layout.add(r));
        let err = Region::new("the refcount table", 1536, 512, 4096).and_then(|r| layout.add(r)).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some(
                "the refcount table at offset 1536 (512 bytes) overlaps the L1 table at offset 1024 (1024 bytes)"
            )
        );
    }

    #[test]
    fn region_past_end_of_file_is_rejected() {
        assert!(Region::new("the L1 table", 4096, 8, 4100).is_err());
    }

    #[test]
    fn empty_region_overlaps_nothing() {
        let mut layout = Layout::default();
        let _ = Region::new("the image header", 0, 512, 4096).map(|r| layout.add(r));
        assert_eq!(layout.overlapping(100, 0), None);
        assert_eq!(layout.overlapping(511, 1), Some("the image header"));
    }
}
