//! rkctl's config file, which `rkube dev` writes so that plain `rkctl` finds the local
//! cluster: `$XDG_CONFIG_HOME/rkube/config` (else `~/.config/rkube/config`), a tiny YAML
//! document `server: 127.0.0.1:6443`. Which masters rkctl talks to: `--server`, else
//! `RKUBE_SERVER`, else the config file, else 127.0.0.1:6443.

use std::path::{Path, PathBuf};

pub const DEFAULT_SERVER: &str = "127.0.0.1:6443";

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Comma-separated masters.
    #[serde(default)]
    pub server: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an rkctl config (`server: host:port`): {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("neither XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
}

/// Where the config file is, from the values of XDG_CONFIG_HOME and HOME.
pub fn path_from(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (xdg_config_home.filter(|s| !s.is_empty()), home.filter(|s| !s.is_empty())) {
        (Some(x), _) => Some(Path::new(x).join("rkube/config")),
        (None, Some(h)) => Some(Path::new(h).join(".config/rkube/config")),
        (None, None) => None,
    }
}

/// Where the config file is for this process's environment.
pub fn default_path() -> Option<PathBuf> {
    let x = std::env::var("XDG_CONFIG_HOME").ok();
    let h = std::env::var("HOME").ok();
    path_from(x.as_deref(), h.as_deref())
}

pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml::from_str(text).map_err(|e| ConfigError::Malformed { path: path.to_path_buf(), detail: e.to_string() })
}

/// The config at `path`, or `None` when there is no such file.
pub fn load(path: &Path) -> Result<Option<Config>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
    }
}

/// The masters to talk to: the flag, else the environment, else the config file, else the
/// default.
pub fn resolve(flag: Option<&str>, env: Option<&str>, config: Option<&Config>) -> String {
    [flag, env, config.map(|c| c.server.as_str())]
        .into_iter()
        .flatten()
        .find(|s| !s.trim().is_empty())
        .unwrap_or(DEFAULT_SERVER)
        .to_string()
}

/// The address a client on this machine uses for a server listening on `listen`: a wildcard
/// host becomes loopback.
pub fn client_address(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_string(),
    }
}

/// Writes the config file for a server listening on `listen` (what `rkube dev` does).
pub fn write(path: &Path, listen: &str) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = format!(
        "# Written by `rkube dev`: the masters rkctl talks to when neither --server nor RKUBE_SERVER is given.\nserver: {}\n",
        client_address(listen)
    );
    std::fs::write(path, text).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_found_where_xdg_says() {
        assert_eq!(path_from(Some("/x"), Some("/h")), Some(PathBuf::from("/x/rkube/config")));
        assert_eq!(path_from(None, Some("/h")), Some(PathBuf::from("/h/.config/rkube/config")));
        assert_eq!(path_from(Some(""), Some("/h")), Some(PathBuf::from("/h/.config/rkube/config")));
        assert_eq!(path_from(None, None), None);
    }

    #[test]
    fn flag_beats_env_beats_config_beats_default() {
        let cfg = Config { server: "c:1".into() };
        assert_eq!(resolve(Some("f:1"), Some("e:1"), Some(&cfg)), "f:1");
        assert_eq!(resolve(None, Some("e:1"), Some(&cfg)), "e:1");
        assert_eq!(resolve(None, None, Some(&cfg)), "c:1");
        assert_eq!(resolve(None, Some(""), None), DEFAULT_SERVER);
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rkube/config");
        assert!(load(&path).expect("absent is fine").is_none());
        write(&path, "0.0.0.0:7443").expect("writes");
        assert_eq!(load(&path).expect("reads"), Some(Config { server: "127.0.0.1:7443".into() }));
        std::fs::write(&path, "servers: [a]\n").expect("writes");
        assert!(load(&path).expect_err("unknown key").to_string().contains("is not an rkctl config"));
    }
}
