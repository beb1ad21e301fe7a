//! From a request's inputs to token sequences: the prompt, token-id input (OpenAI clients
//! send tiktoken `cl100k_base` ids; models have their own vocabulary), and truncation.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use super::tokenize::Cut;
use super::{EmbedError, Input, InputType, Model, TokenSeq, TruncationDirection};

/// How an array of token ids is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenInput {
    /// As `cl100k_base` ids (what LangChain's `OpenAIEmbeddings` and OpenAI itself use):
    /// decoded to text, then tokenized by the model, so they give the text's vectors.
    #[default]
    Tiktoken,
    /// As ids of the model's own vocabulary, used as they are.
    Native,
    /// Refused: only text is accepted.
    Reject,
}

/// What a request asks of `Model::embed` besides its inputs.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// A key of the model's prompts; the model's default prompt applies when `None`.
    pub prompt_name: Option<String>,
    /// Whether over-long inputs are truncated (else refused); the model's setting when `None`.
    pub truncate: Option<bool>,
    /// Keep this many leading dimensions (then normalize again); all when `None`.
    pub dimensions: Option<usize>,
    /// Most tokens the request may hold, all inputs together.
    pub max_tokens: usize,
    /// Most tokens each text input may embed, special tokens included, where that is less
    /// than the model's own length (Cohere's `max_tokens`); the model's length when `None`.
    pub max_tokens_per_input: Option<usize>,
    /// Which end of an over-long input is cut.
    pub truncation_direction: TruncationDirection,
    /// How token-id inputs are read; the model's setting when `None`.
    pub token_input: Option<TokenInput>,
    /// What the texts are to an asymmetric model: its route, and its prompt of that name
    /// when `prompt_name` is `None` (`encode_query` / `encode_document`).
    pub input_type: Option<InputType>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            prompt_name: None,
            truncate: None,
            dimensions: None,
            max_tokens: usize::MAX,
            max_tokens_per_input: None,
            truncation_direction: TruncationDirection::Right,
            token_input: None,
            input_type: None,
        }
    }
}

pub(super) fn invalid(param: &'static str, message: String) -> EmbedError {
    EmbedError::Invalid { param, message }
}

/// A request's texts hold more tokens than it may.
pub fn too_many_tokens(param: &'static str, max: usize) -> EmbedError {
    invalid(
        param,
        format!(
            "the inputs hold more than {max} tokens; at most {max} are allowed per request \
             (server.max_tokens_per_request): split them over several requests"
        ),
    )
}

/// One token of a text, as TEI's `/tokenize` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Token {
    pub id: u32,
    /// The text the token covers (the token itself for special tokens).
    pub text: String,
    pub special: bool,
    /// Byte offsets into the text as tokenized (prompt included); none for special tokens.
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

impl Model {
    /// The prompt named `name` (none: no prompt).
    fn prompt(&self, name: Option<&str>) -> Result<&str, EmbedError> {
        let Some(name) = name else {
            return Ok("");
        };
        self.prompts.get(name).map(String::as_str).ok_or_else(|| {
            invalid(
                "prompt_name",
                format!(
                    "model `{}` has no prompt named `{}`; its prompts are {:?}",
                    self.name,
                    crate::echo::clip(name),
                    self.prompts.keys().collect::<Vec<_>>()
                ),
            )
        })
    }

    /// The tokens of each text as the model reads it: prompt prepended (the default prompt
    /// when `prompt_name` is `None`), prepared, and truncated like an input; at most
    /// `max_tokens` in all, refused before a text of a model that does not truncate is
    /// tokenized whole.
    pub fn tokens(
        &self,
        texts: &[String],
        prompt_name: Option<&str>,
        add_special_tokens: bool,
        max_tokens: usize,
    ) -> Result<Vec<Vec<Token>>, EmbedError> {
        let prompt = self.prompt(prompt_name.or(self.default_prompt_name.as_deref()))?;
        let tokenizer_failed = |e: tokenizers::Error| EmbedError::Tokenizer(e.to_string());
        let over_budget = || too_many_tokens("inputs", max_tokens);
        let mut left = max_tokens;
        let mut all = Vec::with_capacity(texts.len());
        for text in texts {
            let prepared = self.tokenizer.prepare(prompt, text);
            if self
                .tokenizer
                .exceeds(&[&prepared], left)
                .map_err(tokenizer_failed)?
            {
                return Err(over_budget());
            }
            let tokens = self
                .tokenizer
                .tokens(&prepared, add_special_tokens)
                .map_err(tokenizer_failed)?;
            left = left.checked_sub(tokens.len()).ok_or_else(over_budget)?;
            all.push(tokens);
        }
        Ok(all)
    }

    /// The texts of token-id sequences, as the tokenizer decodes them (TEI's `/decode`); at
    /// most `max_tokens` ids in all, each in the model's vocabulary.
    pub fn decode(
        &self,
        sequences: &[Vec<u32>],
        skip_special_tokens: bool,
        max_tokens: usize,
    ) -> Result<Vec<String>, EmbedError> {
        let total: usize = sequences.iter().map(Vec::len).sum();
        if total > max_tokens {
            return Err(too_many_tokens("ids", max_tokens));
        }
        let vocab = self.tokenizer.vocab_size();
        for (i, ids) in sequences.iter().enumerate() {
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(invalid(
                    "ids",
                    format!(
                        "ids[{i}] holds token id {bad}, outside the vocabulary of `{}` (0..{vocab})",
                        self.name
                    ),
                ));
            }
        }
        self.tokenizer
            .decode(sequences, skip_special_tokens)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    pub fn tokenize(
        &self,
        inputs: &[Input],
        options: &EmbedOptions,
    ) -> Result<Vec<TokenSeq>, EmbedError> {
        let task_prompt = options
            .input_type
            .map(InputType::key)
            .filter(|key| self.prompts.contains_key(*key));
        let prompt_name = options
            .prompt_name
            .as_deref()
            .or(task_prompt)
            .or(self.default_prompt_name.as_deref());
        let prompt = self.prompt(prompt_name)?;
        let pool_from = prompt_name
            .and_then(|n| self.excluded_prompt_lengths.get(n).copied())
            .unwrap_or(0);
        let truncate = options.truncate.unwrap_or(self.truncate);
        let token_input = options.token_input.unwrap_or(self.token_input);

        // Text (typed, or decoded from tiktoken ids) is tokenized in one batch.
        let mut texts = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match input {
                Input::Text(text) => texts.push(self.tokenizer.prepare(prompt, text)),
                Input::Tokens(ids) => {
                    if ids.is_empty() {
                        return Err(invalid(
                            "input",
                            format!("input[{i}] is an empty list of token ids"),
                        ));
                    }
                    match token_input {
                        TokenInput::Tiktoken => {
                            let decoded = decode_cl100k(i, ids)?;
                            let prepared = match self.tokenizer.prepare(prompt, &decoded) {
                                Cow::Borrowed(_) => None,
                                Cow::Owned(prepared) => Some(prepared),
                            };
                            texts.push(Cow::Owned(prepared.unwrap_or(decoded)))
                        }
                        TokenInput::Native if !prompt.is_empty() => {
                            return Err(invalid(
                                "prompt_name",
                                format!(
                                    "model `{}` reads token ids as its own vocabulary, where a prompt \
                                     cannot be applied; send text",
                                    self.name
                                ),
                            ));
                        }
                        TokenInput::Native => {}
                        TokenInput::Reject => {
                            return Err(invalid(
                                "input",
                                format!("model `{}` accepts text only, not token ids", self.name),
                            ));
                        }
                    }
                }
            }
        }
        if self
            .tokenizer
            .exceeds(&texts, options.max_tokens)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?
        {
            return Err(too_many_tokens("input", options.max_tokens));
        }
        let within = options.max_tokens_per_input.filter(|&max| {
            self.tokenizer
                .max_length()
                .is_none_or(|length| max < length)
        });
        if within.is_some() && pool_from > 0 {
            return Err(invalid(
                "max_tokens",
                format!(
                    "model `{}` leaves its prompt out of pooling, where inputs cannot be cut \
                     shorter than its own length",
                    self.name
                ),
            ));
        }
        let cut = Cut {
            max_tokens: within,
            direction: options.truncation_direction,
            prompt_bytes: self.tokenizer.prepare("", prompt).len(),
        };
        let encoded = self.tokenizer.encode_batch_cut(&texts, cut);
        let mut encoded = encoded
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?
            .into_iter();

        let too_long = |i: usize, max: usize| {
            invalid(
                "input",
                format!(
                    "input[{i}] is longer than the {max} tokens model `{}` takes, and truncation is off",
                    self.name
                ),
            )
        };
        let vocab = self.tokenizer.vocab_size();
        let mut seqs = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let seq = match input {
                Input::Tokens(ids) if token_input == TokenInput::Native => {
                    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                        return Err(invalid(
                            "input",
                            format!(
                                "input[{i}] holds token id {bad}, outside the vocabulary of `{}` (0..{vocab})",
                                self.name
                            ),
                        ));
                    }
                    let max = self.max_seq_length.unwrap_or(usize::MAX);
                    if ids.len() > max && !truncate {
                        return Err(too_long(i, max));
                    }
                    let keep = ids.len().min(max);
                    TokenSeq {
                        ids: ids[..keep].to_vec(),
                        type_ids: Vec::new(),
                        pool_from: 0,
                        unpooled: false,
                    }
                }
                _ => {
                    let encoding = encoded.next().unwrap_or_default();
                    if encoding.truncated && !truncate {
                        return Err(too_long(i, self.max_seq_length.unwrap_or_default()));
                    }
                    TokenSeq {
                        ids: encoding.ids,
                        type_ids: Vec::new(),
                        pool_from,
                        unpooled: false,
                    }
                }
            };
            if seq.is_empty() && !self.embeds_empty {
                return Err(invalid(
                    "input",
                    format!(
                        "input[{i}] has no tokens: the tokenizer of model `{}` adds no special \
                         tokens, and its pooling has nothing to pool (sentence-transformers fails \
                         or returns padding there); send non-empty text",
                        self.name
                    ),
                ));
            }
            seqs.push(seq);
        }
        Ok(seqs)
    }
}

/// The text behind `cl100k_base` ids. A chunk cut mid-character decodes with U+FFFD, as
/// tiktoken's own `decode` does.
fn decode_cl100k(index: usize, ids: &[u32]) -> Result<String, EmbedError> {
    let bytes = tiktoken_rs::cl100k_base_singleton()
        .decode_bytes(ids)
        .map_err(|e| {
            invalid(
                "input",
                format!(
                    "input[{index}] holds token id {}, which is not a cl100k_base token (token \
                     arrays are read as OpenAI's cl100k_base ids)",
                    e.token
                ),
            )
        })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Loads the `cl100k_base` vocabulary now, so the first request with token ids does not pay
/// for it.
pub fn warm_up_tiktoken() {
    let _ = tiktoken_rs::cl100k_base_singleton();
    CL100K_LOADED.store(true, Ordering::Release);
}

/// Set once the `cl100k_base` table is loaded: until then, decoding token ids may wait for its
/// load, which must not happen on an async worker.
static CL100K_LOADED: AtomicBool = AtomicBool::new(false);

pub(super) fn cl100k_loaded() -> bool {
    CL100K_LOADED.load(Ordering::Acquire)
}
