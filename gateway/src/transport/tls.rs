//! SIP over TLS: the certificates `tls:` listeners present, the trust
//! outbound connections verify servers against, and the names a client
//! certificate proves. Material is loaded (and checked) with the
//! configuration, and swapped in on reload so a renewed certificate needs
//! no restart; connections already open keep the one they started with.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ConfigError, TlsConfig};
use crate::sip::resolve::ServerNames;

/// Certificates and trust, as loaded from `[sip.tls]`.
pub struct TlsMaterial {
    /// For `tls:` listeners; `None` without `cert`/`key`.
    server: Option<Arc<ServerConfig>>,
    /// For connections we open: the system's roots plus `ca`, presenting
    /// our certificate when we have one (carriers that require mutual TLS).
    client: Arc<ClientConfig>,
    /// Whether clients are asked for a certificate.
    pub verifies_clients: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("server", &self.server.is_some())
            .field("verifies_clients", &self.verifies_clients)
            .finish()
    }
}

/// The process's provider, installed once at start-up; the same one if a
/// library user has not installed any.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    switchboard_connectors::install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The system's trusted roots, read once: reading /etc/ssl costs tens of
/// milliseconds and they do not change under a running process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in found.errors.iter().take(3) {
            tracing::warn!(%error, "cannot read some of the system's trusted certificates");
        }
        found.certs
    })
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| ConfigError::new(key, format!("{}: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn roots(key: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(key, path)? {
        store
            .add(cert)
            .map_err(|error| ConfigError::new(key, format!("{}: {error}", path.display())))?;
    }
    Ok(store)
}

impl TlsMaterial {
    /// Reads and checks every file `[sip.tls]` names; `needs_server` when a
    /// `tls:` listener needs a certificate.
    pub fn load(config: Option<&TlsConfig>, needs_server: bool) -> Result<Self, ConfigError> {
        let empty = TlsConfig::default();
        let config = config.unwrap_or(&empty);
        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates("sip.tls.cert", cert)?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                    ConfigError::new("sip.tls.key", format!("{}: {error}", key.display()))
                })?;
                Some((chain, private))
            }
            (None, None) if needs_server => {
                return Err(ConfigError::new(
                    "sip.tls.cert",
                    "a tls: listener needs sip.tls.cert and sip.tls.key",
                ))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "sip.tls.key",
                    "is needed with sip.tls.cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "sip.tls.cert",
                    "is needed with sip.tls.key",
                ))
            }
        };

        let mut trusted = RootCertStore::empty();
        // Unparseable system roots are skipped: one odd file in /etc/ssl
        // must not stop the gateway.
        trusted.add_parsable_certificates(system_roots().iter().cloned());
        if let Some(ca) = &config.ca {
            trusted.roots.extend(roots("sip.tls.ca", ca)?.roots);
        }
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| ConfigError::new("sip.tls", error.to_string()))?
            .with_root_certificates(trusted);
        let client = match &identity {
            Some((chain, key)) => client
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|error| ConfigError::new("sip.tls.key", error.to_string()))?,
            None => client.with_no_client_auth(),
        };

        let server = match identity {
            None => None,
            Some((chain, key)) => {
                let builder = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|error| ConfigError::new("sip.tls", error.to_string()))?;
                let builder = match &config.client_ca {
                    Some(path) => {
                        let verifier = WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots("sip.tls.client_ca", path)?),
                            provider(),
                        )
                        // Clients without a certificate still connect:
                        // only trunks that name client names require one.
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| {
                            ConfigError::new("sip.tls.client_ca", error.to_string())
                        })?;
                        builder.with_client_cert_verifier(verifier)
                    }
                    None => builder.with_no_client_auth(),
                };
                let server = builder.with_single_cert(chain, key).map_err(|error| {
                    ConfigError::new(
                        "sip.tls.key",
                        format!("does not go with sip.tls.cert: {error}"),
                    )
                })?;
                Some(Arc::new(server))
            }
        };
        Ok(TlsMaterial {
            server,
            client: Arc::new(client),
            verifies_clients: config.client_ca.is_some(),
        })
    }
}

/// What TLS connections share: the current material and the host names
/// servers are verified against.
pub struct TlsContext {
    material: RwLock<Arc<TlsMaterial>>,
    /// Host names TLS peer addresses were resolved from.
    names: Arc<ServerNames>,
}

impl TlsContext {
    pub fn new(material: Arc<TlsMaterial>, names: Arc<ServerNames>) -> Arc<TlsContext> {
        Arc::new(TlsContext {
            material: RwLock::new(material),
            names,
        })
    }

    /// New connections use `material` from now on.
    pub fn replace(&self, material: Arc<TlsMaterial>) {
        *self.material.write().unwrap_or_else(|p| p.into_inner()) = material;
    }

    fn current(&self) -> Arc<TlsMaterial> {
        self.material
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current().server.clone().map(TlsAcceptor::from)
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current().client.clone())
    }

    /// The name `addr`'s certificate must be valid for: the host name it
    /// was resolved from, or else its address.
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.names
            .host_of(addr)
            .and_then(|host| ServerName::try_from(host).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}

/// Whether `cert` (a client's verified leaf certificate) is valid for one
/// of `names`.
pub fn certificate_names_one_of(cert: &CertificateDer<'_>, names: &[ServerName<'static>]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    names
        .iter()
        .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
}
