//! The node's identity: its ed25519 signing key (with a key id) and its TLS certificate for the
//! federation, made by `ammotrace init` and kept in the data directory. Secrets are written
//! with mode 0600 and never overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// File names inside the data directory.
pub const SIGNING_KEY_FILE: &str = "node.key";
pub const PUBLIC_KEY_FILE: &str = "node.pub";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The node's signing key and its public identity.
pub struct Identity {
    pub node_id: String,
    signing_key: SigningKey,
}

impl Identity {
    /// Key id: `ed25519:` and the first 16 bytes of SHA-256 of the public key, base64url.
    pub fn key_id(&self) -> String {
        key_id(&self.signing_key.verifying_key())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// Loads the signing key written by [`init`].
    pub fn load(data_dir: &Path, node_id: &str) -> anyhow::Result<Identity> {
        let pem = fs::read_to_string(data_dir.join(SIGNING_KEY_FILE))?;
        let signing_key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{SIGNING_KEY_FILE} is not a PKCS#8 ed25519 key: {e}"))?;
        Ok(Identity {
            node_id: node_id.to_owned(),
            signing_key,
        })
    }
}

/// Key id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("ed25519:{}", URL_SAFE_NO_PAD.encode(&digest[..16]))
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes)
}

/// A new random API token (32 bytes, base64url).
pub fn new_token() -> anyhow::Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// Writes a secret file readable by its owner only; refuses to overwrite.
pub fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// What `init` made.
pub struct Created {
    pub key_id: String,
    pub admin_token: String,
}

/// Makes the key pair, the TLS certificate and the admin token in `data_dir`.
pub fn init(data_dir: &Path, node_id: &str) -> anyhow::Result<Created> {
    let signing_key = SigningKey::from_bytes(&random_bytes::<32>()?);
    let pem = signing_key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the signing key: {e}"))?;
    write_secret(&data_dir.join(SIGNING_KEY_FILE), pem.as_bytes())?;
    let verifying = signing_key.verifying_key();
    let key_id = key_id(&verifying);
    fs::write(
        data_dir.join(PUBLIC_KEY_FILE),
        format!(
            "{key_id} {}\n",
            URL_SAFE_NO_PAD.encode(verifying.as_bytes())
        ),
    )?;

    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        node_id.to_lowercase(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    fs::write(data_dir.join(TLS_CERT_FILE), certified.cert.pem())?;
    write_secret(
        &data_dir.join(TLS_KEY_FILE),
        certified.signing_key.serialize_pem().as_bytes(),
    )?;

    let admin_token = new_token()?;
    write_secret(
        &data_dir.join(ADMIN_TOKEN_FILE),
        format!("{admin_token}\n").as_bytes(),
    )?;
    Ok(Created {
        key_id,
        admin_token,
    })
}

/// SHA-256 of a token, hex: how tokens are named in the configuration.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_secrets_0600_and_reloads_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let created = init(dir.path(), "XAA").unwrap();
        for file in [SIGNING_KEY_FILE, TLS_KEY_FILE, ADMIN_TOKEN_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let identity = Identity::load(dir.path(), "XAA").unwrap();
        assert_eq!(identity.key_id(), created.key_id);
        assert!(
            init(dir.path(), "XAA").is_err(),
            "init must not overwrite secrets"
        );
    }
}
