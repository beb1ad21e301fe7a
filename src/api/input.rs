//! The `input` field of an embeddings request, parsed in one pass with messages that say
//! which element is wrong: a string, an array of strings, an array of token ids, or an array
//! of arrays of token ids.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::model::Input;

const EXPECTED: &str =
    "a string, an array of strings, an array of token ids or an array of arrays of token ids";

thread_local! {
    /// Most inputs the request being parsed on this thread may hold.
    static MAX_INPUTS: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `parse` with `input` arrays of more than `max` inputs refused as they are read, so
/// an over-long array costs no more than its first `max` elements (a 16 MiB body of `""`
/// took 210 MiB when it was counted only after parsing).
pub fn with_max_inputs<R>(max: usize, parse: impl FnOnce() -> R) -> R {
    let outer = MAX_INPUTS.replace(max);
    let parsed = parse();
    MAX_INPUTS.set(outer);
    parsed
}

/// Most inputs the request being parsed on this thread may hold.
pub fn max_inputs() -> usize {
    MAX_INPUTS.get()
}

/// The inputs of one request, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestInput(pub Vec<Input>);

impl<'de> Deserialize<'de> for RequestInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InputVisitor)
    }
}

/// Reads one `input` field; `tei::RootInputs` forwards to it.
pub struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = RequestInput;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(RequestInput(vec![Input::Text(text.to_string())]))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(RequestInput(vec![Input::Text(text)]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut texts_or_lists = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut ids = Vec::new();
        let mut first: Option<&'static str> = None;
        let mut index = 0;
        let max = max_inputs();
        while let Some(item) = seq.next_element::<Item>()? {
            if texts_or_lists.len() == max {
                return Err(de::Error::custom(format!(
                    "more than {max} inputs in one request; at most {max} are allowed \
                     (server.max_inputs_per_request)"
                )));
            }
            let kind = item.kind();
            match first {
                None => first = Some(kind),
                Some(first) if first != kind => {
                    return Err(de::Error::custom(format!(
                        "input[{index}] is {kind} but input[0] is {first}; input must be {EXPECTED}"
                    )));
                }
                Some(_) => {}
            }
            match item {
                Item::Text(text) => texts_or_lists.push(Input::Text(text)),
                Item::Tokens(list) => texts_or_lists.push(Input::Tokens(list)),
                Item::Token(id) => ids.push(id),
            }
            index += 1;
        }
        // A flat array of ids is one input, not many.
        if first == Some(Item::TOKEN) {
            return Ok(RequestInput(vec![Input::Tokens(ids)]));
        }
        Ok(RequestInput(texts_or_lists))
    }
}

/// One element of an `input` array.
enum Item {
    Text(String),
    Token(u32),
    Tokens(Vec<u32>),
}

impl Item {
    const TOKEN: &'static str = "a token id";

    fn kind(&self) -> &'static str {
        match self {
            Self::Text(_) => "a string",
            Self::Token(_) => Self::TOKEN,
            Self::Tokens(_) => "an array of token ids",
        }
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a token id or an array of token ids")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Item, E> {
                Ok(Item::Text(text.to_string()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Item, E> {
                Ok(Item::Text(text))
            }

            fn visit_u64<E: de::Error>(self, id: u64) -> Result<Item, E> {
                token_id(id).map(Item::Token)
            }

            fn visit_i64<E: de::Error>(self, id: i64) -> Result<Item, E> {
                u64::try_from(id)
                    .map_err(|_| E::custom(format!("token id {id} is negative")))
                    .and_then(token_id)
                    .map(Item::Token)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(id) = seq.next_element::<u32>()? {
                    ids.push(id);
                }
                Ok(Item::Tokens(ids))
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

fn token_id<E: de::Error>(id: u64) -> Result<u32, E> {
    u32::try_from(id).map_err(|_| E::custom(format!("token id {id} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Input>, String> {
        serde_json::from_str::<RequestInput>(json)
            .map(|r| r.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_every_openai_shape() {
        assert_eq!(parse(r#""hi""#).unwrap(), [Input::Text("hi".into())]);
        assert_eq!(parse(r#""""#).unwrap(), [Input::Text(String::new())]);
        assert_eq!(
            parse(r#"["a","b"]"#).unwrap(),
            [Input::Text("a".into()), Input::Text("b".into())]
        );
        assert_eq!(parse("[1,2,3]").unwrap(), [Input::Tokens(vec![1, 2, 3])]);
        assert_eq!(
            parse("[[1,2],[3]]").unwrap(),
            [Input::Tokens(vec![1, 2]), Input::Tokens(vec![3])]
        );
        assert_eq!(parse("[]").unwrap(), []);
    }

    #[test]
    fn names_the_wrong_element() {
        let err = parse(r#"["a", 5]"#).unwrap_err();
        assert!(
            err.contains("input[1] is a token id but input[0] is a string"),
            "{err}"
        );
        assert!(parse("[-1]").unwrap_err().contains("negative"));
        assert!(parse("[4294967296]").unwrap_err().contains("too large"));
        assert!(parse("[1.5]").is_err());
        assert!(parse("{}").is_err());
        assert!(parse("[[1,-2]]").is_err());
    }

    #[test]
    fn refuses_more_inputs_than_allowed_while_reading() {
        let within = with_max_inputs(2, || parse(r#"["a","b"]"#));
        assert_eq!(within.unwrap().len(), 2);
        let over = with_max_inputs(2, || parse(r#"["a","b","c"]"#)).unwrap_err();
        assert!(over.contains("more than 2 inputs"), "{over}");
        // A flat array of ids is one input, however long.
        assert!(with_max_inputs(2, || parse("[1,2,3]")).is_ok());
        assert_eq!(parse(r#"["a","b","c"]"#).unwrap().len(), 3);
    }
}
