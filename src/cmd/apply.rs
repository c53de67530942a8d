//! `diskplane apply -f FILE|-`: creates every DataVolume, DataSource, DataImportCron and
//! VolumeSnapshot (`snapshot.storage.k8s.io/v1`) of a multi-document YAML manifest on the
//! server. The server validates (CDI's rules and messages); an object
//! that exists with the same spec is `unchanged`, with another spec it is refused (the spec
//! of a DataVolume is immutable). Kinds the server does not serve are skipped with a note.
//! Every document is tried; the exit status is non-zero if any was refused.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use controller::api::volumesnapshot::{self, SNAPSHOT_GROUP};
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
    // The documents as written, for kinds the manifest reader does not type (VolumeSnapshot).
    let documents: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
        .map(|docs| docs.into_iter().filter(|d| !d.is_null()).collect())
        .unwrap_or_default();
    let client = Client::new(&args.server.server)?;
    let mut refused = Vec::new();
    for (index, manifest) in manifests.iter().enumerate() {
        let (resource, object) = match manifest {
            Manifest::DataVolume(dv) => (client::DATAVOLUMES, serde_json::to_value(dv)?),
            Manifest::DataSource(ds) => (client::DATASOURCES, serde_json::to_value(ds)?),
            Manifest::DataImportCron(cron) => (client::DATAIMPORTCRONS, serde_json::to_value(cron)?),
            Manifest::Other { api_version, kind }
                if kind == volumesnapshot::KIND && api_version.starts_with(SNAPSHOT_GROUP) =>
            {
                let object = documents.get(index).cloned().unwrap_or(Value::Null);
                match apply_snapshot(&client, &args.server.namespace, object) {
                    Ok(line) => println!("{line}"),
                    Err(e) => refused.push(format!("{shown}: document {}: {e:#}", index + 1)),
                }
                continue;
            }
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

/// Creates a VolumeSnapshot (`unchanged` when it exists with the same spec).
fn apply_snapshot(client: &Client, default_ns: &str, object: Value) -> Result<String> {
    let namespace =
        object["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(default_ns).to_owned();
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let answer = client.post(&volumesnapshot::path(&namespace, None), &object)?;
    let id = |name: &str| format!("volumesnapshot.{SNAPSHOT_GROUP}/{name}");
    if answer.ok() {
        let created = answer.body["metadata"]["name"].as_str().unwrap_or(&name).to_owned();
        return Ok(format!("{} created", id(&created)));
    }
    if answer.status == 409 {
        let existing = client.get(&volumesnapshot::path(&namespace, Some(&name)))?;
        if existing.ok() && existing.body["spec"] == object["spec"] {
            return Ok(format!("{} unchanged", id(&name)));
        }
        bail!("{}: its spec cannot change (delete it first)", answer.message());
    }
    bail!("{}", answer.message())
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
