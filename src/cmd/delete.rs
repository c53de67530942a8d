//! `diskplane delete KIND NAME`: deletes an object; for a DataVolume the server also stops its
//! worker and removes its volume, for a VolumeSnapshot (`vs`) its copy (never the source).

use anyhow::{Result, bail};

use controller::api::volumesnapshot;

use super::client::{self, Client, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// dv (datavolume), das (datasource), dic (dataimportcron) or vs (volumesnapshot).
    kind: String,
    /// The object's name.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: &DeleteArgs) -> Result<()> {
    if volumesnapshot::is_alias(&args.kind) {
        let client = Client::new(&args.server.server)?;
        let answer = client.delete(&volumesnapshot::path(&args.server.namespace, Some(&args.name)))?;
        if !answer.ok() {
            bail!("{}", answer.message());
        }
        println!("volumesnapshot.{} \"{}\" deleted", volumesnapshot::SNAPSHOT_GROUP, args.name);
        return Ok(());
    }
    let resource = client::resource(&args.kind)?;
    let client = Client::new(&args.server.server)?;
    let answer = client.delete(&client::path(&args.server.namespace, resource, Some(&args.name)))?;
    if !answer.ok() {
        bail!("{}", answer.message());
    }
    println!("{}.cdi.kubevirt.io \"{}\" deleted", resource.singular, args.name);
    Ok(())
}
