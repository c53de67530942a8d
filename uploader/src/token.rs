//! Signed upload tokens: who may upload into which volume, until when.
//!
//! A token is `v1.<payload>.<mac>`: the payload is the JSON [`Claims`] in unpadded base64url,
//! the MAC is HMAC-SHA256 over `v1.<payload>` with the server's [`TokenKey`], also base64url.
//! CDI signs a JWT with an RSA key (PS256); nobody outside the server ever verifies a token,
//! so a shared-key MAC is enough and much cheaper. Tokens are opaque to clients either way.
//!
//! ## Per-volume keys (Kubernetes mode)
//! A cluster has one global key (Secret `diskplane-upload-token-key`), held by the controller,
//! the upload proxy and the token issuer. Each DataVolume's upload Pod gets only a key
//! *derived* from it ([`TokenKey::derive`]): the lowercase hex of
//! HMAC-SHA256(global, `upload/v1/<namespace>/<name>/<uid>`), whose 64 ASCII bytes are the key
//! (exactly the text the controller writes into the Secret `cdi-upload-<dv>` and the Pod reads
//! as its key file). Tokens for a DataVolume are signed with its derived key and carry its uid
//! ([`Claims::uid`]); the proxy reads the (not yet verified) claims with [`peek`], derives the
//! key they name and verifies with it, so forging claims only selects another key. Kubernetes
//! namespaces, names and uids never contain `/`, so the label is unambiguous (the proxy refuses
//! claims that do). A leaked per-volume Secret opens only that volume, and only while the
//! DataVolume with that uid exists.
//!
//! ## Security
//! The MAC is checked with `hmac`'s constant-time comparison before the payload is parsed.
//! A token names exactly one volume in one namespace and expires (5 minutes by default, like
//! CDI); `iat` in the future (beyond [`CLOCK_SKEW_SECS`]) is refused too. Keys are never
//! printed (`Debug` redacts them).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token is valid by default (CDI: 5 minutes).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// Clock difference tolerated between the issuer and the verifier (CDI's leeway is 10 s).
pub const CLOCK_SKEW_SECS: u64 = 10;

/// Shortest key accepted from a file: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// The operation every upload token is issued for (CDI's `operation: Upload`).
const OPERATION_UPLOAD: &str = "Upload";

const VERSION_PREFIX: &str = "v1.";

/// Start of the label a per-volume key is derived for (see the module docs).
pub const DERIVATION_PREFIX: &str = "upload/v1/";

type HmacSha256 = Hmac<Sha256>;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The volume's namespace.
    #[serde(rename = "ns")]
    pub namespace: String,
    /// The volume (PVC / DataVolume) name.
    pub name: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Always `Upload`.
    #[serde(rename = "op")]
    pub operation: String,
    /// The DataVolume's uid: set in tokens for a cluster's upload proxy (it selects the
    /// per-volume key, see the module docs); empty elsewhere.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The DataVolume's content type: the upload proxy forwards archive uploads to the upload
    /// server's `/upload-archive` route (signed, so clients cannot change it).
    #[serde(rename = "ct", default, skip_serializing_if = "UploadContent::is_kubevirt")]
    pub content: UploadContent,
}

/// A DataVolume's `contentType`, as far as uploads care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadContent {
    /// A disk image (`kubevirt`, the default).
    #[default]
    Kubevirt,
    /// A tar archive extracted into a Filesystem volume (`archive`).
    Archive,
}

impl UploadContent {
    fn is_kubevirt(&self) -> bool {
        *self == Self::Kubevirt
    }
}

impl Claims {
    /// Upload claims for `namespace/name`, issued at `now` (Unix seconds), valid for `ttl`.
    pub fn upload(namespace: &str, name: &str, now: u64, ttl: Duration) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            operation: OPERATION_UPLOAD.to_owned(),
            uid: String::new(),
            content: UploadContent::Kubevirt,
        }
    }

    /// These claims for the DataVolume with `uid` and content type `content` (cluster tokens,
    /// signed with the key [`TokenKey::derive`] gives for them).
    #[must_use]
    pub fn for_data_volume(mut self, uid: &str, content: UploadContent) -> Self {
        uid.clone_into(&mut self.uid);
        self.content = content;
        self
    }

    /// Whether these are upload claims (operation `Upload`).
    pub fn is_upload(&self) -> bool {
        self.operation == OPERATION_UPLOAD
    }
}

/// Why a token was refused. Every variant is a 401 at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no upload token (send Authorization: Bearer <token>)")]
    Missing,
    /// Not a token of ours.
    #[error("malformed upload token: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: forged, altered, or signed with another key.
    #[error("upload token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("upload token expired {ago} s ago")]
    Expired {
        /// Seconds since expiry.
        ago: u64,
    },
    /// Issued in the future (clock skew beyond [`CLOCK_SKEW_SECS`]).
    #[error("upload token is not valid yet (issued {ahead} s in the future)")]
    NotYetValid {
        /// Seconds ahead of now.
        ahead: u64,
    },
    /// Valid, but for another volume or operation.
    #[error("upload token is for {token_for}, not for {requested}")]
    OtherVolume {
        /// `namespace/name` in the token.
        token_for: String,
        /// `namespace/name` requested.
        requested: String,
    },
}

/// The HMAC key tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl PartialEq for TokenKey {
    /// Constant time in the key's contents (lengths may differ observably).
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for TokenKey {}

impl TokenKey {
    /// A key from bytes (at least [`MIN_KEY_BYTES`]).
    ///
    /// # Errors
    /// A message when the key is too short.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!("token key has {} bytes, at least {MIN_KEY_BYTES} are needed", bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Reads the key file (its bytes are the key; e.g. `head -c 32 /dev/urandom > key`).
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or is too short.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("reading the token key {}: {e}", path.display()))?;
        Self::from_bytes(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A fresh random 32-byte key from the kernel's random source (tokens then live as long as
    /// the process).
    ///
    /// # Errors
    /// When `/dev/urandom` cannot be read.
    pub fn random() -> std::io::Result<Self> {
        use std::io::Read;
        let mut key = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Self(key))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length: this cannot fail.
        <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
    }

    /// The per-volume key of the DataVolume `namespace/name` with `uid`, as text: lowercase hex
    /// of HMAC-SHA256(self, `upload/v1/<namespace>/<name>/<uid>`) (what the controller writes
    /// into the upload Pod's Secret).
    pub fn derive_hex(&self, namespace: &str, name: &str, uid: &str) -> String {
        let mut mac = self.mac();
        mac.update(format!("{DERIVATION_PREFIX}{namespace}/{name}/{uid}").as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The per-volume key of the DataVolume `namespace/name` with `uid`: the 64 ASCII bytes of
    /// [`TokenKey::derive_hex`] (as the upload Pod reads them from its key file).
    pub fn derive(&self, namespace: &str, name: &str, uid: &str) -> TokenKey {
        TokenKey(self.derive_hex(namespace, name, uid).into_bytes())
    }

    /// A cluster upload token for the DataVolume `namespace/name` with `uid` and content type
    /// `content`, issued at `now` for [`DEFAULT_TTL`]: the claims name the uid and are signed
    /// with the key [`TokenKey::derive`] gives for that DataVolume (what the upload proxy and
    /// the upload Pod verify). `self` is the global key.
    pub fn issue_for_data_volume(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        content: UploadContent,
        now: u64,
    ) -> String {
        let claims = Claims::upload(namespace, name, now, DEFAULT_TTL).for_data_volume(uid, content);
        self.derive(namespace, name, uid).issue(&claims)
    }

    /// Signs `claims` into a token.
    pub fn issue(&self, claims: &Claims) -> String {
        // Serializing plain strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{VERSION_PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks the MAC (constant time) and the validity period; returns the claims.
    ///
    /// # Errors
    /// [`TokenError::Malformed`], [`TokenError::BadSignature`], [`TokenError::Expired`],
    /// [`TokenError::NotYetValid`].
    pub fn decode(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (payload, tag) = split(token)?;
        let tag =
            URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(VERSION_PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        let claims = parse_payload(payload)?;
        if now >= claims.exp {
            return Err(TokenError::Expired { ago: now - claims.exp });
        }
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid { ahead: claims.iat - now });
        }
        Ok(claims)
    }

    /// [`TokenKey::decode`], then checks that the token is an upload token for `namespace/name`.
    ///
    /// # Errors
    /// As [`TokenKey::decode`], and [`TokenError::OtherVolume`].
    pub fn verify(&self, token: &str, namespace: &str, name: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.decode(token, now)?;
        if claims.namespace != namespace || claims.name != name || claims.operation != OPERATION_UPLOAD {
            return Err(TokenError::OtherVolume {
                token_for: format!("{}/{}", claims.namespace, claims.name),
                requested: format!("{namespace}/{name}"),
            });
        }
        Ok(claims)
    }
}

/// The payload and the signature of a token.
fn split(token: &str) -> Result<(&str, &str), TokenError> {
    let body = token.strip_prefix(VERSION_PREFIX).ok_or(TokenError::Malformed("unknown version"))?;
    body.split_once('.').ok_or(TokenError::Malformed("no signature"))
}

fn parse_payload(payload: &str) -> Result<Claims, TokenError> {
    let json =
        URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("payload is not upload claims"))
}

/// The claims of a token **without verifying anything**: only to pick the key to verify it
/// with (the upload proxy derives the per-volume key from the namespace, name and uid read
/// here, then calls [`TokenKey::decode`] with it). Never trust them otherwise.
///
/// # Errors
/// [`TokenError::Malformed`] when it is not a token of ours.
pub fn peek(token: &str) -> Result<Claims, TokenError> {
    let (payload, _) = split(token)?;
    parse_payload(payload)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The token in an `Authorization` header value: `Bearer <token>` (scheme case-insensitive).
///
/// # Errors
/// [`TokenError::Missing`] for no header, [`TokenError::Malformed`] for another scheme.
pub fn bearer(header: Option<&str>) -> Result<&str, TokenError> {
    let value = header.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) =
        value.split_once(char::is_whitespace).ok_or(TokenError::Malformed("not a Bearer token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Malformed("not a Bearer token"));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn an_issued_token_verifies_for_its_volume() {
        let token = key().issue(&Claims::upload("ns", "disk", NOW, DEFAULT_TTL));

        let claims = key().verify(&token, "ns", "disk", NOW + 10).unwrap();

        assert_eq!(claims.exp, NOW + 300);
        assert_eq!(claims.operation, "Upload");
    }

    #[test]
    fn a_token_for_another_volume_or_namespace_is_refused() {
        let token = key().issue(&Claims::upload("ns", "disk", NOW, DEFAULT_TTL));

        let err = key().verify(&token, "ns", "other", NOW).unwrap_err();
        assert_eq!(err.to_string(), "upload token is for ns/disk, not for ns/other");
        assert!(matches!(key().verify(&token, "ns2", "disk", NOW), Err(TokenError::OtherVolume { .. })));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let token = key().issue(&Claims::upload("ns", "disk", NOW, DEFAULT_TTL));

        assert_eq!(key().verify(&token, "ns", "disk", NOW + 301), Err(TokenError::Expired { ago: 1 }));
        assert!(key().verify(&token, "ns", "disk", NOW + 299).is_ok());
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let token = key().issue(&Claims::upload("ns", "disk", NOW + 60, DEFAULT_TTL));

        assert_eq!(key().decode(&token, NOW), Err(TokenError::NotYetValid { ahead: 60 }));
    }

    #[test]
    fn another_key_or_an_altered_payload_breaks_the_signature() {
        let token = key().issue(&Claims::upload("ns", "disk", NOW, DEFAULT_TTL));
        let other = TokenKey::from_bytes(vec![7u8; 32]).unwrap();
        assert_eq!(other.decode(&token, NOW), Err(TokenError::BadSignature));

        // Re-sign nothing, just swap in the payload of a token for another volume.
        let foreign = key().issue(&Claims::upload("ns", "evil", NOW, DEFAULT_TTL));
        let (_, tag) = token.rsplit_once('.').unwrap();
        let (payload, _) = foreign.rsplit_once('.').unwrap();
        assert_eq!(key().decode(&format!("{payload}.{tag}"), NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "v1.", "v2.abc.def", "v1.abc", "v1.abc.!!!"] {
            assert!(matches!(key().decode(token, NOW), Err(TokenError::Malformed(_))), "{token:?}");
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(TokenKey::from_bytes(vec![1; 15]).is_err());
        assert_eq!(TokenKey::random().unwrap().0.len(), 32);
        assert_eq!(format!("{:?}", key()), "TokenKey(<redacted>)");
    }

    #[test]
    fn derived_keys_are_hmac_of_the_volume_label_and_differ_per_volume() {
        let global = key();
        let derived = global.derive_hex("ns", "disk", "uid-1");
        // HMAC-SHA256("0123456789abcdef0123456789abcdef", "upload/v1/ns/disk/uid-1"), computed
        // independently with `openssl dgst -sha256 -hmac`.
        assert_eq!(derived, DERIVED_NS_DISK_UID1);
        assert_eq!(global.derive("ns", "disk", "uid-1"), TokenKey::from_bytes(derived.into_bytes()).unwrap());
        for (ns, name, uid) in [("ns", "disk", "uid-2"), ("ns", "disk2", "uid-1"), ("ns2", "disk", "uid-1")] {
            assert_ne!(global.derive_hex(ns, name, uid), DERIVED_NS_DISK_UID1, "{ns}/{name}/{uid}");
        }
        let other = TokenKey::from_bytes(vec![7u8; 32]).unwrap();
        assert_ne!(other.derive_hex("ns", "disk", "uid-1"), DERIVED_NS_DISK_UID1);
    }

    /// See `derived_keys_are_hmac_of_the_volume_label_and_differ_per_volume`.
    const DERIVED_NS_DISK_UID1: &str = "1cd6c629394583340cbf1304f8217708d4586f378e5ecbd081bbd1b49bcf93a4";

    #[test]
    fn a_token_signed_with_a_derived_key_verifies_only_with_that_key() {
        let global = key();
        let claims =
            Claims::upload("ns", "disk", NOW, DEFAULT_TTL).for_data_volume("uid-1", UploadContent::Archive);
        let token = global.derive("ns", "disk", "uid-1").issue(&claims);

        let seen = peek(&token).unwrap();
        assert_eq!((seen.uid.as_str(), seen.content), ("uid-1", UploadContent::Archive));
        let verified = global.derive(&seen.namespace, &seen.name, &seen.uid).decode(&token, NOW).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(global.decode(&token, NOW), Err(TokenError::BadSignature));
        assert_eq!(global.derive("ns", "disk", "uid-2").decode(&token, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_data_volume_token_names_its_uid_and_verifies_only_with_its_derived_key() {
        let global = key();
        let token = global.issue_for_data_volume("ns", "disk", "uid-1", UploadContent::Archive, NOW);

        let expected =
            Claims::upload("ns", "disk", NOW, DEFAULT_TTL).for_data_volume("uid-1", UploadContent::Archive);
        assert_eq!(global.derive("ns", "disk", "uid-1").verify(&token, "ns", "disk", NOW), Ok(expected));
        assert_eq!(global.decode(&token, NOW), Err(TokenError::BadSignature));
        assert_eq!(global.derive("ns", "disk", "uid-2").decode(&token, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn claims_without_uid_keep_the_old_wire_format() {
        let token = key().issue(&Claims::upload("ns", "disk", NOW, DEFAULT_TTL));
        let (payload, _) = split(&token).unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"ns":"ns","name":"disk","iat":{NOW},"exp":{},"op":"Upload"}}"#, NOW + 300)
        );
        let claims = peek(&token).unwrap();
        assert_eq!((claims.uid.as_str(), claims.content), ("", UploadContent::Kubevirt));
        assert!(matches!(peek("v1.!!.x"), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(TokenError::Missing));
        assert!(matches!(bearer(Some("Basic abc")), Err(TokenError::Malformed(_))));
        assert!(matches!(bearer(Some("Bearer")), Err(TokenError::Malformed(_))));
    }
}
