//! Sealing: AES-256-GCM (aws-lc-rs) with a random 96-bit nonce per seal and associated data that
//! binds a ciphertext to where it belongs (a value to its secret and version, a data key to its
//! secret), so that sealed bytes moved elsewhere in the database do not open. Each secret has
//! its own data key; data keys are sealed by the master key.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

use crate::SecretError;

const KEY_LEN: usize = 32;

/// Fresh random bytes from the system's generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| SecretError::Crypto("the system's random generator failed"))?;
    Ok(b)
}

/// A 256-bit AES key: the master key, or a secret's data key. Never printed.
pub(crate) struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub(crate) fn generate() -> Result<Key, SecretError> {
        Ok(Key(random()?))
    }

    fn aead(&self) -> Result<LessSafeKey, SecretError> {
        Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).map_err(|_| SecretError::Crypto("an AES key was refused"))?))
    }

    /// `nonce ‖ ciphertext ‖ tag`, base64.
    pub(crate) fn seal(&self, aad: &str, plain: &[u8]) -> Result<String, SecretError> {
        let nonce: [u8; NONCE_LEN] = random()?;
        let mut out = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut out)
            .map_err(|_| SecretError::Crypto("sealing failed"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// Opens what [`Key::seal`] made with the same key and `aad`; anything else is an error.
    pub(crate) fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| SecretError::Crypto("sealed data is not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Crypto("sealed data is too short"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Crypto("sealed data has a bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self.aead()?.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf).map_err(|_| {
            SecretError::Crypto("sealed data does not open with this key: it was changed, moved, or sealed under another master key")
        })?;
        Ok(plain.to_vec())
    }

    /// This key sealed by `by` (a data key under the master key).
    pub(crate) fn wrap(&self, by: &Key, aad: &str) -> Result<String, SecretError> {
        by.seal(aad, &self.0)
    }

    pub(crate) fn unwrap(sealed: &str, by: &Key, aad: &str) -> Result<Key, SecretError> {
        let bytes = by.open(aad, sealed)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SecretError::Crypto("a sealed data key has the wrong length"))?;
        Ok(Key(key))
    }

    /// A value that shows whether two keys are the same without revealing either: HMAC-SHA256 of
    /// a fixed text, hex.
    pub(crate) fn fingerprint(&self) -> String {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.0);
        hex::encode(aws_lc_rs::hmac::sign(&k, b"berth master key fingerprint v1").as_ref())
    }
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the key (64 hex digits or base64 of 32 bytes). `create`: make it (mode
    /// 0600) when it does not exist and no secret was ever sealed — berth's own
    /// `<data dir>/master.key`.
    File { path: PathBuf, create: bool },
    /// A command (run by `sh -c`) that prints the key, e.g. one that asks a KMS.
    Command(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File { path, .. } => write!(f, "the key file {}", path.display()),
            KeySource::Command(c) => write!(f, "the key command `{c}`"),
        }
    }
}

/// The key's text: 64 hex digits, or base64 of 32 bytes.
fn parse_key(text: &str, from: &KeySource) -> Result<Key, SecretError> {
    let t = text.trim();
    let bytes = if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(t).ok()
    };
    match bytes.and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok()) {
        Some(k) => Ok(Key(k)),
        None => Err(SecretError::KeySource(format!("{from} does not hold a key: it must be 64 hex digits or base64 of 32 bytes"))),
    }
}

/// Reads the master key; makes it when the source allows and `may_create` (nothing was ever
/// sealed). Returns it and whether it was made now.
pub(crate) fn load_master(source: &KeySource, may_create: bool) -> Result<(Key, bool), SecretError> {
    match source {
        KeySource::File { path, create } => match std::fs::read_to_string(path) {
            Ok(text) => {
                check_mode(path)?;
                Ok((parse_key(&text, source)?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *create && may_create => Ok((create_key_file(path)?, true)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SecretError::KeySource(format!(
                "{source} is missing, and secrets were sealed with it; restore it from your backup (berth never makes a new one over existing secrets)"
            ))),
            Err(e) => Err(SecretError::KeySource(format!("reading {source}: {e}"))),
        },
        KeySource::Command(cmd) => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| SecretError::KeySource(format!("running {source}: {e}")))?;
            if !out.status.success() {
                return Err(SecretError::KeySource(format!("{source} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
            }
            Ok((parse_key(&String::from_utf8_lossy(&out.stdout), source)?, false))
        }
    }
}

/// A key file others can read is refused: it opens every secret.
fn check_mode(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(path).map_err(|e| SecretError::KeySource(format!("reading {}: {e}", path.display())))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretError::KeySource(format!(
            "the key file {} can be read by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

fn create_key_file(path: &Path) -> Result<Key, SecretError> {
    let key = Key::generate()?;
    let failed = |e: std::io::Error| SecretError::KeySource(format!("creating the key file {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(failed)?;
    f.write_all(format!("{}\n", hex::encode(key.0)).as_bytes()).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_place() -> Result<(), SecretError> {
        let (a, b) = (Key::generate()?, Key::generate()?);
        let sealed = a.seal("secret\0db\0v1", b"hunter2")?;
        assert_eq!(a.open("secret\0db\0v1", &sealed)?, b"hunter2");
        assert!(a.open("secret\0db\0v2", &sealed).is_err(), "moved to another version");
        assert!(b.open("secret\0db\0v1", &sealed).is_err(), "another key");
        assert_ne!(a.seal("x", b"same")?, a.seal("x", b"same")?, "a fresh nonce each time");
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap_or_default();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        assert!(a.open("secret\0db\0v1", &base64::engine::general_purpose::STANDARD.encode(bytes)).is_err(), "tampered");
        let data = Key::generate()?;
        let wrapped = data.wrap(&a, "key\0db")?;
        assert_eq!(Key::unwrap(&wrapped, &a, "key\0db")?.fingerprint(), data.fingerprint());
        assert!(Key::unwrap(&wrapped, &b, "key\0db").is_err());
        assert_eq!(format!("{a:?}"), "Key(<redacted>)");
        Ok(())
    }

    #[test]
    fn key_files_are_made_once_private_and_never_replaced() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("master.key");
        let source = KeySource::File { path: path.clone(), create: true };
        let missing = load_master(&source, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(missing.contains("is missing") && missing.contains("restore it"), "{missing}");
        let (made, fresh) = load_master(&source, true)?;
        assert!(fresh);
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let (again, fresh) = load_master(&source, true)?;
        assert!(!fresh);
        assert_eq!(again.fingerprint(), made.fingerprint());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let open = load_master(&source, true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(open.contains("chmod 600"), "{open}");

        let command = KeySource::Command(format!("cat {}", path.display()));
        assert_eq!(load_master(&command, true)?.0.fingerprint(), made.fingerprint());
        let b64 = KeySource::Command(format!("echo {}", base64::engine::general_purpose::STANDARD.encode([7u8; 32])));
        assert!(load_master(&b64, false).is_ok());
        let bad = load_master(&KeySource::Command("echo nope".into()), false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad.contains("does not hold a key"), "{bad}");
        let failing = load_master(&KeySource::Command("exit 3".into()), false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(failing.contains("failed"), "{failing}");
        Ok(())
    }
}
