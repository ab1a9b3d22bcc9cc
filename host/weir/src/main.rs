//! The `weir` command: run, validate, and try the proxy.

mod admin_client;
mod build;
mod demo;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_config::LoadedConfig;
use weir_proxy::Server;

/// Weir: a programmable edge proxy (L7 routing and balancing, TLS, HTTP/1.1 and HTTP/2).
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the proxy with a YAML config. SIGHUP reloads it; SIGTERM/SIGINT drain and exit.
    Run {
        /// The config file.
        config: PathBuf,
        /// Reload when the config file or a filter module it names changes.
        #[arg(long)]
        watch: bool,
    },
    /// Ask a running proxy to re-read its config file (`POST /reload` on the admin API).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a config file (schema, names, certificates) without starting anything.
    /// Prints `file:line: field: problem` for each problem and exits 1 if there are any.
    Validate {
        /// The config file.
        config: PathBuf,
    },
    /// Start demo upstreams and the proxy with the quickstart config, and print what to try.
    Quickstart {
        /// The quickstart config.
        #[arg(long, default_value = "examples/quickstart.yaml")]
        config: PathBuf,
    },
    /// Work with WebAssembly filters.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Run a small HTTP server that echoes each request as JSON (a stand-in upstream).
    DemoUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: std::net::SocketAddr,
        /// Name reported in every response (`server` field and `x-served-by` header).
        #[arg(long, default_value = "demo")]
        name: String,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API of the running proxy: http://HOST:PORT or unix:/PATH. Default: the
    /// config's (its Unix socket, else its address), else http://127.0.0.1:9901.
    #[arg(long, env = "WEIR_ADMIN")]
    admin: Option<String>,
    /// The admin token. Default: the config's `admin.token`, else the token the proxy generated
    /// beside its config (`admin.token_file`).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The running proxy's config file, for its admin address and token. Default:
    /// examples/quickstart.yaml if it exists (as `weir quickstart`).
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
}

impl AdminArgs {
    fn call(&self, method: http::Method, path: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let target = admin_client::target(
            self.admin.as_deref(),
            self.token.as_deref(),
            self.config.as_deref(),
        )?;
        print!("{}", admin_client::call(&target, method, path, body)?);
        Ok(())
    }
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Upload a new version of a filter's module to a running proxy (`PUT /filters/NAME`); it
    /// is compiled, checked and made live atomically, or refused with the old version serving.
    Push {
        /// The filter's name in the config.
        name: String,
        /// The `.wasm` component.
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Go back to the previous version of a filter (`POST /filters/NAME/rollback`).
    Rollback {
        /// The filter's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Build a filter project (a Rust crate, Go module or AssemblyScript project) into a
    /// component (`.wasm`) ready to load or push.
    Build {
        /// The filter's folder (with its Cargo.toml, go.mod or package.json).
        path: PathBuf,
        /// Where to write the component. Default: NAME.wasm in the current folder.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Build without optimizations.
        #[arg(long)]
        debug: bool,
    },
    /// Turn a core wasm module built with the Go or AssemblyScript SDK into a component (the
    /// proxy also does this itself when it loads a core module).
    Componentize {
        /// The core module.
        input: PathBuf,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Create a new filter project that builds and tests as is.
    New {
        /// Where to create the project (like `cargo new`): its last component is the filter's
        /// name (lowercase letters, digits, '-' and '_').
        path: PathBuf,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: build::Lang,
        /// Where Weir's SDKs are (default: the `sdk/` folder of the source tree this binary was
        /// built from).
        #[arg(long, env = "WEIR_SDK")]
        sdk: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config, watch } => run(&config, false, watch),
        Command::Reload { admin } => admin.call(http::Method::POST, "/reload", Vec::new()),
        Command::Filter(FilterCommand::Push { name, file, admin }) => std::fs::read(&file)
            .with_context(|| format!("cannot read {}", file.display()))
            .and_then(|bytes| admin.call(http::Method::PUT, &format!("/filters/{name}"), bytes)),
        Command::Filter(FilterCommand::Rollback { name, admin }) => admin.call(
            http::Method::POST,
            &format!("/filters/{name}/rollback"),
            Vec::new(),
        ),
        Command::Quickstart { config } => run(&config, true, false),
        Command::Filter(FilterCommand::Build {
            path,
            output,
            debug,
        }) => build::build(&path, output.as_deref(), debug).map(|_| ()),
        Command::Filter(FilterCommand::Componentize { input, output }) => {
            build::componentize_file(&input, &output)
        }
        Command::Filter(FilterCommand::New { path, lang, sdk }) => {
            build::scaffold(&path, lang, sdk.as_deref())
        }
        Command::DemoUpstream { listen, name } => {
            runtime(None).and_then(|rt| rt.block_on(demo::serve_forever(listen, name)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn validate(path: &Path) -> anyhow::Result<()> {
    let loaded = LoadedConfig::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(weir_proxy::check(&loaded))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let c = &loaded.config;
    println!(
        "{}: ok ({} listeners, {} routes, {} clusters, {} filters)",
        path.display(),
        c.listeners.len(),
        c.routes.len(),
        c.clusters.len(),
        c.filters.len()
    );
    Ok(())
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    // One worker: the single-threaded scheduler does the same work without the work-stealing
    // machinery (atomics, cross-thread wakeups) — measurably cheaper per request.
    let mut b = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all().thread_name("weir-worker");
    if let Some(n) = workers.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.build().context("cannot start the runtime")
}

fn run(path: &Path, quickstart: bool, watch: bool) -> anyhow::Result<()> {
    let loaded = LoadedConfig::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = runtime(loaded.config.workers)?;
    rt.block_on(async move {
        if quickstart {
            demo::start_for(&loaded).await?;
        }
        let drain = loaded.config.drain_timeout;
        let server = Server::start(loaded)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        // A stable, parseable line per listener: scripts and tests wait for these.
        eprintln!("weir: admin listening on http://{}", server.admin);
        if let Some(p) = &server.admin_unix {
            eprintln!("weir: admin listening on unix:{}", p.display());
        }
        if let Some(p) = &server.admin_token_file {
            // Where the token is, never the token: stderr ends up in logs.
            eprintln!(
                "weir: admin writes need the token in {} (the CLI reads it: --config {})",
                p.display(),
                path.display()
            );
        }
        for l in &server.listeners {
            let scheme = match l.protocol {
                weir_config::ListenerProtocol::Http => "http",
                weir_config::ListenerProtocol::Https => "https",
                weir_config::ListenerProtocol::Tcp => "tcp",
                weir_config::ListenerProtocol::TlsPassthrough => "tls+passthrough",
            };
            eprintln!(
                "weir: listener {} listening on {scheme}://{}",
                l.name, l.addr
            );
        }
        // Signal handlers and the watched files' stamps are taken before "ready": a SIGHUP or
        // an edit right after it (a script or test waits for that line) must not be missed.
        let waiter = Waiter::new(&server, watch).await?;
        eprintln!("weir: ready");
        if quickstart {
            demo::print_tour(&server);
        }
        waiter.wait(&server, path).await?;
        eprintln!("weir: draining (up to {drain:?})");
        let clean = server.shutdown(drain).await;
        eprintln!(
            "weir: {}",
            if clean {
                "drained, bye"
            } else {
                "drain deadline passed; exiting with requests still in flight"
            }
        );
        Ok(())
    })
}

/// What the main task waits for: termination and reload signals, and (with `--watch`) changes
/// to the config file and the filter modules it names.
#[cfg(unix)]
struct Waiter {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    watch: bool,
    seen: Vec<Option<(std::time::SystemTime, u64)>>,
}

#[cfg(unix)]
impl Waiter {
    async fn new(server: &Server, watch: bool) -> anyhow::Result<Waiter> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Waiter {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            watch,
            seen: if watch {
                stamps(&server.watched_files().await)
            } else {
                Vec::new()
            },
        })
    }

    /// Serves reloads until a termination signal.
    async fn wait(self, server: &Server, path: &Path) -> anyhow::Result<()> {
        let Waiter {
            mut term,
            mut int,
            mut hup,
            watch,
            mut seen,
        } = self;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = hup.recv() => reload(server, path).await,
                _ = tick.tick(), if watch => {
                    let now = stamps(&server.watched_files().await);
                    if now != seen {
                        // Debounce: editors write in several steps; wait until the files settle.
                        let mut settled = now;
                        loop {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            let again = stamps(&server.watched_files().await);
                            if again == settled {
                                break;
                            }
                            settled = again;
                        }
                        reload(server, path).await;
                        seen = stamps(&server.watched_files().await);
                    }
                }
            }
        }
    }
}

/// Modification time and size of each file (None when missing).
fn stamps(files: &[PathBuf]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[cfg(not(unix))]
struct Waiter;

#[cfg(not(unix))]
impl Waiter {
    async fn new(_: &Server, _: bool) -> anyhow::Result<Waiter> {
        Ok(Waiter)
    }

    async fn wait(self, _: &Server, _: &Path) -> anyhow::Result<()> {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}

async fn reload(server: &Server, path: &Path) {
    let result = match LoadedConfig::from_file(path) {
        Ok(l) => server.reload(l).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => eprintln!("weir: reloaded {}", path.display()),
        // One write (`eprintln!` writes its pieces one by one): a reader never sees the
        // rejection without its reason.
        Err(e) => {
            let message =
                format!("weir: reload rejected, still serving the previous config:\n{e}\n");
            eprint!("{message}");
        }
    }
}
