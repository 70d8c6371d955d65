//! OpenAI-style chat messages, shaped the way Hugging Face chat templates expect them.
//!
//! Invariants:
//! * A field that is `None` is left out of the message map (not set to null), so templates see
//!   `message.tool_calls is defined` == false exactly as with a Python dict that lacks the key.
//! * Tool-call `arguments` reach the template as a map: OpenAI clients send a JSON *string*, which
//!   is parsed on deserialisation; a string that is not a JSON object is kept as the string.
//!   (mistral.rs and vLLM do the same conversion; HF templates index `arguments` as a dict or
//!   pass it to `tojson`.)
//! * Unknown message fields are kept (`extra`) so template-specific keys (`thinking`, ...) work.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value as Json};

/// One message of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Any other keys of the message object, passed through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Json>,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: Some(MessageContent::Text(content.into())), ..Default::default() }
    }
}

/// Message content: a string, or a list of typed parts (OpenAI / HF multimodal form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a list content. Templates test `part.type` and read `part.text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    Image {
        #[serde(flatten)]
        extra: Map<String, Json>,
    },
    ImageUrl {
        image_url: Json,
    },
}

/// A call the assistant made to a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_string()
}

/// The function part of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object (a map for the template) or, when the client sent a string that is not a
    /// JSON object, that string.
    #[serde(deserialize_with = "arguments_as_map")]
    pub arguments: Json,
}

impl FunctionCall {
    /// Builds a call from OpenAI's wire form, where `arguments` is a JSON string.
    pub fn from_openai(name: impl Into<String>, arguments: &str) -> Self {
        FunctionCall { name: name.into(), arguments: parse_arguments(Json::String(arguments.to_string())) }
    }
}

fn parse_arguments(raw: Json) -> Json {
    match raw {
        Json::String(s) => match serde_json::from_str::<Json>(&s) {
            Ok(obj @ Json::Object(_)) => obj,
            _ => Json::String(s),
        },
        other => other,
    }
}

fn arguments_as_map<'de, D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
    Json::deserialize(d).map(parse_arguments)
}
