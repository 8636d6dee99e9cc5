//! ImageKit's Media API and upload API, faithful enough for `examples/rules/imagekit.yaml` and
//! the official `imagekitio` SDK (5.x) pointed at the proxy: the SDK parses each answer into its
//! models, and the rules read `fileId`, `filePath` and `versionInfo` from them.
//!
//! Files live in the upstream's one file store (`crate::files`), so an upload, a rename, a
//! move and a delete act on the same file, and a rule's `before:` GET of
//! `/v1/files/{id}/details` answers the file as it is. Dashboard-only operations (public links,
//! media collections, sharing, drafts) are on the illustrative paths the rules name and answer
//! what those rules read.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{files, json_response, next_id};

/// The answer to one ImageKit call, or `None` when the path is not ImageKit's.
pub(crate) fn answer(
    method: &Method,
    path: &str,
    content_type: &str,
    raw: &[u8],
    body: &Value,
) -> Option<Response> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = method.as_str();
    Some(match (m, segments.as_slice()) {
        ("POST", ["api", "v1" | "v2", "files", "upload"]) => {
            let fields = if content_type.starts_with("multipart/form-data") {
                multipart_fields(content_type, raw)
            } else {
                body.clone()
            };
            upload(&fields)
        }
        ("PATCH", ["v1", "files", id, "details"]) => update_details(id, body)?,
        ("PUT", ["v1", "files", "rename"]) => {
            let from = body["filePath"].as_str()?;
            let name = body["newFileName"].as_str()?;
            files(|files| {
                if let Some(f) = files.values_mut().find(|f| f["filePath"] == from) {
                    let folder = folder_of(from);
                    f["name"] = json!(name);
                    f["filePath"] = json!(format!("{folder}/{name}"));
                }
            });
            if body["purgeCache"] == true {
                ok(json!({"purgeRequestId": format!("purge_{}", next_id())}))
            } else {
                ok(json!({}))
            }
        }
        ("POST", ["v1", "files", "copy"]) => no_content(),
        ("POST", ["v1", "files", "batch", "deleteByFileIds"]) => {
            let ids = body["fileIds"].as_array().cloned().unwrap_or_default();
            files(|files| {
                for id in &ids {
                    if let Some(id) = id.as_str() {
                        files.remove(id);
                    }
                }
            });
            ok(json!({"successfullyDeletedFileIds": ids}))
        }
        ("POST", ["v1", "files", "addTags" | "removeTags" | "removeAITags"]) => {
            let ids = body["fileIds"].clone();
            let tags = body["tags"].as_array().cloned().unwrap_or_default();
            let adding = segments[2] == "addTags";
            files(|files| {
                for id in ids
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if let Some(f) = files.get_mut(id) {
                        let mut now: Vec<Value> = f["tags"].as_array().cloned().unwrap_or_default();
                        if adding {
                            now.extend(
                                tags.iter()
                                    .filter(|t| !now.contains(t))
                                    .cloned()
                                    .collect::<Vec<_>>(),
                            );
                        } else {
                            now.retain(|t| !tags.contains(t));
                        }
                        f["tags"] = json!(now);
                    }
                }
            });
            ok(json!({"successfullyUpdatedFileIds": ids}))
        }
        ("PUT", ["v1", "files", id, "versions", _, "restore"]) => ok(file_object(id)),
        ("GET", ["v1", "files", id, "versions", version]) => {
            let mut f = file_object(id);
            f["type"] = json!("file-version");
            f["versionInfo"] = json!({"id": version, "name": "Version 2"});
            ok(f)
        }
        ("GET", ["v1", "files", id, "versions"]) => ok(json!([file_object(id)])),
        ("DELETE", ["v1", "files", _, "versions", _]) => no_content(),
        ("POST", ["v1", "folder"]) => json_response(StatusCode::CREATED, json!({})),
        ("DELETE", ["v1", "folder"]) => no_content(),
        ("POST", ["v1", "bulkJobs", "copyFolder" | "moveFolder"]) => {
            ok(json!({"jobId": format!("job_{}", next_id())}))
        }
        ("POST", ["v1", "bulkJobs", "renameFolder"]) => json_response(
            StatusCode::ACCEPTED,
            json!({"jobId": format!("job_{}", next_id())}),
        ),
        ("GET", ["v1", "bulkJobs", job]) => {
            ok(json!({"jobId": job, "type": "COPY_FOLDER", "status": "Completed"}))
        }
        ("POST", ["v1", "files", "purge"]) => json_response(
            StatusCode::CREATED,
            json!({"requestId": format!("purge_{}", next_id())}),
        ),
        ("GET", ["v1", "files", "purge", request]) => {
            ok(json!({"status": "Completed", "requestId": request}))
        }
        // Custom metadata fields, remembered: the list shows what was created.
        ("POST", ["v1", "customMetadataFields"]) => {
            let id = format!("cmf_{}", next_id());
            let field = json!({"id": id, "name": body["name"], "label": body["label"], "schema": body["schema"]});
            fields(|f| f.insert(id, field.clone()));
            json_response(StatusCode::CREATED, field)
        }
        ("GET", ["v1", "customMetadataFields"]) => {
            ok(Value::Array(fields(|f| f.values().cloned().collect())))
        }
        ("PATCH", ["v1", "customMetadataFields", id]) => {
            let known = fields(|f| f.get(*id).cloned());
            let mut field = known.unwrap_or_else(
                || json!({"id": id, "name": "brand", "label": "Brand", "schema": {"type": "Text"}}),
            );
            if let Some(label) = body.get("label") {
                field["label"] = label.clone();
            }
            if let (Some(s), Some(new)) =
                (field["schema"].as_object_mut(), body["schema"].as_object())
            {
                s.extend(new.clone());
            }
            fields(|f| f.insert((*id).to_owned(), field.clone()));
            ok(field)
        }
        ("DELETE", ["v1", "customMetadataFields", id]) => {
            fields(|f| f.remove(*id));
            no_content()
        }
        // The files list (`files.list`, the SDK's `assets.list`): what the store holds.
        ("GET", ["v1", "files"]) => ok(Value::Array(files(|f| f.values().cloned().collect()))),
        // Illustrative (dashboard-only) operations, with the fields of ImageKit's dashboard
        // API description: public links (remembered, for the rules' `before:` GETs) and
        // media collections.
        ("POST", ["api", "media-library", _, "assets", asset, "public-links"]) => {
            let id = format!("link_{}", next_id());
            let link = json!({
                "_id": id, "assetType": "file", "assetInfo": {"type": "file", "id": asset},
                "publicURL": format!("https://ik.imagekit.io/demo/s/{id}"),
                "validFrom": body["validFrom"], "validTill": body["validTill"],
                "exposeDraftAssets": body["exposeDraftAssets"].as_bool().unwrap_or(false),
            });
            links(|l| l.insert(id, link.clone()));
            json_response(StatusCode::CREATED, link)
        }
        (
            "GET" | "PUT" | "DELETE",
            ["api", "media-library", _, "assets", _, "public-links", id],
        ) => {
            let id = (*id).to_owned();
            let found = links(|l| match m {
                "GET" => l.get(&id).cloned(),
                "DELETE" => l.remove(&id).map(|_| json!({})),
                _ => l.get_mut(&id).map(|link| {
                    for k in ["validFrom", "validTill", "exposeDraftAssets"] {
                        if let Some(v) = body.get(k) {
                            link[k] = v.clone();
                        }
                    }
                    link.clone()
                }),
            });
            match found {
                Some(answer) => ok(answer),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"message": "Public link not found"}),
                ),
            }
        }
        ("POST", ["api", "v2", "media-collections"]) => json_response(
            StatusCode::CREATED,
            json!({"mediaCollectionId": format!("mc_{}", next_id()), "name": body["name"]}),
        ),
        (
            "POST",
            [
                "api",
                "v2",
                "media-collections",
                "add-assets" | "remove-assets",
            ],
        ) => ok(json!({
            "successfulOperations": body["assetIds"], "failedOperations": []
        })),
        ("POST" | "PUT" | "PATCH" | "DELETE", ["api", "v2" | "media-library", ..]) => {
            ok(json!({"ok": true}))
        }
        _ => return None,
    })
}

/// Custom metadata fields by id.
static FIELDS: std::sync::Mutex<Option<std::collections::HashMap<String, Value>>> =
    std::sync::Mutex::new(None);

fn fields<R>(f: impl FnOnce(&mut std::collections::HashMap<String, Value>) -> R) -> R {
    let mut fields = FIELDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(fields.get_or_insert_with(Default::default))
}

/// Public links by id.
static LINKS: std::sync::Mutex<Option<std::collections::HashMap<String, Value>>> =
    std::sync::Mutex::new(None);

fn links<R>(f: impl FnOnce(&mut std::collections::HashMap<String, Value>) -> R) -> R {
    let mut links = LINKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(links.get_or_insert_with(Default::default))
}

/// `POST /api/v1/files/upload`: a new file, or a new version of the file at the same path
/// (ImageKit's default `overwriteFile: true`).
fn upload(fields: &Value) -> Response {
    let text = |k: &str| fields[k].as_str().map(str::to_owned);
    let name = text("fileName").unwrap_or_else(|| "untitled".into());
    let folder = text("folder").unwrap_or_default();
    let folder = folder.trim_end_matches('/');
    let path = format!("{folder}/{name}");
    let overwrite = text("overwriteFile").as_deref() != Some("false");
    let version = format!("v_{}", next_id());
    let file = files(|files| {
        let existing = files
            .iter()
            .find(|(_, f)| f["filePath"] == path.as_str())
            .map(|(id, _)| id.clone())
            .filter(|_| overwrite);
        let id = existing.unwrap_or_else(|| format!("f{}", next_id()));
        let versions = files
            .get(&id)
            .and_then(|f| f["versions"].as_u64())
            .unwrap_or(0)
            + 1;
        let tags: Value =
            text("tags").map_or(Value::Null, |t| json!(t.split(',').collect::<Vec<_>>()));
        let file = json!({
            "fileId": id, "name": name, "filePath": path, "size": 68,
            "url": format!("https://ik.imagekit.io/demo{path}"), "fileType": "image",
            "versionInfo": {"id": version, "name": format!("Version {versions}")},
            "versions": versions, "tags": tags, "isPublished": text("isPublished").as_deref() != Some("false"),
            "isPrivateFile": false,
            "customMetadata": text("customMetadata").and_then(|c| serde_json::from_str::<Value>(&c).ok()).unwrap_or(json!({})),
        });
        files.insert(id, file.clone());
        file
    });
    ok(file)
}

/// `PATCH /v1/files/{id}/details`: tags, custom metadata, extensions, publication. `None` for
/// a file the store does not have (the stateless answers take it, as before).
fn update_details(id: &str, body: &Value) -> Option<Response> {
    files(|files| {
        let f = files.get_mut(id)?;
        for key in ["tags", "customMetadata", "description", "customCoordinates"] {
            if let Some(v) = body.get(key) {
                f[key] = v.clone();
            }
        }
        if let Some(remove) = body["removeAITags"].as_array() {
            let kept: Vec<Value> = (f["AITags"].as_array().cloned().unwrap_or_default())
                .into_iter()
                .filter(|t| !remove.contains(&t["name"]))
                .collect();
            f["AITags"] = json!(kept);
        }
        if let Some(extensions) = body["extensions"].as_array() {
            let status: serde_json::Map<String, Value> = extensions
                .iter()
                .filter_map(|e| e["name"].as_str())
                .map(|n| (n.to_owned(), json!("pending")))
                .collect();
            f["extensionStatus"] = Value::Object(status);
        }
        if let Some(published) = body.pointer("/publish/isPublished") {
            f["isPublished"] = published.clone();
        }
        // The rules' `before:` tests rename through here too (`{"name"}`): keep that.
        if let Some(name) = body["name"].as_str() {
            let folder = folder_of(f["filePath"].as_str().unwrap_or("")).to_owned();
            f["name"] = json!(name);
            f["filePath"] = json!(format!("{folder}/{name}"));
        }
        Some(ok(f.clone()))
    })
}

/// A stored file as ImageKit's file-details answer, or a plausible one for an unknown id.
fn file_object(id: &str) -> Value {
    files(|files| files.get(id).cloned()).unwrap_or_else(|| {
        json!({"fileId": id, "name": "unknown.png", "filePath": "/unknown.png", "type": "file",
               "versionInfo": {"id": "v_unknown", "name": "Version 1"}})
    })
}

/// The folder part of a file path: `/forest` of `/forest/tree.png`, `` of `/tree.png`.
fn folder_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(folder, _)| folder)
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The text fields of a `multipart/form-data` body (files as their size), as a JSON object.
fn multipart_fields(content_type: &str, raw: &[u8]) -> Value {
    let Some(boundary) = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
    else {
        return json!({});
    };
    let text = String::from_utf8_lossy(raw);
    let delimiter = format!("--{boundary}");
    let mut fields = serde_json::Map::new();
    for part in text.split(&delimiter).skip(1) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let Some(name) = head
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("name="))
            .map(|n| {
                n.split("\r\n")
                    .next()
                    .unwrap_or(n)
                    .trim_matches('"')
                    .to_owned()
            })
        else {
            continue;
        };
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        let value = if head.contains("filename=") {
            json!(format!("<file, {} bytes>", value.len()))
        } else {
            json!(value)
        };
        fields.insert(name, value);
    }
    Value::Object(fields)
}
