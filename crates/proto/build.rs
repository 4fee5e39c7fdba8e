//! Compiles `proto/hodei/v1/*.proto` with protox (pure Rust, so no system `protoc` is needed)
//! and writes the encoded descriptor set that gRPC reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/hodei/v1/hodei.proto";
    println!("cargo:rerun-if-changed={proto}");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("hodei_v1_descriptor.bin"), fds.encode_to_vec())?;

    // Clients and servers only with the `grpc` feature; the messages always.
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    // `build_transport(false)`: the generated `Client::connect` constructor would collide with
    // the `Connect` RPC; callers build their own `Channel` (TLS, timeouts) anyway.
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(false)
        .bytes(".hodei.v1.LogChunk.data")
        .bytes(".hodei.v1.LogLine.data")
        .compile_fds(fds)?;
    Ok(())
}
