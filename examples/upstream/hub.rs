//! The Hugging Face Hub's API, faithful enough for `examples/rules/huggingface.yaml` and the
//! official `huggingface_hub` library (2.x) pointed at the proxy (`HfApi(endpoint=...)`): the
//! library parses `RepoUrl`s, `SpaceRuntime`s, `Collection`s and Space variables out of these
//! answers, and the rules read `url`, `slug` and `id` from them and the `before:` GETs read a
//! repo's settings, a Space's runtime and a collection.
//!
//! Repos, Space runtimes and collections are remembered, so that a `before:` GET answers what
//! the previous call set. Organisation, billing and resource-group calls (illustrative paths in
//! the rules) get `{"ok": true}` or an `id`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::{json_response, next_id};

/// What the Hub remembers: by repo id (`spaces/acme/chatbot`), the settings and runtime; by
/// slug, the collections.
#[derive(Default)]
struct Hub {
    repos: HashMap<String, Value>,
    runtimes: HashMap<String, Value>,
    variables: HashMap<String, serde_json::Map<String, Value>>,
    collections: HashMap<String, Value>,
}

static HUB: Mutex<Option<Hub>> = Mutex::new(None);

fn hub<R>(f: impl FnOnce(&mut Hub) -> R) -> R {
    let mut hub = HUB.lock().unwrap_or_else(PoisonError::into_inner);
    f(hub.get_or_insert_with(Hub::default))
}

/// The answer to one Hub call, or `None` when the path is not the Hub's.
pub(crate) fn answer(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: &Value,
) -> Option<Response> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = method.as_str();
    if segments.first() != Some(&"api") {
        return None;
    }
    Some(match (m, &segments[1..]) {
        ("GET", ["whoami-v2"]) => ok(json!({
            "type": "user", "name": "alice", "fullname": "Alice",
            "orgs": [{"name": "acme", "type": "org"}], "auth": {"type": "access_token"}
        })),
        ("POST", ["repos", "create"]) => {
            let kind = body["type"].as_str().unwrap_or("model");
            let namespace = body["organization"].as_str().unwrap_or("alice");
            let name = body["name"].as_str().unwrap_or("unnamed");
            let id = format!("{namespace}/{name}");
            let private = body["visibility"] == "private" || body["private"] == true;
            hub(|h| {
                h.repos.insert(
                    format!("{kind}s/{id}"),
                    json!({"id": id, "private": private, "gated": false}),
                )
            });
            ok(json!({"url": repo_url(kind, &id), "name": id, "id": format!("r{}", next_id())}))
        }
        ("DELETE", ["repos", "delete"]) => {
            let kind = body["type"].as_str().unwrap_or("model");
            let id = format!(
                "{}/{}",
                body["organization"].as_str().unwrap_or("alice"),
                body["name"].as_str().unwrap_or("")
            );
            hub(|h| h.repos.remove(&format!("{kind}s/{id}")));
            ok(json!({}))
        }
        ("POST", ["repos", "move"]) => {
            let kind = body["type"].as_str().unwrap_or("model");
            let (from, to) = (
                body["fromRepo"].as_str().unwrap_or(""),
                body["toRepo"].as_str().unwrap_or(""),
            );
            hub(|h| {
                if let Some(mut repo) = h.repos.remove(&format!("{kind}s/{from}")) {
                    repo["id"] = json!(to);
                    h.repos.insert(format!("{kind}s/{to}"), repo);
                }
            });
            ok(json!({}))
        }
        // A repo's settings; its info (the settings `before:` reads).
        ("PUT", [kind, org, name, "settings"]) => {
            let key = format!("{kind}/{org}/{name}");
            hub(|h| {
                let repo = h.repos.entry(key).or_insert_with(
                    || json!({"id": format!("{org}/{name}"), "private": false, "gated": false}),
                );
                if let Some(v) = body.get("visibility") {
                    repo["private"] = json!(v == "private");
                }
                for k in ["private", "gated", "discussionsDisabled"] {
                    if let Some(v) = body.get(k) {
                        repo[k] = v.clone();
                    }
                }
            });
            ok(json!({}))
        }
        ("GET", ["models" | "datasets" | "spaces", org, name]) => {
            let key = format!("{}/{org}/{name}", segments[1]);
            ok(hub(|h| h.repos.get(&key).cloned()).unwrap_or_else(
                || json!({"id": format!("{org}/{name}"), "private": false, "gated": false}),
            ))
        }
        // A Space's runtime: hardware, sleep time, storage.
        ("GET", ["spaces", org, name, "runtime"]) => ok(runtime(org, name)),
        ("POST", ["spaces", org, name, "hardware"]) => ok(update_runtime(org, name, |r| {
            r["hardware"]["requested"] = body["flavor"].clone();
            if let Some(s) = body.get("sleepTimeSeconds") {
                r["gcTimeout"] = s.clone();
            }
        })),
        ("POST", ["spaces", org, name, "sleeptime"]) => ok(update_runtime(org, name, |r| {
            r["gcTimeout"] = body["seconds"].clone()
        })),
        ("POST", ["spaces", org, name, "storage"]) => ok(update_runtime(org, name, |r| {
            r["storage"] = body["tier"].clone()
        })),
        ("DELETE", ["spaces", org, name, "storage"]) => {
            ok(update_runtime(org, name, |r| r["storage"] = Value::Null))
        }
        ("PUT", ["spaces", org, name, "volumes"]) => ok(update_runtime(org, name, |r| {
            r["volumes"] = body["volumes"].clone()
        })),
        ("DELETE", ["spaces", org, name, "volumes"]) => {
            ok(update_runtime(org, name, |r| r["volumes"] = json!([])))
        }
        ("POST", ["spaces", org, name, "pause" | "restart"]) => ok(runtime(org, name)),
        ("POST" | "PUT" | "PATCH", ["spaces", _, _, "secrets"]) => ok(json!({})),
        ("DELETE", ["spaces", _, _, "secrets"]) => ok(json!({})),
        ("GET", ["spaces", org, name, "variables"]) => {
            let key = format!("{org}/{name}");
            ok(hub(|h| {
                Value::Object(h.variables.get(&key).cloned().unwrap_or_default())
            }))
        }
        // Lists: repos by author, collections by owner (what `list_models(author=)`,
        // `list_spaces`, `list_collections(owner=)` read).
        ("GET", [kind @ ("models" | "datasets" | "spaces")]) => {
            let author = query.get("author").cloned();
            ok(Value::Array(hub(|h| {
                (h.repos.iter())
                    .filter(|(key, repo)| {
                        key.starts_with(&format!("{kind}/"))
                            && author.as_ref().is_none_or(|a| {
                                repo["id"]
                                    .as_str()
                                    .is_some_and(|id| id.starts_with(&format!("{a}/")))
                            })
                    })
                    .map(|(_, repo)| repo.clone())
                    .collect()
            })))
        }
        ("GET", ["collections"]) => {
            let owner = query.get("owner").cloned();
            ok(Value::Array(hub(|h| {
                (h.collections.values())
                    .filter(|c| {
                        owner
                            .as_ref()
                            .is_none_or(|o| c["owner"]["name"] == o.as_str())
                    })
                    .map(|c| {
                        // A listed collection has no `position`: the library numbers the list.
                        let mut c = c.clone();
                        if let Some(c) = c.as_object_mut() {
                            c.remove("position");
                        }
                        c
                    })
                    .collect()
            })))
        }
        ("POST" | "PUT" | "PATCH", ["spaces", org, name, "variables"]) => {
            let key = format!("{org}/{name}");
            ok(hub(|h| {
                let vars = h.variables.entry(key).or_default();
                if let Some(k) = body["key"].as_str() {
                    vars.insert(
                        k.to_owned(),
                        json!({"value": body["value"], "description": body["description"], "updatedAt": NOW}),
                    );
                }
                Value::Object(vars.clone())
            }))
        }
        ("DELETE", ["spaces", org, name, "variables"]) => {
            let key = format!("{org}/{name}");
            ok(hub(|h| {
                let vars = h.variables.entry(key).or_default();
                if let Some(k) = body["key"].as_str() {
                    vars.remove(k);
                }
                Value::Object(vars.clone())
            }))
        }
        ("POST", [kind, org, _, "duplicate"]) => {
            let to = body["repository"]
                .as_str()
                .map_or_else(|| format!("{org}/copy"), str::to_owned);
            let kind = kind.trim_end_matches('s');
            ok(json!({"url": repo_url(kind, &to), "filesCopyPending": false}))
        }
        // Collections: the slug is `namespace/title-id`, two segments.
        ("POST", ["collections"]) => {
            let namespace = body["namespace"].as_str().unwrap_or("alice");
            let title = body["title"].as_str().unwrap_or("Collection");
            let slug = format!("{namespace}/{}-{:024x}", slugify(title), next_id());
            let collection = json!({
                "slug": slug, "title": title, "owner": {"name": namespace, "type": "org"},
                "items": [], "lastUpdated": NOW, "position": 0,
                "private": body["private"].as_bool().unwrap_or(false), "theme": "blue",
                "upvotes": 0, "description": body["description"],
            });
            hub(|h| h.collections.insert(slug, collection.clone()));
            ok(collection)
        }
        ("GET", ["collections", ns, rest]) => found(collection(ns, rest)),
        ("PATCH", ["collections", ns, rest]) => {
            let updated = with_collection(ns, rest, |c| {
                for k in ["title", "description", "private", "position", "theme"] {
                    if let Some(v) = body.get(k) {
                        c[k] = v.clone();
                    }
                }
            });
            found(updated.map(|c| json!({"data": c})))
        }
        ("DELETE", ["collections", ns, rest]) => {
            let slug = format!("{ns}/{rest}");
            found(hub(|h| h.collections.remove(&slug)).map(|_| json!({})))
        }
        ("POST", ["collections", ns, rest, "items"]) => found(with_collection(ns, rest, |c| {
            let item = json!({
                "_id": format!("{:024x}", next_id()), "id": body["item"]["id"],
                "type": body["item"]["type"], "position": c["items"].as_array().map_or(0, Vec::len),
                "note": body.get("note").and_then(Value::as_str).map(|n| json!({"text": n, "html": n})),
            });
            if let Some(items) = c["items"].as_array_mut() {
                items.push(item);
            }
        })),
        ("PATCH", ["collections", ns, rest, "items", item]) => {
            found(with_collection(ns, rest, |c| {
                for it in c["items"].as_array_mut().into_iter().flatten() {
                    if it["_id"] == *item {
                        if let Some(n) = body["note"].as_str() {
                            it["note"] = json!({"text": n, "html": n});
                        }
                        if let Some(p) = body.get("position") {
                            it["position"] = p.clone();
                        }
                    }
                }
            }))
        }
        ("DELETE", ["collections", ns, rest, "items", item]) => {
            let mut removed = false;
            let updated = with_collection(ns, rest, |c| {
                if let Some(items) = c["items"].as_array_mut() {
                    let before = items.len();
                    items.retain(|it| it["_id"] != *item);
                    removed = items.len() < before;
                }
            });
            match updated {
                Some(c) if removed => ok(c),
                _ => not_found("Item not found"),
            }
        }
        ("POST", ["collections", _, _, "resource-group"]) => ok(json!({})),
        // Everything else the rules name (organisations, billing, resource groups, jobs...):
        // a creation answers an id, the rest `{"ok": true}`.
        ("POST", _) => ok(json!({"id": format!("{:024x}", next_id()), "ok": true})),
        ("PUT" | "PATCH" | "DELETE", _) => ok(json!({"ok": true})),
        _ => return None,
    })
}

/// The time every answer says things changed: the library reads only its form (`…Z`).
const NOW: &str = "2026-12-01T10:00:00.000Z";

/// A repo's URL as the Hub gives it (`huggingface_hub` maps `https://huggingface.co` onto its
/// endpoint); models have no type prefix.
fn repo_url(kind: &str, id: &str) -> String {
    match kind {
        "model" => format!("https://huggingface.co/{id}"),
        other => format!("https://huggingface.co/{other}s/{id}"),
    }
}

fn runtime(org: &str, name: &str) -> Value {
    let key = format!("{org}/{name}");
    hub(|h| {
        h.runtimes
            .entry(key)
            .or_insert_with(default_runtime)
            .clone()
    })
}

fn update_runtime(org: &str, name: &str, change: impl FnOnce(&mut Value)) -> Value {
    let key = format!("{org}/{name}");
    hub(|h| {
        let r = h.runtimes.entry(key).or_insert_with(default_runtime);
        change(r);
        r.clone()
    })
}

fn default_runtime() -> Value {
    json!({"stage": "RUNNING", "hardware": {"current": "cpu-basic", "requested": "cpu-basic"},
           "storage": null, "gcTimeout": 172800, "volumes": []})
}

fn collection(ns: &str, rest: &str) -> Option<Value> {
    let slug = format!("{ns}/{rest}");
    hub(|h| h.collections.get(&slug).cloned())
}

/// Changes a stored collection; `None` (answered 404 by the caller's `?`) when there is none.
fn with_collection(ns: &str, rest: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
    let slug = format!("{ns}/{rest}");
    hub(|h| {
        let c = h.collections.get_mut(&slug)?;
        change(c);
        c["lastUpdated"] = json!(NOW);
        Some(c.clone())
    })
}

fn slugify(title: &str) -> String {
    title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, body)
}

/// A stored thing's answer, or 404 as the Hub gives it.
fn found(value: Option<Value>) -> Response {
    value.map_or_else(|| not_found("Collection not found"), ok)
}

fn not_found(message: &str) -> Response {
    json_response(StatusCode::NOT_FOUND, json!({"error": message}))
}
