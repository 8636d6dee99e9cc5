//! `auditgate keygen` and `auditgate verify`: the key pair that signs checkpoints, and the
//! check an auditor runs against a store or an export with the public key alone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use auditgate_writer::chain::{self, VerifierKey};
use auditgate_writer::verify::{self, Report, Verifier};

/// `auditgate verify`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The store to check: `sqlite://PATH` or `postgres://USER@HOST/DB` (read only).
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "export",
        conflicts_with = "export"
    )]
    store: Option<String>,
    /// An export to check instead (`GET /api/v1/export?format=bundle`).
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// The checkpoints kept elsewhere (the writer's `checkpoint_dir`, shipped off the box).
    #[arg(long, value_name = "DIR")]
    checkpoints: Option<PathBuf>,
    /// The verifier key (`FILE.pub` of `auditgate keygen`).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `auditgate keygen --out FILE`: FILE (private) and FILE.pub.
pub(crate) fn keygen(out: &Path, name: &str) -> ExitCode {
    let public = PathBuf::from(format!("{}.pub", out.display()));
    let result = (|| -> anyhow::Result<()> {
        for path in [out, public.as_path()] {
            anyhow::ensure!(
                !path.exists(),
                "{} exists: keygen does not overwrite a key",
                path.display()
            );
        }
        let (private_text, public_text) = chain::generate_key(name)?;
        write_private(out, &private_text)?;
        std::fs::write(&public, public_text)
            .with_context(|| format!("cannot write {}", public.display()))?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            println!(
                "wrote {} (the writer's signing_key_file: keep it private) and {} (for auditors: auditgate verify --public-key)",
                out.display(),
                public.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auditgate keygen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Runs the check; exit 0 intact, 1 tampered, 2 when it cannot be run.
pub(crate) fn verify(args: VerifyArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", describe(&report));
            }
            if report.intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("auditgate verify: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &VerifyArgs) -> anyhow::Result<Report> {
    let key_text = std::fs::read_to_string(&args.public_key)
        .with_context(|| format!("cannot read {}", args.public_key.display()))?;
    let key =
        VerifierKey::parse(&key_text).with_context(|| format!("{}", args.public_key.display()))?;
    let mut extra = Vec::new();
    if let Some(dir) = &args.checkpoints {
        extra = verify::read_checkpoint_dir(dir)
            .with_context(|| format!("cannot read the checkpoints in {}", dir.display()))?;
    }
    if let Some(file) = &args.export {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let bundle: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let records = bundle
            .get("records")
            .and_then(|r| r.as_array())
            .with_context(|| {
                format!(
                    "{} holds no \"records\": download it with format=bundle",
                    file.display()
                )
            })?;
        let filtered = bundle.get("filtered").and_then(|f| f.as_bool()) != Some(false);
        let mut verifier = if filtered {
            Verifier::partial()
        } else {
            Verifier::bundle()
        };
        for record in bundle
            .get("superseded")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let json = record.to_string();
            let chain = chain::Stored::parse(&json)
                .ok()
                .map(|s| (s.link.uid, s.link.seq as i64));
            verifier.feed_superseded(&json, chain);
        }
        for record in records {
            verifier.feed_json(&record.to_string());
        }
        let mut notes: Vec<String> = bundle
            .get("checkpoints")
            .and_then(|c| c.as_array())
            .map(|c| {
                c.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        notes.extend(extra);
        return Ok(verifier.finish(&[], &notes, &key));
    }
    let url = args.store.as_deref().unwrap_or_default();
    // Opening a store creates it: a mistyped path must not verify an empty new file.
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        anyhow::ensure!(
            std::path::Path::new(path).is_file(),
            "there is no SQLite store at {path}"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = auditgate_writer::store::open(url).await?;
        Ok(verify::verify_store(&*store, &extra, Some(&key)).await?)
    })
}

/// The report in words: what was checked, then each problem, the first one first.
fn describe(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.chains {
        out.push_str(&format!(
            "chain {}: links {}..{} ({} present), retention floor {}, newest checkpoint {}\n",
            c.uid,
            c.first.unwrap_or(0),
            c.last.unwrap_or(0),
            c.links,
            c.retention_floor,
            c.newest_checkpoint
                .as_ref()
                .map_or("none".to_owned(), |(size, time)| format!(
                    "link {size} signed {time}"
                )),
        ));
    }
    if report.unchained > 0 {
        out.push_str(&format!(
            "{} records were stored before the chain began and are not covered by it\n",
            report.unchained
        ));
    }
    for p in &report.problems {
        out.push_str(&format!(
            "{}: {}{}{}\n",
            p.kind.to_uppercase(),
            p.uid
                .as_ref()
                .map_or(String::new(), |u| format!("chain {u}: ")),
            p.id.as_ref()
                .map_or(String::new(), |i| format!("record {i}: ")),
            p.message
        ));
    }
    out.push_str(&if report.intact {
        format!(
            "intact: {} records, {} checkpoints verified\n",
            report.records, report.checkpoints_verified
        )
    } else {
        format!(
            "TAMPERED: {} problems in {} records ({} checkpoints verified)\n",
            report.problems.len(),
            report.records,
            report.checkpoints_verified
        )
    });
    out
}
