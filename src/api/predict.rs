//! TEI's `POST /predict`: a sequence classifier's scores for a text, a pair, or a batch of
//! them, every label with its score, best first. `POST /` on a classifier answers the same
//! (`tei::root`), where `huggingface_hub.InferenceClient.text_classification` posts.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::json::ApiJson;
use super::resolve::{labelled, requested_model, serve_model};
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::model::{Classified, ClassifyInput, ClassifyOptions, TruncationDirection};

/// TEI's `/predict` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PredictRequest {
    /// A text, a pair `[first, second]`, or a batch of them: `[[text], [first, second], ...]`.
    #[schema(value_type = Object)]
    pub(super) inputs: PredictInputs,
    /// The model; `server.default_model` when left out.
    #[serde(default)]
    pub(super) model: Option<String>,
    /// The logits instead of the probabilities.
    #[serde(default)]
    pub(super) raw_scores: bool,
    /// `false` refuses over-long inputs instead of truncating them.
    #[serde(default)]
    pub(super) truncate: Option<bool>,
    #[serde(default)]
    pub(super) truncation_direction: Option<TruncationDirection>,
}

/// One input answers with a list of predictions, a batch with a list of lists.
#[derive(Debug)]
pub enum PredictInputs {
    Single(ClassifyInput),
    Batch(Vec<ClassifyInput>),
}

/// A label and its score.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    score: f32,
    label: String,
}

/// TEI's routes for classifiers.
pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(predict), &[])
}

/// Scores `inputs` against the classifier's labels.
#[utoipa::path(
    post,
    path = "/predict",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Every label with its score, best first: a list for one input, a list of lists for a batch", body = Vec<Prediction>),
        (status = 400, description = "Invalid request, or the model is not a classifier"),
    ),
    tag = "TEI"
)]
pub async fn predict(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<PredictRequest>,
) -> Response {
    let mut label = None;
    let response = predictions(&state, request, &mut label).await;
    labelled(response, label)
}

/// The answer to a `/predict` body, also for `POST /` on a classifier.
pub(super) async fn predictions(
    state: &AppState,
    request: PredictRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let (single, inputs) = match request.inputs {
        PredictInputs::Single(input) => (true, vec![input]),
        PredictInputs::Batch(inputs) => (false, inputs),
    };
    if inputs.is_empty() {
        return Err(ApiError::bad_request("inputs", "inputs must not be empty").code("empty"));
    }
    let name = requested_model(state, request.model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    let span = tracing::Span::current();
    span.record("inputs", inputs.len());
    let options = ClassifyOptions {
        truncate: request.truncate,
        max_tokens: state.limits.max_tokens_per_request,
        truncation_direction: request.truncation_direction.unwrap_or_default(),
    };
    let classified = model.classify(inputs, options).await?;
    span.record("tokens", classified.tokens);
    let mut ranked = ranked(classified, request.raw_scores);
    Ok(if single {
        Json(ranked.pop().unwrap_or_default()).into_response()
    } else {
        Json(ranked).into_response()
    })
}

/// Each input's labels with their scores (or logits), best first; ties keep label order.
fn ranked(classified: Classified, raw_scores: bool) -> Vec<Vec<Prediction>> {
    let Classified {
        labels,
        logits,
        scores,
        ..
    } = classified;
    let rows = if raw_scores { logits } else { scores };
    rows.into_iter()
        .map(|row| {
            let mut predictions: Vec<Prediction> = row
                .into_iter()
                .zip(&labels)
                .map(|(score, label)| Prediction {
                    score,
                    label: label.clone(),
                })
                .collect();
            predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
            predictions
        })
        .collect()
}

impl<'de> Deserialize<'de> for PredictInputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InputsVisitor)
    }
}

const EXPECTED: &str =
    "a string, a pair [first, second], or a batch [[text], [first, second], ...]";

struct InputsVisitor;

impl<'de> Visitor<'de> for InputsVisitor {
    type Value = PredictInputs;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<PredictInputs, E> {
        Ok(PredictInputs::Single(ClassifyInput::Text(text.to_string())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<PredictInputs, E> {
        Ok(PredictInputs::Single(ClassifyInput::Text(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PredictInputs, A::Error> {
        let Some(first) = seq.next_element::<Element>()? else {
            return Ok(PredictInputs::Batch(Vec::new()));
        };
        match first {
            Element::Text(first) => {
                let texts: Vec<String> = std::iter::once(Ok(first))
                    .chain(std::iter::from_fn(|| {
                        seq.next_element::<String>().transpose()
                    }))
                    .take(3)
                    .collect::<Result<_, _>>()?;
                sequence(texts).map(PredictInputs::Single)
            }
            Element::Sequence(first) => {
                let max = super::input::max_inputs();
                let mut batch = vec![first];
                while let Some(element) = seq.next_element::<Element>()? {
                    let Element::Sequence(input) = element else {
                        return Err(de::Error::custom(format!(
                            "inputs[{}] is a string but inputs[0] is a list; inputs must be \
                             {EXPECTED}",
                            batch.len()
                        )));
                    };
                    if batch.len() == max {
                        return Err(de::Error::custom(format!(
                            "more than {max} inputs in one request; at most {max} are allowed \
                             (server.max_inputs_per_request)"
                        )));
                    }
                    batch.push(input);
                }
                Ok(PredictInputs::Batch(batch))
            }
        }
    }
}

/// A batch member: a text, or a list of one text or two (a pair).
enum Element {
    Text(String),
    Sequence(ClassifyInput),
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ElementVisitor;
        impl<'de> Visitor<'de> for ElementVisitor {
            type Value = Element;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, or a list of one or two strings")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Element, E> {
                Ok(Element::Text(text.to_string()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Element, E> {
                Ok(Element::Text(text))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
                let texts: Vec<String> =
                    std::iter::from_fn(|| seq.next_element::<String>().transpose())
                        .take(3)
                        .collect::<Result<_, _>>()?;
                sequence(texts).map(Element::Sequence)
            }
        }
        deserializer.deserialize_any(ElementVisitor)
    }
}

/// One text, or a pair: TEI reads `[a, b]` as a pair, never as two inputs.
fn sequence<E: de::Error>(mut texts: Vec<String>) -> Result<ClassifyInput, E> {
    match texts.len() {
        1 => Ok(ClassifyInput::Text(texts.remove(0))),
        2 => {
            let second = texts.remove(1);
            Ok(ClassifyInput::Pair(texts.remove(0), second))
        }
        n => Err(de::Error::custom(format!(
            "an input is one text or a pair of two, not {}; inputs must be {EXPECTED}",
            if n == 0 {
                "none".to_string()
            } else {
                "more".to_string()
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PredictInputs, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn texts(input: &ClassifyInput) -> Vec<&str> {
        match input {
            ClassifyInput::Text(text) => vec![text],
            ClassifyInput::Pair(first, second) => vec![first, second],
        }
    }

    #[test]
    fn reads_tei_input_grammar() {
        let PredictInputs::Single(one) = parse(r#""a""#).unwrap() else {
            panic!("a string is one input")
        };
        assert_eq!(texts(&one), ["a"]);
        let PredictInputs::Single(pair) = parse(r#"["a", "b"]"#).unwrap() else {
            panic!("two strings are a pair")
        };
        assert!(matches!(pair, ClassifyInput::Pair(..)));
        let PredictInputs::Single(one) = parse(r#"["a"]"#).unwrap() else {
            panic!("one string in a list is one input")
        };
        assert_eq!(texts(&one), ["a"]);
        let PredictInputs::Batch(batch) = parse(r#"[["a"], ["b", "c"]]"#).unwrap() else {
            panic!("lists are a batch")
        };
        assert_eq!(
            batch.iter().map(texts).collect::<Vec<_>>(),
            [vec!["a"], vec!["b", "c"]]
        );
        for bad in [
            r#"["a", "b", "c"]"#,
            r#"[["a", "b", "c"]]"#,
            r#"[[]]"#,
            r#"[["a"], "b"]"#,
            "3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
