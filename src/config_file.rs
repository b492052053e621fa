//! Reading a configuration file: `${ENV}` interpolation, TOML parsing and
//! validation, with every error naming the file, the key and the reason.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use switchboard_gateway::config::{Config, ValidConfig};

/// The default configuration, compiled in so `switchboard run` works from
/// any directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/switchboard.toml");
pub const DEFAULT_PATH: &str = "config/switchboard.toml";

/// A configuration ready to run, with where it came from.
pub struct Loaded {
    pub source: String,
    pub config: Config,
    pub valid: ValidConfig,
}

/// Loads `path`, or the embedded default when no path was given and
/// `config/switchboard.toml` does not exist in the working directory.
pub fn load(path: Option<&Path>) -> Result<Loaded> {
    let (source, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the file", path.display()))?;
            (path.display().to_string(), text)
        }
        None if Path::new(DEFAULT_PATH).exists() => {
            let text = std::fs::read_to_string(DEFAULT_PATH)
                .with_context(|| format!("{DEFAULT_PATH}: cannot read the file"))?;
            (DEFAULT_PATH.to_string(), text)
        }
        None => (
            "<embedded default>".to_string(),
            EMBEDDED_DEFAULT.to_string(),
        ),
    };
    parse(&source, &text, |name| std::env::var(name).ok())
}

/// Parses configuration text; `env` looks up `${NAME}` references.
pub fn parse(source: &str, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Loaded> {
    let text = interpolate(text, &env).map_err(|error| anyhow!("{source}: {error}"))?;
    let config: Config = toml::from_str(&text)
        .map_err(|error| anyhow!("{source}: invalid configuration\n{error}"))?;
    let valid = config
        .validate()
        .map_err(|error| anyhow!("{source}: {error}"))?;
    Ok(Loaded {
        source: source.to_string(),
        config,
        valid,
    })
}

/// Replaces `${NAME}` with the environment variable's value, escaped for a
/// TOML basic string. Comment lines are left alone so documentation can
/// mention variables that are not set. `$${` writes a literal `${`.
fn interpolate(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('$') {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("line {}: `${{` without a closing `}}`", index + 1))?;
            let name = &after[..end];
            let key = key_before(&line[..line.len() - rest.len() + start]);
            let value = env(name).ok_or_else(|| {
                format!(
                    "line {}: key `{key}`: environment variable `{name}` is not set",
                    index + 1
                )
            })?;
            for ch in value.chars() {
                match ch {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    other => out.push(other),
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// The key whose value a `${` sits in: the last `name =` before it on the
/// line, also inside inline tables (`bot = { url = "…${X}" }` gives `url`).
fn key_before(prefix: &str) -> &str {
    let Some(equals) = prefix.rfind('=') else {
        return "";
    };
    prefix[..equals]
        .trim_end()
        .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_is_valid() {
        let loaded = parse("default", EMBEDDED_DEFAULT, no_env).unwrap();
        assert_eq!(loaded.config.flows[0].name, "echo");
        assert_eq!(loaded.valid.listen.len(), 2);
    }

    #[test]
    fn env_references_are_substituted_and_escaped() {
        let text = "a = \"${SECRET}\"\n# b = \"${UNSET}\"\nc = \"$${LITERAL}\"\n";
        let env = |name: &str| (name == "SECRET").then(|| "p\"w\\d".to_string());
        let out = interpolate(text, &env).unwrap();
        assert_eq!(
            out,
            "a = \"p\\\"w\\\\d\"\n# b = \"${UNSET}\"\nc = \"${LITERAL}\"\n"
        );
        let value: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(value["a"].as_str(), Some("p\"w\\d"));
    }

    #[test]
    fn missing_env_names_file_line_key_and_variable() {
        let text = EMBEDDED_DEFAULT.replace("name = \"echo\"", "name = \"${FLOW_NAME}\"");
        let error = parse("my.toml", &text, no_env).err().unwrap().to_string();
        assert!(error.starts_with("my.toml: line "), "{error}");
        assert!(error.contains("key `name`"), "{error}");
        assert!(error.contains("FLOW_NAME"), "{error}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = format!("{EMBEDDED_DEFAULT}\n[sip2]\nlisten = []\n");
        let error = parse("my.toml", &text, no_env).err().unwrap().to_string();
        assert!(error.starts_with("my.toml: "), "{error}");
        assert!(error.contains("sip2"), "{error}");
    }

    #[test]
    fn semantic_error_names_file_key_and_reason() {
        let text = EMBEDDED_DEFAULT.replace("flow = \"echo\"", "flow = \"nope\"");
        let error = parse("my.toml", &text, no_env).err().unwrap().to_string();
        assert!(error.contains("my.toml"), "{error}");
        assert!(error.contains("trunks[0].routes[0].flow"), "{error}");
        assert!(error.contains("nope"), "{error}");
    }
}
