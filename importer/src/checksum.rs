//! CDI's `checksum` field (`algo:hex`, algo ∈ sha256, sha512, sha1, md5), computed over the
//! bytes exactly as served (below decompression) while they stream past: no second pass.

use std::fmt;
use std::str::FromStr;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result};

/// A digest algorithm CDI accepts in `spec.source.http.checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
    /// SHA-1 (20 bytes).
    Sha1,
    /// MD5 (16 bytes).
    Md5,
}

impl Algorithm {
    /// The prefix used in `algo:hex`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha1 => "sha1",
            Algorithm::Md5 => "md5",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
            Algorithm::Sha1 => 20,
            Algorithm::Md5 => 16,
        }
    }
}

/// An expected checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: Algorithm,
    digest: Vec<u8>,
}

impl Checksum {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A hasher for this checksum's algorithm.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.algorithm)
    }

    /// The SHA-256 of the file at `path`, read once in 1 MiB pieces: what a client sends
    /// along with an upload.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file when it cannot be read.
    pub fn of_file(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let unreadable = |e| Error::config_with(format!("reading {} for its checksum", path.display()), e);
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(Self { algorithm: Algorithm::Sha256, digest: hasher.finish() }),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(unreadable(e)),
            }
        }
    }

    /// Compares the finished `hasher` with the expected digest.
    ///
    /// # Errors
    /// [`Error::Checksum`] naming both values on mismatch.
    pub fn verify(&self, hasher: Hasher) -> Result<()> {
        let actual = hasher.finish();
        if actual == self.digest {
            return Ok(());
        }
        Err(Error::Checksum {
            expected: self.to_string(),
            actual: format!("{}:{}", self.algorithm.name(), hex(&actual)),
        })
    }
}

impl FromStr for Checksum {
    type Err = Error;

    /// Parses `sha256:HEX` (algorithm name case-insensitive, hex of the right length).
    fn from_str(text: &str) -> Result<Self> {
        let (algo, digest) = text.split_once(':').ok_or_else(|| {
            Error::config(format!("checksum {text:?} is not of the form ALGORITHM:HEX (e.g. sha256:...)"))
        })?;
        let algorithm = match algo.to_ascii_lowercase().as_str() {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "sha1" => Algorithm::Sha1,
            "md5" => Algorithm::Md5,
            other => {
                return Err(Error::config(format!(
                    "checksum algorithm {other:?} is not supported (use sha256, sha512, sha1 or md5)"
                )));
            }
        };
        let digest = unhex(digest).filter(|d| d.len() == algorithm.digest_len()).ok_or_else(|| {
            Error::config(format!(
                "checksum {text:?}: a {} digest is {} hex digits",
                algorithm.name(),
                algorithm.digest_len() * 2
            ))
        })?;
        Ok(Self { algorithm, digest })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), hex(&self.digest))
    }
}

/// A running digest over the bytes as served.
#[derive(Clone)]
pub struct Hasher(State);

#[derive(Clone)]
enum State {
    Sha256(Sha256),
    Sha512(Sha512),
    Sha1(Sha1),
    Md5(Md5),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            State::Sha256(_) => "sha256",
            State::Sha512(_) => "sha512",
            State::Sha1(_) => "sha1",
            State::Md5(_) => "md5",
        };
        f.debug_tuple("Hasher").field(&name).finish()
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        Self(match algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
            Algorithm::Sha1 => State::Sha1(Sha1::new()),
            Algorithm::Md5 => State::Md5(Md5::new()),
        })
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
            State::Sha1(h) => h.update(bytes),
            State::Md5(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha512(h) => h.finalize().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Md5(h) => h.finalize().to_vec(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks_exact(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(algorithm: Algorithm, data: &[u8]) -> String {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        hex(&h.finish())
    }

    #[test]
    fn known_digests_of_abc() {
        assert_eq!(
            digest_of(Algorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest_of(Algorithm::Sha1, b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(digest_of(Algorithm::Md5, b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert!(digest_of(Algorithm::Sha512, b"abc").starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn of_file_is_the_sha256_of_its_bytes_and_names_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        let sum = Checksum::of_file(&path).expect("readable");
        assert_eq!(
            sum.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        let err = Checksum::of_file(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing for its checksum"), "{err}");
    }

    #[test]
    fn checksum_parses_and_prints_lowercase() {
        let sum: Checksum = "MD5:900150983CD24FB0D6963F7D28E17F72".parse().expect("valid");
        assert_eq!(sum.to_string(), "md5:900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn checksum_with_wrong_length_or_algorithm_is_rejected() {
        assert!("sha256:abcd".parse::<Checksum>().is_err());
        assert!("crc32:abcd".parse::<Checksum>().is_err());
        assert!("deadbeef".parse::<Checksum>().is_err());
        assert!("md5:zz0150983cd24fb0d6963f7d28e17f72".parse::<Checksum>().is_err());
    }

    #[test]
    fn split_feeding_verifies_and_a_mismatch_names_both_digests() {
        let sum: Checksum = "md5:900150983cd24fb0d6963f7d28e17f72".parse().expect("valid");
        let mut h = sum.hasher();
        h.update(b"a");
        h.update(b"bc");
        assert!(sum.verify(h).is_ok());

        let mut h = sum.hasher();
        h.update(b"abd");
        let err = sum.verify(h).expect_err("mismatch");
        assert!(err.to_string().starts_with("checksum mismatch: expected md5:9001"), "{err}");
        assert!(err.to_string().contains(", got md5:"), "{err}");
    }
}
