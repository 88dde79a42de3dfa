//! `rkube image import FILE`: images from `docker save` tarballs (`manifest.json` + layer tars)
//! and OCI image layout archives (`oci-layout`, `index.json`, `blobs/`), plain or gzipped.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{
    digest_reader, io_err, Descriptor, Image, ImageError, ImageRef, ImageStore, Manifest, MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST,
};

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Imports every image in the archive at `file`; `extra_name` names them too (useful for OCI
/// archives whose entries carry only a tag). Returns the imported images.
pub async fn import(store: &ImageStore, file: &Path, extra_name: Option<&ImageRef>) -> Result<Vec<Image>, ImageError> {
    let dir = store.temp_path("import");
    let (file2, dir2) = (file.to_path_buf(), dir.clone());
    let extracted = tokio::task::spawn_blocking(move || extract(&file2, &dir2)).await.unwrap_or_else(|e| {
        Err(ImageError::Malformed { what: "archive".into(), reason: format!("extracting failed: {e}") })
    });
    let res = match extracted {
        Ok(()) => import_dir(store, &dir, extra_name).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn extract(file: &Path, dir: &Path) -> Result<(), ImageError> {
    let mut f = File::open(file).map_err(io_err(file))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io_err(file))?;
    let f = BufReader::new(File::open(file).map_err(io_err(file))?);
    let reader: Box<dyn Read> =
        if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    tar::Archive::new(reader).unpack(dir).map_err(|e| ImageError::Malformed {
        what: format!("archive {}", file.display()),
        reason: format!("not a readable tar archive: {e}"),
    })
}

/// Copies a file into the blob store under its digest; returns the digest and size.
fn store_file(store: &ImageStore, path: &Path) -> Result<(String, u64), ImageError> {
    let digest = digest_reader(File::open(path).map_err(io_err(path))?).map_err(io_err(path))?;
    let size = std::fs::metadata(path).map_err(io_err(path))?.len();
    if !store.has_blob(&digest) {
        let tmp = store.temp_path("import-blob");
        std::fs::copy(path, &tmp).map_err(io_err(&tmp))?;
        store.adopt_blob_file(&digest, &tmp)?;
    }
    Ok((digest, size))
}

fn inside(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
        return Err(ImageError::Malformed {
            what: "archive".into(),
            reason: format!("path {rel:?} leaves the archive"),
        });
    }
    Ok(dir.join(rel))
}

async fn import_dir(store: &ImageStore, dir: &Path, extra: Option<&ImageRef>) -> Result<Vec<Image>, ImageError> {
    let mut imported = Vec::new();
    let extra_names: Vec<String> = extra.map(|r| r.to_string()).into_iter().collect();
    if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
        let index_path = dir.join("index.json");
        let index = Manifest::parse(&std::fs::read(&index_path).map_err(io_err(&index_path))?)?;
        for desc in &index.manifests {
            let mut names = extra_names.clone();
            let annotations = desc.annotations.clone().unwrap_or_default();
            let full = annotations
                .get(ANNOTATION_CONTAINERD_NAME)
                .or_else(|| annotations.get(ANNOTATION_REF_NAME).filter(|n| n.contains('/') || n.contains(':')));
            if let Some(name) = full {
                names.push(ImageRef::parse(name)?.to_string());
            }
            let (mut digest, mut manifest) = load_oci_manifest(store, dir, &desc.digest)?;
            if manifest.is_index() {
                let entry = manifest.select_platform().cloned().ok_or_else(|| ImageError::NoPlatform {
                    reference: desc.digest.clone(),
                    platform: format!("linux/{}", super::go_arch()),
                })?;
                (digest, manifest) = load_oci_manifest(store, dir, &entry.digest)?;
            }
            let config = manifest.config.as_ref().ok_or_else(|| ImageError::Malformed {
                what: format!("manifest {digest}"),
                reason: "no config".into(),
            })?;
            for d in std::iter::once(&config.digest).chain(manifest.layers.iter().map(|l| &l.digest)) {
                let (got, _) = store_file(store, &oci_blob(dir, d)?)?;
                if &got != d {
                    return Err(ImageError::DigestMismatch { digest: d.clone(), actual: got });
                }
            }
            imported.push(store.commit(names, &digest, &manifest).await?);
        }
    } else if dir.join("manifest.json").is_file() {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let path = dir.join("manifest.json");
        let entries: Vec<Entry> = serde_json::from_slice(&std::fs::read(&path).map_err(io_err(&path))?)
            .map_err(|e| ImageError::Malformed { what: "docker save manifest.json".into(), reason: e.to_string() })?;
        for e in entries {
            let (config_digest, config_size) = store_file(store, &inside(dir, &e.config)?)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let (digest, size) = store_file(store, &inside(dir, l)?)?;
                layers.push(Descriptor {
                    media_type: MEDIA_OCI_LAYER_TAR.into(),
                    digest,
                    size,
                    platform: None,
                    annotations: None,
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_OCI_MANIFEST.into()),
                config: Some(Descriptor {
                    media_type: MEDIA_OCI_CONFIG.into(),
                    digest: config_digest,
                    size: config_size,
                    platform: None,
                    annotations: None,
                }),
                layers,
                manifests: vec![],
            };
            let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
            let digest = format!("sha256:{}", super::sha256_hex(&bytes));
            store.put_blob(&digest, &bytes)?;
            let mut names = extra_names.clone();
            for t in e.repo_tags.unwrap_or_default() {
                names.push(ImageRef::parse(&t)?.to_string());
            }
            imported.push(store.commit(names, &digest, &manifest).await?);
        }
    } else {
        return Err(ImageError::Malformed {
            what: "archive".into(),
            reason: "neither a docker save archive (manifest.json) nor an OCI layout (oci-layout, index.json)".into(),
        });
    }
    Ok(imported)
}

fn oci_blob(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| ImageError::Malformed { what: "descriptor".into(), reason: format!("digest {digest:?}") })?;
    inside(dir, &format!("blobs/{algo}/{hex}"))
}

fn load_oci_manifest(store: &ImageStore, dir: &Path, digest: &str) -> Result<(String, Manifest), ImageError> {
    let path = oci_blob(dir, digest)?;
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    store.put_blob(digest, &bytes)?;
    Ok((digest.to_string(), Manifest::parse(&bytes)?))
}
