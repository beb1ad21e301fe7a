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

impl RequestLine {
    /// How many inputs the request holds, at most: what its answer's size grows with.
    pub fn inputs(&self) -> usize {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            input: Option<Count>,
        }
        serde_json::from_str::<Body>(self.body.get())
            .ok()
            .and_then(|body| body.input)
            .map_or(1, |count| count.0.max(1))
    }
}

/// The length of an array (each element skipped unread), or 1 for anything else.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Count;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an input")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut count = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(Count(count))
            }

            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(1))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Count, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Count(1))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
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

/// The result line of a line the batch's deadline came before.
pub fn expired(id: &str, custom_id: &str) -> Vec<u8> {
    to_line(&ResultLine {
        id,
        custom_id: Some(custom_id),
        response: None,
        error: Some(LineError {
            code: "batch_expired",
            message: "This request could not be executed before the completion window expired.",
        }),
    })
}

fn to_line(line: &ResultLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(body: &str) -> RequestLine {
        let line = format!(
            r#"{{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {body}}}"#
        );
        parse(line.as_bytes(), "/v1/embeddings").unwrap()
    }

    #[test]
    fn a_lines_inputs_are_counted_without_reading_them() {
        assert_eq!(line(r#"{"input": "one"}"#).inputs(), 1);
        assert_eq!(line(r#"{"input": ["a", "b", "c"]}"#).inputs(), 3);
        assert_eq!(
            line(r#"{"input": [[1, 2], [3]], "model": "m"}"#).inputs(),
            2
        );
        assert_eq!(line(r#"{"model": "m"}"#).inputs(), 1);
        assert_eq!(line(r#"{"input": []}"#).inputs(), 1);
    }

    #[test]
    fn lines_for_another_endpoint_or_method_are_refused_with_their_custom_id() {
        let other = br#"{"custom_id": "x", "method": "GET", "url": "/v1/embeddings", "body": {}}"#;
        let refused = parse(other, "/v1/embeddings").unwrap_err();
        assert_eq!(refused.custom_id.as_deref(), Some("x"));
        let other = br#"{"custom_id": "y", "method": "POST", "url": "/v1/chat", "body": {}}"#;
        assert!(
            parse(other, "/v1/embeddings")
                .unwrap_err()
                .message
                .contains("/v1/chat")
        );
        assert_eq!(parse(b"{", "/v1/embeddings").unwrap_err().custom_id, None);
    }
}
