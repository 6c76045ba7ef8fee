//! Development and test PKI for proglog: a throwaway certificate authority that signs
//! server certificates (EKU serverAuth, DNS and IP SANs) and client certificates (EKU
//! clientAuth, identity in the subject Common Name, which is what the server's ACL checks,
//! SPEC §2), plus [`write_dev_set`], which writes a complete set (CA, server, `root` and
//! `nobody` clients, casbin model and policy) into a directory for `cargo xtask certs`.
//!
//! What it does not do: it is not a production CA. Keys are ECDSA P-256 made in memory
//! with rcgen (ring backend); the CA key is never written out, so a CA cannot be reloaded
//! to sign more certificates later; there are no CSRs, revocation lists, intermediates or
//! key encryption. Certificates are valid from 1975 to 4096 (rcgen's defaults), so a dev
//! set never expires under a test run, except the deliberately expired one from
//! [`Ca::expired_client_cert`].
//!
//! ```
//! use proglog_certs::Ca;
//!
//! let ca = Ca::new("proglog test CA")?;
//! let server = ca.server_cert(&["localhost", "127.0.0.1"])?;
//! let root = ca.client_cert("root")?;
//! assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(server.key_pem.contains("PRIVATE KEY"));
//!
//! // Or everything at once, written to disk:
//! let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
//! let set = proglog_certs::write_dev_set(dir.path())?;
//! assert!(set.root_client_key.exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// Errors from minting or writing certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// rcgen could not generate a key or sign a certificate (e.g. a SAN that is not ASCII).
    #[error("cannot generate {what}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// [`Ca::server_cert`] was called without any subject alternative name.
    #[error("a server certificate needs at least one subject alternative name")]
    NoSubjectAltNames,
    /// A directory or file could not be created or written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A PEM certificate and its PEM (PKCS#8) private key. `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate, `-----BEGIN CERTIFICATE-----`.
    pub cert_pem: String,
    /// The private key, `-----BEGIN PRIVATE KEY-----`.
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A self-signed certificate authority held in memory. It may sign only end-entity
/// certificates (path length 0).
pub struct Ca {
    common_name: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("common_name", &self.common_name).finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA with a fresh key and the subject Common Name `common_name`.
    pub fn new(common_name: &str) -> Result<Ca> {
        let what = || format!("CA {common_name:?}");
        let key = KeyPair::generate().map_err(generate(what()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(generate(what()))?;
        Ok(Ca { common_name: common_name.to_owned(), cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate (PEM): what servers and clients trust (`--server-tls-ca-file`).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Signs a server certificate (EKU serverAuth) for `sans`: strings that parse as an IP
    /// address (`127.0.0.1`, `::1`) become IP SANs, the others DNS SANs (`localhost`). The
    /// subject Common Name is the first SAN.
    pub fn server_cert(&self, sans: &[&str]) -> Result<CertifiedKey> {
        let Some(first) = sans.first() else {
            return Err(Error::NoSubjectAltNames);
        };
        let what = format!("server certificate for {sans:?}");
        let sans: Vec<String> = sans.iter().map(|san| (*san).to_owned()).collect();
        let mut params = CertificateParams::new(sans).map_err(generate(what.clone()))?;
        params.distinguished_name = common_name_dn(first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, what)
    }

    /// Signs a node's certificate, for both its ports and its calls to other
    /// agents (EKU serverAuth and clientAuth): subject Common Name `node`, SANs
    /// `node` and `sans` (IP-looking ones as IP SANs). What
    /// `--peer-tls-require-node-name` needs: a peer dialled by its node name, a
    /// caller whose certificate names the node it claims.
    pub fn node_cert(&self, node: &str, sans: &[&str]) -> Result<CertifiedKey> {
        let what = format!("certificate of node {node:?}");
        let names: Vec<String> =
            std::iter::once(node).chain(sans.iter().copied()).map(str::to_owned).collect();
        let mut params = CertificateParams::new(names).map_err(generate(what.clone()))?;
        params.distinguished_name = common_name_dn(node);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, what)
    }

    /// Signs a client certificate (EKU clientAuth) whose subject Common Name is
    /// `common_name`, the identity the server's ACL sees.
    pub fn client_cert(&self, common_name: &str) -> Result<CertifiedKey> {
        self.sign(client_params(common_name), format!("client certificate for {common_name:?}"))
    }

    /// Like [`Ca::client_cert`], but valid only on 2000-01-01 (UTC), so any verifier
    /// rejects it as expired. For tests.
    pub fn expired_client_cert(&self, common_name: &str) -> Result<CertifiedKey> {
        let mut params = client_params(common_name);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 1, 2);
        self.sign(params, format!("expired client certificate for {common_name:?}"))
    }

    fn sign(&self, mut params: CertificateParams, what: String) -> Result<CertifiedKey> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(generate(what.clone()))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate(what))?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn client_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn generate(what: String) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Generate { what, source }
}

/// The casbin model written to `model.conf`: the book's ACL without roles,
/// objects matched with `keyMatch` (SPEC §11), so that a policy's `*` covers
/// every log and `orders*` the logs whose names start so.
pub const ACL_MODEL: &str = "\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act
";

/// The casbin policy written to `policy.csv`: `root` may produce, consume,
/// replicate and administer logs, on every log; nobody else (in particular
/// `nobody`) may do anything.
pub const ACL_POLICY: &str = "\
p, root, *, produce
p, root, *, consume
p, root, *, replicate
p, root, *, admin
";

/// The files written by [`write_dev_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSet {
    /// The directory they were written to.
    pub dir: PathBuf,
    /// `ca.pem`: the CA certificate.
    pub ca_cert: PathBuf,
    /// `server.pem`: server certificate for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// `server-key.pem` (mode 0600).
    pub server_key: PathBuf,
    /// `root-client.pem`: client certificate with CN `root`, allowed everything by the policy.
    pub root_client_cert: PathBuf,
    /// `root-client-key.pem` (mode 0600).
    pub root_client_key: PathBuf,
    /// `nobody-client.pem`: client certificate with CN `nobody`, allowed nothing.
    pub nobody_client_cert: PathBuf,
    /// `nobody-client-key.pem` (mode 0600).
    pub nobody_client_key: PathBuf,
    /// `model.conf`: [`ACL_MODEL`].
    pub acl_model: PathBuf,
    /// `policy.csv`: [`ACL_POLICY`].
    pub acl_policy: PathBuf,
    /// `gossip.key` (mode 0600): 32 random bytes, hex, the shared key that
    /// authenticates gossip (`--gossip-key-file`).
    pub gossip_key: PathBuf,
    /// Per-node certificates ([`Ca::node_cert`]), one per node asked for:
    /// `<node>.pem` and `<node>-key.pem` (0600), each node allowed to
    /// replicate by the policy.
    pub nodes: Vec<NodeFiles>,
}

/// A node's certificate and key files in a [`DevSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// The node's name (its certificate's CN and first DNS SAN).
    pub name: String,
    /// `<node>.pem`.
    pub cert: PathBuf,
    /// `<node>-key.pem` (mode 0600).
    pub key: PathBuf,
}

/// Creates `dir` if needed and writes a fresh development set into it (see [`DevSet`] for
/// the file names), signed by a new CA whose key is not kept. Existing files of those
/// names are overwritten, so certificates minted by an earlier run stop being trusted by
/// servers given the new `ca.pem`. Private keys are written with mode 0600 on Unix.
pub fn write_dev_set(dir: &Path) -> Result<DevSet> {
    write_dev_set_for(dir, &["localhost", "127.0.0.1"])
}

/// [`write_dev_set`], with a server certificate for `sans` (host names or IP
/// addresses: agents on other addresses dial each other by them).
pub fn write_dev_set_for(dir: &Path, sans: &[&str]) -> Result<DevSet> {
    write_dev_set_with_nodes(dir, sans, &[])
}

/// [`write_dev_set_for`], plus a certificate for each of `nodes` (for
/// `--peer-tls-require-node-name`; also valid for `sans`), each allowed to
/// replicate by the policy.
pub fn write_dev_set_with_nodes(dir: &Path, sans: &[&str], nodes: &[&str]) -> Result<DevSet> {
    let ca = Ca::new("proglog development CA")?;
    let server = ca.server_cert(sans)?;
    let root = ca.client_cert("root")?;
    let nobody = ca.client_cert("nobody")?;

    std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_owned(), source })?;
    let set = DevSet {
        dir: dir.to_owned(),
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        root_client_cert: dir.join("root-client.pem"),
        root_client_key: dir.join("root-client-key.pem"),
        nobody_client_cert: dir.join("nobody-client.pem"),
        nobody_client_key: dir.join("nobody-client-key.pem"),
        acl_model: dir.join("model.conf"),
        acl_policy: dir.join("policy.csv"),
        gossip_key: dir.join("gossip.key"),
        nodes: nodes
            .iter()
            .map(|node| NodeFiles {
                name: (*node).to_owned(),
                cert: dir.join(format!("{node}.pem")),
                key: dir.join(format!("{node}-key.pem")),
            })
            .collect(),
    };
    write_file(&set.ca_cert, &ca.cert_pem, false)?;
    write_file(&set.server_cert, &server.cert_pem, false)?;
    write_file(&set.server_key, &server.key_pem, true)?;
    write_file(&set.root_client_cert, &root.cert_pem, false)?;
    write_file(&set.root_client_key, &root.key_pem, true)?;
    write_file(&set.nobody_client_cert, &nobody.cert_pem, false)?;
    write_file(&set.nobody_client_key, &nobody.key_pem, true)?;
    write_file(&set.acl_model, ACL_MODEL, false)?;
    let mut policy = ACL_POLICY.to_owned();
    for node in &set.nodes {
        let certified = ca.node_cert(&node.name, sans)?;
        write_file(&node.cert, &certified.cert_pem, false)?;
        write_file(&node.key, &certified.key_pem, true)?;
        policy.push_str(&format!("p, {}, *, replicate\n", node.name));
    }
    write_file(&set.acl_policy, &policy, false)?;
    write_file(&set.gossip_key, &gossip_key()?, true)?;
    Ok(set)
}

/// Writes `contents` to `path`, replacing it. A private file is created with mode 0600,
/// and an existing one is narrowed to 0600 before the key is written into it.
#[cfg_attr(not(unix), allow(unused_variables))]
/// A fresh gossip key: 32 random bytes from the system, as hex.
fn gossip_key() -> Result<String> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(|_| Error::Random)?;
    Ok(key.iter().map(|byte| format!("{byte:02x}")).collect::<String>() + "\n")
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let write = || -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        #[cfg(unix)]
        if private {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents.as_bytes())
    };
    write().map_err(|source| Error::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;
    use x509_parser::prelude::*;

    use super::*;

    /// Parses `pem` and hands the certificate to `check`.
    fn with_cert(pem: &str, check: impl FnOnce(&X509Certificate<'_>)) {
        let (rest, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        assert!(rest.iter().all(u8::is_ascii_whitespace), "one certificate per PEM");
        check(&pem.parse_x509().unwrap());
    }

    fn common_name(cert: &X509Certificate<'_>) -> String {
        cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned()
    }

    fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        (eku.server_auth, eku.client_auth)
    }

    #[test]
    fn ca_is_a_self_signed_ca() {
        let ca = Ca::new("test CA").unwrap();
        with_cert(&ca.cert_pem(), |cert| {
            assert_eq!(common_name(cert), "test CA");
            assert_eq!(cert.subject(), cert.issuer());
            assert!(cert.is_ca());
            assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
            assert!(cert.validity().is_valid());
        });
    }

    #[test]
    fn server_cert_has_dns_and_ip_sans_and_server_auth() {
        let ca = Ca::new("test CA").unwrap();
        let server = ca.server_cert(&["localhost", "127.0.0.1", "::1"]).unwrap();
        assert!(server.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let (_, ca_pem) = parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        with_cert(&server.cert_pem, |cert| {
            assert_eq!(common_name(cert), "localhost");
            assert_eq!(cert.issuer(), ca_cert.subject());
            assert!(!cert.is_ca());
            assert_eq!(eku(cert), (true, false));
            assert!(cert.validity().is_valid());
            let sans = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
            assert_eq!(
                sans,
                &[
                    GeneralName::DNSName("localhost"),
                    GeneralName::IPAddress(&[127, 0, 0, 1]),
                    GeneralName::IPAddress(&std::net::Ipv6Addr::LOCALHOST.octets()),
                ]
            );
        });
    }

    #[test]
    fn server_cert_needs_a_san() {
        let ca = Ca::new("test CA").unwrap();
        assert!(matches!(ca.server_cert(&[]), Err(Error::NoSubjectAltNames)));
    }

    #[test]
    fn client_cert_carries_the_identity_in_the_cn() {
        let ca = Ca::new("test CA").unwrap();
        let client = ca.client_cert("root").unwrap();
        with_cert(&client.cert_pem, |cert| {
            assert_eq!(common_name(cert), "root");
            assert_eq!(eku(cert), (false, true));
            assert!(!cert.is_ca());
            assert!(cert.validity().is_valid());
        });
    }

    #[test]
    fn expired_client_cert_is_expired() {
        let ca = Ca::new("test CA").unwrap();
        let client = ca.expired_client_cert("root").unwrap();
        with_cert(&client.cert_pem, |cert| {
            assert_eq!(common_name(cert), "root");
            assert_eq!(eku(cert), (false, true));
            assert!(!cert.validity().is_valid());
            assert!(cert.validity().not_after < ASN1Time::now());
        });
    }

    #[test]
    fn debug_does_not_print_keys() {
        let ca = Ca::new("test CA").unwrap();
        let client = ca.client_cert("root").unwrap();
        assert!(!format!("{client:?}").contains("PRIVATE KEY"));
        assert_eq!(format!("{ca:?}"), "Ca { common_name: \"test CA\", .. }");
    }

    #[cfg(unix)]
    #[test]
    fn write_dev_set_writes_all_files_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("certs");
        // A stale, world-readable key file is narrowed to 0600 when overwritten.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("server-key.pem"), "old").unwrap();
        std::fs::set_permissions(dir.join("server-key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();

        let set = write_dev_set(&dir).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ca.pem",
                "gossip.key",
                "model.conf",
                "nobody-client-key.pem",
                "nobody-client.pem",
                "policy.csv",
                "root-client-key.pem",
                "root-client.pem",
                "server-key.pem",
                "server.pem"
            ]
        );
        for key in [&set.server_key, &set.root_client_key, &set.nobody_client_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
            assert!(std::fs::read_to_string(key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        let gossip = std::fs::read_to_string(&set.gossip_key).unwrap();
        assert_eq!(std::fs::metadata(&set.gossip_key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(gossip.trim().len(), 64, "32 bytes as hex");
        assert_ne!(
            gossip,
            std::fs::read_to_string(write_dev_set(&dir).unwrap().gossip_key).unwrap(),
            "fresh each time"
        );
        with_cert(&std::fs::read_to_string(&set.server_cert).unwrap(), |cert| {
            assert_eq!(eku(cert), (true, false));
        });
        with_cert(&std::fs::read_to_string(&set.root_client_cert).unwrap(), |cert| {
            assert_eq!(common_name(cert), "root");
        });
        with_cert(&std::fs::read_to_string(&set.nobody_client_cert).unwrap(), |cert| {
            assert_eq!(common_name(cert), "nobody");
        });
        assert_eq!(std::fs::read_to_string(&set.acl_model).unwrap(), ACL_MODEL);
        assert_eq!(std::fs::read_to_string(&set.acl_policy).unwrap(), ACL_POLICY);

        // A second run overwrites everything with a new CA.
        let old_ca = std::fs::read_to_string(&set.ca_cert).unwrap();
        assert_eq!(write_dev_set(&dir).unwrap(), set);
        assert_ne!(std::fs::read_to_string(&set.ca_cert).unwrap(), old_ca);
    }
}
