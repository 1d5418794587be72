//! Serves the Prometheus exporter's rendering over HTTP and reads it back
//! in the text exposition format, as a scraper would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;

use super::http;

/// One sample: a series and its value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                Sample {
                    name: name.to_owned(),
                    labels,
                    value: value.parse().expect("sample value"),
                }
            })
            .collect();
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the series `name` with (at least) these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// All samples of `name` with these labels.
    pub fn all(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

/// Serves the exporter's rendering at `/metrics` on an ephemeral loopback port.
pub async fn serve_metrics() -> SocketAddr {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder in this test binary");
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub async fn scrape(addr: SocketAddr) -> Scrape {
    let response = http::get(addr, "/metrics").await;
    assert_eq!(response.status, 200);
    Scrape::parse(&response.body)
}

/// Scrapes until `ready` holds: the publisher runs on its own period.
pub async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(addr).await;
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what} in:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
