//! The HTTP client of the client verbs (`apply`, `get`, `delete`, `wait`): talks to
//! `diskplane serve` at `--server` (default `http://127.0.0.1:8417`, or `DISKPLANE_SERVER`).

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `--server` and `--namespace`, shared by the client verbs.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The diskplane server.
    #[arg(long, env = "DISKPLANE_SERVER", default_value = "http://127.0.0.1:8417")]
    pub server: String,
    /// Namespace (objects of a manifest that name their own keep it).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// The API path prefix of CDI objects.
pub const CDI_PATH: &str = "/apis/cdi.kubevirt.io/v1beta1";

/// A kind the server serves: its path segment, `Kind`, and lowercase singular.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub plural: &'static str,
    pub kind: &'static str,
    pub singular: &'static str,
}

pub const DATAVOLUMES: Resource =
    Resource { plural: "datavolumes", kind: "DataVolume", singular: "datavolume" };
pub const DATASOURCES: Resource =
    Resource { plural: "datasources", kind: "DataSource", singular: "datasource" };
pub const DATAIMPORTCRONS: Resource =
    Resource { plural: "dataimportcrons", kind: "DataImportCron", singular: "dataimportcron" };

/// Resolves a KIND argument as kubectl does (`dv`, `datavolume`, `datavolumes`, …).
pub fn resource(kind: &str) -> Result<Resource> {
    match kind.to_ascii_lowercase().as_str() {
        "dv" | "dvs" | "datavolume" | "datavolumes" | "datavolumes.cdi.kubevirt.io" => Ok(DATAVOLUMES),
        "das" | "datasource" | "datasources" | "datasources.cdi.kubevirt.io" => Ok(DATASOURCES),
        "dic" | "dics" | "dataimportcron" | "dataimportcrons" | "dataimportcrons.cdi.kubevirt.io" => {
            Ok(DATAIMPORTCRONS)
        }
        _ => bail!("the server doesn't have a resource type {kind:?} (use dv, das or dic)"),
    }
}

/// An answer: HTTP status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's message of a failure (a Kubernetes Status), or the status code.
    pub fn message(&self) -> String {
        match self.body["message"].as_str() {
            Some(m) => m.to_owned(),
            None => format!("HTTP {}", self.status),
        }
    }
}

/// A blocking client.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of `server`.
    pub fn new(server: &str) -> Result<Client> {
        importer::tls::install_crypto_provider();
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        Ok(Client { http, base: server.trim_end_matches('/').to_owned(), runtime })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer> {
        self.send(self.http.get(self.url(path)), path)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Answer> {
        let bytes = serde_json::to_vec(body).context("encoding the object")?;
        let request = self.http.post(self.url(path)).header("content-type", "application/json").body(bytes);
        self.send(request, path)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Answer> {
        self.send(self.http.delete(self.url(path)), path)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, request: reqwest::RequestBuilder, path: &str) -> Result<Answer> {
        self.runtime.block_on(async {
            let response = request.send().await.with_context(|| {
                format!("cannot reach the diskplane server at {} (is `diskplane serve` running?)", self.base)
            })?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await.with_context(|| format!("reading the answer to {path}"))?;
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok(Answer { status, body })
        })
    }
}

/// `/apis/…/namespaces/NS/PLURAL[/NAME]`.
pub fn path(namespace: &str, resource: Resource, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{CDI_PATH}/namespaces/{namespace}/{}/{name}", resource.plural),
        None => format!("{CDI_PATH}/namespaces/{namespace}/{}", resource.plural),
    }
}
