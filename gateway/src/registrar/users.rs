//! Who may authenticate: users (`[[users]]`) and trunk logins, with the
//! HA1s digest verification needs, computed once at start.

use std::collections::HashMap;

use crate::config::{ConfigError, TrunkConfig, UserConfig};
use crate::sip::authenticator::Secret;

#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub flow: Option<String>,
}

/// Credentials by username.
#[derive(Debug, Default)]
pub struct Directory {
    secrets: HashMap<String, Secret>,
    users: HashMap<String, User>,
}

impl Directory {
    pub fn new(
        users: &[UserConfig],
        trunks: &[TrunkConfig],
        realm: &str,
        flows: &std::collections::HashSet<&str>,
    ) -> Result<Directory, ConfigError> {
        let mut directory = Directory::default();
        for (index, user) in users.iter().enumerate() {
            let key = |rest: &str| format!("users[{index}].{rest}");
            let name = user.username.trim();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/".contains(c));
            if !valid {
                return Err(ConfigError::new(
                    key("username"),
                    "must be a non-empty SIP user part",
                ));
            }
            let secret = match (&user.password, &user.ha1) {
                (Some(password), None) if !password.is_empty() => {
                    Secret::from_password(name, realm, password)
                }
                (None, Some(ha1))
                    if ha1.len() == 32 && ha1.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    Secret {
                        ha1_md5: Some(ha1.to_ascii_lowercase()),
                        ha1_sha256: None,
                    }
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(key("ha1"), "must be 32 hex digits (MD5)"))
                }
                _ => {
                    return Err(ConfigError::new(
                        key("password"),
                        "set exactly one of password or ha1",
                    ))
                }
            };
            if let Some(flow) = &user.flow {
                if !flows.contains(flow.as_str()) {
                    return Err(ConfigError::new(
                        key("flow"),
                        format!("no flow named `{flow}` is defined"),
                    ));
                }
            }
            if directory.secrets.insert(name.to_string(), secret).is_some() {
                return Err(ConfigError::new(
                    key("username"),
                    format!("user `{name}` is defined twice"),
                ));
            }
            directory.users.insert(
                name.to_string(),
                User {
                    username: name.to_string(),
                    flow: user.flow.clone(),
                },
            );
        }
        for (index, trunk) in trunks.iter().enumerate() {
            if let Some(auth) = &trunk.auth {
                let secret = Secret::from_password(&auth.username, realm, &auth.password);
                if directory
                    .secrets
                    .insert(auth.username.clone(), secret)
                    .is_some()
                {
                    return Err(ConfigError::new(
                        format!("trunks[{index}].auth.username"),
                        format!(
                            "`{}` is already a user or another trunk's login",
                            auth.username
                        ),
                    ));
                }
            }
        }
        Ok(directory)
    }

    pub fn secret(&self, username: &str) -> Option<Secret> {
        self.secrets.get(username).cloned()
    }

    pub fn user(&self, username: &str) -> Option<&User> {
        self.users.get(username)
    }

    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }
}
