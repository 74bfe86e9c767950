//! The one axum server of a bridge: the operations routes ([`ops`]: the page, `/metrics`,
//! `/health`, `/ready`, `/api/summary`), the partners' callbacks ([`tickets`]: the CEM's ticket
//! webhook and the call center's results; [`unsubscribes`]: the CEM's 回复TD) and the CEM's
//! `POST /contact/resolve` ([`contact`]). [`telemetry`] installs the Prometheus recorder and
//! refreshes the gauges; [`state`] is what every handler is given.
//!
//! Handlers parse and check at the edge, then call the store or the ticket intake; they hold no
//! SQL. When the server listens beyond loopback, `/metrics` and `/api/*` require
//! `Authorization: Bearer <token>` (`[ops] token_env`).
//!
//! May import: `tickets` (the intake), `surveys` (the overdue report), `store`, `privacy`,
//! `process`, `config`. Nothing imports
//! this room but `app`.

pub mod contact;
pub mod guard;
pub mod ops;
pub mod state;
pub mod telemetry;
pub mod tickets;
pub mod unsubscribes;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::process::shutdown::Shutdown;
use ops::{health, metrics, page, ready, require_token, summary};
use state::{OpsError, OpsState};

/// Bind the listener now, so a taken port fails the start before anything is consumed.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, OpsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Bind {
            addr,
            cause: source,
        })
}

/// Serve the ops routes on `listener` until shutdown.
pub fn serve(listener: TcpListener, state: OpsState, mut shutdown: Shutdown) -> JoinHandle<()> {
    let token = state.token.is_some();
    let app = router(state);
    let addr = listener.local_addr().ok();
    tokio::spawn(async move {
        info!(addr = ?addr, bearer_token = token, "ops server listening (/, /metrics, /health, /ready)");
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "ops server stopped with an error");
        }
    })
}

fn router(state: OpsState) -> Router {
    let data = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/summary", get(summary))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let hooks = Router::new()
        .route("/hooks/cem/tickets", post(tickets::tickets))
        .route("/hooks/cem/unsubscribes", post(unsubscribes::unsubscribes))
        .route("/hooks/callcenter/results", post(tickets::call_results))
        .layer(DefaultBodyLimit::max(tickets::WEBHOOK_MAX_BODY))
        .layer(middleware::from_fn(tickets::too_large_as_json));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route(
            "/contact/resolve",
            post(contact::resolve).layer(DefaultBodyLimit::max(contact::MAX_BODY)),
        )
        .merge(hooks)
        .merge(data)
        .with_state(state)
}
