//! Who is calling. A route with `authentication: true` needs either a JWT bearer token or, when API
//! keys are configured, an API key of a known consumer.
//!
//! Tokens: HS256/384/512 with a shared secret (`JWT_SECRET`), RS*/PS*/ES* with public keys from a
//! JWKS file (`JWT_JWKS_FILE`) or URL (`JWT_JWKS_URL`, fetched at start, refreshed periodically and
//! when a token names a key id the gateway does not know, at most every 30 s). The algorithm is
//! pinned: the token's `alg` must be one of `JWT_ALGORITHMS` and match the family of the key it is
//! checked with (an RSA public key is never used as an HMAC secret; `none` is never accepted).
//! `exp` is required; `exp`/`nbf` get `JWT_LEEWAY`; `iss` and `aud` are checked when configured.
//!
//! Roles come from a configurable claim (`ROLES_CLAIM`, a dotted path such as
//! `realm_access.roles`): an array of strings, or one string of space- or comma-separated roles.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reskflow_sidecar::fields::Fields;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::Config;
use crate::edge::{AUTHENTICATED_VIA, USER_ID, USER_ROLES};

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`, or the API key's consumer id.
    pub subject: String,
    pub roles: Vec<String>,
    /// The token's claims (`{}` for an API key), for templates.
    pub claims: Arc<Value>,
    pub via: Via,
    /// How long the credential stays valid from when it was checked (`exp` plus leeway).
    pub valid_for: Duration,
    /// `X-User-Id`, `X-User-Roles` and `X-Authenticated-Via` for upstreams, made once per credential
    /// (a subject or roles that cannot be a field's value are left out).
    pub upstream_fields: Fields,
}

impl Identity {
    fn new(subject: String, roles: Vec<String>, claims: Arc<Value>, via: Via, valid_for: Duration) -> Identity {
        let mut upstream_fields = Fields::with_capacity(96);
        if let Ok(v) = HeaderValue::from_str(&subject) {
            upstream_fields.push(&USER_ID, &v);
        }
        if let Ok(v) = HeaderValue::from_str(&roles.join(",")) {
            upstream_fields.push(&USER_ROLES, &v);
        }
        upstream_fields.push(&AUTHENTICATED_VIA, &HeaderValue::from_static(via.as_str()));
        Identity { subject, roles, claims, via, valid_for, upstream_fields }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Jwt,
    ApiKey,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Jwt => "jwt",
            Via::ApiKey => "api-key",
        }
    }
}

impl Identity {
    pub fn has_any_role(&self, wanted: &[String]) -> bool {
        wanted.iter().any(|w| self.roles.iter().any(|r| r == w))
    }
}

/// Why a caller is not authenticated (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials at all.
    Missing,
    /// Credentials that do not verify; the reason is safe to show.
    Invalid(String),
}

impl AuthError {
    pub fn message(&self) -> &str {
        match self {
            AuthError::Missing => "authentication required: send a bearer token",
            AuthError::Invalid(why) => why,
        }
    }
}

/// An API key consumer, as in `API_KEYS_FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Consumer {
    pub id: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Keys in clear.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Keys as hex SHA-256 digests (so the file need not hold the keys themselves).
    #[serde(default)]
    pub keys_sha256: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumersFile {
    consumers: Vec<Consumer>,
}

/// One public key of the JWKS, with the algorithms it may verify.
struct PublicKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Keys {
    keys: Vec<PublicKey>,
}

impl Keys {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&DecodingKey, String> {
        let usable = |k: &&PublicKey| k.algorithms.contains(&alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .find(usable)
                .map(|k| &k.key)
                .ok_or_else(|| format!("no key with id '{kid}' for {alg:?}")),
            None => {
                let mut candidates = self.keys.iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Ok(&only.key),
                    (None, _) => Err(format!("no key for {alg:?}")),
                    (Some(_), Some(_)) => Err("the token names no key id (kid) and several keys could apply".into()),
                }
            }
        }
    }
}

pub struct Authenticator {
    secret: Option<DecodingKey>,
    keys: ArcSwap<Keys>,
    /// `alg` accepted, each with its prepared validation.
    validations: Vec<(Algorithm, Validation)>,
    roles_claim: Vec<String>,
    api_keys: HashMap<[u8; 32], Arc<Consumer>>,
    api_key_header: HeaderName,
    jwks_url: Option<String>,
    http: Option<reqwest::Client>,
    last_fetch_ms: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    leeway: Duration,
    /// Tokens verified lately, by the whole token (compared in full, never by a hash of it), kept
    /// until their `exp` and at most `VERIFIED_FOR`: a client sends the same token many times.
    verified: VerifiedTokens,
}

/// quick_cache rather than moka: a hit is a hash, a read lock and a comparison (moka's read
/// also reads its clock and records the access for its policy, ~3x the instructions), and expiry is
/// one comparison with the data plane's clock on the hit.
type VerifiedTokens = quick_cache::sync::Cache<Box<[u8]>, Verified, TokenWeight, foldhash::fast::RandomState>;

/// A verified token's caller, trusted until `until_ms` (the data plane's clock).
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    until_ms: u64,
}

/// The cache's size is counted in bytes: the token and about what its caller takes.
#[derive(Clone)]
struct TokenWeight;

impl quick_cache::Weighter<Box<[u8]>, Verified> for TokenWeight {
    fn weight(&self, token: &Box<[u8]>, _: &Verified) -> u64 {
        token.len() as u64 + 256
    }
}

/// The verified tokens' cache holds at most this many bytes (by `TokenWeight`).
const VERIFIED_BYTES: u64 = 16 * 1024 * 1024;

/// How long a verified token is trusted without checking it again (a key removed from the JWKS
/// stops working within this).
const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// A token naming an unknown key id refetches the JWKS at most this often.
const REFETCH_EVERY_MS: u64 = 30_000;

fn parse_algorithm(name: &str) -> anyhow::Result<Algorithm> {
    name.trim().parse::<Algorithm>().map_err(|_| anyhow::anyhow!("'{name}' is not a JWT algorithm"))
}

fn family_default(params: &AlgorithmParameters) -> Vec<Algorithm> {
    use Algorithm::*;
    match params {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        // Symmetric keys are not taken from a JWKS: HMAC uses JWT_SECRET only.
        _ => vec![],
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn keys_from_set(set: &JwkSet) -> Keys {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if let Some(k) = public_key(jwk) {
            keys.push(k);
        }
    }
    Keys { keys }
}

fn public_key(jwk: &Jwk) -> Option<PublicKey> {
    let family = family_default(&jwk.algorithm);
    let algorithms = match jwk.common.key_algorithm {
        // A key that names its algorithm verifies that one only.
        Some(alg) => key_algorithm(alg).filter(|a| family.contains(a)).into_iter().collect(),
        None => family,
    };
    if algorithms.is_empty() {
        warn!(kid = ?jwk.common.key_id, "JWKS key of an unsupported type or algorithm; ignored");
        return None;
    }
    match DecodingKey::from_jwk(jwk) {
        Ok(key) => Some(PublicKey { kid: jwk.common.key_id.clone(), key, algorithms }),
        Err(err) => {
            warn!(kid = ?jwk.common.key_id, error = %err, "unusable JWKS key; ignored");
            None
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Reads a YAML or JSON file (JSON is YAML).
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

impl Authenticator {
    /// None when no credential source is configured (authentication is off).
    pub async fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Authenticator>>> {
        let secret = if config.jwt_secret.is_empty() {
            None
        } else {
            Some(DecodingKey::from_secret(config.jwt_secret.as_bytes()).context("JWT_SECRET")?)
        };
        let jwks_url = (!config.jwt_jwks_url.is_empty()).then(|| config.jwt_jwks_url.clone());
        let jwks_file = (!config.jwt_jwks_file.is_empty()).then(|| config.jwt_jwks_file.clone());
        let mut api_keys = HashMap::new();
        if !config.api_keys_file.is_empty() {
            let file: ConsumersFile = read_yaml(Path::new(&config.api_keys_file)).context("API_KEYS_FILE")?;
            for consumer in file.consumers {
                let consumer = Arc::new(consumer);
                for key in &consumer.keys {
                    api_keys.insert(sha256(key.as_bytes()), consumer.clone());
                }
                for hex in &consumer.keys_sha256 {
                    let digest = decode_hex(hex).with_context(|| {
                        format!("API_KEYS_FILE: consumer {}: '{hex}' is not a SHA-256 hex digest", consumer.id)
                    })?;
                    api_keys.insert(digest, consumer.clone());
                }
            }
        }
        if secret.is_none() && jwks_url.is_none() && jwks_file.is_none() && api_keys.is_empty() {
            return Ok(None);
        }
        let algorithms: Vec<Algorithm> = if config.jwt_algorithms.trim().is_empty() {
            let mut a = Vec::new();
            if secret.is_some() {
                a.push(Algorithm::HS256);
            }
            if jwks_url.is_some() || jwks_file.is_some() {
                a.extend([Algorithm::RS256, Algorithm::ES256]);
            }
            a
        } else {
            config
                .jwt_algorithms
                .split(',')
                .map(parse_algorithm)
                .collect::<anyhow::Result<_>>()
                .context("JWT_ALGORITHMS")?
        };
        for alg in &algorithms {
            let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
            if hmac && secret.is_none() {
                bail!("JWT_ALGORITHMS: {alg:?} needs JWT_SECRET");
            }
            if !hmac && jwks_url.is_none() && jwks_file.is_none() {
                bail!("JWT_ALGORITHMS: {alg:?} needs JWT_JWKS_FILE or JWT_JWKS_URL");
            }
        }
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = config.jwt_leeway.as_secs();
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp"]);
                if config.jwt_issuer.is_empty() {
                    v.iss = None;
                } else {
                    v.set_issuer(&config.jwt_issuer.split(',').map(str::trim).collect::<Vec<_>>());
                }
                if config.jwt_audience.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&config.jwt_audience.split(',').map(str::trim).collect::<Vec<_>>());
                }
                (alg, v)
            })
            .collect();
        let api_key_header = HeaderName::try_from(config.api_key_header.as_str()).context("API_KEY_HEADER")?;
        let auth = Authenticator {
            secret,
            keys: ArcSwap::from_pointee(Keys::default()),
            validations,
            roles_claim: config.roles_claim.split('.').map(str::to_string).collect(),
            api_keys,
            api_key_header,
            http: jwks_url.as_ref().map(|_| reqwest::Client::new()),
            jwks_url,
            last_fetch_ms: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            verified: VerifiedTokens::with(
                4096,
                VERIFIED_BYTES,
                TokenWeight,
                foldhash::fast::RandomState::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
            leeway: config.jwt_leeway,
        };
        if let Some(path) = jwks_file {
            let set: JwkSet = read_yaml(Path::new(&path)).context("JWT_JWKS_FILE")?;
            let keys = keys_from_set(&set);
            info!(keys = keys.keys.len(), path, "JWKS loaded");
            auth.keys.store(Arc::new(keys));
        }
        let auth = Arc::new(auth);
        if auth.jwks_url.is_some() {
            if let Err(err) = auth.fetch_jwks().await {
                // Not fatal: the identity provider may come up later; tokens fail until it does.
                warn!(error = %err, "cannot fetch the JWKS yet");
            }
            let refresher = Arc::downgrade(&auth);
            let every = config.jwt_jwks_refresh;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(auth) = refresher.upgrade() else { break };
                    if let Err(err) = auth.fetch_jwks().await {
                        warn!(error = %err, "JWKS refresh failed; keeping the previous keys");
                    }
                }
            });
        }
        Ok(Some(auth))
    }

    async fn fetch_jwks(&self) -> anyhow::Result<()> {
        let (Some(url), Some(http)) = (&self.jwks_url, &self.http) else { return Ok(()) };
        self.last_fetch_ms.store(reskflow_sidecar::clock::now_ms(), Ordering::Relaxed);
        let set: JwkSet = http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("{url} is not a JWKS"))?;
        let keys = keys_from_set(&set);
        info!(keys = keys.keys.len(), url, "JWKS fetched");
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    pub fn api_key_header(&self) -> &HeaderName {
        &self.api_key_header
    }

    /// The caller named by the request's credentials: `Authorization: Bearer <jwt>` or the API key
    /// header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            // The scheme is case-insensitive (RFC 9110 11.1). Bytes, then UTF-8 for the token only:
            // HeaderValue::to_str checks byte by byte, from_utf8 a word at a time (a JWT is long).
            let value = value.as_bytes();
            let token = match value.split_at_checked(7) {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token.trim_ascii(),
                _ => return Err(AuthError::Invalid("the Authorization header is not a bearer token".into())),
            };
            let now = reskflow_sidecar::clock::now_ms();
            if let Some(hit) = self.verified.get(token) {
                if now < hit.until_ms {
                    return Ok(hit.identity);
                }
                self.verified.remove(token);
            }
            let text = std::str::from_utf8(token)
                .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
            // Boxed: a token seen before (nearly every request) does not carry the verification's
            // state (a JWKS fetch among it) in its future.
            let identity = Arc::new(Box::pin(self.verify(text)).await?);
            let trusted_for = u64::try_from(identity.valid_for.min(VERIFIED_FOR).as_millis()).unwrap_or(u64::MAX);
            self.verified.insert(token.into(), Verified { identity: identity.clone(), until_ms: now + trusted_for });
            return Ok(identity);
        }
        if !self.api_keys.is_empty() {
            if let Some(key) = headers.get(&self.api_key_header) {
                return match self.api_keys.get(&sha256(key.as_bytes())) {
                    Some(consumer) => Ok(Arc::new(Identity::new(
                        consumer.id.clone(),
                        consumer.roles.clone(),
                        Arc::new(Value::Object(Default::default())),
                        Via::ApiKey,
                        Duration::MAX,
                    ))),
                    None => Err(AuthError::Invalid("unknown API key".into())),
                };
            }
        }
        Err(AuthError::Missing)
    }

    /// Verifies a JWT and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let invalid = |why: String| AuthError::Invalid(format!("invalid token: {why}"));
        let head = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| *a == head.alg) else {
            return Err(invalid(format!("algorithm {:?} is not accepted", head.alg)));
        };
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let data = if hmac {
            let key = self.secret.as_ref().ok_or_else(|| invalid("no secret".into()))?;
            jsonwebtoken::decode::<Value>(token, key, validation)
        } else {
            let kid = head.kid.as_deref();
            let mut keys = self.keys.load_full();
            if keys.find(kid, *alg).is_err() && kid.is_some() {
                self.refetch_for_unknown_kid().await;
                keys = self.keys.load_full();
            }
            let key = keys.find(kid, *alg).map_err(invalid)?;
            jsonwebtoken::decode::<Value>(token, key, validation)
        }
        .map_err(|e| invalid(e.to_string()))?;
        let claims = data.claims;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
        let roles = roles_of(&claims, &self.roles_claim);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let exp =
            claims.get("exp").and_then(Value::as_f64).map_or(Duration::ZERO, |e| Duration::from_secs_f64(e.max(0.0)));
        let valid_for = (exp + self.leeway).saturating_sub(now);
        Ok(Identity::new(subject, roles, Arc::new(claims), Via::Jwt, valid_for))
    }

    /// A key rotated at the identity provider: fetch the JWKS again (one fetch at a time, at most
    /// every 30 s).
    async fn refetch_for_unknown_kid(&self) {
        if self.jwks_url.is_none() {
            return;
        }
        let last = self.last_fetch_ms.load(Ordering::Relaxed);
        if reskflow_sidecar::clock::now_ms().saturating_sub(last) < REFETCH_EVERY_MS {
            return;
        }
        let _one = self.fetching.lock().await;
        if self.last_fetch_ms.load(Ordering::Relaxed) != last {
            return; // someone else fetched while we waited
        }
        if let Err(err) = self.fetch_jwks().await {
            warn!(error = %err, "JWKS refetch for an unknown key id failed");
        }
    }
}

/// The roles in `claims` at `path`: an array of strings, or a string of roles separated by spaces
/// or commas (as OAuth `scope`).
pub fn roles_of(claims: &Value, path: &[String]) -> Vec<String> {
    let mut at = claims;
    for part in path {
        match at.get(part) {
            Some(v) => at = v,
            None => return Vec::new(),
        }
    }
    match at {
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Value::String(s) => s.split([' ', ',']).filter(|r| !r.is_empty()).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn decode_hex(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        bail!("expected 64 hex digits");
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_arrays_strings_and_nested_claims() {
        let claims = serde_json::json!({
            "roles": ["customer", "admin"],
            "scope": "read write,admin",
            "realm_access": { "roles": ["ops"] },
            "bad": 3,
        });
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(roles_of(&claims, &path("roles")), ["customer", "admin"]);
        assert_eq!(roles_of(&claims, &path("scope")), ["read", "write", "admin"]);
        assert_eq!(roles_of(&claims, &path("realm_access.roles")), ["ops"]);
        assert!(roles_of(&claims, &path("bad")).is_empty());
        assert!(roles_of(&claims, &path("missing.deeper")).is_empty());
    }

    /// A token is trusted from the cache only while it is valid: once its `exp` (plus leeway)
    /// passes, the next request verifies it again and is refused.
    #[tokio::test]
    async fn a_cached_token_is_refused_once_it_expires() {
        let secret = "test-secret-test-secret-test-secret-0123";
        let config = Config { jwt_secret: secret.into(), jwt_leeway: Duration::ZERO, ..Config::default() };
        let auth = Authenticator::from_config(&config).await.expect("config").expect("an authenticator");
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 1;
        let claims = serde_json::json!({"sub": "short", "roles": ["customer"], "exp": exp});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
        )
        .expect("token");
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        for _ in 0..2 {
            let identity = auth.authenticate(&headers).await.expect("valid until exp");
            assert_eq!(identity.subject, "short");
        }
        // jsonwebtoken refuses a token from the second after its `exp`.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        let refused_from = Duration::from_secs(exp + 1) + Duration::from_millis(50);
        tokio::time::sleep(refused_from.saturating_sub(since_epoch)).await;
        match auth.authenticate(&headers).await {
            Err(AuthError::Invalid(why)) => assert!(why.contains("Expired"), "{why}"),
            other => panic!("an expired token must be refused, got {other:?}"),
        }
    }

    #[test]
    fn hex_digests() {
        let d = sha256(b"key");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_hex(&hex).ok(), Some(d));
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex(&"zz".repeat(32)).is_err());
    }
}
