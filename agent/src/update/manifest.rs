//! A signed model manifest: which model file serves each task type, in
//! which version, with the file's SHA-256. The manifest's bytes are signed
//! with ed25519 (`manifest.toml.sig`, base64), so the signature covers the
//! digests and the digests cover the files.

use crate::infer::ModelSpec;
use agent_core::TaskType;
use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.toml";
pub const SIGNATURE: &str = "manifest.toml.sig";

/// `manifest.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub models: BTreeMap<TaskType, Entry>,
}

/// One model of the manifest; what it does not name (input, output,
/// labels) stays as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The TorchScript file, relative to the manifest's folder.
    pub file: PathBuf,
    pub version: String,
    /// Hex SHA-256 of the file (`agent models sign` fills it in).
    #[serde(default)]
    pub sha256: String,
    /// Execution time assumed until the new model is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ms: Option<f64>,
}

/// Why an update was refused: the metric label and the message.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("manifest signature: {0}")]
    Signature(String),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("model file digest: {0}")]
    Digest(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Signature(_) => "bad_signature",
            Refusal::Manifest(_) => "bad_manifest",
            Refusal::Digest(_) => "bad_digest",
        }
    }
}

/// An ed25519 public key, base64 of its 32 bytes (what `agent models
/// keygen` writes to `signing.pub`).
pub fn parse_public_key(b64: &str) -> Result<Vec<u8>> {
    let key = B64
        .decode(b64.trim())
        .context("model update public key is not base64")?;
    ensure!(
        key.len() == 32,
        "model update public key has {} bytes, an ed25519 key has 32",
        key.len()
    );
    Ok(key)
}

/// Checks `signature` (base64) over `manifest` with `public_key`.
pub fn verify_signature(
    public_key: &[u8],
    manifest: &[u8],
    signature: &[u8],
) -> Result<(), Refusal> {
    let sig = B64
        .decode(String::from_utf8_lossy(signature).trim())
        .map_err(|e| Refusal::Signature(format!("not base64: {e}")))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(manifest, &sig)
        .map_err(|_| Refusal::Signature("does not verify with the configured key".into()))
}

pub fn parse(manifest: &[u8]) -> Result<Manifest, Refusal> {
    let text = std::str::from_utf8(manifest).map_err(|e| Refusal::Manifest(e.to_string()))?;
    let m: Manifest = toml::from_str(text).map_err(|e| Refusal::Manifest(e.to_string()))?;
    if m.models.is_empty() {
        return Err(Refusal::Manifest("names no model".into()));
    }
    Ok(m)
}

/// Hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The specs after the manifest: each entry's file, version and expected
/// time over the configured spec of its task type. Every file must match
/// its digest; a task type without a configured model is refused (its
/// input and output are not known).
pub fn apply(
    m: &Manifest,
    dir: &Path,
    current: &HashMap<TaskType, ModelSpec>,
) -> Result<HashMap<TaskType, ModelSpec>, Refusal> {
    let mut next = current.clone();
    for (task_type, entry) in &m.models {
        let spec = next.get_mut(task_type).ok_or_else(|| {
            Refusal::Manifest(format!(
                "{} has no configured model here",
                task_type.as_str()
            ))
        })?;
        if entry.file.is_absolute()
            || entry
                .file
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Refusal::Manifest(format!(
                "{}: file {} is outside the update folder",
                task_type.as_str(),
                entry.file.display()
            )));
        }
        if entry.version.is_empty() {
            return Err(Refusal::Manifest(format!(
                "{}: empty version",
                task_type.as_str()
            )));
        }
        let path = dir.join(&entry.file);
        let actual = file_sha256(&path).map_err(|e| Refusal::Digest(format!("{e:#}")))?;
        if !actual.eq_ignore_ascii_case(entry.sha256.trim()) {
            return Err(Refusal::Digest(format!(
                "{} is {actual}, the manifest says {:?}",
                path.display(),
                entry.sha256
            )));
        }
        spec.path = path;
        spec.version = entry.version.clone();
        if let Some(ms) = entry.expected_ms {
            spec.expected_ms = ms;
        }
    }
    Ok(next)
}

/// A new signing key: `signing.key` (PKCS#8, base64, owner-only) and
/// `signing.pub` (the public key for `model_updates.public_key`).
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow!("key generation"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow!("new key"))?;
    let key_path = out.join("signing.key");
    let pub_path = out.join("signing.pub");
    write_private(&key_path, B64.encode(pkcs8.as_ref()).as_bytes())?;
    std::fs::write(&pub_path, B64.encode(pair.public_key().as_ref()) + "\n")?;
    Ok((key_path, pub_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Fills in every entry's digest from its file, rewrites `manifest.toml`
/// and signs it (`manifest.toml.sig`). Copy the model files to the
/// gateways first and the manifest and its signature last.
pub fn sign(dir: &Path, key_file: &Path) -> Result<Manifest> {
    let key = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let pkcs8 = B64
        .decode(key.trim())
        .context("signing key is not base64")?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow!("signing key is not an ed25519 PKCS#8 key: {e}"))?;
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut m = parse(&bytes)?;
    for entry in m.models.values_mut() {
        if entry.file.is_absolute() {
            bail!(
                "{}: use a path relative to {}",
                entry.file.display(),
                dir.display()
            );
        }
        entry.sha256 = file_sha256(&dir.join(&entry.file))?;
    }
    let text = toml::to_string(&m)?;
    let sig = pair.sign(text.as_bytes());
    // The signature first: a watcher that reads the new manifest with the
    // old signature refuses it and retries on its next look.
    std::fs::write(dir.join(SIGNATURE), B64.encode(sig.as_ref()) + "\n")?;
    std::fs::write(&path, text)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> ModelSpec {
        toml::from_str(&format!("path = {path:?}\nname = \"m\"\n")).unwrap()
    }

    fn setup() -> (tempdir::Dir, Vec<u8>) {
        let dir = tempdir::Dir::new();
        let (key, public) = keygen(&dir.0.join("keys")).unwrap();
        std::fs::write(dir.0.join("m2.pt"), b"model two").unwrap();
        std::fs::write(
            dir.0.join(MANIFEST),
            "[models.image_classification]\nfile = \"m2.pt\"\nversion = \"2\"\n",
        )
        .unwrap();
        sign(&dir.0, &key).unwrap();
        let public = parse_public_key(&std::fs::read_to_string(public).unwrap()).unwrap();
        (dir, public)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "manifest-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_signed_manifest_applies_over_the_configured_specs() {
        let (dir, public) = setup();
        let bytes = std::fs::read(dir.0.join(MANIFEST)).unwrap();
        let sig = std::fs::read(dir.0.join(SIGNATURE)).unwrap();
        verify_signature(&public, &bytes, &sig).unwrap();
        let m = parse(&bytes).unwrap();
        let current = HashMap::from([
            (TaskType::ImageClassification, spec("/old.pt")),
            (TaskType::NlpAnalysis, spec("/text.pt")),
        ]);
        let next = apply(&m, &dir.0, &current).unwrap();
        let img = &next[&TaskType::ImageClassification];
        assert_eq!(img.path, dir.0.join("m2.pt"));
        assert_eq!(img.version, "2");
        assert_eq!(next[&TaskType::NlpAnalysis].path, PathBuf::from("/text.pt"));
    }

    #[test]
    fn tampering_is_refused() {
        let (dir, public) = setup();
        let bytes = std::fs::read(dir.0.join(MANIFEST)).unwrap();
        let sig = std::fs::read(dir.0.join(SIGNATURE)).unwrap();
        // An edited manifest no longer verifies.
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("version = \"2\"", "version = \"3\"");
        let e = verify_signature(&public, edited.as_bytes(), &sig).unwrap_err();
        assert_eq!(e.label(), "bad_signature");
        // Another key's signature does not verify.
        let (_, other) = keygen(&dir.0.join("other")).unwrap();
        let other = parse_public_key(&std::fs::read_to_string(other).unwrap()).unwrap();
        assert!(verify_signature(&other, &bytes, &sig).is_err());
        // A model file changed after signing fails its digest.
        std::fs::write(dir.0.join("m2.pt"), b"model two, corrupted").unwrap();
        let m = parse(&bytes).unwrap();
        let current = HashMap::from([(TaskType::ImageClassification, spec("/old.pt"))]);
        assert_eq!(
            apply(&m, &dir.0, &current).unwrap_err().label(),
            "bad_digest"
        );
    }

    #[test]
    fn entries_outside_the_folder_or_unconfigured_are_refused() {
        let dir = tempdir::Dir::new();
        let current = HashMap::from([(TaskType::ImageClassification, spec("/old.pt"))]);
        for text in [
            "[models.image_classification]\nfile = \"../x.pt\"\nversion = \"2\"\n",
            "[models.image_classification]\nfile = \"/x.pt\"\nversion = \"2\"\n",
            "[models.object_detection]\nfile = \"x.pt\"\nversion = \"2\"\n",
            "[models.image_classification]\nfile = \"x.pt\"\nversion = \"\"\n",
        ] {
            let m = parse(text.as_bytes()).unwrap();
            let e = apply(&m, &dir.0, &current).unwrap_err();
            assert_eq!(e.label(), "bad_manifest", "{text}");
        }
        assert!(parse(b"models = {}").is_err());
        assert!(parse(b"[models.image_classification]\nfile = \"x\"\n").is_err());
        assert!(parse_public_key("AAAA").is_err());
    }
}
