//! [`BodyCapture`]: the first bytes of a streaming body, for `body/` and `response/` templates.

use std::borrow::Cow;
use std::io::Read;

/// Collects a body's chunks as they stream past, up to a limit.
///
/// Templates read JSON, and a prefix of a JSON document cannot be read: a body longer than the
/// limit is therefore kept not at all ([`BodyCapture::whole`] is `None`), and its templates
/// yield nothing. The body itself is never held back — the capture only copies.
///
/// ```
/// use auditgate_rules::BodyCapture;
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
            self.truncated = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// Marks the body as not captured whole (a piece of it could not be copied).
    pub fn give_up(&mut self) {
        self.truncated = true;
        self.bytes = Vec::new();
    }

    /// The whole body, when it fitted within the limit.
    pub fn whole(&self) -> Option<&[u8]> {
        (!self.truncated).then_some(self.bytes.as_slice())
    }

    /// The whole body as templates read it. `content_encoding` is every `Content-Encoding`
    /// line of the message (`None` when it has none); the body is decoded when they name
    /// `gzip`, `deflate` or `br` (or a list of them), since upstreams compress JSON for
    /// clients that accept it. `None` when the body was not captured whole, is encoded some
    /// other way, does not decode, or decodes to more than the capture limit — the limit
    /// bounds what a compressed body can expand to.
    ///
    /// ```
    /// use auditgate_rules::BodyCapture;
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
            } else {
                return None;
            };
        }
        Some(body)
    }
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
        assert_eq!(decoded(&captured(JSON, 1024), "zstd"), None);
        assert_eq!(decoded(&captured(JSON, 1024), "gzip"), None);
        assert_eq!(decoded(&captured(JSON, 1024), "br"), None);
        // A body that was too long to capture stays unread, encoded or not.
        assert_eq!(decoded(&captured(&gzip(JSON), 8), "gzip"), None);
        // A small body that expands past the limit is not expanded past it.
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096, "{}", bomb.len());
        assert_eq!(decoded(&captured(&bomb, 64 * 1024), "gzip"), None);
        // Exactly at the limit still reads.
        let at_limit = vec![b'7'; 100];
        assert_eq!(
            decoded(&captured(&gzip(&at_limit), 100), "gzip").as_deref(),
            Some(&at_limit[..])
        );
    }
}
