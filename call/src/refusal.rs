//! [`Refusal`]: the answer to a call of an `on_queue_failure: closed` rule whose record cannot
//! be queued durably. Both hosts send exactly this response and do not forward the call.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};

/// A refused call: `503`, a short JSON body naming the request ID, `Retry-After: 5`, and the
/// request ID in its header as on every audited answer.
///
/// ```
/// use auditgate_call::Refusal;
///
/// let response = Refusal::new(http::HeaderName::from_static("x-request-id"), "r-1".into())
///     .into_response();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["x-request-id"], "r-1");
/// assert_eq!(response.headers()["retry-after"], "5");
/// let body: serde_json::Value = serde_json::from_slice(response.body())?;
/// assert_eq!(body["error"], "audit_unavailable");
/// assert_eq!(body["request_id"], "r-1");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    header: HeaderName,
    request_id: String,
}

impl Refusal {
    /// A refusal of the call whose request ID is `request_id`, carried in `header`.
    pub fn new(header: HeaderName, request_id: String) -> Refusal {
        Refusal { header, request_id }
    }

    /// The request ID the refused call was given.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The response to send.
    pub fn into_response(self) -> Response<Bytes> {
        let body = Bytes::from(
            serde_json::json!({
                "error": "audit_unavailable",
                "message": "this operation is audited and its audit record cannot be stored right now; try again later",
                "request_id": self.request_id,
            })
            .to_string(),
        );
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        // A request ID is 1 to 128 visible ASCII characters (read) or a UUID (made): always
        // a valid header value.
        if let Ok(value) = HeaderValue::from_str(&self.request_id) {
            headers.insert(self.header, value);
        }
        *response.body_mut() = body;
        response
    }
}
