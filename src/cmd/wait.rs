//! `diskplane wait dv NAME [--timeout 5m]`: waits until a DataVolume is `Succeeded` (exit 0)
//! or `Failed` (non-zero, with the failure reason and message), or the timeout passes.
//! `diskplane wait vs NAME` waits until a VolumeSnapshot is `readyToUse` (its last error is
//! shown on timeout).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use controller::api::volumesnapshot;

use super::client::{self, Client, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// dv (datavolume) or vs (volumesnapshot).
    kind: String,
    /// The object's name.
    name: String,
    /// Give up after this long: 90s, 5m, 1h (plain numbers are seconds).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

/// Parses `90`, `90s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("invalid duration {text:?} (use e.g. 90s, 5m, 1h)")),
        };
        let n: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() {
        total =
            total.saturating_add(number.parse::<u64>().map_err(|_| format!("invalid duration {text:?}"))?);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    Ok(Duration::from_secs(total))
}

pub fn run(args: &WaitArgs) -> Result<()> {
    if volumesnapshot::is_alias(&args.kind) {
        return wait_snapshot(args);
    }
    let resource = client::resource(&args.kind)?;
    if resource != client::DATAVOLUMES {
        bail!("wait supports only dv (DataVolumes)");
    }
    let client = Client::new(&args.server.server)?;
    let path = client::path(&args.server.namespace, resource, Some(&args.name));
    let deadline = Instant::now() + args.timeout;
    loop {
        let answer = client.get(&path)?;
        if !answer.ok() {
            bail!("{}", answer.message());
        }
        let status = &answer.body["status"];
        match status["phase"].as_str().unwrap_or("") {
            "Succeeded" => {
                println!("datavolume.cdi.kubevirt.io/{} condition met", args.name);
                return Ok(());
            }
            "Failed" => bail!("datavolume {} failed: {}", args.name, failure(status)),
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for datavolume {} (phase {}, progress {})",
                args.name,
                status["phase"].as_str().filter(|p| !p.is_empty()).unwrap_or("unset"),
                status["progress"].as_str().unwrap_or("N/A")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the VolumeSnapshot is ready to use.
fn wait_snapshot(args: &WaitArgs) -> Result<()> {
    let client = Client::new(&args.server.server)?;
    let path = volumesnapshot::path(&args.server.namespace, Some(&args.name));
    let deadline = Instant::now() + args.timeout;
    loop {
        let answer = client.get(&path)?;
        if !answer.ok() {
            bail!("{}", answer.message());
        }
        let status = &answer.body["status"];
        if status["readyToUse"].as_bool() == Some(true) {
            println!("volumesnapshot.{}/{} condition met", volumesnapshot::SNAPSHOT_GROUP, args.name);
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for volumesnapshot {} (readyToUse false: {})",
                args.name,
                status["error"]["message"].as_str().unwrap_or("no error recorded")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `REASON: MESSAGE` of the condition that explains a failure (Running, else Ready).
fn failure(status: &Value) -> String {
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    for type_ in ["Running", "Ready"] {
        if let Some(c) = conditions.iter().find(|c| c["type"] == type_ && c["message"].is_string()) {
            let reason = c["reason"].as_str().unwrap_or("Error");
            return format!("{reason}: {}", c["message"].as_str().unwrap_or(""));
        }
    }
    "no reason recorded".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
