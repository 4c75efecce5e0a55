//! The Prometheus endpoint of the long-running commands (`--metrics-listen ADDR`): GET
//! /metrics answers with the current counters in the OpenMetrics text format. Each hop
//! registers its metrics once, where it counts them (`CdcMetrics::register`,
//! `ProcessMetrics::register`); a scrape encodes that one registry.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// The registry a command registers its metrics in: every name starts with `walflow_`.
pub fn registry() -> Registry {
    Registry::with_prefix("walflow")
}

/// Binds `listen` and serves /metrics on a task of its own; returns the bound address (port
/// 0 picks a free one) after logging it.
pub async fn serve(listen: SocketAddr, registry: Registry) -> anyhow::Result<SocketAddr> {
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for metrics (--metrics-listen)"))?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(error) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                        error.to_string(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) =
            walflow_serve::serve(listener, app, walflow_serve::Limits::default()).await
        {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    tracing::info!(url = %format!("http://{address}/metrics"), "serving metrics");
    Ok(address)
}
