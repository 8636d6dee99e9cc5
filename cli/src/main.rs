//! `auditgate`: the one binary users run. Each subcommand parses its arguments here and
//! hands over to the crate that owns the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod coverage_cmd;
mod evidence_cmd;
mod logs_cmd;
mod rules_cmd;

/// Records are built on the proxy's request threads and freed on the queue's thread; glibc's
/// allocator serialises such cross-thread frees on arena locks, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Audit trails for HTTP APIs, captured without touching the API's code.
#[derive(Debug, Parser)]
#[command(name = "auditgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check rule files and try them against a request.
    Rules {
        #[command(subcommand)]
        command: rules_cmd::RulesCommand,
    },
    /// Run the audit proxy in front of an API (SIGTERM: finish in-flight requests, flush the
    /// queue, exit; SIGHUP: reload the rules).
    Proxy {
        /// The proxy config (YAML): listen, upstream, rules, redis, spool, ...
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the writer: stream to store, query API (SIGTERM: finish the batch in hand, exit).
    Writer {
        /// The writer config (YAML): redis, store, listen, tokens, retention_days.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Read the audit log from a writer's API.
    Logs(logs_cmd::LogsArgs),
    /// Check a store's (or an export's) hash chains and signed checkpoints: exit 0 intact,
    /// 1 tampered (the first record altered, inserted or removed is named).
    Verify(evidence_cmd::VerifyArgs),
    /// Make the Ed25519 key pair that signs checkpoints: FILE (private) and FILE.pub.
    Keygen {
        /// Where the private key goes; the public key goes to FILE.pub.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The key's name, in every signature it makes.
        #[arg(long, default_value = "auditgate")]
        name: String,
    },
}

fn main() -> ExitCode {
    quiet_on_a_closed_pipe();
    let cli = Cli::parse();
    match cli.command {
        Command::Rules { command } => rules_cmd::run(command),
        Command::Proxy { config } => {
            init_logging();
            report(
                auditgate_proxy::ProxyConfig::load(&config)
                    .map_err(auditgate_proxy::ProxyError::from)
                    .and_then(auditgate_proxy::serve)
                    .map_err(anyhow::Error::from),
            )
        }
        Command::Writer { config } => {
            init_logging();
            report(run_writer(config))
        }
        Command::Logs(args) => logs_cmd::run(args),
        Command::Verify(args) => evidence_cmd::verify(args),
        Command::Keygen { out, name } => evidence_cmd::keygen(&out, &name),
    }
}

fn run_writer(config: PathBuf) -> anyhow::Result<()> {
    let config = auditgate_writer::WriterConfig::load(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listen = config.listen.clone();
    // The recorder first: the store and the consumer take their metric handles as they open.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let writer = runtime.block_on(auditgate_writer::Writer::open(config))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&listen))
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Read by scripts and tests that start the writer on port 0: the store is open by now.
    println!("listening on http://{}", listener.local_addr()?);
    let run = writer.run(listener, metrics, async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    Ok(runtime.block_on(run)?)
}

/// Logs to stderr, `info` and up unless `RUST_LOG` says otherwise; pingora's `log` records
/// are included.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Exit 0, or print the error (with its causes) and exit 1.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auditgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `auditgate rules coverage … | head` closes stdout early: the commands that print end then
/// as a shell expects of a command whose reader went away (exit 141, 128 + SIGPIPE, no
/// message), not with a panic. Rust ignores SIGPIPE, so a write to a closed pipe is an error
/// that `println!` turns into a panic; this crate forbids the `unsafe` that would restore the
/// signal, so the panic is caught here instead.
fn quiet_on_a_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
