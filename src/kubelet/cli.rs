//! `rkube image …`: the node's image store from the command line (`import FILE`, `ls`,
//! `pull REF`), and [`RegistryOpts`], the registry flags `rkube node` shares.

use std::path::PathBuf;

use super::image::{archive, Credentials, ImageError, ImageRef, ImageStore, RegistryConfig};

/// How to reach image registries.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RegistryOpts {
    /// A registry (host:port) spoken to over plain HTTP. Repeatable or comma-separated.
    #[arg(long = "insecure-registry", env = "RKUBE_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// A registry (host:port or http(s)://host:port) tried before Docker Hub for docker.io images.
    /// Repeatable or comma-separated; tried in order.
    #[arg(long = "registry-mirror", env = "RKUBE_REGISTRY_MIRROR", value_delimiter = ',')]
    pub registry_mirrors: Vec<String>,
    /// Credentials as HOST=USER:PASSWORD (basic auth, or to obtain a bearer token). Repeatable.
    #[arg(long = "registry-auth", env = "RKUBE_REGISTRY_AUTH", value_delimiter = ',', hide_env_values = true)]
    pub registry_auth: Vec<String>,
}

impl RegistryOpts {
    pub fn to_config(&self) -> Result<RegistryConfig, String> {
        let mut credentials = std::collections::BTreeMap::new();
        for a in &self.registry_auth {
            let (host, userpass) =
                a.split_once('=').ok_or_else(|| format!("--registry-auth {a:?}: expected HOST=USER:PASSWORD"))?;
            let (user, pass) = userpass
                .split_once(':')
                .ok_or_else(|| format!("--registry-auth for {host}: expected HOST=USER:PASSWORD"))?;
            credentials.insert(host.to_string(), Credentials { username: user.into(), password: pass.into() });
        }
        Ok(RegistryConfig {
            insecure: self.insecure_registries.clone(),
            mirrors: self.registry_mirrors.clone(),
            credentials,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct ImageOpts {
    /// The image store (default: /var/lib/rkube/images as root, else ~/.local/share/rkube/images).
    #[arg(long, env = "RKUBE_IMAGE_DIR")]
    pub image_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registries: RegistryOpts,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import the images of a `docker save` tarball or an OCI image layout archive.
    Import {
        file: PathBuf,
        /// Also name the imported image(s) so (e.g. an OCI archive that carries only a tag).
        #[arg(long)]
        name: Option<String>,
    },
    /// List stored images.
    Ls,
    /// Pull an image from its registry.
    Pull { reference: String },
}

/// The default image store directory.
pub fn default_image_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rkube/images");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("rkube/images")
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Runs an `rkube image` command, printing its result on stdout.
pub async fn run_image(opts: ImageOpts) -> Result<(), CliError> {
    let dir = opts.image_dir.clone().unwrap_or_else(default_image_dir);
    let store = ImageStore::open(&dir, opts.registries.to_config().map_err(CliError::Usage)?)?;
    match opts.command {
        ImageCommand::Import { file, name } => {
            let name = name.as_deref().map(ImageRef::parse).transpose()?;
            for image in archive::import(&store, &file, name.as_ref()).await? {
                let names = if image.names.is_empty() { "<none>".to_string() } else { image.names.join(", ") };
                println!("imported {} {}", short_id(&image.id), names);
            }
        }
        ImageCommand::Pull { reference } => {
            let r = ImageRef::parse(&reference)?;
            let image = store.pull(&r).await?;
            println!("pulled {r} {} ({})", short_id(&image.id), human(image.size));
        }
        ImageCommand::Ls => {
            println!("{:<60} {:<14} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            for image in store.list()? {
                let names = if image.names.is_empty() { vec!["<none>".to_string()] } else { image.names.clone() };
                for n in names {
                    println!("{n:<60} {:<14} {:>10}", short_id(&image.id), human(image.size));
                }
            }
        }
    }
    Ok(())
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}
