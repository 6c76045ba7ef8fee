//! Generates the `log.v1` prost/tonic code from `proto/` with protox, a pure-Rust
//! protobuf compiler, so building needs no system `protoc`. Also writes the encoded
//! file descriptor set that server reflection serves.

use std::path::PathBuf;

/// The agent-to-agent service.
const INTERNAL: &str = "internal/v1/internal.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let files = ["log/v1/log.proto"];
    for file in files.iter().chain(&[INTERNAL]) {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    for file in files {
        compiler.open_file(file)?;
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` ignores `file_descriptor_set_path`, so write the set ourselves.
    std::fs::write(out_dir.join("log_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    // Record values are `bytes::Bytes`: the server hands log buffers to the wire
    // without copying them.
    tonic_prost_build::configure()
        .bytes(".log.v1.Record.value")
        .compile_fds(compiler.file_descriptor_set())?;

    // The agent-to-agent service: compiled apart, so reflection does not list it.
    let mut internal = protox::Compiler::new([&proto_root])?;
    internal.open_file(INTERNAL)?;
    tonic_prost_build::configure()
        .bytes(".proglog.internal.v1")
        .compile_fds(internal.file_descriptor_set())?;
    Ok(())
}
