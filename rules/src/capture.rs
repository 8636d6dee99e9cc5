//! [`BodyCapture`]: the first bytes of a streaming body, for `body/` and `response/` templates.

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
}
