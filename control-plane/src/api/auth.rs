//! Who calls the control plane. With `AUTH_SECRET` set, every call of the Registry, Workflows and
//! Config services needs `authorization: Bearer <token>`: an HS256 JWT whose claims say the caller's
//! `role` (`admin`, `gateway` or `sidecar`) and, for a sidecar, its `service`. Without `AUTH_SECRET`
//! (dev mode) calls are not checked and the control plane says so at start. gRPC health stays open.
//!
//! What each role may do: every role reads; `admin` and `gateway` (which authenticates its own users)
//! write anything; a `sidecar` registers, heartbeats and deregisters instances of its own service
//! only, and opens its config stream only as that service. `control-plane token` mints tokens.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Gateway,
    Sidecar,
}

/// A verified caller (a request extension).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Caller {
    pub sub: String,
    pub role: Role,
    /// The service a sidecar acts for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// The interceptor; `None` inside: dev mode.
#[derive(Clone, Default)]
pub struct Auth(Option<Arc<(DecodingKey, Validation)>>);

impl Auth {
    pub fn new(secret: &str) -> anyhow::Result<Auth> {
        if secret.is_empty() {
            return Ok(Auth(None));
        }
        let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| anyhow::anyhow!("AUTH_SECRET: {e}"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        // Data-plane tokens may be long-lived; `exp` is checked when present.
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.leeway = 5;
        Ok(Auth(Some(Arc::new((key, validation)))))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.0 else { return Ok(request) };
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("send authorization: Bearer <token> (the control plane has AUTH_SECRET)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("the authorization header is not a bearer token"))?;
        let caller = jsonwebtoken::decode::<Caller>(token.trim(), &key.0, &key.1)
            .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?
            .claims;
        if caller.role == Role::Sidecar && caller.service.is_empty() {
            return Err(Status::unauthenticated("a sidecar token must name its service"));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// A token for `caller`, signed with `secret`.
pub fn mint(secret: &str, caller: &Caller) -> anyhow::Result<String> {
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| anyhow::anyhow!("AUTH_SECRET: {e}"))?;
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), caller, &key)?)
}

pub fn caller<T>(req: &Request<T>) -> Option<&Caller> {
    req.extensions().get::<Caller>()
}

/// Writes that are not a sidecar's own business: `admin` and `gateway` (and anyone in dev mode).
pub fn require_writer<T>(req: &Request<T>) -> Result<(), Status> {
    match caller(req) {
        Some(c) if c.role == Role::Sidecar => Err(Status::permission_denied(format!(
            "a sidecar token (service {}) may only act for its own instances and config",
            c.service
        ))),
        _ => Ok(()),
    }
}

/// Acting for a service: a sidecar only for its own. `service` is asked only when the caller is a
/// sidecar (other callers, and dev mode, pay nothing for the lookup).
pub fn require_service<T>(req: &Request<T>, service: impl FnOnce() -> String) -> Result<(), Status> {
    match caller(req) {
        Some(c) if c.role == Role::Sidecar => {
            let service = service();
            if c.service == service {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "a sidecar token for service {} may not act for service {service}",
                    c.service
                )))
            }
        }
        _ => Ok(()),
    }
}

/// A sidecar's config stream must say it is that sidecar's service.
pub fn require_hello(caller: Option<&Caller>, role: &str, service: &str) -> Result<(), Status> {
    match caller {
        Some(c) if c.role == Role::Sidecar && (role != "sidecar" || c.service != service) => {
            Err(Status::permission_denied(format!(
                "a sidecar token for service {} may only open the config stream as a sidecar of {}",
                c.service, c.service
            )))
        }
        _ => Ok(()),
    }
}
