//! The `tenantgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenantgate::config::{self, generate, Source};
use tenantgate::registry::Snapshot;
use tenantgate::{demo, server};

/// mimalloc instead of glibc's malloc. The proxy path allocates and frees
/// many small blocks and one large future per request, on two threads:
/// glibc spent about a sixth of the gateway's CPU there (fastbin
/// consolidation, chunk unlinking) and took arena locks (futex calls).
/// See benches/results/perf-notes-2026-11-22.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tenantgate", version, about = "Edge gateway for multi-tenant SaaS platforms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a config file (reloaded on change and on SIGHUP).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Graceful binary upgrade: take the listening sockets from the
        /// running gateway (send it SIGQUIT once this one has started), so
        /// no connection is refused and no request fails.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file; prints every problem and exits 1 if any.
    Check { path: PathBuf },
    /// Print how the tenants and templates of NEW differ from OLD (each a
    /// config file with its tenants/ and templates/ folders), as the admin
    /// API's preview does: a template change lists every tenant it changes. Exit 0 when
    /// they are the same, 1 when they differ, 2 when a file cannot be read.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the diff as JSON, exactly as POST /v1/changes/preview returns it.
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway on the embedded demo config, with demo backends on loopback.
    Demo,
    /// Run an echo backend (the demo's), for load tests and benchmarks.
    Backend {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "backend")]
        name: String,
    },
    /// Print a generated config with many tenants (for scale tests and benchmarks).
    GenConfig {
        #[arg(long, default_value_t = 100_000)]
        tenants: usize,
        #[arg(long, default_value_t = 2)]
        domains_per_tenant: usize,
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9001,127.0.0.1:9002")]
        upstreams: Vec<String>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: String,
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

fn main() -> ExitCode {
    tenantgate::no_huge_pages();
    tenantgate::set_purge_delay(tenantgate::STARTUP_PURGE_DELAY_MS);
    // One crypto provider for every rustls user in the process (the TLS
    // listener and the ACME client), whatever features other crates enable.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match Cli::parse().command {
        Command::Serve { config, upgrade } => run(Source::File(config), upgrade),
        Command::Check { path } => check(&path),
        Command::Diff { old, new, json } => diff(&old, &new, json),
        Command::Demo => demo(),
        Command::Backend { listen, name } => backend(listen, &name),
        Command::GenConfig {
            tenants,
            domains_per_tenant,
            upstreams,
            http_listen,
            metrics_listen,
        } => {
            let spec = generate::Spec {
                tenants,
                domains_per_tenant,
                upstreams,
                http_listen,
                metrics_listen,
            };
            print!("{}", generate::generate(&spec));
            ExitCode::SUCCESS
        }
    }
}

fn run(source: Source, upgrade: bool) -> ExitCode {
    match server::serve(source, upgrade) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("tenantgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let result = config::Texts::read(path).and_then(|texts| Snapshot::compile_texts(path, &texts));
    match result {
        Ok((config, table)) => {
            println!(
                "{}: ok: {} tenants, {} pools, {} host names",
                path.display(),
                config.tenants.len(),
                config.pools.len(),
                table.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn diff(old: &std::path::Path, new: &std::path::Path, json: bool) -> ExitCode {
    let state = |path: &std::path::Path| {
        config::Texts::read(path)
            .and_then(|t| t.parse(path))
            .map(|(file, _)| config::diff::State::of(file))
    };
    let (before, after) = match (state(old), state(new)) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let changes = config::diff::changes(&before, &after);
    if json {
        let list: Vec<serde_json::Value> = changes.iter().map(config::diff::TenantDiff::to_json).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for c in &changes {
            println!("{}", c.to_line());
        }
    }
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn backend(listen: std::net::SocketAddr, name: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantgate backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match demo::spawn_echo_backend(name, listen).await {
            Ok(b) => {
                println!("echo backend {name} on {}", b.addr);
                std::future::pending::<()>().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tenantgate backend: {listen}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantgate demo: cannot start backends: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in demo::BACKENDS {
        let started = addr.parse().map_err(|e| format!("{e}")).and_then(|a| {
            runtime
                .block_on(demo::spawn_echo_backend(name, a))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = started {
            eprintln!("tenantgate demo: backend {name} on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("{}\n", demo::instructions());
    // The runtime keeps serving the backends on its worker thread.
    let _keep = runtime;
    run(
        Source::Embedded {
            name: "<embedded demo config>",
            text: demo::CONFIG,
        },
        false,
    )
}
