//! One module per subcommand.

pub mod clone;
pub mod convert;
pub mod import;
pub mod info;
