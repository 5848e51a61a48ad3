//! A JSON body extractor whose every rejection is a problem: malformed JSON,
//! unknown fields and wrong types are 400, a missing content type 415, an
//! oversized body 413.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// `Json<T>` with problem+json rejections.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Body<T>(pub(crate) T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(rejection(&e)),
        }
    }
}

fn rejection(e: &JsonRejection) -> Problem {
    match e {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be JSON (Content-Type: application/json)",
        ),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "the body is larger than the limit (1 MiB)",
            )
        }
        other => Problem::new(StatusCode::BAD_REQUEST, "invalid-body", other.body_text()),
    }
}

/// `Query<T>` with problem+json rejections (400).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Params<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                e.body_text(),
            )),
        }
    }
}

/// `Path<T>` with problem+json rejections (400).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Segment<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Segment<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(e) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                e.body_text(),
            )),
        }
    }
}
