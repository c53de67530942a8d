use std::io::{Cursor, Write};
use std::process::Command;

use super::*;

// ---- builders ----

/// Deterministic test data mixing random bytes, zero runs and text.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 512);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 4 {
            0 => out.extend_from_slice(&x.to_le_bytes()),
            1 => out.extend(std::iter::repeat_n(0u8, (x >> 8) as usize % 512)),
            _ => out.extend_from_slice(b"diskplane compress test line\n"),
        }
    }
    out.truncate(len);
    out
}

fn gzip(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(part).expect("gzip encode");
        out.extend(enc.finish().expect("gzip finish"));
    }
    out
}

fn xz_stream(part: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(part).expect("xz encode");
    enc.finish().expect("xz finish")
}

fn xz(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|part| xz_stream(part)).collect()
}

fn zstd_frame(part: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.include_checksum(true).expect("zstd checksum flag");
    enc.write_all(part).expect("zstd encode");
    enc.finish().expect("zstd finish")
}

fn zstd(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|part| zstd_frame(part)).collect()
}

fn skippable_frame(magic_low_bits: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x50 | magic_low_bits, 0x2a, 0x4d, 0x18];
    out.extend((payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Compresses `parts` as separate members/streams/frames of `format`.
fn compress(format: Format, parts: &[&[u8]]) -> Vec<u8> {
    match format {
        Format::Gzip => gzip(parts),
        Format::Xz => xz(parts),
        Format::Zstd => zstd(parts),
        other => panic!("{other} is not a wrapper"),
    }
}

const WRAPPERS: [Format; 3] = [Format::Gzip, Format::Xz, Format::Zstd];

fn decode(format: Format, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut reader = decoder(format, Box::new(Cursor::new(data.to_vec()))).expect("decoder");
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// A source that hands out a few bytes per read (1 to 13), to cross every buffer edge.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let step = self.pos % 13 + 1;
        let n = step.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A source that fails with `ConnectionReset` after `good` bytes.
struct Failing {
    data: Vec<u8>,
    pos: usize,
    good: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.good {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer went away"));
        }
        let n = buf.len().min(self.good - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn expect_error(format: Format, result: io::Result<Vec<u8>>, what: &str) -> io::Error {
    match result {
        Ok(out) => panic!("{format}: {what} decoded to {} bytes instead of failing", out.len()),
        Err(e) => e,
    }
}

fn assert_truncated(format: Format, result: io::Result<Vec<u8>>, what: &str) {
    let err = expect_error(format, result, what);
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{format}: {what}: {err}");
    let prefix = format!("truncated {format} stream");
    assert!(err.to_string().starts_with(&prefix), "{format}: {what}: {err}");
}

fn assert_corrupt(format: Format, result: io::Result<Vec<u8>>, what: &str) {
    let err = expect_error(format, result, what);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{format}: {what}: {err}");
    let prefix = format!("corrupt {format} stream: ");
    assert!(err.to_string().starts_with(&prefix), "{format}: {what}: {err}");
}

// ---- round trips ----

#[test]
fn gzip_with_several_members_decodes_every_member() {
    let (a, b, c) = (sample(70_000, 1), sample(5, 2), sample(200_000, 3));
    let data = gzip(&[&a, &b, &[], &c]);

    let out = decode(Format::Gzip, &data).expect("decode");

    assert_eq!(out, [a, b, c].concat());
}

#[test]
fn xz_with_several_streams_and_stream_padding_decodes_every_stream() {
    let (a, b, c) = (sample(70_000, 4), sample(5, 5), sample(200_000, 6));
    let data = [xz_stream(&a), vec![0; 4], xz_stream(&b), xz_stream(&[]), vec![0; 8], xz_stream(&c)].concat();

    let out = decode(Format::Xz, &data).expect("decode");

    assert_eq!(out, [a, b, c].concat());
}

#[test]
fn zstd_with_several_frames_and_skippable_frames_decodes_every_frame() {
    let (a, b, c) = (sample(70_000, 7), sample(5, 8), sample(200_000, 9));
    let data = [
        zstd_frame(&a),
        skippable_frame(0, b"metadata"),
        zstd_frame(&b),
        skippable_frame(0xf, &[]),
        zstd_frame(&[]),
        zstd_frame(&c),
        skippable_frame(3, &[0xaa; 100]),
    ]
    .concat();

    let out = decode(Format::Zstd, &data).expect("decode");

    assert_eq!(out, [a, b, c].concat());
}

#[test]
fn zstd_may_start_with_a_skippable_frame() {
    let a = sample(1000, 10);
    let data = [skippable_frame(0, b"x"), zstd_frame(&a)].concat();

    assert_eq!(decode(Format::Zstd, &data).expect("decode"), a);
}

#[test]
fn trickling_input_and_tiny_reads_decode_the_same_bytes() {
    let (a, b) = (sample(20_000, 11), sample(3000, 12));
    for format in WRAPPERS {
        let data = compress(format, &[&a, &b]);
        let mut reader = decoder(format, Box::new(Trickle { data, pos: 0 })).expect("decoder");

        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }

        assert_eq!(out, [&a[..], &b[..]].concat(), "{format}");
        assert_eq!(reader.read(&mut buf).expect("read after end"), 0, "{format}");
    }
}

#[test]
fn many_small_members_are_all_decoded() {
    let parts: Vec<Vec<u8>> = (0..300).map(|i| sample(i * 7, i as u64)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    for format in WRAPPERS {
        let data = compress(format, &refs);

        assert_eq!(decode(format, &data).expect("decode"), parts.concat(), "{format}");
    }
}

// ---- truncation ----

#[test]
fn empty_input_is_truncated() {
    for format in WRAPPERS {
        assert_truncated(format, decode(format, &[]), "empty input");
    }
}

#[test]
fn input_holding_only_the_magic_is_truncated() {
    assert_truncated(Format::Gzip, decode(Format::Gzip, &GZIP_MAGIC), "magic only");
    assert_truncated(Format::Xz, decode(Format::Xz, &[0xfd, b'7', b'z', b'X', b'Z', 0]), "magic only");
    assert_truncated(Format::Zstd, decode(Format::Zstd, &ZSTD_MAGIC), "magic only");
}

#[test]
fn every_cut_inside_a_member_is_reported_as_truncated() {
    let (a, b) = (sample(3000, 13), sample(2000, 14));
    for format in WRAPPERS {
        let first = compress(format, &[&a]);
        let data = compress(format, &[&a, &b]);
        for cut in (0..data.len()).filter(|&cut| cut != first.len()) {
            assert_truncated(format, decode(format, &data[..cut]), &format!("cut at {cut}"));
        }
    }
}

#[test]
fn cuts_of_a_large_stream_are_reported_as_truncated() {
    let a = sample(1_000_000, 15);
    for format in WRAPPERS {
        let data = compress(format, &[&a]);
        for cut in [1, data.len() / 3, data.len() / 2, data.len() - 100, data.len() - 1] {
            assert_truncated(format, decode(format, &data[..cut]), &format!("cut at {cut}"));
        }
    }
}

#[test]
fn truncation_message_names_the_member_and_the_length() {
    let data = gzip(&[b"one", b"two"]);
    let cut = data.len() - 3;

    let err = decode(Format::Gzip, &data[..cut]).expect_err("truncated");

    assert_eq!(
        err.to_string(),
        format!("truncated gzip stream: the input ends after {cut} compressed bytes, inside member 2")
    );
}

// ---- corruption ----

#[test]
fn gzip_member_with_a_wrong_crc_is_corrupt() {
    let mut data = gzip(&[&sample(5000, 16)]);
    let crc_at = data.len() - 8;
    data[crc_at] ^= 0x01;

    let result = decode(Format::Gzip, &data);

    assert_corrupt(Format::Gzip, result, "bad CRC");
}

#[test]
fn xz_block_with_a_wrong_check_is_corrupt() {
    let mut data = xz(&[&sample(5000, 17)]);
    // The stream ends with: block check (CRC64, 8 bytes), index, footer (12 bytes). Find the
    // check as the 8 bytes before the index, which starts with a 0x00 indicator byte; simpler:
    // corrupt a byte in the middle of the compressed block.
    let middle = data.len() / 2;
    data[middle] ^= 0x40;

    let result = decode(Format::Xz, &data);

    assert_corrupt(Format::Xz, result, "flipped byte");
}

#[test]
fn zstd_frame_with_a_wrong_checksum_is_corrupt() {
    let mut data = zstd(&[&sample(5000, 18)]);
    let checksum_at = data.len() - 4;
    data[checksum_at] ^= 0x01;

    let result = decode(Format::Zstd, &data);

    assert_corrupt(Format::Zstd, result, "bad checksum");
}

#[test]
fn a_flipped_byte_never_yields_wrong_data() {
    let (a, b) = (sample(1500, 19), sample(700, 20));
    let expected = [&a[..], &b[..]].concat();
    for format in WRAPPERS {
        let data = compress(format, &[&a, &b]);
        let mut detected = 0;
        for at in 0..data.len() {
            let mut bad = data.clone();
            bad[at] ^= 0x10;
            match decode(format, &bad) {
                // Fields no check covers (gzip mtime, OS, ...): same output.
                Ok(out) => assert!(out == expected, "{format}: flip at {at} changed the output silently"),
                Err(e) => {
                    detected += 1;
                    let kinds = [io::ErrorKind::InvalidData, io::ErrorKind::UnexpectedEof];
                    assert!(kinds.contains(&e.kind()), "{format}: flip at {at}: {e:?}");
                    assert!(
                        e.to_string().contains(&format!("{format} stream")),
                        "{format}: flip at {at}: {e}"
                    );
                }
            }
        }
        assert!(detected > data.len() / 2, "{format}: only {detected} of {} flips detected", data.len());
    }
}

#[test]
fn zstd_frame_needing_a_window_over_the_limit_is_refused() {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX + 1)).expect("window log");
    enc.write_all(&sample(10_000, 21)).expect("encode");
    let data = enc.finish().expect("finish");

    let result = decode(Format::Zstd, &data);

    assert_corrupt(Format::Zstd, result, "window over the limit");
}

// ---- trailing data ----

#[test]
fn data_after_the_last_member_is_corrupt() {
    let a = sample(3000, 22);
    // Zeros in a multiple of four would be valid xz stream padding; five are not.
    let garbage: [&[u8]; 4] = [b"garbage after the end", &[0; 5], &[0], b"ABCDEFGHIJKLMNOP"];
    for format in WRAPPERS {
        let data = compress(format, &[&a, &a]);
        for tail in garbage {
            let result = decode(format, &[&data[..], tail].concat());
            assert_corrupt(format, result, &format!("trailing {tail:?}"));
        }
    }
}

#[test]
fn short_data_after_the_last_member_is_an_error() {
    // liblzma (like `xz -d`) reads fewer than 12 bytes after a stream as a cut-off stream
    // header: still an error, of the truncated kind.
    let kinds = [io::ErrorKind::InvalidData, io::ErrorKind::UnexpectedEof];
    for format in WRAPPERS {
        let data = compress(format, &[b"one"]);
        for tail in [&b"AB"[..], b"ABC", b"\x01"] {
            let err = expect_error(format, decode(format, &[&data[..], tail].concat()), "short tail");
            assert!(kinds.contains(&err.kind()), "{format}: {tail:?}: {err:?}");
            assert!(err.to_string().contains(&format!("{format} stream")), "{format}: {err}");
        }
    }
}

#[test]
fn trailing_data_message_names_its_offset() {
    let data = gzip(&[b"one"]);

    let err = decode(Format::Gzip, &[&data[..], b"junk"].concat()).expect_err("trailing data");

    assert_eq!(
        err.to_string(),
        format!(
            "corrupt gzip stream: unexpected data at compressed byte {}, after the end of member 1",
            data.len()
        )
    );
}

#[test]
fn xz_stream_padding_at_the_end_is_accepted() {
    let data = [xz_stream(b"one"), vec![0; 512]].concat();

    assert_eq!(decode(Format::Xz, &data).expect("decode"), b"one");
}

#[test]
fn gzip_zero_padding_after_the_last_member_is_corrupt() {
    let data = [gzip(&[b"one"]), vec![0; 512]].concat();

    assert_corrupt(Format::Gzip, decode(Format::Gzip, &data), "zero padding");
}

#[test]
fn xz_padding_that_is_not_a_multiple_of_four_is_corrupt() {
    let data = [xz_stream(b"one"), vec![0; 3]].concat();

    assert_corrupt(Format::Xz, decode(Format::Xz, &data), "3 bytes of padding");
}

#[test]
fn a_partial_magic_after_the_last_member_is_truncated() {
    let gz = [gzip(&[b"one"]), vec![0x1f]].concat();
    let zst = [zstd(&[b"one"]), vec![0x28, 0xb5]].concat();

    assert_truncated(Format::Gzip, decode(Format::Gzip, &gz), "lone 0x1f");
    assert_truncated(Format::Zstd, decode(Format::Zstd, &zst), "half a magic");
}

#[test]
fn zstd_input_that_does_not_start_with_a_frame_is_corrupt() {
    assert_corrupt(Format::Zstd, decode(Format::Zstd, b"not zstd at all"), "no frame");
}

// ---- errors of the source and of the API ----

#[test]
fn errors_of_the_source_pass_through_and_repeat() {
    let a = sample(400_000, 23);
    for format in WRAPPERS {
        let data = compress(format, &[&a]);
        let good = data.len() / 2;
        let mut reader = decoder(format, Box::new(Failing { data, pos: 0, good })).expect("decoder");

        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).expect_err("source fails");
        let again = reader.read(&mut [0; 16]).expect_err("still failed");

        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{format}: {err}");
        assert_eq!(err.to_string(), "peer went away", "{format}");
        assert_eq!(again.kind(), io::ErrorKind::ConnectionReset, "{format}");
    }
}

#[test]
fn decoder_errors_repeat_on_later_reads() {
    let data = gzip(&[b"one"]);
    let mut reader = decoder(Format::Gzip, Box::new(Cursor::new(data[..5].to_vec()))).expect("decoder");

    let first = reader.read(&mut [0; 16]).expect_err("truncated");
    let second = reader.read(&mut [0; 16]).expect_err("still truncated");

    assert_eq!(second.kind(), first.kind());
    assert_eq!(second.to_string(), first.to_string());
}

#[test]
fn formats_that_are_not_wrappers_are_refused() {
    let err = decoder(Format::Qcow2, Box::new(io::empty())).err().expect("refused");

    assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
}

// ---- files made by the real tools ----

/// Runs `tool args... FILE` where FILE holds `input`, returning stdout; `None` when the tool
/// is not installed.
fn run_tool(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(input).expect("write temp file");
    let output = match Command::new(tool).args(args).arg(file.path()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("skipping: `{tool}` is not installed");
            return None;
        }
        Err(e) => panic!("running {tool}: {e}"),
    };
    assert!(output.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
    Some(output.stdout)
}

/// Checks files made by `tool` with two argument sets, concatenated, and cut in half.
fn check_tool(format: Format, tool: &str, first_args: &[&str], second_args: &[&str]) {
    let (a, b) = (sample(300_000, 24), sample(50_000, 25));
    let Some(first) = run_tool(tool, first_args, &a) else { return };
    let Some(second) = run_tool(tool, second_args, &b) else { return };
    let data = [first, second].concat();

    assert_eq!(decode(format, &data).expect("decode"), [a, b].concat(), "{tool}");
    assert_truncated(format, decode(format, &data[..data.len() / 2]), "cut in half");
    assert_truncated(format, decode(format, &data[..data.len() - 1]), "last byte cut");
}

#[test]
fn files_made_by_gzip_decode() {
    check_tool(Format::Gzip, "gzip", &["-c", "-n"], &["-c", "-9"]);
}

#[test]
fn files_made_by_xz_decode() {
    check_tool(Format::Xz, "xz", &["-c", "-T2", "--block-size=65536"], &["-c", "-0", "--check=sha256"]);
}

#[test]
fn files_made_by_zstd_decode() {
    check_tool(Format::Zstd, "zstd", &["-q", "-c"], &["-q", "-c", "-19", "--no-check"]);
}
