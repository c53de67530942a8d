//! `diskplane crds [--out-dir DIR]`: the CustomResourceDefinitions of Kubernetes mode, generated
//! from the API types (see `controller::kube::crd`). To stdout as one multi-document YAML
//! stream, or one file per CRD (`cdi.kubevirt.io_datavolumes.yaml`, …) — what `deploy/crds/`
//! holds.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use controller::kube::crd;

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory (created if missing) instead of stdout.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn run(args: &CrdsArgs) -> Result<()> {
    match &args.out_dir {
        None => {
            let text = crd::all_yaml()?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes()).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for definition in crd::crds()? {
                let path = dir.join(crd::file_name(&definition));
                let text = crd::crd_yaml(&definition)?;
                std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
