//! The L4 benchmark's two ends, on one thread each (they run on the generator's core):
//!
//! - `tcp-bench serve SINK_ADDR PONG_ADDR`: the upstreams. SINK reads and discards everything
//!   (bulk); PONG answers one byte to one byte, then closes (connections per second).
//! - `tcp-bench push ADDR CONNS SECONDS`: CONNS connections each writing 64 KiB buffers for
//!   SECONDS; prints `{"bytes": N, "errors": E}` (bytes the proxy accepted).
//! - `tcp-bench cps ADDR CONNS SECONDS`: CONNS loops of connect, write a byte, read a byte,
//!   close; prints `{"conns": N, "errors": E}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 3 => rt.block_on(serve(&args[1], &args[2])),
        Some(mode @ ("push" | "cps")) if args.len() == 4 => {
            let conns: usize = args[2].parse()?;
            let seconds: u64 = args[3].parse()?;
            rt.block_on(load(mode, &args[1], conns, Duration::from_secs(seconds)))
        }
        _ => anyhow::bail!(
            "usage: tcp-bench serve SINK PONG | push ADDR CONNS SECONDS | cps ADDR CONNS SECONDS"
        ),
    }
}

async fn serve(sink: &str, pong: &str) -> anyhow::Result<()> {
    let sink = TcpListener::bind(sink).await?;
    let pong = TcpListener::bind(pong).await?;
    let sinks = tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    while let Ok((mut s, _)) = pong.accept().await {
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_ok() {
                let _ = s.write_all(&b).await;
            }
        });
    }
    sinks.abort();
    Ok(())
}

async fn load(mode: &str, addr: &str, conns: usize, length: Duration) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, done, errors) = (addr.to_string(), done.clone(), errors.clone());
        let push = mode == "push";
        tasks.push(tokio::spawn(async move {
            if push {
                let buf = vec![0x5au8; 64 * 1024];
                let Ok(mut s) = TcpStream::connect(&addr).await else {
                    errors.fetch_add(1, Relaxed);
                    return;
                };
                while Instant::now() < until {
                    match s.write(&buf).await {
                        Ok(n) => done.fetch_add(n as u64, Relaxed),
                        Err(_) => {
                            errors.fetch_add(1, Relaxed);
                            return;
                        }
                    };
                }
            } else {
                while Instant::now() < until {
                    let ok = async {
                        let mut s = TcpStream::connect(&addr).await?;
                        s.set_nodelay(true)?;
                        s.write_all(b"x").await?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await?;
                        anyhow::Ok(())
                    }
                    .await;
                    match ok {
                        Ok(()) => done.fetch_add(1, Relaxed),
                        Err(_) => errors.fetch_add(1, Relaxed),
                    };
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let key = if mode == "push" { "bytes" } else { "conns" };
    println!(
        "{{\"{key}\": {}, \"errors\": {}}}",
        done.load(Relaxed),
        errors.load(Relaxed)
    );
    Ok(())
}
