//! CLI helpers that talk to a running proxy's admin API, over TCP or its Unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The quickstart's config: where admin commands look for the address and token when given
/// neither nor a config (the same default as `weir quickstart`).
pub const DEFAULT_CONFIG: &str = "examples/quickstart.yaml";

/// How to reach a proxy's admin API, and what to authenticate with.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub addr: Addr,
    pub token: Option<String>,
}

/// An admin address: `http://host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq)]
pub enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

impl Addr {
    pub fn parse(s: &str) -> anyhow::Result<Addr> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            bail!("admin address {s:?}: write http://HOST:PORT or unix:/PATH");
        }
        Ok(Addr::Tcp(authority.to_string()))
    }

    fn shown(&self) -> String {
        match self {
            Addr::Tcp(a) => format!("http://{a}"),
            Addr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// Works out the target from the flags: `admin` (`--admin`/`WEIR_ADMIN`), `token`
/// (`--token`/`WEIR_ADMIN_TOKEN`) and `config` (`--config`/`WEIR_CONFIG`, else
/// [`DEFAULT_CONFIG`] if it exists). The config gives the address (its Unix socket, else its
/// TCP address) and the token (`admin.token`, else the generated token's file). A default
/// config's token is only sent to the address that config names: a token never goes to
/// another proxy.
pub fn target(
    admin: Option<&str>,
    token: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<Target> {
    target_with(admin, token, config, Path::new(DEFAULT_CONFIG))
}

fn target_with(
    admin: Option<&str>,
    token: Option<&str>,
    config: Option<&Path>,
    default: &Path,
) -> anyhow::Result<Target> {
    let explicit = config.is_some();
    let config = config
        .map(Path::to_path_buf)
        .or_else(|| Some(default.to_path_buf()).filter(|p| p.is_file()));
    let loaded = match &config {
        Some(p) => {
            Some(weir_config::LoadedConfig::from_file(p).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        None => None,
    };
    let from_config = loaded.as_ref().map(|l| {
        let a = &l.config.admin;
        match &a.unix {
            Some(p) => Addr::Unix(l.resolve(p)),
            None => Addr::Tcp(a.listen.to_string()),
        }
    });
    let addr = match (admin, &from_config) {
        (Some(a), _) => Addr::parse(a)?,
        (None, Some(a)) => a.clone(),
        (None, None) => Addr::Tcp("127.0.0.1:9901".into()),
    };
    if let Some(t) = token {
        return Ok(Target {
            addr,
            token: Some(t.to_string()),
        });
    }
    let Some(l) = loaded else {
        return Ok(Target { addr, token: None });
    };
    // The config's TCP address as well as its socket name the same proxy.
    let same_proxy = explicit
        || from_config.as_ref() == Some(&addr)
        || addr == Addr::Tcp(l.config.admin.listen.to_string());
    if !same_proxy {
        return Ok(Target { addr, token: None });
    }
    let token = match &l.config.admin.token {
        Some(t) => Some(t.clone()),
        None => read_token_file(&l)?,
    };
    Ok(Target { addr, token })
}

/// The generated token of a config without `admin.token`, if the proxy has written it.
fn read_token_file(l: &weir_config::LoadedConfig) -> anyhow::Result<Option<String>> {
    let file = l.resolve(
        l.config
            .admin
            .token_file
            .as_deref()
            .unwrap_or(Path::new(weir_config::DEFAULT_ADMIN_TOKEN_FILE)),
    );
    match std::fs::read_to_string(&file) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the admin token file {}", file.display()))
        }
    }
}

/// Sends one admin request and returns the response body; non-2xx is an error carrying the
/// proxy's message.
pub fn call(
    target: &Target,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shown = format!("{}{path}", target.addr.shown());
        let res = match &target.addr {
            Addr::Tcp(a) => {
                let io = tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .with_context(|| format!("cannot reach the admin API at {shown}"))?;
                send(io, a, target, method, path, body).await
            }
            Addr::Unix(p) => {
                let io = tokio::net::UnixStream::connect(p)
                    .await
                    .with_context(|| format!("cannot reach the admin API at {shown}"))?;
                // The socket needs no Host check; any value will do.
                send(io, "localhost", target, method, path, body).await
            }
        };
        let res = res.with_context(|| format!("admin API at {shown}"))?;
        let status = res.status();
        let text =
            String::from_utf8_lossy(&res.into_body().collect().await?.to_bytes()).into_owned();
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {}", msg.trim_end());
        }
        Ok(text)
    })
}

async fn send<I>(
    io: I,
    host: &str,
    target: &Target,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host);
    if let Some(t) = &target.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    Ok(sender.send_request(req).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Addr::parse("http://127.0.0.1:9901").unwrap(),
            Addr::Tcp("127.0.0.1:9901".into())
        );
        assert_eq!(
            Addr::parse("http://[::1]:9901/").unwrap(),
            Addr::Tcp("[::1]:9901".into())
        );
        assert_eq!(
            Addr::parse("unix:/run/weir.sock").unwrap(),
            Addr::Unix("/run/weir.sock".into())
        );
        for bad in ["", "http://", "http://a/b", "https://x:1/", "localhost"] {
            assert!(Addr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_gives_address_and_token_and_its_token_goes_nowhere_else() {
        let dir = std::env::temp_dir().join(format!("weir-cli-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("w.yaml");
        std::fs::write(&cfg, "admin: { listen: 127.0.0.1:9977 }\n").unwrap();
        let t = target(None, None, Some(&cfg)).unwrap();
        assert_eq!(
            t,
            Target {
                addr: Addr::Tcp("127.0.0.1:9977".into()),
                token: None
            }
        );
        std::fs::write(dir.join(".weir-admin-token"), "abc123\n").unwrap();
        let t = target(None, None, Some(&cfg)).unwrap();
        assert_eq!(t.token.as_deref(), Some("abc123"));
        let t = target(None, Some("flag"), Some(&cfg)).unwrap();
        assert_eq!(t.token.as_deref(), Some("flag"), "--token wins");

        std::fs::write(
            &cfg,
            "admin: { listen: 127.0.0.1:9977, token: conf, unix: a.sock }\n",
        )
        .unwrap();
        let t = target(None, None, Some(&cfg)).unwrap();
        assert_eq!(
            t,
            Target {
                addr: Addr::Unix(dir.join("a.sock")),
                token: Some("conf".into())
            }
        );
        let t = target(Some("http://127.0.0.1:1"), None, Some(&cfg)).unwrap();
        assert_eq!(
            t.token.as_deref(),
            Some("conf"),
            "an explicit --config is meant"
        );

        // The default config's token goes only to the proxy it describes.
        let none = dir.join("absent.yaml");
        let t = target_with(None, None, None, &cfg).unwrap();
        assert_eq!(t.token.as_deref(), Some("conf"));
        for same in [
            "http://127.0.0.1:9977",
            &format!("unix:{}", dir.join("a.sock").display()),
        ] {
            let t = target_with(Some(same), None, None, &cfg).unwrap();
            assert_eq!(t.token.as_deref(), Some("conf"), "{same}");
        }
        let t = target_with(Some("http://127.0.0.1:1"), None, None, &cfg).unwrap();
        assert_eq!(
            t,
            Target {
                addr: Addr::Tcp("127.0.0.1:1".into()),
                token: None
            }
        );
        let t = target_with(None, None, None, &none).unwrap();
        assert_eq!(
            t,
            Target {
                addr: Addr::Tcp("127.0.0.1:9901".into()),
                token: None
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
