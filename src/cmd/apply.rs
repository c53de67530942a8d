//! `diskplane apply -f FILE|-`: creates every DataVolume and DataSource of a multi-document
//! YAML manifest on the server. The server validates (CDI's rules and messages); an object
//! that exists with the same spec is `unchanged`, with another spec it is refused (the spec
//! of a DataVolume is immutable). Kinds the server does not serve are skipped with a note.
//! Every document is tried; the exit status is non-zero if any was refused.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use controller::{Manifest, parse_manifests};
use serde_json::Value;

use super::client::{self, Client, Resource, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The manifest file, or - for standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: &ApplyArgs) -> Result<()> {
    let shown = args.file.display().to_string();
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {shown}"))?
    };
    let manifests = parse_manifests(&text).with_context(|| shown.clone())?;
    let client = Client::new(&args.server.server)?;
    let mut refused = Vec::new();
    for (index, manifest) in manifests.iter().enumerate() {
        let (resource, object) = match manifest {
            Manifest::DataVolume(dv) => (client::DATAVOLUMES, serde_json::to_value(dv)?),
            Manifest::DataSource(ds) => (client::DATASOURCES, serde_json::to_value(ds)?),
            Manifest::DataImportCron(cron) => (client::DATAIMPORTCRONS, serde_json::to_value(cron)?),
            other => {
                eprintln!(
                    "{shown}: document {}: skipped {}: not served by diskplane serve",
                    index + 1,
                    other.kind()
                );
                continue;
            }
        };
        match apply_one(&client, &args.server.namespace, resource, object) {
            Ok(line) => println!("{line}"),
            Err(e) => refused.push(format!("{shown}: document {}: {e:#}", index + 1)),
        }
    }
    // One line per refused object; the last one leaves through main's error line.
    let Some(last) = refused.pop() else { return Ok(()) };
    for line in &refused {
        eprintln!("diskplane: {line}");
    }
    bail!("{last}")
}

fn apply_one(client: &Client, default_ns: &str, resource: Resource, object: Value) -> Result<String> {
    let namespace =
        object["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(default_ns).to_owned();
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let answer = client.post(&client::path(&namespace, resource, None), &object)?;
    let id = |name: &str| format!("{}.cdi.kubevirt.io/{name}", resource.singular);
    if answer.ok() {
        let created = answer.body["metadata"]["name"].as_str().unwrap_or(&name).to_owned();
        return Ok(format!("{} created", id(&created)));
    }
    if answer.status == 409 {
        let existing = client.get(&client::path(&namespace, resource, Some(&name)))?;
        if existing.ok() && existing.body["spec"] == object["spec"] {
            return Ok(format!("{} unchanged", id(&name)));
        }
        bail!("{}: its spec cannot change (delete it first)", answer.message());
    }
    bail!("{}", answer.message())
}
