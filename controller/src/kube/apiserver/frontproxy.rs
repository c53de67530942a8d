//! Who is asking: the Kubernetes API server's front proxy and the user it forwards.
//!
//! kube-apiserver authenticates the user, then proxies the request to the aggregated server
//! with a client certificate signed by its *requestheader* CA and the user in headers
//! (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-<key>`). Which CA, which certificate
//! names and which headers is published in the ConfigMap
//! `kube-system/extension-apiserver-authentication` ([`RequestHeaderConfig::from_config_map`]).
//!
//! ## Security
//! The user headers are believed only on a connection whose client certificate chains to the
//! requestheader CA (checked during the TLS handshake, see [`super::tls`]) and whose subject
//! CommonName is one of `requestheader-allowed-names` (any name when that list is empty, as
//! Kubernetes does). Anything else is a 401 before a header is read ([`authenticate`]).

use std::collections::BTreeMap;

use axum::http::HeaderMap;

/// The ConfigMap kube-apiserver publishes its authentication settings in.
pub const AUTH_CONFIG_MAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// The keys of [`AUTH_CONFIG_MAP`] this server reads.
const CLIENT_CA: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES: &str = "requestheader-allowed-names";
const USERNAME_HEADERS: &str = "requestheader-username-headers";
const GROUP_HEADERS: &str = "requestheader-group-headers";
const EXTRA_PREFIXES: &str = "requestheader-extra-headers-prefix";
const UID_HEADERS: &str = "requestheader-uid-headers";

/// The front proxy's settings: its CA, the certificate names it may use, the user headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM bundle of the requestheader client CA.
    pub client_ca_pem: String,
    /// Subject CommonNames the front proxy's certificate may have; empty: any.
    pub allowed_names: Vec<String>,
    /// Headers holding the user name (the first non-empty one wins).
    pub username_headers: Vec<String>,
    /// Headers holding the groups (every value of every one).
    pub group_headers: Vec<String>,
    /// Prefixes of the headers holding extra attributes.
    pub extra_prefixes: Vec<String>,
    /// Headers holding the user's uid (Kubernetes 1.32+; may be empty).
    pub uid_headers: Vec<String>,
}

/// Why the ConfigMap cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key every front proxy sets is absent or empty.
    #[error(
        "{key} is missing in ConfigMap kube-system/extension-apiserver-authentication: \
         kube-apiserver runs without a front proxy (--requestheader-client-ca-file and \
         --requestheader-username-headers), which aggregated API servers need"
    )]
    Missing { key: &'static str },
    /// A list key is not a JSON array of strings.
    #[error(
        "{key} in ConfigMap kube-system/extension-apiserver-authentication is not a JSON array of strings: {value:?}"
    )]
    NotAList { key: &'static str, value: String },
}

impl RequestHeaderConfig {
    /// Reads the ConfigMap's `data`. The list keys hold JSON arrays (`["X-Remote-User"]`), as
    /// kube-apiserver writes them.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] without the CA or the username headers; [`ConfigError::NotAList`]
    /// for a list that does not parse.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let client_ca_pem = data
            .get(CLIENT_CA)
            .filter(|pem| !pem.trim().is_empty())
            .cloned()
            .ok_or(ConfigError::Missing { key: CLIENT_CA })?;
        let username_headers = list(data, USERNAME_HEADERS)?;
        if username_headers.is_empty() {
            return Err(ConfigError::Missing { key: USERNAME_HEADERS });
        }
        Ok(Self {
            client_ca_pem,
            allowed_names: list(data, ALLOWED_NAMES)?,
            username_headers,
            group_headers: list(data, GROUP_HEADERS)?,
            extra_prefixes: list(data, EXTRA_PREFIXES)?,
            uid_headers: list(data, UID_HEADERS)?,
        })
    }
}

/// A JSON list of non-empty strings under `key`; absent or empty text: no entries.
fn list(data: &BTreeMap<String, String>, key: &'static str) -> Result<Vec<String>, ConfigError> {
    let Some(text) = data.get(key).filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let values: Vec<String> =
        serde_json::from_str(text).map_err(|_| ConfigError::NotAList { key, value: text.clone() })?;
    Ok(values.into_iter().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

/// The user kube-apiserver authenticated, as the front proxy forwarded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    /// Keys lowercased and unescaped as Kubernetes does.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The client certificate of a connection, as far as authentication cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate (a probe, a curl): may read discovery, nothing else.
    #[default]
    Anonymous,
    /// A certificate that chains to the requestheader CA (the handshake refuses any other),
    /// with its subject CommonName (`None`: it has none).
    Verified { common_name: Option<String> },
}

/// The user of a request to a protected route, or why there is none (a 401).
///
/// # Errors
/// A message for the 401: no client certificate, a certificate name that is not allowed, no
/// user header.
pub fn authenticate(
    config: &RequestHeaderConfig,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<UserInfo, String> {
    let common_name = match peer {
        Peer::Anonymous => {
            return Err("no client certificate: UploadTokenRequests are served only through the \
                        Kubernetes API server (kubectl create, virtctl image-upload)"
                .to_owned());
        }
        Peer::Verified { common_name } => common_name.as_deref().unwrap_or_default(),
    };
    if !config.allowed_names.is_empty() && !config.allowed_names.iter().any(|n| n == common_name) {
        return Err(format!(
            "client certificate CN {common_name:?} is not one of requestheader-allowed-names {:?}",
            config.allowed_names
        ));
    }
    let name = first_value(headers, &config.username_headers).ok_or_else(|| {
        format!("the front proxy sent no user (none of the headers {:?})", config.username_headers)
    })?;
    Ok(UserInfo {
        name,
        uid: first_value(headers, &config.uid_headers),
        groups: config.group_headers.iter().flat_map(|h| values(headers, h)).collect(),
        extra: extra(headers, &config.extra_prefixes),
    })
}

/// Non-empty values of header `name`.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first non-empty value among `names` (Kubernetes' order: header by header).
fn first_value(headers: &HeaderMap, names: &[String]) -> Option<String> {
    names.iter().find_map(|name| values(headers, name).into_iter().next())
}

/// Extra attributes: every header starting with one of `prefixes` (case-insensitive); the key
/// is the rest, lowercased, then percent-decoded (kube-apiserver escapes keys that are not
/// header-safe).
fn extra(headers: &HeaderMap, prefixes: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in prefixes.iter().map(|p| p.to_ascii_lowercase()) {
        for (name, value) in headers {
            // Header names are lowercase in `http`.
            let Some(rest) = name.as_str().strip_prefix(&prefix).filter(|r| !r.is_empty()) else {
                continue;
            };
            let Ok(value) = value.to_str() else { continue };
            out.entry(percent_decode(rest)).or_default().push(value.to_owned());
        }
    }
    out
}

/// `%XX` escapes decoded; an invalid escape is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The subject CommonName of a DER certificate (the last one when there are several, as Go's
/// `pkix.Name` keeps it), or `None` when it has none or the DER does not parse. Only called on
/// certificates the TLS handshake already verified.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    let (_, certificate, _) = der(cert).filter(|(tag, ..)| *tag == SEQUENCE)?;
    let (_, tbs, _) = der(certificate).filter(|(tag, ..)| *tag == SEQUENCE)?;
    let mut rest = tbs;
    if der(rest)?.0 == VERSION {
        rest = der(rest)?.2;
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (_, mut names, _) = der(rest).filter(|(tag, ..)| *tag == SEQUENCE)?;
    let mut common_name = None;
    while !names.is_empty() {
        let (_, mut set, next) = der(names).filter(|(tag, ..)| *tag == SET)?;
        names = next;
        while !set.is_empty() {
            let (_, attribute, next) = der(set).filter(|(tag, ..)| *tag == SEQUENCE)?;
            set = next;
            let (_, oid, value) = der(attribute).filter(|(tag, ..)| *tag == OID)?;
            if oid == COMMON_NAME {
                common_name = Some(String::from_utf8(der(value)?.1.to_vec()).ok()?);
            }
        }
    }
    common_name
}

/// One DER element at the start of `input`: (tag, contents, what follows). `None` when it
/// runs past the end or uses a length form DER forbids.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, rest) = rest.split_at(count);
        (digits.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)), rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// What kubeadm's kube-apiserver publishes.
    fn kubeadm() -> BTreeMap<String, String> {
        data(&[
            ("client-ca-file", "ignored"),
            (CLIENT_CA, "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"),
            (ALLOWED_NAMES, r#"["front-proxy-client"]"#),
            (USERNAME_HEADERS, r#"["X-Remote-User"]"#),
            (GROUP_HEADERS, r#"["X-Remote-Group"]"#),
            (EXTRA_PREFIXES, r#"["X-Remote-Extra-"]"#),
        ])
    }

    #[test]
    fn the_kubeadm_config_map_is_read() {
        let config = RequestHeaderConfig::from_config_map(&kubeadm()).unwrap();
        assert_eq!(config.allowed_names, ["front-proxy-client"]);
        assert_eq!(config.username_headers, ["X-Remote-User"]);
        assert_eq!(config.group_headers, ["X-Remote-Group"]);
        assert_eq!(config.extra_prefixes, ["X-Remote-Extra-"]);
        assert!(config.uid_headers.is_empty());
        assert!(config.client_ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn config_maps_without_a_front_proxy_or_with_bad_lists_are_refused() {
        let cases: &[(&str, Option<&str>, ConfigError)] = &[
            (CLIENT_CA, None, ConfigError::Missing { key: CLIENT_CA }),
            (CLIENT_CA, Some("  "), ConfigError::Missing { key: CLIENT_CA }),
            (USERNAME_HEADERS, None, ConfigError::Missing { key: USERNAME_HEADERS }),
            (USERNAME_HEADERS, Some("[]"), ConfigError::Missing { key: USERNAME_HEADERS }),
            (
                GROUP_HEADERS,
                Some("X-Remote-Group"),
                ConfigError::NotAList { key: GROUP_HEADERS, value: "X-Remote-Group".into() },
            ),
            (ALLOWED_NAMES, Some("[1]"), ConfigError::NotAList { key: ALLOWED_NAMES, value: "[1]".into() }),
        ];
        for (key, value, expected) in cases {
            let mut map = kubeadm();
            match value {
                Some(v) => map.insert((*key).to_owned(), (*v).to_owned()),
                None => map.remove(*key),
            };
            assert_eq!(RequestHeaderConfig::from_config_map(&map).as_ref(), Err(expected), "{key}={value:?}");
        }
        let message = ConfigError::Missing { key: CLIENT_CA }.to_string();
        assert!(message.contains("--requestheader-client-ca-file"), "{message}");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn proxy(name: &str) -> Peer {
        Peer::Verified { common_name: Some(name.to_owned()) }
    }

    #[test]
    fn the_forwarded_user_groups_and_extras_are_read() {
        let mut config = RequestHeaderConfig::from_config_map(&kubeadm()).unwrap();
        config.uid_headers = vec!["X-Remote-Uid".into()];
        let sent = headers(&[
            ("X-Remote-User", "alice"),
            ("X-Remote-Uid", "u-1"),
            ("X-Remote-Group", "devs"),
            ("X-Remote-Group", "system:authenticated"),
            ("X-Remote-Extra-Scopes", "a"),
            ("X-Remote-Extra-Scopes", "b"),
            ("X-Remote-Extra-Example.com%2fteam", "storage"),
        ]);

        let user = authenticate(&config, &proxy("front-proxy-client"), &sent).unwrap();

        assert_eq!(user.name, "alice");
        assert_eq!(user.uid.as_deref(), Some("u-1"));
        assert_eq!(user.groups, ["devs", "system:authenticated"]);
        assert_eq!(
            user.extra,
            BTreeMap::from([
                ("example.com/team".to_owned(), vec!["storage".to_owned()]),
                ("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ])
        );
    }

    #[test]
    fn user_headers_count_only_from_an_allowed_front_proxy() {
        let config = RequestHeaderConfig::from_config_map(&kubeadm()).unwrap();
        let sent = headers(&[("X-Remote-User", "alice"), ("X-Remote-Group", "system:masters")]);
        let cases: &[(Peer, &str)] = &[
            (Peer::Anonymous, "no client certificate"),
            (proxy("someone-else"), "CN \"someone-else\" is not one of requestheader-allowed-names"),
            (Peer::Verified { common_name: None }, "CN \"\" is not one of"),
        ];
        for (peer, expected) in cases {
            let refusal = authenticate(&config, peer, &sent).unwrap_err();
            assert!(refusal.contains(expected), "{peer:?}: {refusal}");
        }
        // An empty allowed-names list admits any certificate of the CA (Kubernetes' rule).
        let open = RequestHeaderConfig { allowed_names: Vec::new(), ..config };
        assert_eq!(authenticate(&open, &proxy("anything"), &sent).unwrap().name, "alice");
    }

    #[test]
    fn a_request_without_a_user_header_is_refused() {
        let config = RequestHeaderConfig::from_config_map(&kubeadm()).unwrap();
        for sent in [headers(&[]), headers(&[("X-Remote-User", "")]), headers(&[("X-Remote-Group", "g")])] {
            let refusal = authenticate(&config, &proxy("front-proxy-client"), &sent).unwrap_err();
            assert!(refusal.contains("sent no user"), "{refusal}");
        }
    }

    #[test]
    fn percent_escapes_are_decoded_and_bad_ones_kept() {
        assert_eq!(percent_decode("a%2fb%2Fc"), "a/b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn der_lengths_that_run_past_the_end_or_are_not_der_are_refused() {
        assert_eq!(der(&[0x30, 0x02, 0x05, 0x00, 0xff]), Some((0x30, &[0x05, 0x00][..], &[0xff][..])));
        assert_eq!(der(&[0x30, 0x81, 0x01, 0x00]), Some((0x30, &[0x00][..], &[][..])));
        let bad_lengths: [&[u8]; 6] = [
            &[],
            &[0x30],
            &[0x30, 0x03, 0x00],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0x01],
        ];
        for bad in bad_lengths {
            assert_eq!(der(bad), None, "{bad:?}");
        }
        assert_eq!(subject_common_name(b"not a certificate"), None);
        assert_eq!(subject_common_name(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
