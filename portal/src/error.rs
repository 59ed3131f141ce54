//! The portal's one error type and its one mapping to HTTP status codes.
//!
//! "Not yours" and "does not exist" are the same answer ([`ApiError::NotFound`]): a guessed path
//! of another user must be indistinguishable from a path that was never there.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Errors a handler returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Missing, expired, revoked or invalid session.
    #[error("not logged in")]
    Unauthenticated,
    /// Wrong user name or password (the same answer for an unknown user).
    #[error("invalid user name or password")]
    BadCredentials,
    /// Logged in, but the role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// Missing, or not visible to this user.
    #[error("not found")]
    NotFound,
    /// A malformed request (bad path, `..`, NUL, bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// Too many failed logins; retry after so many seconds.
    #[error("too many failed logins, retry in {0} s")]
    Throttled(u64),
    /// A Range outside the file.
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// A request body over `limits.max_body_bytes`.
    #[error("request body too large")]
    PayloadTooLarge,
    /// A body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// JSON of the wrong shape (a missing or mistyped field).
    #[error("{0}")]
    Unprocessable(String),
    /// A user name that several realms know: say which (`realms` lists them).
    #[error("{user} is a user of several realms; give the realm")]
    Ambiguous { user: String, realms: Vec<String> },
    /// The directory (or another dependency) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data is damaged.
    #[error("repository data is damaged: {0}")]
    Corrupt(String),
    /// Anything else; the message is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status code of each kind; the only place this mapping is made.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Ambiguous { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Corrupt(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable code for the front end.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::BadCredentials => "bad_credentials",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Throttled(_) => "throttled",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::PayloadTooLarge => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Ambiguous { .. } => "ambiguous",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Corrupt(_) => "corrupt",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl From<rewind_store::Error> for ApiError {
    /// Store errors: what is missing is 404, damaged data 500 with its message, a bad path 400.
    fn from(e: rewind_store::Error) -> ApiError {
        use rewind_store::Error as E;
        match e {
            E::NotFound(_) => ApiError::NotFound,
            E::InvalidInput(m) => ApiError::BadRequest(m),
            E::Corrupt { .. } | E::UnsupportedVersion { .. } => ApiError::Corrupt(e.to_string()),
            E::Locked(m) => ApiError::Unavailable(format!("repository is locked: {m}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("task failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(m) => {
                tracing::error!("internal error: {m}");
                "internal error".to_string()
            }
            ApiError::Corrupt(m) => {
                tracing::error!("corrupt repository data: {m}");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let mut body = serde_json::json!({ "error": self.code(), "message": message });
        if let ApiError::Ambiguous { realms, .. } = &self {
            body["realms"] = serde_json::json!(realms);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        match &self {
            ApiError::Throttled(secs) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body whose refusals are [`ApiError`]s like every other answer: 415 when it is
/// not JSON, 413 when too large, 400 when it does not parse, 422 when a field is missing or of
/// the wrong type.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection as J;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(J::MissingJsonContentType(_)) => {
                Err(ApiError::UnsupportedMediaType("the body must be JSON (Content-Type: application/json)".into()))
            }
            Err(J::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(J::JsonSyntaxError(e)) => Err(ApiError::BadRequest(e.body_text())),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_store::Error as E;

    #[test]
    fn status_mapping() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::Unauthenticated, 401),
            (ApiError::BadCredentials, 401),
            (ApiError::Forbidden("x".into()), 403),
            (ApiError::NotFound, 404),
            (ApiError::BadRequest("x".into()), 400),
            (ApiError::Throttled(3), 429),
            (ApiError::RangeNotSatisfiable { size: 1 }, 416),
            (ApiError::PayloadTooLarge, 413),
            (ApiError::UnsupportedMediaType("x".into()), 415),
            (ApiError::Unprocessable("x".into()), 422),
            (ApiError::Ambiguous { user: "alice".into(), realms: vec!["a".into(), "b".into()] }, 409),
            (ApiError::Unavailable("ldap down".into()), 503),
            (ApiError::Corrupt("x".into()), 500),
            (ApiError::Internal("x".into()), 500),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
        }
    }

    #[test]
    fn store_errors_map_once() {
        assert_eq!(ApiError::from(E::NotFound("x".into())).status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::from(E::InvalidInput("x".into())).status(), StatusCode::BAD_REQUEST);
        let corrupt = ApiError::from(E::Corrupt { what: "pack 1".into(), detail: "hash".into() });
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(corrupt.to_string().contains("pack 1"), "corrupt keeps its message");
        assert_eq!(ApiError::from(E::Locked("x".into())).status(), StatusCode::SERVICE_UNAVAILABLE);
        let io = E::Io { path: "/x".into(), source: std::io::Error::other("boom") };
        assert_eq!(ApiError::from(io).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn throttled_has_retry_after_and_internal_hides_detail() {
        let r = ApiError::Throttled(7).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let r = ApiError::Internal("secret detail".into()).into_response();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
}
