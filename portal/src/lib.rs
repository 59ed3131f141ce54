//! rewind's restore portal: the HTTP server behind the browser front end. End users log in with
//! their directory account and get their own files back; helpdesk staff act for a user (with a
//! reason, which the user can read); admins see everything.
//!
//! Invariants:
//! - **One policy decides visibility** ([`authz::Policy`]); every endpoint (listings, search,
//!   deleted, history, downloads, archives) resolves paths through it, and "not yours" is the
//!   same 404 as "does not exist". A folder appears only if it leads to something visible.
//!   Every answer equals the answer on a repository holding only what the user may see: the
//!   catalog is narrowed to the same rules (`Policy::scope`) before it is paged, and
//!   cursors are sealed positions of results shown, never counts.
//! - **One person, one identity**: a realm and its own spelling of the login, in sessions,
//!   audit records and access history; a session's roles and account are asked again at each
//!   renewal.
//! - **One extractor checks sessions** ([`session::Session`]), including the CSRF token on
//!   state-changing requests; a handler without it is public (login, health, metrics).
//! - **One error type** ([`ApiError`]) maps to status codes in one function.
//! - **Downloads stream**: a file is read chunk by chunk, an archive is written into a bounded
//!   channel; no whole file in memory, no temp file per download. Decompressed chunks are shared
//!   by all downloads through a bounded memory cache and, below it, one unlinked scratch file
//!   (`chunk_spill_mib`), whose chunks are checked against their ids when read back.
//! - The store is read-only here; the portal never writes the repository.
//!
//! The JSON API is described in `portal/API.md`, the configuration in `portal/portal.example.toml`.

mod api;
mod audit;
mod auth;
mod authz;
mod catalog;
mod catalog_api;
mod config;
mod cursor;
mod download;
mod error;
mod fold;
mod metrics;
mod paths;
mod query;
mod reach;
mod server;
mod session;
mod state;
mod throttle;

pub use audit::Record as AuditRecord;
pub use auth::{AuthError, Authenticator, Identity, Role, hash_password};
pub use config::Config;
pub use error::ApiError;
pub use server::{router, serve, serve_blocking, serve_on};
pub use state::AppState;
