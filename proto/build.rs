// Compiles edge_ai.proto with protox (a pure-Rust protobuf compiler), so no
// protoc has to be installed or downloaded.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=edge_ai.proto");
    println!("cargo:rerun-if-changed=v2/grpc_predict_v2.proto");
    let fds = protox::compile(["edge_ai.proto", "v2/grpc_predict_v2.proto"], [".", "v2"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
