// Linking the agent links libtorch: bake its lib directory into the rpath
// so the driver runs without LD_LIBRARY_PATH (LIBTORCH comes from
// .cargo/config.toml), as agent/build.rs does for the agent.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::fs::canonicalize(&dir)
            .map(|p| p.join("lib"))
            .unwrap_or_else(|_| std::path::PathBuf::from(dir).join("lib"));
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
