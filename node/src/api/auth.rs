//! Bearer tokens and roles for the local API. Tokens are known by their SHA-256 only; the
//! admin token's digest is read from `DATA_DIR/admin.token` at start.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use crate::identity::token_digest;

/// What a token may do (design §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including configuration.
    Admin,
    /// Records seizures, imports, exports, answers partners.
    FocalPoint,
    /// Reads records and searches.
    Investigator,
    /// Aggregates only.
    Analyst,
}

/// Roles that may write records and import.
pub const WRITERS: &[Role] = &[Role::Admin, Role::FocalPoint];
/// Roles that may read single records and search.
pub const READERS: &[Role] = &[Role::Admin, Role::FocalPoint, Role::Investigator];

/// A known token.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("role {:?} may not do this", self.role),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let unauthorized =
            |detail: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("send Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            .and_then(|h| {
                let (scheme, token) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
        let digest = token_digest(token);
        match state
            .node
            .tokens()
            .iter()
            .find(|t| t.sha256.eq_ignore_ascii_case(&digest))
        {
            Some(t) => Ok(Caller {
                name: t.name.clone(),
                role: t.role,
            }),
            None => {
                tracing::warn!("refused an unknown API token");
                Err(unauthorized("unknown token"))
            }
        }
    }
}

/// A caller allowed to write (checked before the body is read).
pub struct Writer(pub Caller);
/// A caller allowed to read records and search.
pub struct Reader(pub Caller);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Writer, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(WRITERS)?;
        Ok(Writer(caller))
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Reader, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(READERS)?;
        Ok(Reader(caller))
    }
}
