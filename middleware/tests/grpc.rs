//! `AuditLayer` in front of a real tonic gRPC server, called by the client generated from
//! `tests/grpc/files.proto` over a real HTTP/2 connection: gRPC answers HTTP 200 to a failed
//! call too, so a record's outcome comes from `grpc-status` (in the trailers, or in the headers
//! of a trailers-only answer), and rules match the gRPC method path.
//!
//! `tests/grpc/acme_media_v1.rs` is what `tonic-prost-build` 0.14 generates from the proto
//! (`tonic_prost_build::configure().out_dir(..).compile_protos(&["files.proto"], &["."])`),
//! checked in so that the tests need no `protoc`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::time::Duration;

use auditgate_middleware::AuditLayer;
use auditgate_queue::MemorySink;
use auditgate_rules::{AuditRecord, Outcome, RuleSet};
use tonic::{Request, Response, Status, Streaming};

mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    include!("grpc/acme_media_v1.rs");
}

use pb::files_client::FilesClient;
use pb::files_server::{Files, FilesServer};
use pb::{DeleteFileReply, DeleteFileRequest, TagFileRequest, TagFilesReply};

const RULES: &str = r#"
version: 1
service: media-library
defaults:
  actor: ["{header.x-user-id}"]
rules:
  - operation: file.delete
    method: POST
    path: /acme.media.v1.Files/DeleteFile
  - operation: tag.add
    method: POST
    path: /acme.media.v1.Files/TagFiles
"#;

/// The service: a file named `locked` may not be deleted.
struct MediaLibrary;

#[tonic::async_trait]
impl Files for MediaLibrary {
    async fn delete_file(
        &self,
        request: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileReply>, Status> {
        if request.get_ref().file_id == "locked" {
            return Err(Status::permission_denied("this file is locked"));
        }
        Ok(Response::new(DeleteFileReply { deleted: true }))
    }

    async fn tag_files(
        &self,
        request: Request<Streaming<TagFileRequest>>,
    ) -> Result<Response<TagFilesReply>, Status> {
        let mut stream = request.into_inner();
        let mut tagged = 0;
        while let Some(message) = stream.message().await? {
            if message.tag.is_empty() {
                return Err(Status::invalid_argument("a tag is empty"));
            }
            tagged += 1;
        }
        Ok(Response::new(TagFilesReply { tagged }))
    }
}

/// A tonic server behind the layer on a free port; its client.
async fn serve(sink: &MemorySink) -> FilesClient<tonic::transport::Channel> {
    let rules = RuleSet::from_yaml("rules.yaml", RULES).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = AuditLayer::new(rules, sink.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(FilesServer::new(MediaLibrary))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    FilesClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// The record of the one call made since the last look; records are emitted when the answer's
/// body ends, which the client may see a moment before the server's side is done.
async fn only(sink: &MemorySink) -> AuditRecord {
    for _ in 0..200 {
        let records = sink.take();
        if !records.is_empty() {
            assert_eq!(records.len(), 1, "{records:#?}");
            return records.into_iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no record");
}

fn with_user<T>(message: T, user: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-user-id", user.parse().unwrap());
    request
}

#[tokio::test]
async fn an_ok_call_is_a_success_with_grpc_status_0() {
    let sink = MemorySink::new();
    let mut client = serve(&sink).await;
    let reply = client
        .delete_file(with_user(
            DeleteFileRequest {
                file_id: "f1".into(),
            },
            "u_1",
        ))
        .await
        .unwrap();
    assert!(reply.get_ref().deleted);
    let r = only(&sink).await;
    assert_eq!(r.operation, "file.delete");
    assert_eq!(r.request.path, "/acme.media.v1.Files/DeleteFile");
    assert_eq!(r.actor.unwrap().id.as_deref(), Some("u_1"));
    assert_eq!(
        (r.response.status, r.response.grpc_status),
        (Some(200), Some(0))
    );
    assert_eq!(r.outcome, Outcome::Success);
}

#[tokio::test]
async fn a_permission_denied_call_is_a_failure_though_http_says_200() {
    let sink = MemorySink::new();
    let mut client = serve(&sink).await;
    let refused = client
        .delete_file(with_user(
            DeleteFileRequest {
                file_id: "locked".into(),
            },
            "u_2",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let r = only(&sink).await;
    assert_eq!(r.operation, "file.delete");
    assert_eq!(r.response.status, Some(200), "gRPC answers HTTP 200");
    assert_eq!(r.response.grpc_status, Some(7), "PERMISSION_DENIED");
    assert_eq!(r.outcome, Outcome::Failure);
}

#[tokio::test]
async fn a_streaming_call_takes_its_outcome_from_the_trailers() {
    let sink = MemorySink::new();
    let mut client = serve(&sink).await;
    let tags = |names: &[&str]| {
        let messages: Vec<TagFileRequest> = names
            .iter()
            .map(|tag| TagFileRequest {
                file_id: "f1".into(),
                tag: (*tag).into(),
            })
            .collect();
        futures_util::stream::iter(messages)
    };
    let reply = client
        .tag_files(tags(&["red", "blue", "green"]))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().tagged, 3);
    let r = only(&sink).await;
    assert_eq!(r.operation, "tag.add");
    assert_eq!(r.response.grpc_status, Some(0));
    assert_eq!(r.outcome, Outcome::Success);

    let refused = client.tag_files(tags(&["red", ""])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let r = only(&sink).await;
    assert_eq!(r.response.grpc_status, Some(3), "INVALID_ARGUMENT");
    assert_eq!(r.outcome, Outcome::Failure);
}
