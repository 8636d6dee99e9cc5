//! The `before:` GET: what a resource was before the call changes it.
//!
//! A rule with `before: "/v1/files/{path.fileId}/details"` makes the proxy GET that path from
//! the upstream, with the caller's own `Authorization` and `Cookie` (so the caller reads only
//! what it may read), before it forwards the call. The answer's JSON is what `before/` templates
//! read, and `changes: { name: { from: "{before/name}", to: "{body/name}" } }` records the old
//! value beside the new one.
//!
//! The GET never fails the call: when it cannot connect, is not answered 2xx or takes longer
//! than `before_timeout_ms` (default 500), the call is forwarded as it would have been, and the
//! record says `capture.before: failed`. Its body is read up to the capture limit (then
//! `truncated`). It goes over pingora's connector, the same pool of upstream connections the
//! proxy uses, and only calls whose rule has `before:` pay for it.

use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// Makes `before:` GETs to the upstream.
pub(crate) struct BeforeFetcher {
    connector: Connector,
    timeout: Duration,
    limit: usize,
}

impl std::fmt::Debug for BeforeFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeforeFetcher")
            .field("timeout", &self.timeout)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The caller's headers the GET carries: its credentials. (It carries the call's request ID
/// too, so that the upstream's logs tie the GET to the call.)
const CARRIED: [http::HeaderName; 2] = [http::header::AUTHORIZATION, http::header::COOKIE];

impl BeforeFetcher {
    pub(crate) fn new(timeout: Duration, limit: usize) -> BeforeFetcher {
        BeforeFetcher {
            connector: Connector::new(None),
            timeout,
            limit,
        }
    }

    /// GETs `target` from `peer`; its body and whether it was cut at the limit, or `None`
    /// when there is no usable answer in time.
    pub(crate) async fn fetch(
        &self,
        peer: &HttpPeer,
        host: &str,
        target: &str,
        caller: &http::HeaderMap,
        request_id: (&http::HeaderName, &str),
    ) -> Option<(Vec<u8>, bool)> {
        tokio::time::timeout(
            self.timeout,
            self.get(peer, host, target, caller, request_id),
        )
        .await
        .ok()
        .flatten()
    }

    async fn get(
        &self,
        peer: &HttpPeer,
        host: &str,
        target: &str,
        caller: &http::HeaderMap,
        (id_header, id): (&http::HeaderName, &str),
    ) -> Option<(Vec<u8>, bool)> {
        let mut request = RequestHeader::build("GET", target.as_bytes(), Some(4)).ok()?;
        request.insert_header(http::header::HOST, host).ok()?;
        request
            .insert_header(http::header::ACCEPT, "application/json")
            .ok()?;
        request.insert_header(id_header.clone(), id).ok()?;
        for name in CARRIED {
            for value in caller.get_all(&name) {
                request.append_header(name.clone(), value.clone()).ok()?;
            }
        }
        let (mut session, _reused) = self.connector.get_http_session(peer).await.ok()?;
        session.write_request_header(Box::new(request)).await.ok()?;
        session.finish_request_body().await.ok()?;
        session.read_response_header().await.ok()?;
        let status = session.response_header()?.status;
        if !status.is_success() {
            return None;
        }
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = session.read_response_body().await.ok()? {
            let room = self.limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if truncated {
            // The rest of the body is still on the connection: it cannot be reused.
            session.shutdown().await;
        } else {
            let idle = peer.options.idle_timeout;
            self.connector
                .release_http_session(session, peer, idle)
                .await;
        }
        Some((body, truncated))
    }
}
