//! Who is calling (the client certificate's CN) and what they may do (casbin).

use std::path::Path;

use casbin::{CoreApi, DefaultModel, Enforcer, FileAdapter};

use crate::ServerError;

/// The object every log action applies to (the book's ACL uses `*`).
pub const OBJECT_WILDCARD: &str = "*";
/// Subject of a caller without a client certificate (plaintext, or TLS without a
/// client CA).
pub const ANONYMOUS: &str = "anonymous";

/// Actions of SPEC §2.
pub mod action {
    /// Append records.
    pub const PRODUCE: &str = "produce";
    /// Read records.
    pub const CONSUME: &str = "consume";
    /// Agent-to-agent traffic (Raft, forwarding).
    pub const REPLICATE: &str = "replicate";
    /// Create, delete and list logs (SPEC §11).
    pub const ADMIN: &str = "admin";
}

/// The ACL object of log `name` (SPEC §11): its name, or `*` for the default log.
pub fn object_of(name: &str) -> &str {
    if name.is_empty() { OBJECT_WILDCARD } else { name }
}

/// Decides whether a subject may perform an action on an object. The gRPC
/// admission layer asks it for every call, as soon as its headers arrive; the
/// internal agent-to-agent service will ask it with [`action::REPLICATE`].
pub trait Authorizer: Send + Sync + 'static {
    /// `true` if `subject` may do `action` to `object`.
    fn is_allowed(&self, subject: &str, object: &str, action: &str) -> bool;
}

/// Allows every subject everything: the behaviour without ACL files (the caller
/// logs a warning when it chooses this).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn is_allowed(&self, _subject: &str, _object: &str, _action: &str) -> bool {
        true
    }
}

/// A casbin enforcer built from a model and a policy file (the book's format,
/// `r = sub, obj, act`).
pub struct Acl {
    enforcer: Enforcer,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").finish_non_exhaustive()
    }
}

impl Acl {
    /// Loads the model and policy. Missing or malformed files are an error naming
    /// both files.
    pub async fn from_files(model: &Path, policy: &Path) -> Result<Self, ServerError> {
        let error = |reason: String| ServerError::Acl { model: model.into(), policy: policy.into(), reason };
        for path in [model, policy] {
            if let Err(source) = std::fs::metadata(path) {
                return Err(ServerError::ReadFile { path: path.into(), source });
            }
        }
        let model_text = model.to_str().ok_or_else(|| error("model path is not UTF-8".into()))?;
        let policy_text = policy.to_str().ok_or_else(|| error("policy path is not UTF-8".into()))?;
        let model = DefaultModel::from_file(model_text).await.map_err(|e| error(e.to_string()))?;
        let enforcer = Enforcer::new(model, FileAdapter::new(policy_text.to_owned()))
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(Self { enforcer })
    }
}

impl Authorizer for Acl {
    fn is_allowed(&self, subject: &str, object: &str, action: &str) -> bool {
        // An enforcement error (a malformed matcher) denies.
        self.enforcer.enforce((subject, object, action)).unwrap_or(false)
    }
}

/// The authorizer for optional ACL files: both given → [`Acl`]; neither →
/// [`AllowAll`], logged as a warning (SPEC §2); only one → a config error.
pub async fn authorizer_from_files(
    model: Option<&Path>,
    policy: Option<&Path>,
    logger: &slog::Logger,
) -> Result<std::sync::Arc<dyn Authorizer>, ServerError> {
    match (model, policy) {
        (Some(model), Some(policy)) => Ok(std::sync::Arc::new(Acl::from_files(model, policy).await?)),
        (None, None) => {
            slog::warn!(logger, "no ACL files given: every authenticated client may produce and consume");
            Ok(std::sync::Arc::new(AllowAll))
        }
        _ => {
            Err(ServerError::Config("acl-model-file and acl-policy-file must be given together".to_string()))
        }
    }
}

/// The identity a certificate chain names: the Common Name of its first (leaf)
/// certificate, or [`ANONYMOUS`] without a chain or a CN. The chain must already
/// have been verified by the TLS layer.
pub fn subject_of_chain<C: AsRef<[u8]>>(chain: Option<&[C]>) -> String {
    chain
        .and_then(|chain| {
            let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
            Some(cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned())
        })
        .unwrap_or_else(|| ANONYMOUS.to_owned())
}

/// Every name a certificate chain's leaf vouches for: its Common Name, then its
/// DNS subject alternative names (what `--peer-tls-require-node-name` matches a
/// node name against). Empty without a chain.
pub fn names_of_chain<C: AsRef<[u8]>>(chain: Option<&[C]>) -> Vec<String> {
    let Some(leaf) = chain.and_then(|chain| chain.first()) else { return Vec::new() };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else { return Vec::new() };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        for name in &sans.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n\
        [policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\n\
        m = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";

    #[tokio::test]
    async fn acl_allows_only_what_the_policy_grants() {
        let dir = tempfile::tempdir().unwrap();
        let (model, policy) = (dir.path().join("model.conf"), dir.path().join("policy.csv"));
        std::fs::write(&model, MODEL).unwrap();
        std::fs::write(&policy, "p, root, *, produce\np, root, *, consume\n").unwrap();
        let acl = Acl::from_files(&model, &policy).await.unwrap();
        assert!(acl.is_allowed("root", "*", "produce"));
        assert!(acl.is_allowed("root", "*", "consume"));
        assert!(!acl.is_allowed("root", "*", "replicate"));
        assert!(!acl.is_allowed("nobody", "*", "produce"));
        assert!(!acl.is_allowed(ANONYMOUS, "*", "consume"));
    }

    #[tokio::test]
    async fn acl_files_come_in_pairs() {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let allow = authorizer_from_files(None, None, &logger).await.unwrap();
        assert!(allow.is_allowed("anyone", "*", "produce"));
        let half = authorizer_from_files(Some(Path::new("model.conf")), None, &logger).await;
        assert!(matches!(half, Err(ServerError::Config(_))));
    }

    #[tokio::test]
    async fn a_missing_acl_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.conf");
        let error = Acl::from_files(&missing, &missing).await.unwrap_err();
        assert!(error.to_string().contains("nope.conf"), "{error}");
    }
}
