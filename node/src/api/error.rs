//! Problem details (RFC 9457): the one place where errors become HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::index::IndexError;
use crate::record::FieldError;
use crate::store::StoreError;

/// An error answer: `application/problem+json` with a JSON pointer to the bad field.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Extra members (e.g. an import report).
    pub extra: Option<Value>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            extra: None,
            retry_after: None,
        }
    }

    /// 422: the document is well-formed JSON but not a valid record.
    pub fn invalid(errors: Vec<FieldError>) -> ApiError {
        let detail = match errors.first() {
            Some(e) if errors.len() == 1 => format!("{}: {}", pointer_label(&e.pointer), e.detail),
            Some(e) => format!(
                "{} problems; first at {}: {}",
                errors.len(),
                pointer_label(&e.pointer),
                e.detail
            ),
            None => "invalid document".into(),
        };
        ApiError {
            errors,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid record", detail)
        }
    }

    pub fn bad_request(pointer: &str, detail: impl Into<String>) -> ApiError {
        let detail = detail.into();
        ApiError {
            errors: vec![FieldError::new(pointer, detail.clone())],
            ..ApiError::new(StatusCode::BAD_REQUEST, "bad request", detail)
        }
    }

    /// A query string that does not deserialise: 400 `invalid query`, with a pointer to the
    /// parameter (`/limit` for `limit=ten`, `/colour` for an unknown `colour`).
    pub fn query(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        let text = rejection.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        let named = |name: &str| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let pointer = match detail.split_once(": ") {
            Some((name, _)) if named(name) => format!("/{name}"),
            _ => detail
                .split_once("unknown field `")
                .and_then(|(_, rest)| rest.split('`').next())
                .filter(|name| named(name))
                .map(|name| format!("/{name}"))
                .unwrap_or_default(),
        };
        ApiError {
            errors: vec![FieldError::new(pointer, detail)],
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid query", detail)
        }
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not found", detail)
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        // Never leak internals: log the cause, answer with a generic text.
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            "storage or index error; see the node's log",
        )
    }

    pub fn with_extra(mut self, extra: Value) -> ApiError {
        self.extra = Some(extra);
        self
    }
}

fn pointer_label(pointer: &str) -> &str {
    if pointer.is_empty() {
        "document"
    } else {
        pointer
    }
}

fn slug(title: &str) -> String {
    title.replace(' ', "-")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://ammotrace.example/problems/{}", slug(self.title)),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(first) = self.errors.first() {
            body["pointer"] = Value::String(first.pointer.clone());
            body["errors"] = json!(self.errors);
        }
        if let (Some(Value::Object(extra)), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot carry another request,
            // and a client must not pool it (it would find it closed).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Exists(id) => ApiError {
                errors: vec![FieldError::new(
                    "/record_id",
                    format!("record {id} already exists; use PUT to add a version"),
                )],
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("record {id} already exists"),
                )
            },
            StoreError::DuplicateInBatch(id) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("record {id} appears twice"),
            ),
            StoreError::VersionConflict { .. } => ApiError {
                errors: vec![FieldError::new("/record_version", e.to_string())],
                ..ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            },
            StoreError::Retracted(_) | StoreError::VersionLimit(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::NotFound(id) => ApiError::not_found(format!("no record {id}")),
            StoreError::Foreign(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Seal(detail) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "record cannot be signed",
                detail,
            ),
            StoreError::Sled(_) | StoreError::Corrupt(_) => ApiError::internal(e),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> ApiError {
        match e {
            IndexError::Query(detail) => ApiError::bad_request("", detail),
            other => ApiError::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(e)
    }
}

impl ApiError {
    pub fn with_status(mut self, status: axum::http::StatusCode) -> ApiError {
        self.status = status;
        self
    }
}

/// `axum::extract::Path` whose refusal (a segment that is not UTF-8, say) is a problem+json
/// 400 like every other error, not axum's plain text.
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|e| ApiError::bad_request("", e.body_text()))
    }
}
