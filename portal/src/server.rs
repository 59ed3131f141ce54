//! [`router`] builds the application from a state (tests drive it directly); [`serve`] binds,
//! adds TLS, header timeouts and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{api, catalog_api, download, session};

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let limits = state.config.limits.clone();
    Router::new()
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/me", get(api::me))
        .route("/api/me/access", get(api::my_access))
        .route("/api/act", post(api::act_start))
        .route("/api/act/stop", post(api::act_stop))
        .route("/api/hosts", get(api::hosts))
        .route("/api/snapshots", get(api::snapshots))
        .route("/api/browse", get(api::browse))
        .route("/api/download", get(download::download))
        .route("/api/archive", get(download::archive))
        .route("/api/search", get(catalog_api::search))
        .route("/api/deleted", get(catalog_api::deleted))
        .route("/api/history", get(catalog_api::history))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .fallback(web_asset)
        .layer(middleware::from_fn(session::refresh_layer))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(limits.body_timeout_secs)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(limits.request_timeout_secs),
        ))
        .layer(middleware::from_fn_with_state(state.clone(), guard_layer))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The browser front end (`rewind-web`) for any other GET or HEAD; its pages carry their CSP.
async fn web_asset(req: Request) -> Response {
    use axum::http::Method;
    match rewind_web::asset(req.uri().path()).filter(|_| matches!(*req.method(), Method::GET | Method::HEAD)) {
        Some((body, kind)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CONTENT_SECURITY_POLICY, rewind_web::CSP),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => ApiError::NotFound.into_response(),
    }
}

/// Refuses hostile request targets before routing, counts responses, sets safety headers.
async fn guard_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    state.metrics.requests.fetch_add(1, Relaxed);
    let mut resp = if !crate::paths::raw_target_ok(req.uri().path()) {
        ApiError::BadRequest("encoded separators, dots or NUL in the URL path".into()).into_response()
    } else {
        next.run(req).await
    };
    let counter = match resp.status().as_u16() {
        200..=399 => &state.metrics.responses_2xx,
        400..=499 => &state.metrics.responses_4xx,
        _ => &state.metrics.responses_5xx,
    };
    counter.fetch_add(1, Relaxed);
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::X_CONTENT_TYPE_OPTIONS).or_insert(HeaderValue::from_static("nosniff"));
    if state.config.tls.is_some() {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    resp
}

fn tls_config(cfg: &crate::config::TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .with_context(|| format!("reading {}", cfg.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cfg.cert_file.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(&cfg.key_file).with_context(|| format!("reading {}", cfg.key_file.display()))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key")?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// Serve on `listener` until `shutdown` resolves, then stop accepting and give running
/// downloads `limits.shutdown_grace_secs` to finish.
pub async fn serve_on(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = tokio::task::spawn_blocking(move || AppState::new(config)).await??;
    serve_state(state, listener, shutdown).await
}

async fn serve_state(
    state: AppState,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = &state.config;
    let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    let header_timeout = Duration::from_secs(config.limits.header_timeout_secs);
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, {}s for running downloads", grace.as_secs());
        h.graceful_shutdown(Some(grace));
    });
    match tls {
        Some(tls) => {
            let mut server =
                axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls))
                    .handle(handle);
            server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            server.serve(app).await?;
        }
        None => {
            let mut server = axum_server::from_tcp(listener).handle(handle);
            server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            server.serve(app).await?;
        }
    }
    Ok(())
}

/// `rewind serve`: bind the configured address, print it, serve until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    // Open everything first: "listening" is printed only when the portal can answer.
    let listen = config.listen;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    config.tls.as_ref().map(tls_config).transpose()?;
    let state = tokio::task::spawn_blocking(move || AppState::new(config)).await??;
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when listening on port 0.
    println!("rewind portal listening on {scheme}://{addr}");
    tracing::info!("listening on {scheme}://{addr}");
    serve_state(state, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// [`serve`] on a runtime of its own, for the command line.
pub fn serve_blocking(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("portal").build()?;
    rt.block_on(serve(config))
}
