//! Prometheus metrics of the API listener: requests by surface, method and status class, and
//! their latency, rendered in the text exposition format at `/metrics`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_core::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as PromRegistry;

use crate::caller::Caller;
use crate::{ApiError, AppState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    surface: &'static str,
    method: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SurfaceLabels {
    surface: &'static str,
}

/// Writes more metric families in the text format (without `# EOF`), e.g. the router's.
pub type MetricSource = Box<dyn Fn(&mut String) + Send + Sync>;

pub struct Metrics {
    registry: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<SurfaceLabels, Histogram>,
    sources: Vec<MetricSource>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = PromRegistry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests served by the API listener", requests.clone());
        let latency = Family::<SurfaceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0].into_iter())
        });
        registry.register("http_request_duration_seconds", "Time to the response head", latency.clone());
        Metrics { registry, requests, latency, sources: Vec::new() }
    }

    /// Adds families rendered by someone else to `/metrics`.
    pub fn with_source(mut self, source: MetricSource) -> Metrics {
        self.sources.push(source);
        self
    }
}

fn surface(path: &str) -> &'static str {
    if path.starts_with("/v2") {
        "registry"
    } else if path.starts_with("/api/") {
        "api"
    } else if path == "/token" {
        "token"
    } else {
        "other"
    }
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Middleware: counts and times every request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let surface = surface(req.uri().path());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.latency.get_or_create(&SurfaceLabels { surface }).observe(start.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { surface, method, status: status_class(resp.status().as_u16()) }).inc();
    resp
}

/// `GET /metrics`, for any token that may read.
pub async fn render(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Action::Read)?;
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &state.metrics.registry)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if let Some(body) = out.strip_suffix("# EOF\n") {
        out.truncate(body.len());
    }
    for source in &state.metrics.sources {
        source(&mut out);
    }
    if let Some(runtime) = &state.runtime {
        let denied = runtime.denied().await.unwrap_or_default();
        if !denied.is_empty() {
            out.push_str("# TYPE berth_network_denied counter\n# HELP berth_network_denied Connections instances tried that their network rules refused, by service (`run` for one-off instances) and destination class.\n");
            for d in denied {
                out.push_str(&format!(
                    "berth_network_denied_total{{service=\"{}\",destination=\"{}\"}} {}\n",
                    d.group, d.destination, d.count
                ));
            }
        }
    }
    out.push_str("# EOF\n");
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response())
}
