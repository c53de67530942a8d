//! `diskplane upload NAME --image-path FILE`: like `virtctl image-upload`
//! (`--content-type archive` for a tar extracted into a filesystem volume).
//!
//! With `--upload-url URL --token T` the image goes straight to an upload server (e.g.
//! `diskplane worker upload-server`). Otherwise the embedded API at `--server` is used: the
//! DataVolume is created with an upload source unless it exists (or `--no-create`), a token is
//! requested (UploadTokenRequest), the image is sent to `{server}/v1beta1/upload`, and the
//! command waits until the DataVolume is Succeeded. A progress bar (bytes, rate, ETA) is shown
//! on a terminal; dropped connections and 503 answers are retried.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uploader::Checksum;
use uploader::client::{ClientOptions, ContentType, UploadClient, upload_url};

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The DataVolume (volume) name.
    name: String,
    /// The image to upload: raw, ISO or qcow2, optionally gzip/xz/zstd-compressed; with
    /// `--content-type archive` a tar (optionally compressed).
    #[arg(long)]
    image_path: PathBuf,
    /// What the DataVolume holds: `kubevirt` (a disk image) or `archive` (a tar extracted
    /// into a filesystem volume, sent to /v1beta1/upload-archive).
    #[arg(long, default_value = "kubevirt")]
    content_type: ContentType,
    /// Size of the DataVolume to create (a Kubernetes quantity, e.g. 10Gi).
    #[arg(long)]
    size: Option<String>,
    /// Storage class of the DataVolume to create.
    #[arg(long)]
    storage_class: Option<String>,
    /// Do not create the DataVolume: it must exist.
    #[arg(long)]
    no_create: bool,
    /// Namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The embedded API server.
    #[arg(long, env = "DISKPLANE_SERVER", default_value = "http://127.0.0.1:8417")]
    server: String,
    /// Upload straight to this upload server (URL of the server, or of an upload route);
    /// needs --token. No DataVolume is created or watched.
    #[arg(long, requires = "token")]
    upload_url: Option<String>,
    /// Upload token (default: requested from the API server).
    #[arg(long, env = "DISKPLANE_UPLOAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA bundle to trust (e.g. fetched from the server's /v1beta1/ca.crt).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Do not verify the server's TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// Send the image's SHA-256 so the server verifies it end to end (reads the file twice;
    /// the file is then sent as it is).
    #[arg(long)]
    checksum: bool,
    /// Send a raw image with holes as it is, zeros included, instead of as a qcow2 of its data.
    #[arg(long)]
    no_sparse: bool,
    /// Retries after a dropped connection or a 503 answer.
    #[arg(long, default_value_t = ClientOptions::default().retries)]
    retries: u32,
    /// Longest wait for the DataVolume to succeed after the upload, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    wait_timeout_secs: u64,
}

pub fn run(args: &UploadArgs) -> Result<()> {
    let client = UploadClient::new(ClientOptions {
        ca_cert: args.ca_cert.clone(),
        insecure: args.insecure,
        retries: args.retries,
        sparse: !args.no_sparse && args.content_type == ContentType::Kubevirt,
        ..ClientOptions::default()
    })?;
    let checksum = if args.checksum { Some(Checksum::of_file(&args.image_path)?) } else { None };
    let runtime = uploader::client::runtime()?;
    let bar = progress_bar();
    let shown = bar.clone();
    let progress: Arc<uploader::client::ProgressFn> = Arc::new(move |sent, total| {
        shown.set_length(total);
        shown.set_position(sent);
    });

    if let Some(url) = &args.upload_url {
        let url = upload_url(url, args.content_type)?;
        let token = args.token.as_deref().context("--upload-url needs --token")?;
        let sent = runtime.block_on(client.upload_file(
            &url,
            token,
            &args.image_path,
            checksum.as_ref(),
            progress,
            &report_retry,
        ));
        bar.finish_and_clear();
        let sent = sent.with_context(|| format!("uploading {}", args.image_path.display()))?;
        report_sent(&args.image_path, sent);
        eprintln!("uploaded {} to {url}", args.image_path.display());
        return Ok(());
    }

    let server = reqwest_url(&args.server)?;
    let (ns, name) = (args.namespace.as_str(), args.name.as_str());
    runtime.block_on(async {
        if !args.no_create
            && client
                .ensure_datavolume(
                    &server,
                    ns,
                    name,
                    args.size.as_deref(),
                    args.storage_class.as_deref(),
                    args.content_type,
                )
                .await?
        {
            eprintln!("created DataVolume {ns}/{name}");
        }
        wait_upload_ready(&server, ns, name).await?;
        let token = match &args.token {
            Some(token) => token.clone(),
            None => client.request_token(&server, ns, name).await?,
        };
        let url = upload_url(server.as_str(), args.content_type)?;
        let sent = client
            .upload_file(&url, &token, &args.image_path, checksum.as_ref(), progress, &report_retry)
            .await;
        bar.finish_and_clear();
        report_sent(&args.image_path, sent?);
        eprintln!("uploaded {}; waiting for DataVolume {ns}/{name}", args.image_path.display());
        let timeout = Duration::from_secs(args.wait_timeout_secs);
        client.wait_datavolume(&server, ns, name, Duration::from_secs(1), timeout).await?;
        anyhow::Ok(())
    })?;
    eprintln!("DataVolume {ns}/{name} Succeeded");
    Ok(())
}

/// Says when the image went as a qcow2 of its data (a raw image with holes).
fn report_sent(path: &std::path::Path, sent: uploader::client::Sent) {
    if sent.as_qcow2 {
        eprintln!(
            "sent {} as a qcow2 of its data: {} of its {} bytes (--no-sparse sends it as it is)",
            path.display(),
            sent.bytes,
            sent.file_size
        );
    }
}

/// How long a DataVolume may take to become `UploadReady` (its volume is created first).
const UPLOAD_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls the DataVolume until it takes uploads (`UploadReady`), like virtctl does; returns at
/// once for phases where waiting is pointless (`Succeeded`: the server answers 409).
async fn wait_upload_ready(server: &uploader::client::Url, ns: &str, name: &str) -> Result<()> {
    let url = server
        .join(&format!("apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes/{name}"))
        .context("building the DataVolume URL")?;
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + UPLOAD_READY_TIMEOUT;
    loop {
        let response = http.get(url.clone()).send().await.context("reading the DataVolume")?;
        let status = response.status();
        let text = response.text().await.context("reading the DataVolume")?;
        anyhow::ensure!(status.is_success(), "reading DataVolume {ns}/{name}: {status}: {text}");
        let object: serde_json::Value = serde_json::from_str(&text).context("the DataVolume is not JSON")?;
        match object["status"]["phase"].as_str().unwrap_or("") {
            "UploadReady" | "Succeeded" => return Ok(()),
            "Failed" => anyhow::bail!("DataVolume {ns}/{name} has failed; it takes no upload"),
            phase => anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "DataVolume {ns}/{name} did not become UploadReady within {} s (phase {phase:?})",
                UPLOAD_READY_TIMEOUT.as_secs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn reqwest_url(text: &str) -> Result<uploader::client::Url> {
    uploader::client::Url::parse(text).with_context(|| format!("invalid --server URL {text:?}"))
}

/// One line per retry on stderr.
fn report_retry(attempt: u32, err: &uploader::Error, backoff: Duration) {
    eprintln!(
        "diskplane: upload attempt {attempt} failed ({}); retrying in {} s",
        err.one_line(),
        backoff.as_secs_f32()
    );
}

/// Bytes, rate and ETA on stderr; hidden when stderr is not a terminal.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
    }
    bar
}
