//! End-to-end: the access log's Kafka sink against a real Kafka-protocol broker — tansu, built
//! from crates.io by `scripts/lib.sh` (`need_kafka`), on a loopback port — read back with
//! librdkafka (the confluent-kafka wheel), a client independent of Weir's producer. Then a
//! broker that is down, one that stalls, and one that comes back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::support::*;

/// A tansu broker with in-memory storage, killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_bin() -> std::path::PathBuf {
    repo_root().join(".tools/bin/tansu")
}

/// Whether the broker is installed; without it the tests say so and pass, unless
/// `WEIR_REQUIRE_KAFKA` is set (the test script sets it: it builds the broker).
fn have_broker() -> Result<bool> {
    if tansu_bin().is_file() {
        return Ok(true);
    }
    if std::env::var_os("WEIR_REQUIRE_KAFKA").is_some() {
        bail!("the tansu broker is not installed (scripts/test.sh builds it into .tools/bin)");
    }
    eprintln!("skipped: the tansu broker is not installed (scripts/test.sh builds it)");
    Ok(false)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Broker {
    /// Starts one on `port` and waits until it answers.
    fn start_on(port: u16) -> Result<Broker> {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start tansu")?;
        let broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "tansu did not listen in 20s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.addr()))
            .args(["--partitions", &partitions.to_string(), topic])
            .output()?;
        ensure!(out.status.success(), "topic create: {out:?}");
        Ok(())
    }

    /// The topic's records, read back with librdkafka: `count` of them, or what arrived in 20s.
    fn read(&self, topic: &str, count: usize) -> Result<Vec<Value>> {
        let out = Command::new("python3")
            .arg(repo_root().join("tests/e2e/kafka_read.py"))
            .args([&self.addr(), topic, &count.to_string(), "20"])
            .env("PYTHONPATH", repo_root().join(".tools/pykafka"))
            .output()
            .context("python3 kafka_read.py")?;
        ensure!(out.status.success(), "kafka_read.py: {out:?}");
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| serde_json::from_str(l).context("a record line"))
            .collect()
    }
}

fn config(dir_log: bool, kafka: &str, up: &Upstream) -> String {
    let path = if dir_log {
        "path: \"{dir}/access.log\", "
    } else {
        ""
    };
    format!(
        "workers: 1\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
access_log: {{ {path}kafka: {{ {kafka} }} }}\n\
routes:\n\
  - {{ name: a, match: {{ path_prefix: /a }}, cluster: backend }}\n\
  - {{ name: b, match: {{ path_prefix: /b }}, cluster: backend }}\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        up.addr
    )
}

/// Every access log line reaches the topic, as the file has it, in each compression: keyed by
/// route (one route's lines on one partition, in order) or by request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_produced_to_kafka_in_every_compression() -> Result<()> {
    if !have_broker()? {
        return Ok(());
    }
    let broker = Broker::start_on(free_port()?)?;
    let up = Upstream::start("up").await;
    for (compression, key) in [("none", "route"), ("gzip", "request_id"), ("lz4", "route")] {
        let topic = format!("access-{compression}");
        broker.create_topic(&topic, 3)?;
        let kafka = format!(
            "brokers: [ \"{}\" ], topic: {topic}, compression: {compression}, key: {key}, linger: 20ms",
            broker.addr()
        );
        let weir = Weir::start(&config(true, &kafka, &up))?;
        for i in 0..10 {
            for route in ["a", "b"] {
                let got = get(&weir.url("public", &format!("/{route}/{i}"))).await?;
                ensure!(got.status == 200);
            }
        }
        weir.eventually("20 lines sent", async || {
            weir.sample("weir_access_log_kafka_sent_total").await.ok() == Some(20.0)
        })
        .await?;
        let file = weir
            .access_log("20 lines in the file", |l| l.len() >= 20)
            .await?;
        let records = broker.read(&topic, 20)?;
        ensure!(
            records.len() == 20,
            "{compression}: {} records",
            records.len()
        );
        let mut produced: Vec<Value> = (records.iter())
            .map(|r| serde_json::from_str(r["value"].as_str().unwrap_or("")))
            .collect::<Result<_, _>>()?;
        let mut written = file.clone();
        let by_id = |v: &Value| v["request_id"].as_str().unwrap_or("").to_owned();
        produced.sort_by_key(by_id);
        written.sort_by_key(by_id);
        ensure!(
            produced == written,
            "{compression}: the topic has the file's lines"
        );
        for (r, line) in records.iter().zip(records.iter().map(|r| {
            serde_json::from_str::<Value>(r["value"].as_str().unwrap_or("")).unwrap_or_default()
        })) {
            ensure!(
                r["key"] == line[key],
                "{compression}: key {} for {line}",
                r["key"]
            );
        }
        if key == "route" {
            for route in ["a", "b"] {
                let mine: Vec<&Value> = (records.iter()).filter(|r| r["key"] == route).collect();
                let partitions: std::collections::BTreeSet<_> =
                    mine.iter().map(|r| r["partition"].as_i64()).collect();
                ensure!(
                    partitions.len() == 1,
                    "{compression}: route {route} on {partitions:?}"
                );
                // In offset order, the route's lines are in the order the proxy wrote them
                // (the file's order: a line is written when its response ends, so two quick
                // requests' lines may swap against the order they were sent).
                let paths: Vec<String> = (mine.iter())
                    .map(|r| {
                        let v: Value = serde_json::from_str(r["value"].as_str().unwrap_or(""))
                            .unwrap_or_default();
                        v["path"].as_str().unwrap_or("").to_owned()
                    })
                    .collect();
                let written: Vec<String> = (file.iter())
                    .filter(|l| l["route"] == route)
                    .map(|l| l["path"].as_str().unwrap_or("").to_owned())
                    .collect();
                ensure!(
                    paths.len() == 10 && paths == written,
                    "{compression}: {paths:?} vs {written:?}"
                );
            }
        }
        ensure!(
            weir.sample("weir_access_log_kafka_dropped_total{reason=\"send_failed\"}")
                .await?
                == 0.0
        );
    }
    Ok(())
}

/// A broker that stalls (accepts, never answers) costs requests nothing: none waits on it, the
/// queue stays bounded, and every line is counted dropped — queue full or send failed. A broker
/// that is down, then comes up, gets the lines sent after it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_down_broker_costs_requests_nothing_and_drops_are_counted() -> Result<()> {
    let up = Upstream::start("up").await;

    // Stalled: a listener that accepts connections and never reads or answers.
    let stall = std::net::TcpListener::bind("127.0.0.1:0")?;
    let stall_addr = stall.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in stall.incoming() {
            held.extend(c.ok());
        }
    });
    let kafka = format!(
        "brokers: [ \"{stall_addr}\" ], topic: t, linger: 5ms, timeout: 1s, max_queue_lines: 20"
    );
    let weir = Weir::start(&config(false, &kafka, &up))?;
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        let got = get(&weir.url("public", &format!("/a/{i}"))).await?;
        ensure!(got.status == 200);
        slowest = slowest.max(t.elapsed());
    }
    ensure!(
        slowest < Duration::from_millis(500),
        "a request waited on the stalled broker: {slowest:?} (its timeout is 1s)"
    );
    ensure!(
        m2(&weir, "weir_access_log_kafka_queued").await <= 20.0,
        "the queue is bounded"
    );
    weir.eventually_within(
        Duration::from_secs(15),
        "every line counted dropped",
        async || {
            let full = m2(
                &weir,
                "weir_access_log_kafka_dropped_total{reason=\"queue_full\"}",
            )
            .await;
            let failed = m2(
                &weir,
                "weir_access_log_kafka_dropped_total{reason=\"send_failed\"}",
            )
            .await;
            full > 0.0 && failed > 0.0 && full + failed == 200.0
        },
    )
    .await?;
    ensure!(m2(&weir, "weir_access_log_kafka_sent_total").await == 0.0);
    drop(weir);

    // Down, then up on the same port.
    if !have_broker()? {
        return Ok(());
    }
    let port = free_port()?;
    let kafka = format!("brokers: [ \"127.0.0.1:{port}\" ], topic: back, linger: 5ms, timeout: 1s");
    let weir = Weir::start(&config(false, &kafka, &up))?;
    for i in 0..5 {
        get(&weir.url("public", &format!("/a/down-{i}"))).await?;
    }
    weir.eventually("lines to a down broker are counted dropped", async || {
        m2(
            &weir,
            "weir_access_log_kafka_dropped_total{reason=\"send_failed\"}",
        )
        .await
            == 5.0
    })
    .await?;
    let broker = Broker::start_on(port)?;
    broker.create_topic("back", 1)?;
    for i in 0..5 {
        get(&weir.url("public", &format!("/a/up-{i}"))).await?;
    }
    weir.eventually("lines flow once the broker is up", async || {
        m2(&weir, "weir_access_log_kafka_sent_total").await == 5.0
    })
    .await?;
    let records = broker.read("back", 5)?;
    let mut paths: Vec<String> = (records.iter())
        .map(|r| {
            let v: Value =
                serde_json::from_str(r["value"].as_str().unwrap_or("")).unwrap_or_default();
            v["path"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    paths.sort();
    ensure!(
        paths == (0..5).map(|i| format!("/a/up-{i}")).collect::<Vec<_>>(),
        "{paths:?}"
    );
    Ok(())
}

async fn m2(weir: &Weir, series: &str) -> f64 {
    weir.sample(series).await.unwrap_or(-1.0)
}

/// Lines still waiting for their batch when the proxy is told to stop are sent before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_queued_at_sigterm_are_sent_before_exit() -> Result<()> {
    if !have_broker()? {
        return Ok(());
    }
    let broker = Broker::start_on(free_port()?)?;
    broker.create_topic("last", 2)?;
    let up = Upstream::start("up").await;
    let kafka = format!(
        "brokers: [ \"{}\" ], topic: last, linger: 60s",
        broker.addr()
    );
    let mut weir = Weir::start(&config(false, &kafka, &up))?;
    for i in 0..3 {
        get(&weir.url("public", &format!("/b/{i}"))).await?;
    }
    ensure!(m2(&weir, "weir_access_log_kafka_queued").await == 3.0);
    ensure!(m2(&weir, "weir_access_log_kafka_sent_total").await == 0.0);
    weir.signal(15);
    ensure!(weir.wait_exit(Duration::from_secs(10))? == Some(0));
    let records = broker.read("last", 3)?;
    ensure!(records.len() == 3, "{records:?}");
    Ok(())
}
