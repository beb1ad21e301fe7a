//! Batch lines run through the server's own routes, in process: each gets exactly the answer
//! the route gives over HTTP (validation, errors, limits), with no socket in between.

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use serde_json::value::RawValue;
use tower::ServiceExt;

use crate::batch::engine::LineRunner;

/// Marks a request as a batch line: it passes authentication (its batch was authorized when
/// created) and does not count as a request that batch work must yield to.
#[derive(Clone, Copy)]
pub struct BatchLine;

/// Runs lines through `Router`.
pub struct RouterRunner(pub Router);

impl LineRunner for RouterRunner {
    fn run(
        &self,
        url: String,
        body: Box<RawValue>,
    ) -> Pin<Box<dyn Future<Output = (u16, Box<RawValue>)> + Send>> {
        let router = self.0.clone();
        Box::pin(async move {
            let request = Request::post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .extension(BatchLine)
                .body(Body::from(Box::<str>::from(body).into_string()));
            let Ok(request) = request else {
                return failure(500, "the line's request cannot be built");
            };
            let Ok(response) = router.oneshot(request).await;
            let status = response.status().as_u16();
            match axum::body::to_bytes(response.into_body(), usize::MAX).await {
                Ok(bytes) => match serde_json::from_slice::<Box<RawValue>>(&bytes) {
                    Ok(body) => (status, body),
                    Err(_) => failure(500, "the route's answer is not JSON"),
                },
                Err(e) => failure(500, &format!("the route's answer cannot be read: {e}")),
            }
        })
    }
}

fn failure(status: u16, message: &str) -> (u16, Box<RawValue>) {
    let body = serde_json::json!({"error": {"message": message, "type": "server_error",
                                            "param": null, "code": null}});
    let raw = RawValue::from_string(body.to_string()).expect("JSON is JSON");
    (status, raw)
}
