//! TLS for both transports: mutual TLS against an operator-provided CA
//! (rustls with ring), and `agent gen-certs` for a development CA.
//!
//! `insecure = true` means plaintext gRPC and no QUIC at all: QUIC has no
//! plaintext mode, and an unverified QUIC connection would look secure
//! while being open to anyone on the path, so the agent refuses it instead.

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ALPN protocol id of the offload protocol over QUIC.
pub const ALPN_QUIC: &[u8] = b"edge-offload/1";

/// File names `gen-certs` writes.
pub const CA_FILE: &str = "ca.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client.key";

/// One side's TLS settings (`[edge.tls]`, `[cloud.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) that must have signed the peer's certificate.
    pub ca: PathBuf,
    /// This side's certificate chain (PEM).
    pub cert: PathBuf,
    /// This side's private key (PEM, PKCS#8/PKCS#1/SEC1).
    pub key: PathBuf,
    /// Plaintext gRPC, QUIC disabled. Development only.
    pub insecure: bool,
}

impl TlsConfig {
    /// The files `gen-certs` wrote into `dir`, for the given side.
    pub fn from_dir(dir: &Path, side: Side) -> TlsConfig {
        let (cert, key) = match side {
            Side::Server => (SERVER_CERT, SERVER_KEY),
            Side::Client => (CLIENT_CERT, CLIENT_KEY),
        };
        TlsConfig {
            ca: dir.join(CA_FILE),
            cert: dir.join(cert),
            key: dir.join(key),
            insecure: false,
        }
    }

    /// Relative paths in a config file are relative to the file's folder.
    pub fn resolve_paths(&mut self, base: Option<&Path>) {
        let Some(base) = base else { return };
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Loads the PEM files; `None` when `insecure` (after a loud warning).
    pub fn load(&self, side: Side) -> Result<Option<TlsMaterial>> {
        if self.insecure {
            warn_insecure(side);
            return Ok(None);
        }
        let missing: Vec<&str> = [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)]
            .into_iter()
            .filter(|(_, p)| p.as_os_str().is_empty())
            .map(|(n, _)| n)
            .collect();
        if !missing.is_empty() {
            bail!(
                "TLS is required: set {} in the [{}.tls] section (`agent gen-certs --out DIR` makes a \
                 development CA), or pass --insecure for plaintext gRPC without QUIC",
                missing.join(", "),
                side.section()
            );
        }
        TlsMaterial::from_pem(
            &read(&self.ca, "CA certificate")?,
            &read(&self.cert, "certificate")?,
            &read(&self.key, "private key")?,
        )
        .with_context(|| {
            format!(
                "loading TLS files {}, {}",
                self.cert.display(),
                self.key.display()
            )
        })
        .map(Some)
    }
}

fn read(p: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    fn section(self) -> &'static str {
        match self {
            Side::Server => "cloud",
            Side::Client => "edge",
        }
    }
}

fn warn_insecure(side: Side) {
    let what = match side {
        Side::Server => {
            "the cloud service accepts PLAINTEXT gRPC from ANY client and serves no QUIC"
        }
        Side::Client => {
            "offloads go over PLAINTEXT gRPC to an UNAUTHENTICATED cloud, QUIC disabled"
        }
    };
    tracing::warn!("!!! --insecure: {what}. Task payloads and results can be read and forged on the path. Development only. !!!");
    eprintln!("WARNING: --insecure: {what}. Development only.");
}

/// A CA, a certificate chain and its key, in PEM and parsed.
#[derive(Clone)]
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsMaterial> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(c.context("parsing the CA certificate")?)
                .context("adding the CA certificate")?;
        }
        if roots.is_empty() {
            bail!("the CA file holds no certificate");
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the certificate chain")?;
        if chain.is_empty() {
            bail!("the certificate file holds no certificate");
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).context("parsing the private key")?;
        Ok(TlsMaterial {
            ca_pem: ca_pem.to_vec(),
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.to_vec(),
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        })
    }

    /// Server side: our certificate, and a client certificate signed by the CA required.
    pub fn rustls_server(&self) -> Result<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .context("building the client certificate verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("our certificate and key do not match")?;
        cfg.alpn_protocols = vec![ALPN_QUIC.to_vec()];
        // 0-RTT: an inference request has no side effects, so a replayed one
        // costs only compute. quinn accepts early data only at u32::MAX.
        cfg.max_early_data_size = u32::MAX;
        Ok(cfg)
    }

    /// Client side: the server's certificate must chain to the CA; we present ours.
    pub fn rustls_client(&self) -> Result<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .context("our certificate and key do not match")?;
        cfg.alpn_protocols = vec![ALPN_QUIC.to_vec()];
        // Session tickets are cached (rustls' default store), so reconnects
        // resume, and 0-RTT is used where the server allows it.
        cfg.enable_early_data = true;
        Ok(cfg)
    }

    pub fn grpc_server(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    pub fn grpc_client(&self, server_name: &str) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name)
    }
}

/// Names every generated server certificate carries, besides `--san`.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Writes a development CA and a server and a client certificate signed by
/// it into `out` (created if missing). Keys are written owner-readable only.
pub fn gen_certs(out: &Path, extra_sans: &[String]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edge-offload development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    sans.extend(extra_sans.iter().cloned());
    sans.dedup();
    let leaf =
        |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
            let mut p = CertificateParams::new(names)
                .with_context(|| format!("certificate names for {cn}"))?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![eku];
            p.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let (server_pem, server_key) = leaf(
        sans,
        "edge-offload cloud",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_pem, client_key) = leaf(
        vec!["edge-gateway".into()],
        "edge-offload gateway",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    write(&out.join(CA_FILE), ca.pem().as_bytes(), false)?;
    write(&out.join(SERVER_CERT), server_pem.as_bytes(), false)?;
    write(&out.join(SERVER_KEY), server_key.as_bytes(), true)?;
    write(&out.join(CLIENT_CERT), client_pem.as_bytes(), false)?;
    write(&out.join(CLIENT_KEY), client_key.as_bytes(), true)?;
    Ok(())
}

fn write(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("edge-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generated_certificates_load_on_both_sides() {
        let dir = tmp("gen");
        gen_certs(&dir, &["198.18.0.2".into()]).unwrap();
        let server = TlsConfig::from_dir(&dir, Side::Server)
            .load(Side::Server)
            .unwrap()
            .unwrap();
        let client = TlsConfig::from_dir(&dir, Side::Client)
            .load(Side::Client)
            .unwrap()
            .unwrap();
        server.rustls_server().unwrap();
        client.rustls_client().unwrap();
        let mode = std::fs::metadata(dir.join(SERVER_KEY)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_and_garbage_are_clear_errors() {
        let err = TlsConfig::default()
            .load(Side::Client)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TLS is required") && err.contains("--insecure"),
            "{err}"
        );
        assert!(TlsConfig {
            insecure: true,
            ..Default::default()
        }
        .load(Side::Server)
        .unwrap()
        .is_none());
        let err = TlsMaterial::from_pem(b"nope", b"nope", b"nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("CA file holds no certificate"), "{err}");
    }
}
