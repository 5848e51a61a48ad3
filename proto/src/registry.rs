//! Decode any Sluice event to JSON, or encode it from JSON, by type name.
//!
//! The descriptors of every `.proto` compiled into this crate are embedded
//! ([`crate::FILE_DESCRIPTOR_SET`]); the CLI and the dead-letter tools use
//! this to show and build events they have no Rust type for.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

/// Why a JSON <-> protobuf conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The embedded descriptor set could not be loaded (a build defect).
    #[error("embedded descriptor set is invalid: {0}")]
    Descriptors(String),
    /// No message type of that name was compiled into sluice-proto.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The payload is not a valid encoding of the type.
    #[error("payload does not decode as {event_type}: {reason}")]
    Decode {
        /// The type name.
        event_type: String,
        /// The decoder's message.
        reason: String,
    },
    /// The JSON does not fit the type; `reason` names the field path.
    #[error("JSON does not fit {event_type}: {reason}")]
    Json {
        /// The type name.
        event_type: String,
        /// What did not fit, and where.
        reason: String,
    },
}

/// The descriptor pool of every compiled event type.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: DescriptorPool,
}

impl Registry {
    /// The registry of the events compiled into this crate (loaded once).
    ///
    /// # Errors
    /// Only if the embedded descriptor set is corrupt, which is a build defect.
    pub fn global() -> Result<&'static Registry, RegistryError> {
        static GLOBAL: OnceLock<Result<Registry, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
                    .map(|pool| Registry { pool })
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| RegistryError::Descriptors(e.clone()))
    }

    /// The descriptor of `type_name` (e.g. `shop.orders.v1.OrderPlaced`).
    ///
    /// # Errors
    /// The type is not compiled into sluice-proto.
    pub fn message(&self, type_name: &str) -> Result<MessageDescriptor, RegistryError> {
        self.pool
            .get_message_by_name(type_name)
            .ok_or_else(|| RegistryError::UnknownType(type_name.to_owned()))
    }

    /// The names of every compiled event type in the `shop.` packages.
    pub fn event_types(&self) -> Vec<String> {
        self.pool
            .all_messages()
            .map(|m| m.full_name().to_owned())
            .filter(|n| n.starts_with("shop."))
            .collect()
    }

    /// Decodes a protobuf payload of `type_name` into JSON (proto3 JSON mapping).
    ///
    /// # Errors
    /// Unknown type, or the payload does not decode.
    pub fn to_json(
        &self,
        type_name: &str,
        payload: &[u8],
    ) -> Result<serde_json::Value, RegistryError> {
        let desc = self.message(type_name)?;
        let msg = DynamicMessage::decode(desc, payload).map_err(|e| RegistryError::Decode {
            event_type: type_name.to_owned(),
            reason: e.to_string(),
        })?;
        let options = SerializeOptions::new().skip_default_fields(false);
        msg.serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| RegistryError::Decode {
                event_type: type_name.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Encodes JSON text (proto3 JSON mapping) as a protobuf payload of `type_name`.
    ///
    /// Unknown fields are rejected, so a typo does not silently drop data.
    ///
    /// # Errors
    /// Unknown type, or the JSON does not fit the type (the error names where).
    pub fn from_json(&self, type_name: &str, json: &str) -> Result<Vec<u8>, RegistryError> {
        let desc = self.message(type_name)?;
        let mut de = serde_json::Deserializer::from_str(json);
        let mut track = serde_path_to_error::Track::new();
        let result = DynamicMessage::deserialize(
            desc,
            serde_path_to_error::Deserializer::new(&mut de, &mut track),
        );
        let fail = |reason: String| RegistryError::Json {
            event_type: type_name.to_owned(),
            reason,
        };
        let msg = result.map_err(|e| fail(format!("at {}: {e}", track.path())))?;
        de.end().map_err(|e| fail(e.to_string()))?;
        Ok(msg.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::orders::v1::{OrderLine, OrderPlaced};

    #[test]
    fn every_domain_package_is_in_the_registry() {
        let reg = Registry::global().expect("registry");
        for name in [
            "shop.orders.v1.OrderPlaced",
            "shop.inventory.v1.StockReserved",
            "shop.payments.v1.PaymentCaptured",
            "shop.accounts.v1.AccountRegistered",
            "shop.notifications.v1.EmailSent",
            "sluice.v1.CloudEvent",
        ] {
            reg.message(name).expect(name);
        }
    }

    #[test]
    fn an_event_round_trips_through_json_by_type_name() {
        let reg = Registry::global().expect("registry");
        let ev = OrderPlaced {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            lines: vec![OrderLine {
                product_id: "p1".into(),
                quantity: 2,
                price_cents: 250,
            }],
            total_cents: 500,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
        };
        let json = reg
            .to_json("shop.orders.v1.OrderPlaced", &ev.encode_to_vec())
            .expect("to json");
        assert_eq!(json["orderId"], "o1");
        assert_eq!(json["lines"][0]["quantity"], 2);
        let bytes = reg
            .from_json("shop.orders.v1.OrderPlaced", &json.to_string())
            .expect("from json");
        assert_eq!(OrderPlaced::decode(bytes.as_slice()).expect("decode"), ev);
    }

    #[test]
    fn json_that_does_not_fit_names_the_problem() {
        let reg = Registry::global().expect("registry");
        let err = reg
            .from_json(
                "shop.orders.v1.OrderPlaced",
                r#"{"lines":[{"quantity":"many"}]}"#,
            )
            .expect_err("bad json");
        assert!(err.to_string().contains("at lines[0].quantity"), "{err}");
        let err = reg
            .from_json("shop.orders.v1.OrderPlaced", r#"{"nope":1}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn an_unknown_type_is_an_error() {
        let reg = Registry::global().expect("registry");
        assert!(matches!(
            reg.to_json("shop.nope.v1.X", &[]),
            Err(RegistryError::UnknownType(_))
        ));
    }
}
