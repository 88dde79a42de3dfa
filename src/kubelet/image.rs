//! The node-local image store: image references as Docker spells them ([`ImageRef`]), the pull
//! decision ([`PullPolicy::decide`]), and a content-addressed store ([`ImageStore`]) of blobs by
//! sha256, an index of names → images, and one unpacked root filesystem per image (read-only
//! lower layer of each container's overlay). Images come from registries ([`registry`]) or from
//! `docker save` / OCI archives ([`archive`]).
//!
//! On disk, under the store's root: `blobs/sha256/<hex>`, `index.json` and
//! `rootfs/<image id hex>/`. An image's id is the digest of its config, as in Docker.

pub mod archive;
pub mod registry;
mod unpack;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

pub use registry::{Credentials, RegistryConfig};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: &'static str },
    #[error("image {reference} not found in {registry}")]
    NotFound { reference: String, registry: String },
    #[error("image {reference} is not present on this node and its pull policy is Never")]
    NeverPull { reference: String },
    #[error("image {reference} is not present on this node")]
    NotPresent { reference: String },
    #[error("registry {registry} refused access to {reference}: {reason}")]
    Unauthorized { registry: String, reference: String, reason: String },
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("content {digest} does not match its digest (got {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("no manifest for platform {platform} in {reference}")]
    NoPlatform { reference: String, platform: String },
    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { path, source }
}

/// A parsed image reference: `registry/repository[:tag][@digest]`, normalized like Docker
/// (`httpd` → `docker.io/library/httpd:latest`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io`, `quay.io`, `127.0.0.1:5000`, ...
    pub registry: String,
    /// `library/httpd`, `team/app`, ...
    pub repository: String,
    /// `None` only when a digest is given.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

pub const DOCKER_HUB: &str = "docker.io";

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason| ImageError::InvalidReference { input: input.to_string(), reason };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                let (algo, hex) = d.split_once(':').ok_or_else(|| bad("digest must be ALGORITHM:HEX"))?;
                if algo != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("digest must be sha256 with 64 hex digits"));
                }
                (r, Some(d.to_ascii_lowercase()))
            }
            None => (input, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, after)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), after.to_string())
            }
            _ => (DOCKER_HUB.to_string(), rest.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        // The tag is after the last ':' of the last path component (a registry port is not a tag).
        let last_slash = path.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repository, tag) = match path[last_slash..].rfind(':') {
            Some(i) => (path[..last_slash + i].to_string(), Some(path[last_slash + i + 1..].to_string())),
            None => (path.clone(), None),
        };
        if repository.is_empty() {
            return Err(bad("empty repository"));
        }
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(valid_component) {
            return Err(bad("repository must be lowercase letters, digits and . _ - separated by /"));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && t.as_bytes()[0] != b'.'
                && t.as_bytes()[0] != b'-';
            if !ok {
                return Err(bad("tag must be up to 128 letters, digits, . _ -"));
            }
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest if there is one, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Kubernetes' imagePullPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// What to do about an image before starting a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullDecision {
    Pull,
    UseLocal,
    /// Not present and must not be pulled (ErrImageNeverPull).
    Refuse,
}

impl PullPolicy {
    /// The default when a pod does not say: Always for `:latest` or no tag, else IfNotPresent.
    pub fn default_for(image: &ImageRef) -> PullPolicy {
        match (&image.tag, &image.digest) {
            (_, Some(_)) => PullPolicy::IfNotPresent,
            (Some(t), None) if t != "latest" => PullPolicy::IfNotPresent,
            _ => PullPolicy::Always,
        }
    }

    pub fn decide(self, present: bool) -> PullDecision {
        match (self, present) {
            (PullPolicy::Always, _) => PullDecision::Pull,
            (PullPolicy::IfNotPresent | PullPolicy::Never, true) => PullDecision::UseLocal,
            (PullPolicy::IfNotPresent, false) => PullDecision::Pull,
            (PullPolicy::Never, false) => PullDecision::Refuse,
        }
    }
}

/// A content descriptor (OCI and Docker v2 share the shape).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (one platform) or an index / manifest list (several).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ImageError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ImageError::Malformed { what: "manifest".into(), reason: e.to_string() })
    }

    pub fn is_index(&self) -> bool {
        self.config.is_none() && !self.manifests.is_empty()
    }

    /// The entry of an index for this machine (linux and the running architecture).
    pub fn select_platform(&self) -> Option<&Descriptor> {
        let arch = go_arch();
        self.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
    }
}

/// The running architecture as OCI names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// What a container needs from its image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ImageConfig>,
}

/// A stored image, as the runtime needs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the config.
    pub id: String,
    /// Names it is known by (`docker.io/library/httpd:latest`).
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub layers: Vec<String>,
    /// Compressed size of the layers, as in `docker images`.
    pub size: u64,
    pub config: ImageConfig,
    /// The unpacked root filesystem (read-only lower layer of containers).
    pub rootfs: PathBuf,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Index {
    images: BTreeMap<String, Image>,
    /// Name → image id.
    names: BTreeMap<String, String>,
}

/// The content-addressed image store of one node. Cloning shares it.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    root: PathBuf,
    registries: RegistryConfig,
    /// Serializes index updates and unpacking (pulls of distinct images still overlap on I/O).
    lock: tokio::sync::Mutex<()>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

fn hex_of(digest: &str) -> Result<&str, ImageError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => Err(ImageError::Unsupported { what: "digest", value: digest.to_string() }),
    }
}

impl ImageStore {
    pub fn open(root: &Path, registries: RegistryConfig) -> Result<ImageStore, ImageError> {
        for d in [root.join("blobs/sha256"), root.join("rootfs"), root.join("tmp")] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(ImageStore {
            inner: Arc::new(StoreInner { root: root.to_path_buf(), registries, lock: tokio::sync::Mutex::new(()) }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn registries(&self) -> &RegistryConfig {
        &self.inner.registries
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.inner.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// A fresh temporary path inside the store (same filesystem, so renames are atomic).
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        self.inner.root.join("tmp").join(format!("{what}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Stores bytes under their digest, checking it.
    pub(crate) fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = format!("sha256:{}", sha256_hex(bytes));
        if actual != digest {
            return Err(ImageError::DigestMismatch { digest: digest.to_string(), actual });
        }
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        let tmp = self.temp_path("blob");
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Moves a file whose digest the caller computed into the blob store.
    pub(crate) fn adopt_blob_file(&self, digest: &str, file: &Path) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        std::fs::rename(file, &path).map_err(io_err(&path))
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(io_err(&path))
    }

    fn load_index(&self) -> Result<Index, ImageError> {
        let path = self.inner.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Malformed { what: path.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn save_index(&self, index: &Index) -> Result<(), ImageError> {
        let path = self.inner.root.join("index.json");
        let tmp = self.temp_path("index");
        let bytes = serde_json::to_vec_pretty(index).expect("the index serializes");
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// All images, sorted by first name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images: Vec<Image> = self.load_index()?.images.into_values().collect();
        images.sort_by(|a, b| a.names.first().cmp(&b.names.first()));
        Ok(images)
    }

    /// The image a reference names, if it is stored (by name, or by digest for `name@sha256:`).
    pub fn get(&self, image: &ImageRef) -> Result<Option<Image>, ImageError> {
        let index = self.load_index()?;
        let id = index.names.get(&image.to_string()).cloned().or_else(|| {
            let digest = image.digest.as_ref()?;
            index.images.values().find(|i| &i.manifest_digest == digest || &i.id == digest).map(|i| i.id.clone())
        });
        Ok(id.and_then(|id| index.images.get(&id).cloned()).filter(|i| i.rootfs.is_dir()))
    }

    /// Returns the image, pulling it first if the policy says so.
    #[tracing::instrument(skip_all, fields(image = %image, policy = ?policy))]
    pub async fn ensure(&self, image: &ImageRef, policy: PullPolicy) -> Result<Image, ImageError> {
        let present = self.get(image)?;
        match policy.decide(present.is_some()) {
            PullDecision::UseLocal => present.ok_or_else(|| ImageError::NotPresent { reference: image.to_string() }),
            PullDecision::Refuse => Err(ImageError::NeverPull { reference: image.to_string() }),
            PullDecision::Pull => self.pull(image).await,
        }
    }

    /// Pulls an image from its registry (or a mirror) and unpacks it.
    pub async fn pull(&self, image: &ImageRef) -> Result<Image, ImageError> {
        let (manifest_digest, manifest) = registry::pull(self, image).await?;
        self.commit(vec![image.to_string()], &manifest_digest, &manifest).await
    }

    /// Records an image whose manifest, config and layers are in the blob store, unpacking its
    /// root filesystem if needed, and points `names` at it.
    pub(crate) async fn commit(
        &self,
        names: Vec<String>,
        manifest_digest: &str,
        manifest: &Manifest,
    ) -> Result<Image, ImageError> {
        let config_desc = manifest
            .config
            .as_ref()
            .ok_or_else(|| ImageError::Malformed { what: "manifest".into(), reason: "no config".into() })?;
        let config_bytes = self.read_blob(&config_desc.digest)?;
        let config_file: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::Malformed { what: "image config".into(), reason: e.to_string() })?;
        if !config_file.os.is_empty() && config_file.os != "linux" {
            return Err(ImageError::Unsupported { what: "image os", value: config_file.os });
        }
        if !config_file.architecture.is_empty() && config_file.architecture != go_arch() {
            return Err(ImageError::Unsupported { what: "image architecture", value: config_file.architecture });
        }
        let id = config_desc.digest.clone();
        let rootfs = self.inner.root.join("rootfs").join(hex_of(&id)?);
        let _guard = self.inner.lock.lock().await;
        if !rootfs.is_dir() {
            let layers: Vec<(PathBuf, String)> = manifest
                .layers
                .iter()
                .map(|l| Ok((self.blob_path(&l.digest)?, l.media_type.clone())))
                .collect::<Result<_, ImageError>>()?;
            let tmp = self.temp_path("rootfs");
            let (tmp2, rootfs2) = (tmp.clone(), rootfs.clone());
            let res = tokio::task::spawn_blocking(move || {
                unpack::unpack_layers(&layers, &tmp2)?;
                std::fs::rename(&tmp2, &rootfs2).map_err(io_err(&rootfs2))
            })
            .await
            .unwrap_or_else(|e| {
                Err(ImageError::Malformed { what: "image layers".into(), reason: format!("unpacking failed: {e}") })
            });
            if let Err(e) = res {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        let mut index = self.load_index()?;
        let mut record = Image {
            id: id.clone(),
            names: vec![],
            manifest_digest: manifest_digest.to_string(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            size: manifest.layers.iter().map(|l| l.size).sum(),
            config: config_file.config.unwrap_or_default(),
            rootfs,
        };
        if let Some(old) = index.images.get(&id) {
            record.names = old.names.clone();
        }
        for name in names {
            // A name moves from the image it named before (a re-pulled `latest`).
            if let Some(prev) = index.names.insert(name.clone(), id.clone()) {
                if prev != id {
                    if let Some(p) = index.images.get_mut(&prev) {
                        p.names.retain(|n| n != &name);
                    }
                }
            }
            if !record.names.contains(&name) {
                record.names.push(name);
            }
        }
        index.images.insert(id, record.clone());
        self.save_index(&index)?;
        Ok(record)
    }
}

/// Reads a whole stream while hashing it; returns `sha256:<hex>`.
pub(crate) fn digest_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        let cases = [
            ("httpd", "docker.io/library/httpd:latest"),
            ("httpd:2.4", "docker.io/library/httpd:2.4"),
            ("team/app", "docker.io/team/app:latest"),
            ("index.docker.io/library/httpd", "docker.io/library/httpd:latest"),
            ("quay.io/team/app:v1", "quay.io/team/app:v1"),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/httpd", "127.0.0.1:5000/httpd:latest"),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).expect(input).to_string(), want, "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("httpd@{d}")).expect("digest ref");
        assert_eq!((r.tag.as_deref(), r.digest.as_deref(), r.reference()), (None, Some(d.as_str()), d.as_str()));
        let r = ImageRef::parse("127.0.0.1:5000/httpd").expect("port is not a tag");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "httpd"));
        for bad in ["", "HTTPD", "httpd:", "httpd@sha256:abc", "a//b", "httpd:-x", "/httpd"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn pull_policy_decisions() {
        use PullDecision::*;
        use PullPolicy::*;
        assert_eq!([Always.decide(true), Always.decide(false)], [Pull, Pull]);
        assert_eq!([IfNotPresent.decide(true), IfNotPresent.decide(false)], [UseLocal, Pull]);
        assert_eq!([Never.decide(true), Never.decide(false)], [UseLocal, Refuse]);
        let r = |s| ImageRef::parse(s).expect("valid");
        assert_eq!(PullPolicy::default_for(&r("httpd")), Always);
        assert_eq!(PullPolicy::default_for(&r("httpd:latest")), Always);
        assert_eq!(PullPolicy::default_for(&r("httpd:2.4")), IfNotPresent);
        assert_eq!(PullPolicy::default_for(&r(&format!("httpd@sha256:{}", "0".repeat(64)))), IfNotPresent);
    }

    #[test]
    fn index_selects_this_platform() {
        let m = Manifest::parse(
            format!(
                r#"{{"schemaVersion":2,"manifests":[
                {{"digest":"sha256:{a}","platform":{{"architecture":"s390x","os":"linux"}}}},
                {{"digest":"sha256:{b}","platform":{{"architecture":"{arch}","os":"linux"}}}}]}}"#,
                a = "a".repeat(64),
                b = "b".repeat(64),
                arch = go_arch()
            )
            .as_bytes(),
        )
        .expect("parse");
        assert!(m.is_index());
        assert_eq!(m.select_platform().map(|d| d.digest.clone()), Some(format!("sha256:{}", "b".repeat(64))));
    }
}
