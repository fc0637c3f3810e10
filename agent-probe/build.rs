// Embeds the eBPF object when `cargo xtask build-ebpf` has built it, so the
// agent binary carries its programs; without it the object is searched for
// at run time (see `find_object`).
fn main() {
    println!("cargo:rustc-check-cfg=cfg(embedded_ebpf)");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let object = std::path::Path::new(&manifest).join("../target/bpf/agent-ebpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    if object.is_file() {
        let object = object
            .canonicalize()
            .expect("an existing file canonicalizes");
        println!("cargo:rustc-cfg=embedded_ebpf");
        println!(
            "cargo:rustc-env=AGENT_EBPF_OBJECT_PATH={}",
            object.display()
        );
    }
}
