//! [`BodyCapture`]: the first bytes of a streaming body, for `body/` and `response/` templates.

use std::borrow::Cow;
use std::io::Read;

use auditgate_rules::BodyNote;
use bytes::Buf;

/// Collects a body's chunks as they stream past, up to a limit.
///
/// A body longer than the limit keeps its first `limit` bytes ([`BodyCapture::whole`] is
/// `None` then, and [`BodyCapture::contents`] says it was truncated): templates read what is
/// complete in them, and the record says the rest was cut. The body itself is never held
/// back — the capture only copies.
///
/// ```
/// use auditgate_call::BodyCapture;
///
/// let mut capture = BodyCapture::new(16);
/// capture.push(br#"{"name":"#);
/// capture.push(br#""a"}"#);
/// assert_eq!(capture.whole(), Some(&br#"{"name":"a"}"#[..]));
/// capture.push(b"more than sixteen bytes");
/// assert_eq!(capture.whole(), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct BodyCapture {
    bytes: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl BodyCapture {
    /// An empty capture that keeps at most `limit` bytes.
    pub fn new(limit: usize) -> BodyCapture {
        BodyCapture {
            bytes: Vec::new(),
            limit,
            truncated: false,
        }
    }

    /// Copies the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.truncated {
            return;
        }
        if self.bytes.len() + chunk.len() > self.limit {
            // The start is kept: what is complete in it is still read (see `contents`).
            let room = self.limit - self.bytes.len();
            self.bytes.extend_from_slice(&chunk[..room]);
            self.truncated = true;
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// Copies the next data frame of a body, which a `Buf` may hold in several pieces.
    pub fn push_buf(&mut self, data: &impl Buf) {
        let mut slices = [std::io::IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut slices);
        let copied: usize = slices[..n].iter().map(|s| s.len()).sum();
        if copied < data.remaining() {
            // More pieces than slices: a rare Buf; treat the body as too large rather than guess.
            self.give_up();
            return;
        }
        for s in &slices[..n] {
            self.push(s);
        }
    }

    /// Marks the body as not captured whole (a piece of it could not be copied).
    fn give_up(&mut self) {
        self.truncated = true;
    }

    /// Empties the capture for a new attempt at the same body (a retried upstream request
    /// replays it from its start).
    pub fn restart(&mut self) {
        self.bytes.clear();
        self.truncated = false;
    }

    /// The whole body, when it fitted within the limit.
    pub fn whole(&self) -> Option<&[u8]> {
        (!self.truncated).then_some(self.bytes.as_slice())
    }

    /// What templates read of the body, and why that may not be all of it: the body decoded
    /// (see [`BodyCapture::decoded`]); or, for a body longer than the limit, its first bytes
    /// (when it is not compressed) with [`BodyNote::Truncated`]; or nothing with
    /// [`BodyNote::Unreadable`] when its encoding could not be undone within the limit.
    ///
    /// ```
    /// use auditgate_call::BodyCapture;
    /// use auditgate_rules::BodyNote;
    ///
    /// let mut capture = BodyCapture::new(8);
    /// capture.push(br#"{"a":1,"b":2}"#);
    /// let (start, note) = capture.contents(None);
    /// assert_eq!(start.as_deref(), Some(&br#"{"a":1,""#[..]));
    /// assert_eq!(note, Some(BodyNote::Truncated));
    /// ```
    pub fn contents<'h>(
        &self,
        content_encoding: impl IntoIterator<Item = &'h http::HeaderValue>,
    ) -> (Option<Cow<'_, [u8]>>, Option<BodyNote>) {
        if self.truncated {
            let identity = content_encoding.into_iter().all(|line| {
                line.to_str().is_ok_and(|codings| {
                    codings
                        .split(',')
                        .map(str::trim)
                        .all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
                })
            });
            // The start of a compressed body is not decoded: its record says it was cut.
            let start = identity.then_some(Cow::Borrowed(self.bytes.as_slice()));
            return (start, Some(BodyNote::Truncated));
        }
        match self.decoded(content_encoding) {
            Some(body) => (Some(body), None),
            None => (None, Some(BodyNote::Unreadable)),
        }
    }

    /// The whole body as templates read it. `content_encoding` is every `Content-Encoding`
    /// line of the message (`None` when it has none); the body is decoded when they name
    /// `gzip`, `deflate`, `br` or `zstd` (or a list of them), since upstreams compress JSON for
    /// clients that accept it. `None` when the body was not captured whole, is encoded some
    /// other way, does not decode, or decodes to more than the capture limit — the limit
    /// bounds what a compressed body can expand to.
    ///
    /// ```
    /// use auditgate_call::BodyCapture;
    /// use std::io::Write;
    ///
    /// let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    /// gzip.write_all(br#"{"fileId":"f1"}"#)?;
    /// let mut capture = BodyCapture::new(1024);
    /// capture.push(&gzip.finish()?);
    /// let encoding = http::HeaderValue::from_static("gzip");
    /// assert_eq!(capture.decoded(Some(&encoding)).as_deref(), Some(&br#"{"fileId":"f1"}"#[..]));
    /// assert_eq!(capture.decoded(None).as_deref(), capture.whole());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn decoded<'h>(
        &self,
        content_encoding: impl IntoIterator<Item = &'h http::HeaderValue>,
    ) -> Option<Cow<'_, [u8]>> {
        let whole = self.whole()?;
        // Every `Content-Encoding` line, in order: a message may list its codings over several.
        let mut codings = Vec::new();
        for line in content_encoding {
            codings.extend(line.to_str().ok()?.split(',').map(str::trim));
        }
        let mut body = Cow::Borrowed(whole);
        // Encodings are listed in the order they were applied: undo them from the last.
        for coding in codings.into_iter().rev() {
            let is = |name: &str| coding.eq_ignore_ascii_case(name);
            body = if coding.is_empty() || is("identity") {
                body
            } else if is("gzip") || is("x-gzip") {
                let gzip = flate2::read::MultiGzDecoder::new(&*body);
                Cow::Owned(read_bounded(gzip, self.limit)?)
            } else if is("deflate") {
                // HTTP's deflate is zlib-wrapped; some servers send it raw all the same.
                let zlib = flate2::read::ZlibDecoder::new(&*body);
                let raw = || read_bounded(flate2::read::DeflateDecoder::new(&*body), self.limit);
                Cow::Owned(read_bounded(zlib, self.limit).or_else(raw)?)
            } else if is("br") {
                let br = brotli_decompressor::Decompressor::new(&*body, 4096);
                Cow::Owned(read_bounded(br, self.limit)?)
            } else if is("zstd") {
                Cow::Owned(zstd_frames(&body, self.limit)?)
            } else {
                return None;
            };
        }
        Some(body)
    }
}

/// The content of the zstd frames in `input`, one after another as the format allows, or
/// `None` when that is more than `limit` bytes or does not decode.
fn zstd_frames(mut input: &[u8], limit: usize) -> Option<Vec<u8>> {
    // RFC 9659: HTTP's zstd coding uses windows of at most 8 MiB, and a decoder may refuse
    // larger ones. Refusing them keeps a crafted frame from making the decoder reserve more.
    const MAX_WINDOW: u64 = 8 << 20;
    let mut out = Vec::new();
    while !input.is_empty() {
        // A skippable frame (magic 0x184D2A50..=5F, then a 4-byte length) carries no content.
        if let [0x50..=0x5F, 0x2A, 0x4D, 0x18, a, b, c, d, rest @ ..] = input {
            let length = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
            input = rest.get(length..)?;
            continue;
        }
        let frame =
            ruzstd::decoding::StreamingDecoder::new_with_max_window_size(&mut input, MAX_WINDOW)
                .ok()?;
        out.extend(read_bounded(frame, limit - out.len())?);
    }
    Some(out)
}

/// Everything `reader` yields, or `None` when that is more than `limit` bytes or unreadable.
fn read_bounded(reader: impl Read, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const JSON: &[u8] = br#"{"fileId":"f1","tags":["a","b"]}"#;

    fn captured(bytes: &[u8], limit: usize) -> BodyCapture {
        let mut capture = BodyCapture::new(limit);
        capture.push(bytes);
        capture
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn brotli(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        e.write_all(bytes).unwrap();
        drop(e);
        out
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// A zstd frame by hand: one raw block holding `content`, in a window of 2^`window_log`.
    fn zstd_raw_frame(content: &[u8], window_log: u8) -> Vec<u8> {
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD];
        // Descriptor: no content size, no checksum, not single-segment; then the window.
        frame.extend([0x00, (window_log - 10) << 3]);
        let block_header = 1 | (content.len() as u32) << 3; // last block, raw
        frame.extend(&block_header.to_le_bytes()[..3]);
        frame.extend(content);
        frame
    }

    #[test]
    fn zstd_frames_are_read_one_after_another_within_a_bounded_window() {
        // Two frames (with checksums) and a skippable frame between them.
        let mut body = zstd(br#"{"fileId":"#);
        body.extend([0x5E, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        body.extend(zstd(br#""f1"}"#));
        assert_eq!(
            decoded(&captured(&body, 1024), "zstd").as_deref(),
            Some(&br#"{"fileId":"f1"}"#[..])
        );
        // A skippable frame that claims more than there is.
        let mut cut = zstd(JSON);
        cut.extend([0x50, 0x2A, 0x4D, 0x18, 9, 0, 0, 0, 1]);
        assert_eq!(decoded(&captured(&cut, 1024), "zstd"), None);
        // Frames within the limit together, but not when together they pass it.
        let twice = [zstd(&[b'7'; 60]), zstd(&[b'7'; 60])].concat();
        assert_eq!(
            decoded(&captured(&twice, 120), "zstd").map(|b| b.len()),
            Some(120)
        );
        assert_eq!(decoded(&captured(&twice, 119), "zstd"), None);
        // RFC 9659's 8 MiB window is read; a frame asking for more is refused, not reserved.
        let small = zstd_raw_frame(JSON, 10);
        assert_eq!(
            decoded(&captured(&small, 1024), "zstd").as_deref(),
            Some(JSON)
        );
        let at_most = zstd_raw_frame(JSON, 23);
        assert_eq!(
            decoded(&captured(&at_most, 1024), "zstd").as_deref(),
            Some(JSON)
        );
        let huge = zstd_raw_frame(JSON, 24);
        assert_eq!(decoded(&captured(&huge, 1024), "zstd"), None);
    }

    fn decoded(capture: &BodyCapture, encoding: &'static str) -> Option<Vec<u8>> {
        capture
            .decoded(Some(&http::HeaderValue::from_static(encoding)))
            .map(Cow::into_owned)
    }

    #[test]
    fn codings_over_several_lines_are_undone_in_order() {
        let capture = captured(&brotli(&gzip(JSON)), 1024);
        let lines = [
            http::HeaderValue::from_static("gzip"),
            http::HeaderValue::from_static("br"),
        ];
        assert_eq!(capture.decoded(&lines).as_deref(), Some(JSON));
        // The other order is not what was applied.
        assert_eq!(capture.decoded(lines.iter().rev()), None);
    }

    #[test]
    fn each_encoding_is_undone() {
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(JSON).unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(JSON).unwrap();
        let cases = [
            ("gzip", gzip(JSON)),
            ("x-gzip", gzip(JSON)),
            ("GZIP", gzip(JSON)),
            ("deflate", zlib.finish().unwrap()),
            ("deflate", raw.finish().unwrap()),
            ("br", brotli(JSON)),
            ("zstd", zstd(JSON)),
            ("identity", JSON.to_vec()),
            // Applied gzip first, then br: undone br first.
            ("gzip, br", brotli(&gzip(JSON))),
        ];
        for (encoding, body) in cases {
            assert_eq!(
                decoded(&captured(&body, 1024), encoding).as_deref(),
                Some(JSON),
                "{encoding}"
            );
        }
    }

    #[test]
    fn what_cannot_be_decoded_within_the_limit_is_not_read() {
        // Unknown encodings, and bytes that are not what the header says.
        assert_eq!(decoded(&captured(JSON, 1024), "compress"), None);
        assert_eq!(decoded(&captured(JSON, 1024), "zstd"), None);
        assert_eq!(decoded(&captured(JSON, 1024), "gzip"), None);
        assert_eq!(decoded(&captured(JSON, 1024), "br"), None);
        // A body that was too long to capture stays unread, encoded or not.
        assert_eq!(decoded(&captured(&gzip(JSON), 8), "gzip"), None);
        // A small body that expands past the limit is not expanded past it.
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096, "{}", bomb.len());
        assert_eq!(decoded(&captured(&bomb, 64 * 1024), "gzip"), None);
        let bomb = zstd(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096, "{}", bomb.len());
        assert_eq!(decoded(&captured(&bomb, 64 * 1024), "zstd"), None);
        // Exactly at the limit still reads.
        let at_limit = vec![b'7'; 100];
        assert_eq!(
            decoded(&captured(&gzip(&at_limit), 100), "gzip").as_deref(),
            Some(&at_limit[..])
        );
    }
}
