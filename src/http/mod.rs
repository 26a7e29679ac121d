//! The HTTP surface: router, shared state and response-wide layers.

pub mod account;
pub mod admin;
pub mod agent;
pub mod bodies;
pub mod browser;
mod consent;
pub mod guard;
pub mod mcp;

pub mod oauth2;
pub mod observe;
pub mod openapi;
mod ops;
pub mod pages;
pub mod serve;
pub mod token;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::oauth::OAuth;
use crate::sessions::Sessions;
use crate::store::Db;
use crate::vault::Vault;
use openapi::Routes;

/// What every handler can reach: one shared set of services, so that a clone (axum
/// clones the state for every extractor and middleware that asks for it, several times a
/// request) is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub config: Arc<Config>,
    pub db: Db,
    pub vault: Arc<Vault>,
    pub sessions: Arc<Sessions>,
    pub oauth: Arc<OAuth>,
    /// Rate limits of every kind (`[limits]`).
    pub limits: Arc<crate::limits::Limiters>,
    pub clock: Arc<dyn Clock>,
    pub agents: Arc<crate::agents::Agents>,
    /// The authorization server for agents (SPEC §11).
    pub grants: Arc<crate::grants::AuthServer>,
    pub policies: Arc<crate::policy::Policies>,
    pub tools: Arc<std::collections::BTreeMap<String, crate::tools::Tool>>,
    pub broker: Arc<crate::executor::Broker>,
    /// This app's own counters and histograms (`/metrics`); never a global recorder.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long a request may take before it is abandoned (503 `request_timeout`).
    pub request_timeout: std::time::Duration,
    /// The Content-Security-Policy, computed once from the configured providers.
    csp: HeaderValue,
    /// Its `form-action` origins.
    form_action: String,
}

impl AppState {
    /// Wires the services for `config` around an open database and vault. Client secrets
    /// of configured providers are resolved here, so a missing one fails at start.
    pub fn build(
        config: Config,
        db: Db,
        vault: Arc<Vault>,
        clock: Arc<dyn Clock>,
    ) -> Result<AppState, crate::config::ConfigError> {
        let providers = crate::providers::resolve(&config)?;
        let config_provider_timeout = config.provider_timeout;
        let form_action = form_action(providers.values().filter(|p| p.configured));
        let csp = content_security_policy(&form_action);
        let configured: Vec<String> = providers
            .iter()
            .filter(|(_, p)| p.configured)
            .map(|(name, _)| name.clone())
            .collect();
        let mut secrets = std::collections::BTreeMap::new();
        for (name, p) in &config.providers {
            if let Some(secret) = p.client_secret(name)? {
                secrets.insert(name.clone(), secret);
            }
        }
        let timeouts = crate::sessions::Timeouts {
            idle: config.session_idle_timeout,
            absolute: config.session_absolute_timeout,
        };
        let sessions = Arc::new(Sessions::new(db.clone(), Arc::clone(&clock), timeouts));
        let tools = crate::tools::resolve(&config)?;
        let oauth = OAuth::new(
            db.clone(),
            Arc::clone(&vault),
            &providers,
            secrets,
            &config,
            Arc::clone(&clock),
        )
        .map_err(|e| {
            crate::config::ConfigError::Parse(format!("cannot build the HTTP client: {e}"))
        })?;
        let oauth = Arc::new(oauth.with_tools(&tools));
        let policies = crate::policy::Policies::load(&config.policies_dir).map_err(|e| {
            crate::config::ConfigError::Invalid {
                key: "policies_dir".into(),
                reason: e.to_string(),
            }
        })?;
        for (name, t) in &config.tools {
            if !providers.contains_key(&t.provider) {
                return Err(crate::config::ConfigError::Invalid {
                    key: format!("tools.\"{name}\""),
                    reason: format!(
                        "provider {:?} is not in the catalogue or the config",
                        t.provider
                    ),
                });
            }
        }
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let broker = crate::executor::Broker::new(
            Arc::clone(&vault),
            Arc::clone(&oauth),
            db.clone(),
            Arc::clone(&clock),
            config.provider_timeout,
            crate::journal::Journal::start_with(
                db.clone(),
                Arc::clone(&clock),
                Arc::clone(&metrics),
            ),
            Arc::clone(&metrics),
        )
        .map_err(|e| {
            crate::config::ConfigError::Parse(format!("cannot build the HTTP client: {e}"))
        })?;
        let limits = Arc::new(crate::limits::Limiters::new(
            &config.limits,
            Arc::clone(&clock),
        ));
        let agents = Arc::new(crate::agents::Agents::new(db.clone(), Arc::clone(&clock)));
        let tools = Arc::new(tools);
        let grants = crate::grants::AuthServer::new(
            db.clone(),
            Arc::clone(&clock),
            Arc::clone(&agents),
            &config,
            Arc::clone(&tools),
            configured,
        )
        .map_err(|e| {
            crate::config::ConfigError::Parse(format!("cannot build the HTTP client: {e}"))
        })?;
        Ok(AppState(Arc::new(Services {
            agents,
            grants: Arc::new(grants),
            policies: Arc::new(policies),
            tools,
            broker: Arc::new(broker),
            config: Arc::new(config),
            db,
            vault,
            sessions,
            oauth,
            limits,
            clock,
            request_timeout: request_timeout(config_provider_timeout),
            metrics,
            csp,
            form_action,
        })))
    }

    /// The Content-Security-Policy of a page whose forms end with a redirect to
    /// `redirect_uri` (browsers apply `form-action` to the redirects a form submission
    /// follows).
    pub fn csp_with(&self, redirect_uri: &str) -> HeaderValue {
        let origin = url::Url::parse(redirect_uri)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .map(|u| u.origin().ascii_serialization());
        match origin {
            Some(o) => content_security_policy(&format!("{} {o}", self.form_action)),
            None => self.csp.clone(),
        }
    }
}

/// The routes a browser signs in through (the sign-in rate limit covers them).
fn sign_in_routes() -> Routes<AppState> {
    Routes::default()
        .route(browser::__path_login, browser::login)
        .route(browser::__path_connect, browser::connect)
        .route(
            browser::__path_connect_confirmed,
            browser::connect_confirmed,
        )
        .route(browser::__path_callback, browser::callback)
        .route(oauth2::__path_authorize, oauth2::authorize)
        .route(oauth2::__path_decide, oauth2::decide)
        .route(token::__path_register, token::register)
}

/// The other routes a browser session reaches.
fn browser_routes() -> Routes<AppState> {
    Routes::default()
        .route(pages::__path_home, pages::home)
        .route(pages::__path_disconnect_form, pages::disconnect_form)
        .route(pages::__path_end_all_form, pages::end_all_form)
        .route(browser::__path_logout, browser::logout)
        .route(account::__path_me, account::me)
        .route(account::__path_sessions, account::sessions)
        .route(account::__path_end_all_sessions, account::end_all_sessions)
        .route(account::__path_connections, account::connections)
        .route(account::__path_disconnect, account::disconnect)
        .route(agent::__path_delegate, agent::delegate)
        .route(oauth2::__path_grants, oauth2::grants)
        .route(oauth2::__path_revoke_grant, oauth2::revoke_grant)
        .route(oauth2::__path_revoke_grant_form, oauth2::revoke_grant_form)
        .route(admin::__path_keys, admin::keys)
        .route(admin::__path_rotate, admin::rotate)
        .route(admin::__path_rewrap, admin::rewrap)
        .route(admin::__path_audit_events, admin::audit_events)
        .route(admin::__path_revoke_user, admin::revoke_user)
}

/// Routes without a browser session: operations, metadata, the token endpoint, agents.
fn open_routes() -> Routes<AppState> {
    Routes::default()
        .route(pages::__path_stylesheet, pages::stylesheet)
        .route(ops::__path_healthz, ops::healthz)
        .route(ops::__path_readyz, ops::readyz)
        .route(ops::__path_metrics, ops::metrics)
        .route(openapi::__path_openapi, openapi::openapi)
        .route(oauth2::__path_metadata, oauth2::metadata)
        .route(
            oauth2::__path_mcp_resource_metadata,
            oauth2::mcp_resource_metadata,
        )
        .route(
            oauth2::__path_api_resource_metadata,
            oauth2::api_resource_metadata,
        )
        .route(token::__path_token, token::token)
        .route(token::__path_revoke, token::revoke)
        .route(agent::__path_list_tools, agent::list_tools)
        .route(agent::__path_run_tool, agent::run_tool)
        .route(agent::__path_release, agent::release)
        // Mounted by `app` as a service, at the same path.
        .document(mcp::__path_operation)
}

/// Every route with its documentation, in the groups `app` builds the router from.
fn route_table() -> [Routes<AppState>; 3] {
    [sign_in_routes(), browser_routes(), open_routes()]
}

/// The whole router.
pub fn app(state: AppState) -> Router {
    let sign_in = sign_in_routes()
        .into_router()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::rate_limit,
        ));
    // Routes a browser session reaches: tower-sessions reads the cookie (lazily: a route
    // that does not look at its session reads nothing) and saves what changed.
    let browser = browser_routes()
        .into_router()
        .merge(sign_in)
        .layer(browser::session_layer(
            state.sessions.store(),
            state.config.https,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            browser::dress_cookie_removal,
        ));
    let router = open_routes()
        .into_router()
        .merge(browser)
        .merge(
            Router::new()
                .route_service(mcp::PATH, mcp::service(&state))
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    mcp::authenticate,
                )),
        )
        .fallback(|| async { Error::NotFound });
    // The timeout is innermost, so its answer is dressed like every other error; the
    // request id and access log outermost, so every answer has them.
    let router = observe::with_timeout(router, state.request_timeout)
        .layer(axum::extract::DefaultBodyLimit::max(guard::MAX_BODY))
        .layer(middleware::from_fn(pages::friendly_errors))
        .layer(middleware::from_fn(guard::limit_query))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ));
    observe::observed(router, Arc::clone(&state.metrics)).with_state(state)
}

/// How long an inbound request may take: longer than a provider call and a refresh
/// (each at most `provider_timeout` seconds), and at least 30 s.
fn request_timeout(provider_timeout: i64) -> std::time::Duration {
    let seconds = provider_timeout.saturating_mul(2).saturating_add(5).max(30);
    std::time::Duration::from_secs(seconds.unsigned_abs())
}

/// `form-action`'s sources: ourselves and the configured providers' authorization origins.
/// Browsers apply it to the redirects that follow a form submission, and the account
/// page's "Connect" forms end at the provider.
fn form_action<'a>(providers: impl Iterator<Item = &'a crate::providers::Provider>) -> String {
    let mut origins = std::collections::BTreeSet::new();
    for p in providers {
        for url in [&p.authorize_url, &p.issuer].into_iter().flatten() {
            if let Ok(u) = reqwest::Url::parse(url)
                && matches!(u.scheme(), "https" | "http")
            {
                origins.insert(u.origin().ascii_serialization());
            }
        }
    }
    let mut form_action = String::from("'self'");
    for o in origins {
        form_action.push(' ');
        form_action.push_str(&o);
    }
    form_action
}

/// No scripts, no frames, styles and images from us only; forms to `form_action`.
fn content_security_policy(form_action: &str) -> HeaderValue {
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        )
    })
}

/// Headers every response carries.
async fn security_headers(
    axum::extract::State(app): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if app.config.https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A page that set its own (a wider `form-action`) keeps it.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, app.csp.clone());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_action_names_configured_authorization_origins_only() {
        let config = Config::from_toml(
            "public_url = \"http://127.0.0.1:8080\"\n\
             [providers.google]\nclient_id = \"g\"\nclient_secret = \"s\"\n\
             [providers.acme]\nkind = \"oauth2\"\nclient_id = \"a\"\nclient_secret = \"s\"\n\
             authorize_url = \"https://auth.acme.example:8443/authorize?x=1\"\n\
             token_url = \"https://auth.acme.example:8443/token\"\n",
        )
        .unwrap();
        let providers = crate::providers::resolve(&config).unwrap();
        let csp =
            content_security_policy(&form_action(providers.values().filter(|p| p.configured)));
        let csp = csp.to_str().unwrap();
        assert!(
            csp.contains(
                "form-action 'self' https://accounts.google.com https://auth.acme.example:8443;"
            ),
            "{csp}"
        );
        assert!(!csp.contains("discord"), "{csp}");
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    }
}
