//! `walflow fake-api`: a randomuser-compatible API on the local machine (same JSON shape;
//! `results`, `seed`, `page`, `nat`, `inc`, `exc`), deterministic per seed and page, with
//! faults to inject. The demo, the tests and the benchmarks run on it with no internet.

mod faults;
pub mod generator;
mod names;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::json;

pub use faults::{corrupt, Faults, RequestFault};

use crate::client::MAX_RESULTS_PER_REQUEST;
use generator::SplitMix64;
use names::NATIONALITIES;

#[derive(Serialize)]
struct ApiBody {
    results: Vec<generator::ApiUser>,
    info: ApiInfo,
}

#[derive(Serialize)]
struct ApiInfo {
    seed: String,
    results: u64,
    page: u64,
    version: &'static str,
}

struct ServerState {
    faults: Faults,
    fault_draws: std::sync::Mutex<SplitMix64>,
    requests: AtomicU64,
}

/// Binds `listen` and returns the bound address (useful with port 0) and the server future.
pub async fn bind(
    listen: SocketAddr,
    faults: Faults,
    fault_seed: u64,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let state = Arc::new(ServerState {
        faults,
        fault_draws: std::sync::Mutex::new(SplitMix64::new(fault_seed)),
        requests: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/api", get(users))
        .route("/api/", get(users))
        .route("/api/{version}", get(users))
        .route("/api/{version}/", get(users))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    Ok((address, async move {
        walflow_serve::serve(listener, app, walflow_serve::Limits::default()).await
    }))
}

async fn users(
    State(state): State<Arc<ServerState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let request_number = state.requests.fetch_add(1, Ordering::Relaxed);
    if !state.faults.latency.is_zero() {
        tokio::time::sleep(state.faults.latency).await;
    }
    let draw = state
        .fault_draws
        .lock()
        .map(|mut draws| draws.next_f64())
        .unwrap_or(1.0);
    match state.faults.for_request(draw) {
        RequestFault::TooManyRequests => {
            tracing::debug!(request_number, "injecting 429");
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"error": "Too many requests"})),
            )
                .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(state.faults.retry_after_secs),
            );
            return response;
        }
        RequestFault::ServerError => {
            tracing::debug!(request_number, "injecting 500");
            let body = json!({"error": "Uh oh, something has gone wrong. Please tweet us @randomapi about the issue."});
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
        RequestFault::MalformedJson | RequestFault::None => {}
    }
    let malformed = state.faults.for_request(draw) == RequestFault::MalformedJson;

    let results = query
        .get("results")
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, u64::from(MAX_RESULTS_PER_REQUEST));
    let page = query
        .get("page")
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let seed = query.get("seed").cloned().unwrap_or_else(|| {
        let mut fresh = SplitMix64::new(rand::random());
        format!("{:016x}", fresh.next_u64())
    });
    let list = |name: &str| -> Vec<String> {
        query
            .get(name)
            .map(|value| {
                value
                    .split(',')
                    .map(|item| item.trim().to_lowercase())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let nats = list("nat");
    let nationalities: Vec<_> = NATIONALITIES
        .iter()
        .filter(|nat| {
            nats.iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(nat.code))
        })
        .collect();
    let (include, exclude) = (list("inc"), list("exc"));

    // Positions are u64: a page past the last one is the client's mistake, not an overflow.
    let Some((first_position, end_position)) = (page - 1)
        .checked_mul(results)
        .and_then(|first| Some((first, first.checked_add(results)?)))
    else {
        let error = format!(
            "page {page} of {results} results is past the last user this API can number \
             ({} users)",
            u64::MAX
        );
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": error })),
        )
            .into_response();
    };
    let records: Vec<_> = (first_position..end_position)
        .map(|position| {
            let mut record = generator::user(&seed, position, &nationalities);
            state.faults.maybe_corrupt(&seed, position, &mut record);
            generator::select_fields(&mut record, &include, &exclude);
            record
        })
        .collect();
    let body = ApiBody {
        results: records,
        info: ApiInfo {
            seed,
            results,
            page,
            version: "1.4",
        },
    };
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if malformed {
        tracing::debug!(request_number, "injecting a truncated body");
        bytes.truncate(bytes.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}
