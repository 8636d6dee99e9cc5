//! The demo's burst of calls through the proxy, in front of the example upstream, on the
//! ImageKit and Hugging Face rule sets of `examples/rules/`: what `scripts/demo` sends and what
//! the page's browser test reads.
//!
//! ```sh
//! cargo run -p auditgate-tests --bin burst -- http://127.0.0.1:8080
//! ```
//!
//! First every case of `tests/rule-cases/*.yaml` once, so that every rule of both sets has a
//! record; then a story an admin can follow on the page: files uploaded into folders, renamed, moved,
//! tagged, shared and deleted, a media collection filled and emptied, a Hub organisation's
//! repository, Space settings, secrets, members and a collection — from several users of two
//! organisations in several countries (through `X-Forwarded-For`, which the demo's proxy
//! believes from loopback, as from a load balancer), with refused (401, 403) and failed calls
//! among them. Each call prints `STATUS METHOD PATH (user, country)`, the story after a line
//! starting `#`; the last line is `N audited calls sent`.

use std::path::Path;

use auditgate_tests::http;
use serde_json::{Value, json};

/// Client addresses, by the country the embedded table places them in.
const PLACES: &[(&str, &str)] = &[
    ("81.2.69.160", "GB"),
    ("5.9.0.1", "DE"),
    ("133.242.1.1", "JP"),
    ("200.160.2.3", "BR"),
    ("8.8.8.8", "US"),
    ("89.160.20.112", "SE"),
];

struct Burst {
    proxy: String,
    sent: u64,
}

/// One call's sender and what it carries.
struct Call<'a> {
    user: &'a str,
    org: Option<&'a str>,
    place: usize,
    method: &'a str,
    path: &'a str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl<'a> Call<'a> {
    fn new(user: &'a str, place: usize, method: &'a str, path: &'a str) -> Call<'a> {
        Call {
            user,
            org: None,
            place,
            method,
            path,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// An ImageKit call: the organisation in `X-Org-Id`, and the private key in HTTP Basic
    /// unless the call names other credentials.
    fn org(mut self, org: &'a str) -> Self {
        self.org = Some(org);
        self
    }

    /// A Hub call: a user access token.
    fn hub(self) -> Self {
        self.header("Authorization", "Bearer hf_demoToken")
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn json(mut self, body: Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }

    /// A `multipart/form-data` upload, as ImageKit's SDKs send it: text fields, then the file.
    fn upload(mut self, fields: &[(&str, &str)], file_name: &str) -> Self {
        let boundary = "auditgate-demo-7d3f";
        let mut body = String::new();
        for (name, value) in fields {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: image/png\r\n\r\n\u{89}PNG fake bytes\r\n--{boundary}--\r\n"
        ));
        self.body = body.into_bytes();
        self.header(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
    }
}

impl Burst {
    /// Sends one call; returns its JSON answer (null when there is none).
    fn send(&mut self, call: Call<'_>) -> Value {
        let (ip, country) = PLACES[call.place % PLACES.len()];
        let mut headers: Vec<(&str, &str)> = vec![
            ("X-User-Id", call.user),
            ("X-Forwarded-For", ip),
            ("User-Agent", "auditgate-demo/1 (burst)"),
        ];
        if let Some(org) = call.org {
            headers.push(("X-Org-Id", org));
            let named = (call.headers.iter()).any(|(n, _)| n.eq_ignore_ascii_case("authorization"));
            if !named {
                headers.push(("Authorization", "Basic cHJpdmF0ZV9kZW1vOg=="));
            }
        }
        headers.extend(call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let answer = http(&self.proxy, call.method, call.path, &headers, &call.body);
        self.sent += 1;
        match answer {
            Ok(r) => {
                println!(
                    "{} {} {} ({}, {country})",
                    r.status, call.method, call.path, call.user
                );
                serde_json::from_slice(&r.body).unwrap_or(Value::Null)
            }
            Err(e) => {
                println!("--- {} {} ({}): {e}", call.method, call.path, call.user);
                Value::Null
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .ok_or("usage: burst PROXY_URL (http://127.0.0.1:8080)")?;
    let proxy = base
        .strip_prefix("http://")
        .ok_or("the proxy URL starts with http://")?
        .trim_end_matches('/')
        .to_owned();
    let mut b = Burst { proxy, sent: 0 };
    every_case(&mut b)?;
    // The story last: the newest records, at the top of the page, are the ones to follow.
    println!("# a morning's work at acme and globex");
    media_library_story(&mut b);
    hub_story(&mut b);
    println!("{} audited calls sent", b.sent);
    Ok(())
}

/// ImageKit: acme's media library through a morning's work.
fn media_library_story(b: &mut Burst) {
    let acme = "acme";
    b.send(
        Call::new("alice", 0, "POST", "/v1/folder")
            .org(acme)
            .json(json!({"folderName": "forest", "parentFolderPath": "/"})),
    );
    b.send(
        Call::new("alice", 0, "POST", "/v1/folder")
            .org(acme)
            .json(json!({"folderName": "archive", "parentFolderPath": "/"})),
    );
    let mut ids = Vec::new();
    for (i, name) in ["tree.png", "oak.png", "pine.png", "birch.png"]
        .iter()
        .enumerate()
    {
        let file = b.send(
            Call::new(["alice", "bob"][i % 2], i, "POST", "/api/v1/files/upload")
                .org(acme)
                .upload(
                    &[
                        ("fileName", name),
                        ("folder", "/forest"),
                        ("tags", "nature"),
                    ],
                    name,
                ),
        );
        ids.push(file["fileId"].as_str().unwrap_or("f0").to_owned());
    }
    // A new version of tree.png: the same path again.
    b.send(
        Call::new("alice", 0, "POST", "/api/v1/files/upload")
            .org(acme)
            .upload(
                &[
                    ("fileName", "tree.png"),
                    ("folder", "/forest"),
                    ("overwriteFile", "true"),
                    ("useUniqueFileName", "false"),
                ],
                "tree.png",
            ),
    );
    let [tree, oak, pine, birch] = [&ids[0], &ids[1], &ids[2], &ids[3]];
    b.send(
        Call::new("bob", 1, "PUT", "/v1/files/rename")
            .org(acme)
            .json(json!({"filePath": "/forest/tree.png", "newFileName": "old-oak.png", "purgeCache": false})),
    );
    b.send(
        Call::new("bob", 1, "POST", "/v1/files/move")
            .org(acme)
            .json(json!({"sourceFilePath": "/forest/oak.png", "destinationPath": "/archive/"})),
    );
    b.send(
        Call::new("carol", 2, "POST", "/v1/files/addTags")
            .org(acme)
            .json(json!({"fileIds": [tree, birch], "tags": ["summer", "sale"]})),
    );
    b.send(
        Call::new("carol", 2, "POST", "/v1/files/removeTags")
            .org(acme)
            .json(json!({"fileIds": [birch], "tags": ["sale"]})),
    );
    let details = format!("/v1/files/{tree}/details");
    b.send(
        Call::new("carol", 2, "PATCH", &details)
            .org(acme)
            .json(json!({"customMetadata": {"brand": "acme-outdoor", "season": "summer"}})),
    );
    b.send(
        Call::new("carol", 2, "PATCH", &details)
            .org(acme)
            .json(json!({"extensions": [{"name": "remove-bg", "options": {"add_shadow": true}}]})),
    );
    b.send(Call::new("carol", 2, "PATCH", &details).org(acme).json(
        json!({"extensions": [{"name": "google-auto-tagging", "maxTags": 5, "minConfidence": 80}]}),
    ));
    let versions = format!("/v1/files/{tree}/versions/v_1/restore");
    b.send(Call::new("alice", 0, "PUT", &versions).org(acme));
    // Sharing: a public link, changed, then revoked (dashboard paths, illustrative).
    let links = format!("/api/media-library/acme/assets/{birch}/public-links");
    let link = b.send(Call::new("dave", 3, "POST", &links).org(acme).json(json!({
        "validFrom": "2026-12-01T00:00:00Z", "validTill": "2026-12-31T00:00:00Z",
        "password": "hunter2", "exposeDraftAssets": false
    })));
    let link_path = format!("{links}/{}", link["_id"].as_str().unwrap_or("link_0"));
    b.send(
        Call::new("dave", 3, "PUT", &link_path)
            .org(acme)
            .json(json!({"validTill": "2027-01-31T00:00:00Z", "exposeDraftAssets": true})),
    );
    b.send(Call::new("dave", 3, "DELETE", &link_path).org(acme));
    // A media collection, filled, renamed, shared and emptied.
    let collection = b.send(
        Call::new("alice", 0, "POST", "/api/v2/media-collections")
            .org(acme)
            .json(json!({"name": "Autumn campaign"})),
    );
    let collection_id = collection["mediaCollectionId"]
        .as_str()
        .unwrap_or("mc_0")
        .to_owned();
    b.send(
        Call::new("alice", 0, "POST", "/api/v2/media-collections/add-assets")
            .org(acme)
            .json(json!({"mediaCollectionIds": [collection_id], "assetIds": [birch, oak]})),
    );
    let collection_path = format!("/api/v2/media-collections/{collection_id}");
    b.send(
        Call::new("bob", 1, "PATCH", &collection_path)
            .org(acme)
            .json(json!({"name": "Autumn campaign 2026"})),
    );
    b.send(
        Call::new("bob", 1, "PATCH", &collection_path)
            .org(acme)
            .json(json!({"acl": {"addOrModify": [{"userId": "erin", "role": "viewer"}]}})),
    );
    b.send(
        Call::new(
            "carol",
            2,
            "POST",
            "/api/v2/media-collections/remove-assets",
        )
        .org(acme)
        .json(json!({"mediaCollectionIds": [collection_id], "assetIds": [oak]})),
    );
    // Folders reorganised.
    b.send(
        Call::new("bob", 1, "POST", "/v1/bulkJobs/copyFolder")
            .org(acme)
            .json(json!({"sourceFolderPath": "/forest", "destinationPath": "/backup", "includeVersions": true})),
    );
    b.send(
        Call::new("bob", 1, "POST", "/v1/bulkJobs/renameFolder")
            .org(acme)
            .json(json!({"folderPath": "/archive", "newFolderName": "attic", "purgeCache": true})),
    );
    // Deletions: one file by id (its path comes from the API, before), then two in bulk.
    b.send(Call::new("dave", 3, "DELETE", &format!("/v1/files/{pine}")).org(acme));
    b.send(
        Call::new("dave", 3, "POST", "/v1/files/batch/deleteByFileIds")
            .org(acme)
            .json(json!({"fileIds": [oak, birch]})),
    );
    // Refused and failed calls, which an auditor looks for first.
    b.send(Call::new("guest42", 4, "DELETE", &format!("/v1/files/{tree}")).org(acme));
    b.send(
        Call::new("mallory", 5, "PUT", "/v1/files/rename")
            .org(acme)
            .header("Authorization", "Basic aW52YWxpZDo=")
            .json(json!({"filePath": "/forest/old-oak.png", "newFileName": "mine.png"})),
    );
    b.send(
        Call::new("carol", 2, "POST", "/v1/files/purge")
            .org(acme)
            .header("X-Upstream-Status", "500")
            .json(json!({"url": "https://ik.imagekit.io/acme/forest/old-oak.png"})),
    );
    // globex, another customer of the same deployment.
    b.send(
        Call::new("erin", 4, "POST", "/v1/folder")
            .org("globex")
            .json(json!({"folderName": "brand", "parentFolderPath": "/"})),
    );
    b.send(
        Call::new("erin", 4, "POST", "/api/v1/files/upload")
            .org("globex")
            .upload(
                &[("fileName", "logo.svg"), ("folder", "/brand")],
                "logo.svg",
            ),
    );
    b.send(
        Call::new("frank", 5, "DELETE", "/v1/folder")
            .org("globex")
            .json(json!({"folderPath": "/brand/"})),
    );
}

/// The Hub: the acme organisation's Space and members, and globex's billing.
fn hub_story(b: &mut Burst) {
    b.send(
        Call::new("erin", 1, "POST", "/api/repos/create")
            .hub()
            .json(json!({"name": "chatbot", "organization": "acme", "type": "space", "sdk": "gradio", "visibility": "private"})),
    );
    b.send(
        Call::new("erin", 1, "PUT", "/api/spaces/acme/chatbot/settings")
            .hub()
            .json(json!({"visibility": "public"})),
    );
    b.send(
        Call::new("erin", 1, "POST", "/api/spaces/acme/chatbot/secrets")
            .hub()
            .json(
                json!({"key": "OPENAI_KEY", "value": "sk-live-0123456789", "description": "prod"}),
            ),
    );
    b.send(
        Call::new("frank", 4, "POST", "/api/spaces/acme/chatbot/hardware")
            .hub()
            .json(json!({"flavor": "t4-small"})),
    );
    b.send(
        Call::new("frank", 4, "POST", "/api/spaces/acme/chatbot/sleeptime")
            .hub()
            .json(json!({"seconds": 3600})),
    );
    let collection = b.send(
        Call::new("erin", 1, "POST", "/api/collections")
            .hub()
            .json(json!({"title": "Demo picks", "namespace": "acme", "private": false})),
    );
    let slug = collection["slug"]
        .as_str()
        .unwrap_or("acme/demo-picks")
        .to_owned();
    b.send(
        Call::new("erin", 1, "POST", &format!("/api/collections/{slug}/items"))
            .hub()
            .json(json!({"item": {"id": "acme/chatbot", "type": "space"}, "note": "our chatbot"})),
    );
    b.send(
        Call::new("frank", 4, "PATCH", &format!("/api/collections/{slug}"))
            .hub()
            .json(json!({"title": "Demo picks 2026", "private": true})),
    );
    b.send(
        Call::new("guest7", 5, "POST", "/api/repos/move")
            .hub()
            .json(
                json!({"fromRepo": "acme/chatbot", "toRepo": "evil-corp/chatbot", "type": "space"}),
            ),
    );
    b.send(
        Call::new("mallory", 5, "DELETE", "/api/repos/delete")
            .header("Authorization", "Bearer invalid")
            .json(json!({"name": "chatbot", "organization": "acme", "type": "space"})),
    );
}

/// Every case of the rule sets' case files, once, from users and places taken in turn.
fn every_case(b: &mut Burst) -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/rule-cases");
    let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut n = 0usize;
    for file in ["imagekit.yaml", "huggingface.yaml"] {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(file))?)?;
        for case in doc["cases"].as_sequence().into_iter().flatten() {
            n += 1;
            let text = |v: &serde_yaml_ng::Value| -> Option<String> {
                match v {
                    serde_yaml_ng::Value::Null => None,
                    serde_yaml_ng::Value::String(s) => Some(s.clone()),
                    other => serde_json::to_value(other).ok().map(|j| j.to_string()),
                }
            };
            let method = case["method"].as_str().unwrap_or("POST");
            let path = case["path"].as_str().unwrap_or("/");
            let mut call = Call::new(users[n % users.len()], n, method, path);
            for (name, value) in case["headers"].as_mapping().into_iter().flatten() {
                let name = name.as_str().unwrap_or("");
                // The case's user is replaced by this turn's; its organisation stays.
                if !name.eq_ignore_ascii_case("x-user-id") {
                    call = call.header(name, &text(value).unwrap_or_default());
                }
            }
            if let Some(body) = text(&case["body"]) {
                if !call
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                {
                    call = call.header("Content-Type", "application/json");
                }
                call.body = body.into_bytes();
            }
            b.send(call);
        }
    }
    Ok(())
}
