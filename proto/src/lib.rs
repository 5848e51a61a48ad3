//! Sluice's protobuf events and the CloudEvents envelope they travel in.
//!
//! Every event is a prost message under a versioned package (`shop.orders.v1`,
//! …). On the wire it is sent in CloudEvents binary content mode: the payload
//! is the protobuf encoding, and the attributes ([`Envelope`]) are headers.
//! [`registry`] holds the compiled file descriptor set so any event can be
//! turned into JSON, or built from JSON, knowing only its type name.

pub mod catalogue;
pub mod envelope;
pub mod registry;

pub use envelope::{Envelope, EnvelopeError, Headers, decode_event, encode_event};
pub use registry::{Registry, RegistryError};

/// The Sluice envelope as a protobuf message (used where events are stored whole).
#[allow(missing_docs, unreachable_pub)]
pub mod sluice {
    /// Version 1 of the envelope.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
    }
}

/// The reference shop domain's events, one package per service.
#[allow(missing_docs, unreachable_pub)]
pub mod shop {
    /// `shop.orders.v1`: the order aggregate and saga.
    pub mod orders {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.orders.v1.rs"));
        }
    }
    /// `shop.inventory.v1`: products and stock.
    pub mod inventory {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.inventory.v1.rs"));
        }
    }
    /// `shop.payments.v1`: charges and refunds.
    pub mod payments {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.payments.v1.rs"));
        }
    }
    /// `shop.accounts.v1`: accounts, login, API keys.
    pub mod accounts {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.accounts.v1.rs"));
        }
    }
    /// `shop.notifications.v1`: e-mails sent.
    pub mod notifications {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.notifications.v1.rs"));
        }
    }
    /// `shop.media.v1`: product images and their thumbnails.
    pub mod media {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.media.v1.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
