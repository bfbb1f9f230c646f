//! The WebSocket protocol as an AsyncAPI 3.0 document, served at `/api/asyncapi.json`. Its
//! schemas are generated from the frames' own types, as the OpenAPI document's are from the
//! REST ones: `events::Event` (server → client, the type the encoder writes) and the payload
//! types `ws::protocol::decode` reads (client → server). The prose is docs/PROTOCOL.md.
//!
//! What the derives cannot know is added here, once: the server writes every payload key
//! under its snake_case and its camelCase name (`events/both_keys.rs`), and reads either
//! style (`ws::protocol::decode`).

use std::sync::OnceLock;

use axum::{http::header, response::IntoResponse};
use serde_json::{Map, Value, json};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{RefOr, schema::Schema},
};

use crate::{
    events::{Event, snake_to_camel as camel_case},
    ws::protocol,
};

/// `GET /api/asyncapi.json`, public like `/api/openapi.json`. Built once: it depends on
/// nothing but the types.
pub async fn serve() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], text.as_str())
}

/// The channel's key in the document: the one socket at `/ws`.
const CHANNEL: &str = "ws";

/// The whole document.
pub fn document() -> Value {
    let mut components = Vec::new();
    let inbound = protocol::frame_schemas(&mut components);
    Event::schemas(&mut components);
    let outbound = server_frames(&Event::schema());
    let schemas: Map<String, Value> = components
        .into_iter()
        .map(|(name, schema)| (name, to_value(&schema)))
        .collect();

    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let mut operations = Map::new();
    let frames = inbound
        .into_iter()
        .map(|(kind, payload)| (Direction::Client, kind.to_owned(), to_value(&payload)))
        .chain(
            outbound
                .into_iter()
                .map(|(kind, payload)| (Direction::Server, kind, payload)),
        );
    // A type sent with two shapes (`message`: an inbox message, or one device's envelope) is
    // one message whose payload is either shape.
    let mut shapes: Vec<(Direction, String, Value, Option<Value>)> = Vec::new();
    for (direction, kind, payload) in frames {
        let payload = flatten(&payload, &schemas);
        let description = payload.get("description").cloned();
        let payload = match direction {
            Direction::Client => either_key_style(payload),
            Direction::Server => both_key_styles(payload),
        };
        match shapes
            .iter_mut()
            .find(|(d, k, ..)| *d == direction && *k == kind)
        {
            Some((_, _, first, first_description)) => {
                *first = json!({"oneOf": [first.take(), payload]});
                if let (Some(Value::String(a)), Some(Value::String(b))) =
                    (first_description.as_mut(), description)
                {
                    a.push_str(" Or: ");
                    a.push_str(&b);
                }
            }
            None => shapes.push((direction, kind, payload, description)),
        }
    }
    for (direction, kind, payload, description) in shapes {
        let (side, action, title) = match direction {
            Direction::Client => ("client", "receive", "client → server"),
            Direction::Server => ("server", "send", "server → client"),
        };
        let key = format!("{side}.{kind}");
        let mut message = json!({
            "name": kind,
            "title": format!("{kind} ({title})"),
            "contentType": "application/json",
            "payload": envelope(&kind, payload, direction),
        });
        if let Some(description) = description {
            message["description"] = description;
        }
        messages.insert(key.clone(), message);
        channel_messages.insert(
            key.clone(),
            json!({"$ref": format!("#/components/messages/{key}")}),
        );
        operations.insert(
            format!("{action}.{kind}"),
            json!({
                "action": action,
                "channel": {"$ref": format!("#/channels/{CHANNEL}")},
                "summary": match direction {
                    Direction::Client => format!("The client sends a `{kind}` frame"),
                    Direction::Server => format!("The server sends a `{kind}` frame"),
                },
                "messages": [{"$ref": format!("#/channels/{CHANNEL}/messages/{key}")}],
                // Either one: the socket is authenticated once, at the upgrade.
                "security": [
                    {"$ref": "#/components/securitySchemes/token"},
                    {"$ref": "#/components/securitySchemes/bearer"},
                ],
            }),
        );
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Kisse WebSocket protocol",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The real-time side of the Kisse backend: one WebSocket at `/ws`. Every \
                frame is one JSON text message `{\"type\", \"payload\"}`. Operations are from the \
                server's point of view: `receive` is a client → server frame, `send` a server → \
                client frame. The server writes every payload key twice, snake_case and \
                camelCase; it reads either style. Delivery rules, ordering, close codes and \
                limits: docs/PROTOCOL.md. The REST API: /api/openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "The real-time socket",
                "description": "`GET /ws` upgraded to a WebSocket. The token comes as `?token=<jwt>` \
                    (what the app does), `Authorization: Bearer <jwt>`, or `Sec-WebSocket-Protocol: \
                    bearer, <jwt>`; a missing or bad one is refused with 401 before the upgrade.",
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": query_parameters(),
                        "bindingVersion": "0.1.0",
                    }
                },
            }
        },
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": {
                "token": {
                    "type": "httpApiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The JWT from /api/auth/register or /api/auth/login",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The same token as an Authorization header",
                },
            },
        },
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client → server: the server receives it.
    Client,
    /// Server → client: the server sends it.
    Server,
}

/// The query of the upgrade request (see docs/PROTOCOL.md, Connecting).
fn query_parameters() -> Value {
    let device_id = json!({
        "type": "integer", "minimum": 1, "maximum": 127, "default": 1,
        "description": "Which of the user's devices the socket belongs to (for `prekeys_low`); \
            anything else is refused with 400",
    });
    json!({
        "type": "object",
        "properties": {
            "token": {"type": "string", "description": "The JWT, when not sent as a header"},
            "device_id": device_id.clone(),
            "deviceId": device_id,
            "since": {
                "type": "integer", "minimum": 0,
                "description": "The `cursor` of the last `message` or `read_receipt` this device \
                    received: the socket is first sent every inbox event after it. Without it, \
                    every event no socket of the user was sent yet",
            },
        },
    })
}

/// Each server frame type with its payload schema, from `Event`'s derived schema: a `oneOf`
/// with one `{type, payload}` object per variant.
fn server_frames(event: &RefOr<Schema>) -> Vec<(String, Value)> {
    let event = to_value(event);
    let Some(variants) = event["oneOf"].as_array() else {
        return Vec::new();
    };
    variants
        .iter()
        .filter_map(|variant| {
            let properties = &variant["properties"];
            let kind = properties["type"]["enum"][0].as_str()?.to_owned();
            let mut payload = properties["payload"].clone();
            // The variant's doc comment describes the frame.
            if let (Some(description), Some(object)) =
                (variant.get("description"), payload.as_object_mut())
            {
                object
                    .entry("description")
                    .or_insert_with(|| description.clone());
            }
            Some((kind, payload))
        })
        .collect()
}

/// A payload as one object schema: a `$ref` to a component replaced by the component (it is
/// about to be given other keys), `allOf` parts (serde's `flatten`) merged into one.
fn flatten(schema: &Value, components: &Map<String, Value>) -> Value {
    if let Some(name) = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        let mut resolved = flatten(&components[name], components);
        if let Some(description) = schema.get("description") {
            resolved["description"] = description.clone();
        }
        return resolved;
    }
    let Some(parts) = schema["allOf"].as_array() else {
        return schema.clone();
    };
    let mut properties = Map::new();
    let mut required = Vec::new();
    for part in parts {
        let part = flatten(part, components);
        if let Some(more) = part["properties"].as_object() {
            properties.extend(more.clone());
        }
        if let Some(more) = part["required"].as_array() {
            required.extend(more.iter().cloned());
        }
    }
    let mut merged = json!({"type": "object", "properties": properties, "required": required});
    if let Some(description) = schema.get("description") {
        merged["description"] = description.clone();
    }
    merged
}

/// Takes a derived object schema's `properties` and `required` out of it: the properties listed
/// under both key styles, and the required keys as the types name them (snake_case).
fn take_keys(object: &mut Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
    let properties = object
        .remove("properties")
        .and_then(|p| p.as_object().cloned())
        .unwrap_or_default();
    let mut both = Map::new();
    for (key, schema) in properties {
        both.insert(camel_case(&key), schema.clone());
        both.insert(key, schema);
    }
    let required = object
        .remove("required")
        .and_then(|r| r.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    (both, required)
}

/// What the server writes: every snake_case key, and the same value under its camelCase name;
/// nothing else.
fn both_key_styles(mut payload: Value) -> Value {
    let Some(object) = payload.as_object_mut() else {
        return payload;
    };
    let (properties, names) = take_keys(object);
    let required: Vec<Value> = names
        .iter()
        .flat_map(|key| {
            let camel = camel_case(key);
            [Some(key.clone()), (camel != *key).then_some(camel)]
        })
        .flatten()
        .map(Value::from)
        .collect();
    object.insert("type".into(), "object".into());
    object.insert("properties".into(), properties.into());
    object.insert("required".into(), required.into());
    object.insert("additionalProperties".into(), false.into());
    payload
}

/// What the server reads: each key in either style (the app sends camelCase), a required one
/// under one name or the other; unknown keys are ignored.
fn either_key_style(mut payload: Value) -> Value {
    let Some(object) = payload.as_object_mut() else {
        return payload;
    };
    let (properties, names) = take_keys(object);
    let mut required = Vec::new();
    let mut one_of_two = Vec::new();
    for key in names {
        let camel = camel_case(&key);
        if camel == key {
            required.push(Value::from(key));
        } else {
            one_of_two.push(json!({"anyOf": [{"required": [camel]}, {"required": [key]}]}));
        }
    }
    object.insert("type".into(), "object".into());
    object.insert("properties".into(), properties.into());
    if !required.is_empty() {
        object.insert("required".into(), required.into());
    }
    if !one_of_two.is_empty() {
        object.insert("allOf".into(), one_of_two.into());
    }
    payload
}

/// The frame around a payload: `{"type": kind, "payload": {...}}`. The server always sends
/// both; a client may leave out a payload with no required key (or send `null`).
fn envelope(kind: &str, payload: Value, direction: Direction) -> Value {
    let payload_required = match direction {
        Direction::Server => true,
        Direction::Client => payload.get("required").is_some() || payload.get("allOf").is_some(),
    };
    let mut required = vec!["type"];
    let mut payload = payload;
    if payload_required {
        required.push("payload");
    } else {
        payload = json!({"oneOf": [payload, {"type": "null"}]});
    }
    let mut frame = json!({
        "type": "object",
        "properties": {
            "type": {"type": "string", "const": kind},
            "payload": payload,
        },
        "required": required,
    });
    if let Direction::Server = direction {
        frame["additionalProperties"] = false.into();
    }
    frame
}

fn to_value(schema: &impl serde::Serialize) -> Value {
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document points into it.
    #[test]
    fn every_reference_resolves() {
        fn check(doc: &Value, value: &Value, refs: &mut usize) {
            match value {
                Value::Object(object) => {
                    if let Some(target) = object.get("$ref").and_then(Value::as_str) {
                        let pointer = target.strip_prefix('#').expect("a local reference");
                        assert!(
                            doc.pointer(pointer).is_some(),
                            "{target} is not in the document"
                        );
                        *refs += 1;
                    }
                    object.values().for_each(|v| check(doc, v, refs));
                }
                Value::Array(items) => items.iter().for_each(|v| check(doc, v, refs)),
                _ => {}
            }
        }
        let doc = document();
        if std::env::var_os("PRINT_ASYNCAPI").is_some() {
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        let mut refs = 0;
        check(&doc, &doc, &mut refs);
        assert!(refs > 0);
    }
}
