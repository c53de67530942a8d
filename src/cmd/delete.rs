//! `diskplane delete KIND NAME`: deletes an object; for a DataVolume the server also stops its
//! worker and removes its volume.

use anyhow::{Result, bail};

use super::client::{self, Client, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// dv (datavolume) or das (datasource).
    kind: String,
    /// The object's name.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: &DeleteArgs) -> Result<()> {
    let resource = client::resource(&args.kind)?;
    let client = Client::new(&args.server.server)?;
    let answer = client.delete(&client::path(&args.server.namespace, resource, Some(&args.name)))?;
    if !answer.ok() {
        bail!("{}", answer.message());
    }
    println!("{}.cdi.kubevirt.io \"{}\" deleted", resource.singular, args.name);
    Ok(())
}
