//! Compiles the .proto files with protox (a protobuf compiler in Rust), so no system `protoc` is needed.

const PROTOS: &[&str] =
    &["reskflow/registry/v1/registry.proto", "reskflow/workflow/v1/workflow.proto", "reskflow/config/v1/config.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
