//! Pulls over the OCI distribution API: manifest (an index resolves to this platform's manifest),
//! config and layers into the blob store, each checked against its digest. Anonymous access,
//! basic auth and bearer tokens (the `WWW-Authenticate: Bearer realm=…` dance, with the basic
//! credentials if any); plain HTTP for `--insecure-registry` hosts; `--registry-mirror`s are
//! tried in order for docker.io names before Docker Hub itself.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{
    io_err, sha256_hex, ImageError, ImageRef, ImageStore, Manifest, DOCKER_HUB, MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Manifests larger than this are refused (real ones are a few KiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `host:port`s spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Registries (`host:port` or `http(s)://host:port`) tried, in order, for docker.io images.
    pub mirrors: Vec<String>,
    /// Credentials by registry host (`host:port`).
    pub credentials: BTreeMap<String, Credentials>,
}

/// One place an image can be pulled from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://registry-1.docker.io`, `http://127.0.0.1:5000`.
    pub base: String,
    /// The host as configured (for credentials and messages).
    pub host: String,
}

impl RegistryConfig {
    fn endpoint(&self, host: &str) -> Endpoint {
        if let Some(rest) = host.strip_prefix("http://") {
            return Endpoint { base: host.trim_end_matches('/').to_string(), host: rest.trim_end_matches('/').into() };
        }
        if let Some(rest) = host.strip_prefix("https://") {
            return Endpoint { base: host.trim_end_matches('/').to_string(), host: rest.trim_end_matches('/').into() };
        }
        let scheme = if self.insecure.iter().any(|h| h == host) { "http" } else { "https" };
        Endpoint { base: format!("{scheme}://{host}"), host: host.to_string() }
    }

    /// Where to pull an image of `registry` from, in order.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        if registry == DOCKER_HUB {
            let mut out: Vec<Endpoint> = self.mirrors.iter().map(|m| self.endpoint(m)).collect();
            out.push(self.endpoint("registry-1.docker.io"));
            out
        } else {
            vec![self.endpoint(registry)]
        }
    }
}

/// Pulls the manifest, config and layers of `image` into the store's blobs; returns the digest
/// and content of the platform manifest.
pub(crate) async fn pull(store: &ImageStore, image: &ImageRef) -> Result<(String, Manifest), ImageError> {
    let endpoints = store.registries().endpoints(&image.registry);
    let mut last = None;
    let n = endpoints.len();
    for (i, ep) in endpoints.into_iter().enumerate() {
        match pull_from(store, &ep, image).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                if i + 1 < n {
                    tracing::warn!(image = %image, endpoint = %ep.base, error = %e, "pull from mirror failed, trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("there is at least one endpoint"))
}

struct Session {
    client: reqwest::Client,
    ep: Endpoint,
    repo: String,
    creds: Option<Credentials>,
    auth: Option<HeaderValue>,
    image: String,
}

impl Session {
    fn err(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Registry { registry: self.ep.host.clone(), reason: reason.into() }
    }

    async fn get(&mut self, path: &str, accept: Option<&str>) -> Result<reqwest::Response, ImageError> {
        let url = format!("{}/v2/{}/{}", self.ep.base, self.repo, path);
        let mut tried_auth = false;
        loop {
            let mut req = self.client.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(h) = &self.auth {
                req = req.header(AUTHORIZATION, h.clone());
            }
            let resp = req.send().await.map_err(|e| self.err(format!("GET {url}: {}", error_chain(&e))))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if tried_auth {
                return Err(ImageError::Unauthorized {
                    registry: self.ep.host.clone(),
                    reference: self.image.clone(),
                    reason: "credentials were refused".into(),
                });
            }
            tried_auth = true;
            let challenge =
                resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            self.auth = Some(self.authenticate(&challenge).await?);
        }
    }

    async fn authenticate(&self, challenge: &str) -> Result<HeaderValue, ImageError> {
        let unauthorized = |reason: String| ImageError::Unauthorized {
            registry: self.ep.host.clone(),
            reference: self.image.clone(),
            reason,
        };
        let basic = self.creds.as_ref().map(|c| {
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
            format!("Basic {enc}")
        });
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let b = basic.ok_or_else(|| {
                    unauthorized("the registry wants basic auth and no credentials are configured".into())
                })?;
                HeaderValue::from_str(&b).map_err(|_| unauthorized("credentials are not valid in a header".into()))
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| unauthorized(format!("bearer challenge without realm: {challenge}")))?;
                let mut url = Url::parse(realm).map_err(|e| unauthorized(format!("token realm {realm}: {e}")))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    q.append_pair(
                        "scope",
                        params.get("scope").map(String::as_str).unwrap_or(&format!("repository:{}:pull", self.repo)),
                    );
                }
                let mut req = self.client.get(url.clone());
                if let Some(b) = &basic {
                    req = req.header(AUTHORIZATION, b);
                }
                let resp = req.send().await.map_err(|e| self.err(format!("token from {url}: {}", error_chain(&e))))?;
                if !resp.status().is_success() {
                    return Err(unauthorized(format!("token endpoint {url} answered {}", resp.status())));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = resp.bytes().await.map_err(|e| self.err(format!("token from {url}: {e}")))?;
                let t: Token = serde_json::from_slice(&body)
                    .map_err(|e| ImageError::Malformed { what: "token response".into(), reason: e.to_string() })?;
                let token =
                    t.token.or(t.access_token).ok_or_else(|| unauthorized("token response without a token".into()))?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| unauthorized("token is not valid in a header".into()))
            }
            _ => Err(unauthorized(format!("unsupported authentication challenge {challenge:?}"))),
        }
    }

    async fn manifest(&mut self, reference: &str) -> Result<(String, Manifest, Vec<u8>), ImageError> {
        let accept = [MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST].join(", ");
        let resp = self.get(&format!("manifests/{reference}"), Some(&accept)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound { reference: self.image.clone(), registry: self.ep.host.clone() });
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(
                self.err(format!("manifest {reference}: {status}: {}", body.chars().take(200).collect::<String>()))
            );
        }
        let body = resp.bytes().await.map_err(|e| self.err(format!("manifest {reference}: {e}")))?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(self.err(format!("manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let digest = format!("sha256:{}", sha256_hex(&body));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(ImageError::DigestMismatch { digest: reference.to_string(), actual: digest });
        }
        Ok((digest, Manifest::parse(&body)?, body.to_vec()))
    }

    async fn blob(&mut self, store: &ImageStore, digest: &str) -> Result<(), ImageError> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let mut resp = self.get(&format!("blobs/{digest}"), None).await?;
        if !resp.status().is_success() {
            return Err(self.err(format!("blob {digest}: {}", resp.status())));
        }
        let tmp = store.temp_path("download");
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
        let mut hash = Sha256::new();
        let res: Result<(), ImageError> = async {
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.err(format!("blob {digest}: {e}")))? {
                hash.update(&chunk);
                file.write_all(&chunk).await.map_err(io_err(&tmp))?;
            }
            file.flush().await.map_err(io_err(&tmp))?;
            let actual = format!("sha256:{:x}", hash.finalize());
            if actual != digest {
                return Err(ImageError::DigestMismatch { digest: digest.to_string(), actual });
            }
            store.adopt_blob_file(digest, &tmp)
        }
        .await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res
    }
}

#[tracing::instrument(skip_all, fields(image = %image, endpoint = %ep.base))]
async fn pull_from(store: &ImageStore, ep: &Endpoint, image: &ImageRef) -> Result<(String, Manifest), ImageError> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| ImageError::Registry { registry: ep.host.clone(), reason: format!("http client: {e}") })?;
    let creds = store
        .registries()
        .credentials
        .get(&ep.host)
        .or_else(|| store.registries().credentials.get(&image.registry))
        .cloned();
    let mut s =
        Session { client, ep: ep.clone(), repo: image.repository.clone(), creds, auth: None, image: image.to_string() };
    let started = std::time::Instant::now();
    let (mut digest, mut manifest, mut bytes) = s.manifest(image.reference()).await?;
    if manifest.is_index() {
        store.put_blob(&digest, &bytes)?;
        let entry = manifest.select_platform().ok_or_else(|| ImageError::NoPlatform {
            reference: image.to_string(),
            platform: format!("linux/{}", super::go_arch()),
        })?;
        let d = entry.digest.clone();
        (digest, manifest, bytes) = s.manifest(&d).await?;
    }
    let config = manifest
        .config
        .clone()
        .ok_or_else(|| ImageError::Malformed { what: format!("manifest {digest}"), reason: "no config".into() })?;
    s.blob(store, &config.digest).await?;
    for layer in &manifest.layers {
        s.blob(store, &layer.digest).await?;
    }
    store.put_blob(&digest, &bytes)?;
    tracing::info!(manifest = %digest, layers = manifest.layers.len(), elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
    Ok((digest, manifest))
}

/// `Bearer realm="https://auth",service="reg",scope="repository:x:pull"` → ("Bearer", params).
pub fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_string());
        rest = remaining.trim_start_matches(',').trim();
    }
    (scheme.to_string(), params)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/httpd:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p.get("realm").map(String::as_str), Some("https://auth.docker.io/token"));
        assert_eq!(p.get("service").map(String::as_str), Some("registry.docker.io"));
        assert_eq!(p.get("scope").map(String::as_str), Some("repository:library/httpd:pull"));
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p.get("realm").map(String::as_str)), ("Basic", Some("Registry Realm")));
    }

    #[test]
    fn endpoints_use_mirrors_for_docker_hub_and_http_for_insecure_hosts() {
        let cfg = RegistryConfig {
            insecure: vec!["127.0.0.1:5000".into()],
            mirrors: vec!["127.0.0.1:5000".into(), "https://mirror.example".into()],
            credentials: BTreeMap::new(),
        };
        let bases: Vec<String> = cfg.endpoints(DOCKER_HUB).into_iter().map(|e| e.base).collect();
        assert_eq!(bases, vec!["http://127.0.0.1:5000", "https://mirror.example", "https://registry-1.docker.io"]);
        assert_eq!(cfg.endpoints("quay.io")[0].base, "https://quay.io");
        assert_eq!(cfg.endpoints("127.0.0.1:5000")[0].base, "http://127.0.0.1:5000");
    }
}
