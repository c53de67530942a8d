//! `diskplane get KIND [NAME] [-o yaml|json|wide]`: prints objects as kubectl does: a table
//! (`NAME PHASE PROGRESS RESTARTS AGE` for DataVolumes, `NAME READYTOUSE SOURCEPVC RESTORESIZE
//! AGE` for VolumeSnapshots), or the objects as the API holds them.

use anyhow::{Result, bail};
use serde_json::Value;

use controller::api::volumesnapshot;

use super::client::{self, Client, Resource, ServerArgs};

/// VolumeSnapshots (`snapshot.storage.k8s.io/v1`, `vs`): served outside the CDI group.
const VOLUMESNAPSHOTS: Resource =
    Resource { plural: "volumesnapshots", kind: "VolumeSnapshot", singular: "volumesnapshot" };

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// dv (datavolume), das (datasource), dic (dataimportcron) or vs (volumesnapshot).
    kind: String,
    /// One object; all in the namespace when omitted.
    name: Option<String>,
    /// Output: the table (default), wide (more columns), json or yaml.
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<GetOutput>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GetOutput {
    Wide,
    Json,
    Yaml,
}

pub fn run(args: &GetArgs) -> Result<()> {
    let snapshots = volumesnapshot::is_alias(&args.kind);
    let resource = if snapshots { VOLUMESNAPSHOTS } else { client::resource(&args.kind)? };
    let client = Client::new(&args.server.server)?;
    let path = match (snapshots, args.all_namespaces) {
        (true, true) => format!("{}/{}", volumesnapshot::API_PATH, resource.plural),
        (true, false) => volumesnapshot::path(&args.server.namespace, args.name.as_deref()),
        (false, true) => format!("{}/{}", client::CDI_PATH, resource.plural),
        (false, false) => client::path(&args.server.namespace, resource, args.name.as_deref()),
    };
    let answer = client.get(&path)?;
    if !answer.ok() {
        bail!("{}", answer.message());
    }
    let items: Vec<Value> = match &args.name {
        Some(_) => vec![answer.body.clone()],
        None => answer.body["items"].as_array().cloned().unwrap_or_default(),
    };
    match args.output {
        Some(GetOutput::Json) => println!("{}", serde_json::to_string_pretty(&answer.body)?),
        Some(GetOutput::Yaml) => print!("{}", to_yaml(&answer.body)?),
        wide => {
            if items.is_empty() {
                eprintln!("No resources found in {} namespace.", args.server.namespace);
                return Ok(());
            }
            print!("{}", table(resource, &items, wide == Some(GetOutput::Wide), args.all_namespaces, now()));
        }
    }
    Ok(())
}

fn to_yaml(value: &Value) -> Result<String> {
    let mut text = serde_saphyr::to_string(value)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

fn now() -> i64 {
    controller::local::now().0
}

/// kubectl's table: columns left-aligned, separated by three spaces.
fn table(resource: Resource, items: &[Value], wide: bool, namespaces: bool, now: i64) -> String {
    let mut header: Vec<&str> = Vec::new();
    if namespaces {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    if resource == client::DATAVOLUMES {
        header.extend(["PHASE", "PROGRESS", "RESTARTS", "AGE"]);
        if wide {
            header.extend(["SIZE", "SOURCE"]);
        }
    } else if resource == VOLUMESNAPSHOTS {
        header.extend(["READYTOUSE", "SOURCEPVC", "RESTORESIZE", "AGE"]);
        if wide {
            header.extend(["SNAPSHOTCONTENT", "CREATIONTIME", "ERROR"]);
        }
    } else {
        header.push("AGE");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for item in items {
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let mut row = Vec::new();
        if namespaces {
            row.push(text(&item["metadata"]["namespace"]));
        }
        row.push(text(&item["metadata"]["name"]));
        let age = age(item["metadata"]["creationTimestamp"].as_str(), now);
        if resource == client::DATAVOLUMES {
            let status = &item["status"];
            row.push(text(&status["phase"]));
            row.push(text(&status["progress"]));
            row.push(status["restartCount"].as_i64().unwrap_or(0).to_string());
            row.push(age);
            if wide {
                let spec = &item["spec"];
                let claim = if spec["storage"].is_object() { &spec["storage"] } else { &spec["pvc"] };
                row.push(text(&claim["resources"]["requests"]["storage"]));
                row.push(source(spec));
            }
        } else if resource == VOLUMESNAPSHOTS {
            let status = &item["status"];
            row.push(status["readyToUse"].as_bool().unwrap_or(false).to_string());
            row.push(text(&item["spec"]["source"]["persistentVolumeClaimName"]));
            row.push(text(&status["restoreSize"]));
            row.push(age);
            if wide {
                row.push(text(&status["boundVolumeSnapshotContentName"]));
                row.push(text(&status["creationTime"]));
                row.push(text(&status["error"]["message"]));
            }
        } else {
            row.push(age);
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, String::len)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `http URL`, `registry URL`, `blank`, `pvc NS/NAME`, `sourceRef KIND/NAME`…
fn source(spec: &Value) -> String {
    if let Some(source) = spec["source"].as_object()
        && let Some((kind, body)) = source.iter().next()
    {
        return match body["url"].as_str() {
            Some(url) => format!("{kind} {url}"),
            None if body["name"].is_string() => {
                format!(
                    "{kind} {}/{}",
                    body["namespace"].as_str().unwrap_or(""),
                    body["name"].as_str().unwrap_or("")
                )
            }
            None => kind.clone(),
        };
    }
    match spec["sourceRef"]["name"].as_str() {
        Some(name) => format!("sourceRef {}/{name}", spec["sourceRef"]["kind"].as_str().unwrap_or("")),
        None => String::new(),
    }
}

/// kubectl's short age: `45s`, `3m12s`, `17m`, `5h3m`, `20h`, `3d4h`, `12d`.
fn age(created: Option<&str>, now: i64) -> String {
    let Some(created) = created.and_then(controller::api::Timestamp::parse_rfc3339) else {
        return "<unknown>".into();
    };
    let s = (now - created.0).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, s / 60 % 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s if s < 8 * 86_400 => format!("{}d{}h", s / 86_400, s / 3600 % 24),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let t = |s: i64| age(Some("1970-01-01T00:00:00Z"), s);
        assert_eq!(t(45), "45s");
        assert_eq!(t(192), "3m12s");
        assert_eq!(t(17 * 60), "17m");
        assert_eq!(t(5 * 3600 + 180), "5h3m");
        assert_eq!(t(3 * 86_400 + 4 * 3600), "3d4h");
    }

    #[test]
    fn table_aligns_columns() {
        let items = vec![serde_json::json!({
            "metadata": {"name": "fedora", "creationTimestamp": "1970-01-01T00:00:00Z"},
            "status": {"phase": "Succeeded", "progress": "100.0%", "restartCount": 0}
        })];
        let out = table(client::DATAVOLUMES, &items, false, false, 30);
        assert_eq!(
            out,
            "NAME     PHASE       PROGRESS   RESTARTS   AGE\nfedora   Succeeded   100.0%     0          30s\n"
        );
    }

    #[test]
    fn volume_snapshot_table_reads_like_kubectl() {
        let items = vec![serde_json::json!({
            "metadata": {"name": "snap", "creationTimestamp": "1970-01-01T00:00:00Z"},
            "spec": {"source": {"persistentVolumeClaimName": "golden"}},
            "status": {"readyToUse": true, "restoreSize": "24Mi"}
        })];
        let out = table(VOLUMESNAPSHOTS, &items, false, false, 30);
        assert_eq!(
            out,
            "NAME   READYTOUSE   SOURCEPVC   RESTORESIZE   AGE\nsnap   true         golden      24Mi          30s\n"
        );
    }
}
