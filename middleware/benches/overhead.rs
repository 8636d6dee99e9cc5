//! What `Audit<S>` adds to one call: the same request through a bare service and through the
//! layer, for a call no rule matches and for matching ones (with and without a JSON body to
//! read). The sink serialises each record as `RedisQueue` does on the request thread and drops
//! the bytes, so the figure is all the layer adds to a request's thread: matching, request-ID
//! handling, header copy, body capture, the record and its JSON. (Until 2026-11-24 the sink
//! dropped records unserialised, which left the JSON, about 0.7 µs, out of the figure.)
//!
//! `cargo bench -p auditgate-middleware --bench overhead`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use auditgate_middleware::AuditLayer;
use auditgate_queue::{Accepted, Dropped, RecordSink};
use auditgate_rules::{AuditRecord, RecordRef, RuleSet};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

/// A sink that does on the calling thread what `RedisQueue` does there: serialise the record
/// (straight from the borrowed form, as the layer hands it over); the bytes are then dropped
/// instead of crossing to a flusher.
#[derive(Debug, Clone)]
struct Encode;

impl RecordSink for Encode {
    fn enqueue(&self, record: AuditRecord) -> Result<Accepted, Dropped> {
        let mut json = Vec::with_capacity(1024);
        serde_json::to_writer(&mut json, &record).map_err(|_| Dropped)?;
        black_box(json);
        Ok(Accepted::Buffered)
    }

    fn enqueue_ref(&self, record: RecordRef<'_>) -> Result<Accepted, Dropped> {
        let mut json = Vec::with_capacity(1024);
        record.write_json(&mut json);
        black_box(json);
        Ok(Accepted::Buffered)
    }

    fn can_accept(&self) -> bool {
        true
    }

    fn enqueue_durable(&self, record: RecordRef<'_>) -> auditgate_queue::Durable {
        auditgate_queue::Durable::enqueued(self.enqueue_ref(record))
    }
}

/// Runs a future that never waits (everything here is ready at once).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

async fn handler<B: http_body::Body>(
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body, as a real handler does.
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

/// A named way to make the same request again.
type Case = (&'static str, fn() -> Request<Full<Bytes>>);

fn requests() -> [Case; 3] {
    [
        ("unmatched GET", || {
            Request::get("/v1/files/abc")
                .header("X-User-Id", "u_123")
                .body(Full::new(Bytes::new()))
                .expect("request")
        }),
        ("matching DELETE", || {
            Request::delete("/v1/files/abc")
                .header("X-User-Id", "u_123")
                .body(Full::new(Bytes::new()))
                .expect("request")
        }),
        ("matching PATCH with JSON body", || {
            Request::patch("/v1/files/abc/details")
                .header("X-User-Id", "u_123")
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"name":"tree.png","filePath":"/forest/tree.png"}"#,
                )))
                .expect("request")
        }),
    ]
}

fn bench(c: &mut Criterion) {
    let rules = RuleSet::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/generic-rules/media-library.yaml"
    ))
    .expect("the example rules load");
    let bare = tower::service_fn(handler::<Full<Bytes>>);
    let audited = AuditLayer::new(rules, Encode).layer(tower::service_fn(
        handler::<auditgate_middleware::RequestBody<Full<Bytes>>>,
    ));

    let mut group = c.benchmark_group("overhead");
    for (name, make) in requests() {
        group.bench_function(format!("bare/{name}"), |b| {
            b.iter(|| {
                let mut service = bare;
                let response = now(async {
                    let response = service.ready().await?.call(make()).await?;
                    Ok::<_, Infallible>(response.into_body().collect().await)
                });
                black_box(response)
            })
        });
        group.bench_function(format!("audited/{name}"), |b| {
            b.iter(|| {
                let mut service = audited.clone();
                let response = now(async {
                    let response = service.ready().await?.call(make()).await?;
                    Ok::<_, Infallible>(response.into_body().collect().await.is_ok())
                });
                black_box(response)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
