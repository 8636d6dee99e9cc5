//! The audit-log page in headless Chromium (`tests/browser/page.test.mjs`, playwright-core)
//! over the demo's records: the demo's stack (proxy on the ImageKit and Hugging Face rule
//! sets, example upstream, writer) and its burst of calls. Needs Debian's chromium, node and
//! `npm ci --prefix tests/browser`, which `scripts/test` installs; hence `#[ignore]` here and
//! `cargo test -- --ignored` there. With `AUDITGATE_SCREENSHOT=docs/audit-log.png` it also
//! takes the README's screenshot.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::process::Command;

use auditgate_tests::{ACME_TOKEN, ADMIN_TOKEN, DemoStack, VIEWER_TOKEN, workspace_root};

#[test]
#[ignore = "needs chromium and tests/browser/node_modules: run through scripts/test"]
fn the_page_in_a_browser() {
    let stack = DemoStack::start("sqlite://audit.db");
    stack.burst();

    let script = workspace_root().join("tests/browser/page.test.mjs");
    let mut node = Command::new("node");
    node.arg(script)
        .arg(format!("http://{}", stack.writer.addr))
        .args([ADMIN_TOKEN, VIEWER_TOKEN, ACME_TOKEN, "acme"]);
    if let Ok(path) = std::env::var("AUDITGATE_SCREENSHOT") {
        node.arg(workspace_root().join(path));
    }
    let out = node.output().expect("run node (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("page: all checks passed"), "{stdout}");
}
