//! The serial console log: follow it as it grows (`vm run`, `vm console`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Copies `path` from byte `from` to `out` as it grows, until `stop` is set and the end is
/// reached. Waits for the file to appear. Returns the offset reached.
pub fn follow(path: &Path, from: u64, stop: &AtomicBool, out: &mut dyn Write) -> std::io::Result<u64> {
    let mut file = loop {
        match File::open(path) {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !stop.load(Ordering::Acquire) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    file.seek(SeekFrom::Start(from))?;
    let mut at = from;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Read the flag before reading: a stop seen here still gets one more full read.
        let stopping = stop.load(Ordering::Acquire);
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            out.flush()?;
            at += n as u64;
            continue;
        }
        if stopping {
            return Ok(at);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_from_an_offset_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, b"old\nnew\n").unwrap();
        let stop = AtomicBool::new(true);
        let mut out = Vec::new();
        let at = follow(&path, 4, &stop, &mut out).unwrap();
        assert_eq!(out, b"new\n");
        assert_eq!(at, 8);
    }
}
