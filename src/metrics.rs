//! The service's counters and histograms, recorded through a Prometheus recorder that
//! belongs to one [`Metrics`] value (one per `AppState`), never a global one: tests build
//! many apps in one process, and each must count only its own requests.
//!
//! Labels are bounded by the configuration (route templates, provider and tool names,
//! fixed outcome words); nothing a caller sends becomes a label.

use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Histogram buckets for latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets for the number of events in one audit commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// One app's recorder and the handle that renders it.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // Histograms rather than summaries, so they aggregate across instances. The
        // matchers are constant and valid; should one be refused, summaries still work.
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("strongbox_audit_batch_events".into()),
                    BATCH_BUCKETS,
                )
            }) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let m = Metrics { recorder, handle };
        m.with(describe);
        m
    }

    fn with(&self, f: impl FnOnce()) {
        metrics::with_local_recorder(&self.recorder, f);
    }

    /// The Prometheus text of everything recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// One answered HTTP request; `route` is the matched route template.
    pub fn request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let labels = vec![
            metrics::Label::new("method", method.to_owned()),
            metrics::Label::new("route", route.to_owned()),
            metrics::Label::new("status", status.to_string()),
        ];
        self.with(|| {
            metrics::counter!("strongbox_http_requests_total", labels.clone()).increment(1);
            metrics::histogram!("strongbox_http_request_duration_seconds", labels)
                .record(latency.as_secs_f64());
            if status == 429 {
                metrics::counter!("strongbox_rate_limited_total", "route" => route.to_owned())
                    .increment(1);
            }
        });
    }

    /// A credential released to an agent.
    pub fn release(&self, provider: &str) {
        self.with(|| {
            metrics::counter!("strongbox_credential_releases_total", "provider" => provider.to_owned())
                .increment(1);
        });
    }

    /// A tool run that reached the provider; `outcome` is `success` or `failure`.
    pub fn tool_run(&self, tool: &str, outcome: &'static str) {
        self.with(|| {
            metrics::counter!("strongbox_tool_runs_total", "tool" => tool.to_owned(), "outcome" => outcome)
                .increment(1);
        });
    }

    /// A refresh at the provider: `success`, `invalid_grant`, `failure` or `discarded`.
    pub fn refresh(&self, provider: &str, outcome: &'static str) {
        self.with(|| {
            metrics::counter!("strongbox_refreshes_total", "provider" => provider.to_owned(), "outcome" => outcome)
                .increment(1);
        });
    }

    /// A request policy denied; `action` is `fetch_credential` or `run_tool`.
    pub fn policy_denied(&self, action: &'static str) {
        self.with(|| {
            metrics::counter!("strongbox_policy_denials_total", "action" => action).increment(1);
        });
    }

    /// One audit commit of the journal: its events and how long it took.
    pub fn audit_batch(&self, events: usize, took: Duration) {
        self.with(|| {
            // usize to f64 is exact for any batch size (at most MAX_BATCH).
            #[allow(clippy::cast_precision_loss)]
            metrics::histogram!("strongbox_audit_batch_events").record(events as f64);
            metrics::histogram!("strongbox_audit_commit_duration_seconds")
                .record(took.as_secs_f64());
        });
    }
}

fn describe() {
    metrics::describe_counter!(
        "strongbox_http_requests_total",
        "HTTP requests answered, by method, route template and status."
    );
    metrics::describe_histogram!(
        "strongbox_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method, route template and status."
    );
    metrics::describe_counter!(
        "strongbox_rate_limited_total",
        "Requests refused by a rate limit (429), by route template."
    );
    metrics::describe_counter!(
        "strongbox_credential_releases_total",
        "Credentials released to agents, by provider."
    );
    metrics::describe_counter!(
        "strongbox_tool_runs_total",
        "Tool runs that reached the provider, by tool and outcome."
    );
    metrics::describe_counter!(
        "strongbox_refreshes_total",
        "Token refreshes at providers, by provider and outcome."
    );
    metrics::describe_counter!(
        "strongbox_policy_denials_total",
        "Agent requests denied by policy, by action."
    );
    metrics::describe_histogram!(
        "strongbox_audit_batch_events",
        "Events written by one group commit of the audit journal."
    );
    metrics::describe_histogram!(
        "strongbox_audit_commit_duration_seconds",
        metrics::Unit::Seconds,
        "Time one group commit of the audit journal took."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_counts_only_its_own() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.release("acme");
        a.release("acme");
        a.audit_batch(3, Duration::from_millis(2));
        let text = a.render();
        assert!(
            text.contains("strongbox_credential_releases_total{provider=\"acme\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("strongbox_audit_batch_events_bucket{le=\"4\"} 1"),
            "{text}"
        );
        assert!(!b.render().contains("strongbox_credential_releases_total{"));
    }
}
