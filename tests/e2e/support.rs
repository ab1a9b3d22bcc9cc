//! Test harness: the real `weir` binary, real upstream servers and real clients on loopback.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "weir-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// A running `weir run CONFIG` process; killed on drop.
pub struct Weir {
    pub child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Weir {
    /// Writes `yaml` to a temp config and starts weir; `{dir}` in the text is replaced by the
    /// temp directory (for certificates and log files).
    pub fn start(yaml: &str) -> Result<Weir> {
        let dir = TempDir::new();
        Self::start_in(dir, yaml)
    }

    pub fn start_in(dir: TempDir, yaml: &str) -> Result<Weir> {
        Self::start_with(dir, yaml, &[])
    }

    /// Like `start_in`, with extra arguments to `weir run`.
    pub fn start_with(dir: TempDir, yaml: &str, args: &[&str]) -> Result<Weir> {
        let mut text = yaml.replace("{dir}", &dir.0.display().to_string());
        if !text.contains("admin:") {
            text = format!("admin: {{ listen: 127.0.0.1:0 }}\n{text}");
        }
        let config = dir.write("weir.yaml", &text);
        let mut child = Command::new(weir_bin())
            .arg("run")
            .arg(&config)
            .args(args)
            .env(
                "WEIR_LOG",
                std::env::var("E2E_WEIR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn weir")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        {
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    stdout.lock().unwrap().push(line);
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut listeners = HashMap::new();
        let mut admin = None;
        // Generous: a first start may compile filters (a Go module takes seconds in a debug build).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    bail!(
                        "weir did not become ready; stderr:\n{}",
                        stderr.lock().unwrap().join("\n")
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("weir: admin listening on http://") {
                admin = Some(rest.parse()?);
            } else if let Some(rest) = line.strip_prefix("weir: listener ") {
                let (name, url) = rest.split_once(" listening on ").context("listener line")?;
                let addr = url.split("://").nth(1).context("url")?;
                listeners.insert(name.to_string(), addr.parse()?);
            } else if line == "weir: ready" {
                break;
            }
        }
        Ok(Weir {
            child,
            listeners,
            admin: admin.context("no admin line")?,
            dir,
            config,
            stdout,
            stderr,
        })
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // The only unsafe-free way from std is the kill command; it is everywhere tests run.
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("weir did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `f` until it returns true (for eventual effects such as a reload).
    pub async fn eventually(&self, what: &str, f: impl AsyncFnMut() -> bool) -> Result<()> {
        self.eventually_within(Duration::from_secs(10), what, f)
            .await
    }

    /// [`Weir::eventually`] with its own limit, for waits whose length depends on how loaded
    /// the machine is (all the e2e tests share one process and two cores).
    pub async fn eventually_within(
        &self,
        limit: Duration,
        what: &str,
        mut f: impl AsyncFnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "timed out waiting for {what}; weir stderr:\n{}",
            self.stderr_text()
        )
    }

    /// The lines of `{dir}/access.log`, parsed, once `done` says there are enough.
    pub async fn access_log(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let path = self.dir.path("access.log");
        let mut lines = Vec::new();
        self.eventually(what, async || {
            lines = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            done(&lines)
        })
        .await?;
        Ok(lines)
    }

    /// The admin token: the one weir generated beside the config when the config sets none,
    /// else the tests' `admin.token` (`secret`).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path(".weir-admin-token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| "secret".into())
    }

    /// An admin API call with the admin token (see [`Weir::admin_token`]).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<(StatusCode, String)> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin))
            .header("authorization", format!("Bearer {}", self.admin_token()))
            .body(full(body))?;
        let res = send(&h1_client(), req).await?;
        Ok((res.status, res.text()))
    }

    /// Resident memory of the weir process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The value of one sample (`name{labels}`) on `/metrics`, 0 when absent.
    pub async fn sample(&self, series: &str) -> Result<f64> {
        let (_, m) = self.admin_get("/metrics").await?;
        Ok(sample(&m, series))
    }

    pub async fn admin_get(&self, path: &str) -> Result<(StatusCode, String)> {
        let res = get(&format!("http://{}{path}", self.admin)).await?;
        Ok((res.status, res.text()))
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample line (`name{labels}`) in a Prometheus text page, 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// What an upstream saw and answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            Seen,
        ) -> std::pin::Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A real HTTP/1.1 + h2c upstream on 127.0.0.1:0. By default it answers 200 with body
/// `name` and header `x-upstream: name`, and records every request head.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::with(name, default_handler).await
    }

    pub async fn with<F, Fut>(name: &str, f: F) -> Upstream
    where
        F: Fn(Request<Incoming>, Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req, seen| Box::pin(f(req, seen)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener, handler, None).await
    }

    /// An upstream that terminates TLS (ALPN h2 and http/1.1) with the given server config.
    pub async fn tls(name: &str, config: Arc<rustls::ServerConfig>) -> Upstream {
        let handler: Handler = Arc::new(move |req, seen| Box::pin(default_handler(req, seen)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(
            name,
            listener,
            handler,
            Some(tokio_rustls::TlsAcceptor::from(config)),
        )
        .await
    }

    async fn serve(
        name: &str,
        listener: TcpListener,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, conns2, name2) = (seen.clone(), connections.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, name, tls) =
                    (handler.clone(), seen2.clone(), name2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = Seen {
                            method: req.method().to_string(),
                            path: req
                                .uri()
                                .path_and_query()
                                .map_or("/".into(), |p| p.to_string()),
                            version: req.version(),
                            headers: req.headers().clone(),
                        };
                        seen.lock().unwrap().push(s.clone());
                        let (handler, name) = (handler.clone(), name.clone());
                        async move {
                            let mut res = handler(req, s).await;
                            res.headers_mut()
                                .insert("x-upstream", name.parse().unwrap());
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            seen,
            connections,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Answers with the upstream's name as body; honours `x-delay-ms` and echoes POST bodies.
pub async fn default_handler(req: Request<Incoming>, _seen: Seen) -> Response<TestBody> {
    if let Some(ms) = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req.method() == http::Method::POST || req.method() == http::Method::PUT {
        // Echo the body back as it streams in.
        let (_, body) = req.into_parts();
        return Response::new(
            body.map_err(|_| -> Infallible { unreachable!("test body error") })
                .boxed(),
        );
    }
    Response::new(full(""))
}

/// A simple response from a client.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `x-upstream` header (which upstream answered), or "" for proxy-made responses.
    pub fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or("")
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    TestBody,
>;

pub fn h1_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(client: &Client, req: Request<TestBody>) -> Result<Got> {
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .context("client timed out")??;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Got {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

pub async fn get(url: &str) -> Result<Got> {
    send(&h1_client(), Request::get(url).body(full(""))?).await
}

/// GET with extra headers over HTTP/1.1.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<Got> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&h1_client(), b.body(full(""))?).await
}

/// Runs curl with the given args; returns stdout. Fails if curl itself fails. Async, so the
/// test's own upstreams keep running while curl waits.
pub async fn curl(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .context("run curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A streaming body fed from a channel.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// Self-signed certificate for `names`, written as PEM files; returns (cert path, key path, DER).
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("rcgen");
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `PATH` with the project's own tools (`.tools/bin`: Go, from `scripts/lib.sh` `need_go`) first.
pub fn tools_path() -> std::ffi::OsString {
    std::env::join_paths(std::iter::once(repo_root().join(".tools/bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH")
}

/// Runs `build` once per test process for `key`, returning its (remembered) output.
fn built_once(key: String, build: impl FnOnce() -> PathBuf) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let path = build();
    built.push((key, path.clone()));
    path
}

/// Builds a filter crate of this workspace into a component, once per test process, and
/// returns its path. A separate target dir keeps this build off the lock of the running one.
pub fn filter_wasm(package: &str) -> PathBuf {
    filter_wasm_with(package, None)
}

/// Like `filter_wasm`, with a cargo feature enabled (built in its own target dir).
pub fn filter_wasm_with(package: &str, feature: Option<&str>) -> PathBuf {
    let key = format!("crate:{package}+{}", feature.unwrap_or(""));
    built_once(key, || build_crate(package, feature))
}

fn build_crate(package: &str, feature: Option<&str>) -> PathBuf {
    let root = repo_root();
    let target_dir = root.join("target").join(match feature {
        None => "wasm-e2e".to_string(),
        Some(f) => format!("wasm-e2e-{f}"),
    });
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
            "--target-dir",
        ])
        .arg(&target_dir);
    if let Some(f) = feature {
        cmd.args(["--features", f]);
    }
    let status = cmd.status().expect("run cargo to build a test filter");
    assert!(
        status.success(),
        "building filter {package} for wasm32-wasip2 failed"
    );
    let path = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.is_file(), "{} was not produced", path.display());
    path
}

/// Builds a filter project (a Rust crate, Go module or AssemblyScript project; `dir` relative
/// to the repository) with `weir filter build`, as a user would, once per test process, and
/// returns the component's path. Go comes from `.tools/bin` (installed by `scripts/lib.sh`
/// `need_go`), AssemblyScript from the root `node_modules` (`need_node`).
pub fn project_wasm(dir: &str) -> PathBuf {
    built_once(format!("project:{dir}"), || build_project(dir))
}

fn build_project(dir: &str) -> PathBuf {
    let root = repo_root();
    let out_dir = root.join("target/wasm-e2e/projects");
    std::fs::create_dir_all(&out_dir).expect("create the output folder");
    let out = out_dir.join(format!("{}.wasm", dir.replace('/', "_")));
    let status = Command::new(weir_bin())
        .args(["filter", "build"])
        .arg(root.join(dir))
        .arg("-o")
        .arg(&out)
        .env("PATH", tools_path())
        .env("CARGO_TARGET_DIR", root.join("target/wasm-e2e"))
        .status()
        .expect("run weir filter build");
    assert!(status.success(), "weir filter build {dir} failed");
    out
}

/// A real `redis-server` (Debian's package, installed by `scripts/test.sh`) on a loopback port,
/// with persistence off; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// Also listening with TLS here (`start_tls`).
    tls_port: Option<u16>,
    tls_args: Vec<String>,
}

/// PEM files for a TLS Redis: a CA, the server's certificate for 127.0.0.1 and a client
/// certificate, both signed by that CA.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A CA and two leaf certificates signed by it (server: for 127.0.0.1; client), as PEM files in
/// `dir` named `<stem>-ca.pem`, `<stem>-server.{pem,key}`, `<stem>-client.{pem,key}`.
pub fn test_ca(dir: &Path, stem: &str) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    // Distinct subject names: a leaf named like its issuer would look self-signed to OpenSSL.
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{stem} test CA"));
    let ca = params.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.join(format!("{stem}-ca.pem")), ca.pem()).unwrap();
    for (leaf, names) in [
        ("server", vec!["127.0.0.1".to_string()]),
        ("client", vec!["client.test".to_string()]),
    ] {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{stem} {leaf}"));
        let cert = params.signed_by(&key, &ca, &ca_key).expect("signed");
        std::fs::write(dir.join(format!("{stem}-{leaf}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-{leaf}.key")), key.serialize_pem()).unwrap();
    }
    TlsFiles {
        ca: dir.join(format!("{stem}-ca.pem")),
        client_cert: dir.join(format!("{stem}-client.pem")),
        client_key: dir.join(format!("{stem}-client.key")),
    }
}

impl RedisServer {
    /// Starts one on a free port. Without `redis-server` on this machine, `None` with the reason
    /// printed — unless `WEIR_REQUIRE_REDIS` is set (the test script sets it: it installs Redis),
    /// then an error.
    pub fn start() -> Result<Option<RedisServer>> {
        let Some(bin) = redis_server_bin() else {
            if std::env::var_os("WEIR_REQUIRE_REDIS").is_some() {
                bail!("redis-server is not installed (scripts/test.sh installs it)");
            }
            eprintln!("skipped: redis-server is not installed (scripts/test.sh installs it)");
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut r = RedisServer {
            child: None,
            port,
            dir: TempDir::new(),
            tls_port: None,
            tls_args: Vec::new(),
        };
        r.spawn(&bin)?;
        Ok(Some(r))
    }

    /// Starts one that also listens with TLS (a certificate for 127.0.0.1 from a new test CA),
    /// requiring client certificates from that CA when `client_auth`. The files are in its
    /// folder; the plain port stays open for the test's own commands.
    pub fn start_tls(client_auth: bool) -> Result<Option<(RedisServer, TlsFiles)>> {
        let Some(mut r) = RedisServer::start()? else {
            return Ok(None);
        };
        r.kill();
        let files = test_ca(&r.dir.0, "redis");
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = r.dir.0.display().to_string();
        r.tls_port = Some(tls_port);
        r.tls_args = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            format!("{dir}/redis-server.pem"),
            "--tls-key-file".into(),
            format!("{dir}/redis-server.key"),
            "--tls-ca-cert-file".into(),
            format!("{dir}/redis-ca.pem"),
            "--tls-auth-clients".into(),
            if client_auth { "yes" } else { "no" }.into(),
        ];
        r.spawn(&redis_server_bin().context("redis-server")?)?;
        Ok(Some((r, files)))
    }

    /// `rediss://127.0.0.1:TLS_PORT/0` (after `start_tls`).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls_port.unwrap_or(0))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self, bin: &Path) -> Result<()> {
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.tls_args)
            .arg("--dir")
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not answer PING on port {}", self.port)
    }

    /// Sends one inline command and returns the first line of the reply.
    pub fn command(&self, cmd: &str) -> Result<String> {
        use std::io::Write as _;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: persistence is off).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let bin = redis_server_bin().context("redis-server")?;
        self.spawn(&bin)
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a server that accepts but never answers.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            let sig = if paused { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
    }
}

fn redis_server_bin() -> Option<PathBuf> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
