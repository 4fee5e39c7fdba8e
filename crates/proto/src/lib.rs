//! The `hodei.v1` gRPC API: messages and, with the `grpc` feature, the tonic clients and
//! servers generated from `proto/hodei/v1/hodei.proto`.
//!
//! Nothing here knows about the domain; conversions live in `hodei-contract`.

/// Generated code for package `hodei.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/hodei.v1.rs"));

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hodei_v1_descriptor.bin"));
}

pub use prost_types::Timestamp;
