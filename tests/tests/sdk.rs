//! The products' official Python SDKs, `imagekitio` and `huggingface_hub` from PyPI, pointed at
//! the demo's proxy (`base_url=`, `endpoint=`) in front of the example API: every call they make
//! answers without an SDK error, and every mutating call is in the store as its named operation,
//! with its organisation as `tenant`. Needs the SDKs in a virtual environment
//! (`SDK_PYTHON=target/sdk-venv/bin/python`, which `scripts/test` makes from
//! `tests/sdk/requirements.txt`); hence `#[ignore]` here and `cargo test -- --ignored` there.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::process::Command;
use std::time::Duration;

use auditgate_tests::{DemoStack, wait_until, workspace_root};
use serde_json::Value;

/// What a script's line says the store must hold: (operation, tenant, method, path).
type Expected = (String, String, String, String);

/// Runs one SDK script against the proxy; returns the audited calls it made.
fn run_sdk(script: &str, proxy: &str) -> Vec<Expected> {
    let python =
        std::env::var("SDK_PYTHON").unwrap_or_else(|_| "target/sdk-venv/bin/python".to_owned());
    let out = Command::new(workspace_root().join(&python))
        .arg(workspace_root().join("tests/sdk").join(script))
        .arg(proxy)
        .output()
        .unwrap_or_else(|e| panic!("run {python} (scripts/test makes it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<Expected> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            (s("operation"), s("tenant"), s("method"), s("path"))
        })
        .collect();
    assert!(
        calls.len() >= 10,
        "{script} made {} audited calls",
        calls.len()
    );
    calls
}

#[test]
#[ignore = "needs the SDKs' virtual environment (SDK_PYTHON): run through scripts/test"]
fn the_products_sdks_work_through_the_proxy_and_every_call_is_recorded() {
    let stack = DemoStack::start("sqlite://audit.db");
    let mut expected = run_sdk("imagekit_calls.py", &stack.proxy_url());
    expected.extend(run_sdk("hf_calls.py", &stack.proxy_url()));
    let n = expected.len() as u64;
    assert!(
        wait_until(Duration::from_secs(30), || stack.writer.count() >= n),
        "stored {} of {n}",
        stack.writer.count()
    );
    // Let anything recorded beyond the expected arrive too, so that it is seen below.
    std::thread::sleep(Duration::from_millis(500));

    let export = stack.writer.get("/api/v1/export");
    assert_eq!(export.status, 200);
    let records: Vec<Value> = serde_json::from_slice(&export.body).unwrap();
    let mut stored: Vec<Expected> = records
        .iter()
        .map(|r| {
            let s = |p: &str| {
                r.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            (
                s("/operation"),
                s("/tenant"),
                s("/request/method"),
                s("/request/path"),
            )
        })
        .collect();
    let mut missing = Vec::new();
    for call in &expected {
        match stored.iter().position(|s| s == call) {
            Some(i) => {
                stored.swap_remove(i);
            }
            None => missing.push(call),
        }
    }
    assert!(
        missing.is_empty() && stored.is_empty(),
        "calls with no record of their operation and tenant: {missing:#?}\n\
         records no call explains: {stored:#?}"
    );
    // Every call was answered as the SDK expects (the scripts fail otherwise), so the records
    // say success; a refused one would say so.
    for r in &records {
        assert_eq!(r["outcome"], "success", "{r}");
    }
}
