//! One line of a batch: the request it holds, and the result line written for it, in the
//! shapes OpenAI documents.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// An input line: `{"custom_id", "method": "POST", "url", "body"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    pub custom_id: String,
    pub method: String,
    pub url: String,
    pub body: Box<RawValue>,
}

/// Why a line was not run.
#[derive(Debug)]
pub struct BadLine {
    pub custom_id: Option<String>,
    pub message: String,
}

/// Reads a line; `endpoint` is the batch's.
pub fn parse(line: &[u8], endpoint: &str) -> Result<RequestLine, BadLine> {
    let request: RequestLine = serde_json::from_slice(line).map_err(|e| BadLine {
        custom_id: custom_id_of(line),
        message: format!(
            "the line is not a request object {{\"custom_id\", \"method\", \"url\", \"body\"}}: {e}"
        ),
    })?;
    let refuse = |message: String| BadLine {
        custom_id: Some(request.custom_id.clone()),
        message,
    };
    if request.method != "POST" {
        return Err(refuse(format!(
            "method must be POST, got `{}`",
            request.method
        )));
    }
    if request.url != endpoint {
        return Err(refuse(format!(
            "url `{}` differs from the batch's endpoint `{endpoint}`",
            request.url
        )));
    }
    Ok(request)
}

/// The `custom_id` of a line that is otherwise wrong, if it has one.
fn custom_id_of(line: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(line).ok()?;
    value.get("custom_id")?.as_str().map(str::to_string)
}

#[derive(Serialize)]
struct ResultLine<'a> {
    id: &'a str,
    custom_id: Option<&'a str>,
    response: Option<Response<'a>>,
    error: Option<LineError<'a>>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    request_id: &'a str,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct LineError<'a> {
    code: &'a str,
    message: &'a str,
}

/// The result line of a request that ran, with the route's answer as it is.
pub fn answered(id: &str, custom_id: &str, status: u16, body: &RawValue) -> Vec<u8> {
    to_line(&ResultLine {
        id,
        custom_id: Some(custom_id),
        response: Some(Response {
            status_code: status,
            request_id: id,
            body,
        }),
        error: None,
    })
}

/// The result line of a line that could not run.
pub fn refused(id: &str, bad: &BadLine) -> Vec<u8> {
    to_line(&ResultLine {
        id,
        custom_id: bad.custom_id.as_deref(),
        response: None,
        error: Some(LineError {
            code: "invalid_request",
            message: &bad.message,
        }),
    })
}

fn to_line(line: &ResultLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}
