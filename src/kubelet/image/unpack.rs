//! Applies image layers (tar, optionally gzip-compressed) in order onto one directory, with OCI
//! whiteouts: `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties its directory of
//! lower layers' content. Paths cannot escape the target (`tar`'s `unpack_in` refuses `..` and
//! absolute paths).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::{io_err, ImageError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

pub(crate) fn unpack_layers(layers: &[(PathBuf, String)], target: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(target).map_err(io_err(target))?;
    for (path, media_type) in layers {
        if media_type.contains("zstd") {
            return Err(ImageError::Unsupported { what: "layer compression", value: media_type.clone() });
        }
        apply_layer(path, target)?;
    }
    Ok(())
}

fn open_layer(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io_err(path))?;
    let f = File::open(path).map_err(io_err(path))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(ImageError::Unsupported { what: "layer compression", value: "zstd".into() }),
        _ => Ok(Box::new(BufReader::new(f))),
    }
}

/// The path of an entry relative to the root, without `.` components; `None` if it would escape.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn apply_layer(layer: &Path, target: &Path) -> Result<(), ImageError> {
    let malformed = |reason: String| ImageError::Malformed { what: format!("layer {}", layer.display()), reason };
    let mut archive = tar::Archive::new(open_layer(layer)?);
    archive.set_preserve_permissions(true);
    // Ownership can only be kept by root; an unprivileged `rkube image import` keeps the files.
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Paths this layer created: an opaque whiteout empties only what lower layers put there.
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(|e| malformed(e.to_string()))? {
        let mut entry = entry.map_err(|e| malformed(e.to_string()))?;
        let raw = entry.path().map_err(|e| malformed(e.to_string()))?.into_owned();
        let Some(rel) = clean(&raw) else {
            return Err(malformed(format!("entry {} escapes the root", raw.display())));
        };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            let dir = target.join(&parent);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for child in rd.flatten() {
                    let child_rel = parent.join(child.file_name());
                    if !this_layer.contains(&child_rel) {
                        remove_any(&child.path()).map_err(io_err(&child.path()))?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let victim = target.join(&parent).join(hidden);
            remove_any(&victim).map_err(io_err(&victim))?;
            continue;
        }
        // A directory replacing a file or a file replacing a directory: remove the old one first.
        let dest = target.join(&rel);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(m) = std::fs::symlink_metadata(&dest) {
            if m.is_dir() != is_dir || (!is_dir && m.file_type().is_symlink()) {
                remove_any(&dest).map_err(io_err(&dest))?;
            }
        }
        entry.unpack_in(target).map_err(|e| {
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            malformed(format!("unpacking {}: {e}{cause}", rel.display()))
        })?;
        this_layer.insert(rel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, files: &[(&str, Option<&str>)]) -> PathBuf {
        let path = dir.join(name);
        let mut b = tar::Builder::new(File::create(&path).expect("create layer"));
        for (p, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, p, c.as_bytes()).expect("append");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, p, &[][..]).expect("append dir");
                }
            }
        }
        b.finish().expect("finish");
        path
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l1 = layer(
            dir.path(),
            "l1.tar",
            &[("etc", None), ("etc/a", Some("1")), ("etc/b", Some("1")), ("var", None), ("var/x", Some("1"))],
        );
        let l2 = layer(
            dir.path(),
            "l2.tar",
            &[
                ("etc/.wh.a", Some("")),
                ("etc/b", Some("2")),
                ("var", None),
                ("var/y", Some("2")),
                ("var/.wh..wh..opq", Some("")),
            ],
        );
        let root = dir.path().join("root");
        unpack_layers(&[(l1, String::new()), (l2, String::new())], &root).expect("unpack");
        assert!(!root.join("etc/a").exists(), "whiteout removes a lower file");
        assert_eq!(std::fs::read_to_string(root.join("etc/b")).expect("b"), "2");
        assert!(!root.join("var/x").exists(), "opaque dir hides lower content");
        assert_eq!(std::fs::read_to_string(root.join("var/y")).expect("y"), "2", "but keeps this layer's");
    }
}
