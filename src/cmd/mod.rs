//! One module per subcommand.

pub mod convert;
pub mod import;
pub mod info;
