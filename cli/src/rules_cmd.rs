//! `auditgate rules check` and `auditgate rules test`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use auditgate_rules::{Call, ClientIpMode, RuleSet, RulesError};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// Validate rule files. Prints a summary and exits 0 when they are valid; prints every
    /// problem as FILE:LINE:COL: message and exits 1 otherwise. No HMAC key is needed.
    Check {
        /// Rule files, or directories whose *.yaml / *.yml files are read as one set.
        #[arg(required = true, value_name = "FILE_OR_DIR")]
        paths: Vec<PathBuf>,
    },
    /// Print the record a call would produce, as JSON. Exits 2 with "no rule matches" when
    /// nothing would be recorded.
    #[command(
        after_help = "Example:\n  auditgate rules test examples/generic-rules/media-library.yaml \\\n    --method PATCH --path /v1/files/abc/details \\\n    --header 'X-User-Id: u_123' --body '{\"name\": \"tree.png\"}'"
    )]
    Test {
        /// A rule file or a directory of rule files.
        #[arg(value_name = "RULES")]
        rules: PathBuf,
        /// The request method.
        #[arg(long, short = 'X', value_name = "M")]
        method: String,
        /// The request path, optionally with a query string.
        #[arg(long, value_name = "P")]
        path: String,
        /// A request header, as 'Name: value'. Repeatable.
        #[arg(long = "header", short = 'H', value_name = "'K: V'")]
        headers: Vec<String>,
        /// The request body (JSON), or @FILE to read it from a file.
        #[arg(long, value_name = "JSON")]
        body: Option<String>,
        /// The status the upstream answers with.
        #[arg(long, default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u16).range(100..=599))]
        status: u16,
        /// The upstream's response body (JSON), or @FILE.
        #[arg(long, value_name = "JSON")]
        response: Option<String>,
        /// The answer of the rule's `before:` GET (JSON), or @FILE: what `before/` templates
        /// and the `from` of `changes` read. Without it, the record shows what a failed GET
        /// leaves (`capture.before: failed`).
        #[arg(long, value_name = "JSON")]
        before: Option<String>,
        /// The key for `| hmac` filters. Without it, values a rule hashes are left out (with a
        /// warning), never shown raw.
        #[arg(long, value_name = "F")]
        hmac_key_file: Option<PathBuf>,
        /// The client address, recorded in full.
        #[arg(long, value_name = "IP")]
        client_ip: Option<std::net::IpAddr>,
    },
    /// List the mutating operations (POST, PUT, PATCH, DELETE) of an OpenAPI 3 or Swagger 2
    /// description that no rule records, those recorded only when a rule's `when` holds, and
    /// the rules no operation reaches. Exits 0 when every mutating operation has a rule, 1
    /// when some have none, 2 when the rules or the description cannot be read.
    #[command(
        after_help = "Example:\n  auditgate rules coverage examples/rules/ --openapi openapi.yaml"
    )]
    Coverage {
        /// A rule file or a directory of rule files.
        #[arg(value_name = "RULES")]
        rules: PathBuf,
        /// The API description, YAML or JSON.
        #[arg(long, value_name = "SPEC")]
        openapi: PathBuf,
        /// The path the operations live under on the server, when it is not the description's
        /// `servers[0].url` path (3.x) or `basePath` (2.0); "" for none.
        #[arg(long, value_name = "PATH")]
        base_path: Option<String>,
    },
}

pub(crate) fn run(command: RulesCommand) -> ExitCode {
    match command {
        RulesCommand::Check { paths } => check(&paths),
        RulesCommand::Coverage {
            rules,
            openapi,
            base_path,
        } => match crate::coverage_cmd::run(&rules, &openapi, base_path.as_deref()) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        },
        RulesCommand::Test {
            rules,
            method,
            path,
            headers,
            body,
            status,
            response,
            before,
            hmac_key_file,
            client_ip,
        } => {
            let request = TestRequest {
                method,
                path,
                headers,
                body,
                status,
                response,
                before,
                client_ip,
            };
            match test(&rules, hmac_key_file, request) {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    match RuleSet::loader().check_only().load_all(paths) {
        Ok(set) => {
            let s = set.summary();
            println!(
                "ok: {} rule file{}, {} rule{}, {} operation{}",
                s.files,
                plural(s.files),
                s.rules,
                plural(s.rules),
                s.operations,
                plural(s.operations)
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&err);
            ExitCode::from(1)
        }
    }
}

pub(crate) fn report(err: &RulesError) {
    eprintln!("{err}");
    let n = err.diagnostics().len();
    if n > 0 {
        eprintln!("{n} problem{} found", plural(n));
    }
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Debug)]
struct TestRequest {
    method: String,
    path: String,
    headers: Vec<String>,
    body: Option<String>,
    status: u16,
    response: Option<String>,
    before: Option<String>,
    client_ip: Option<std::net::IpAddr>,
}

fn test(
    rules: &PathBuf,
    hmac_key_file: Option<PathBuf>,
    req: TestRequest,
) -> anyhow::Result<ExitCode> {
    let mut loader = RuleSet::loader();
    if let Some(key) = hmac_key_file {
        loader = loader.hmac_key_file(key)?;
    }
    let set = match loader.load(rules) {
        Ok(set) => set,
        Err(err) => {
            report(&err);
            return Ok(ExitCode::from(1));
        }
    };
    for warning in set.warnings() {
        eprintln!("warning: {warning}");
    }
    let method = http::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("--method {:?} is not an HTTP method", req.method))?;
    let uri: http::Uri = req
        .path
        .parse()
        .with_context(|| format!("--path {:?} is not a valid request path", req.path))?;
    let mut headers = http::HeaderMap::new();
    for line in &req.headers {
        let Some((name, value)) = line.split_once(':') else {
            bail!("--header {line:?} must look like 'Name: value'");
        };
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("--header {line:?}: bad header name"))?;
        let value = http::HeaderValue::from_str(value.trim())
            .with_context(|| format!("--header {line:?}: bad header value"))?;
        headers.append(name, value);
    }
    let body = req.body.as_deref().map(read_arg).transpose()?;
    let response = req.response.as_deref().map(read_arg).transpose()?;
    let before = req.before.as_deref().map(read_arg).transpose()?;
    for (flag, text) in [
        ("--body", &body),
        ("--response", &response),
        ("--before", &before),
    ] {
        if let Some(text) = text
            && serde_json::from_slice::<serde_json::Value>(text).is_err()
        {
            eprintln!("warning: {flag} is not JSON, so templates cannot read from it");
        }
    }

    let Some(found) = set.matches(&method, uri.path()) else {
        println!("no rule matches");
        return Ok(ExitCode::from(2));
    };
    let mut call = Call::new(&method, &uri, &headers);
    call.request_body = body.as_deref();
    call.response_body = response.as_deref();
    call.before = before.as_deref();
    if before.is_some() && !found.has_before() {
        eprintln!("warning: --before is given, but the matching rule has no `before:`");
    }
    if let Some(target) = found.before_target(&call) {
        eprintln!("before: GET {target}");
    }
    call.status = Some(req.status);
    call.client_ip = req.client_ip.and_then(|ip| ClientIpMode::Full.render(ip));
    call.duration = Duration::ZERO;
    match found.record(&call) {
        Some(record) => {
            if record.operation == auditgate_rules::UNMATCHED_OPERATION
                && let Some(route) = found.route()
            {
                // The rule's `when` failed and `unmatched: record` caught the call.
                eprintln!(
                    "{} {route} matched the path, but its `when` does not hold: recorded as `unmatched`",
                    found.operation()
                );
            }
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            // Exactly "no rule matches" on stdout, as for a path no rule names; why, on stderr.
            println!("no rule matches");
            eprintln!(
                "{} {} matched the path, but its `when` does not hold",
                found.operation(),
                found.route().unwrap_or_default()
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// A flag's value, or the contents of the file it names after `@`.
fn read_arg(value: &str) -> anyhow::Result<Vec<u8>> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}")),
        None => Ok(value.as_bytes().to_vec()),
    }
}
