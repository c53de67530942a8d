//! One module per subcommand.

pub mod apiserver;
pub mod apply;
pub mod client;
pub mod clone;
pub mod controller;
pub mod convert;
pub mod crds;
pub mod delete;
pub mod get;
pub mod https_service;
pub mod import;
pub mod info;
pub mod serve;
pub mod upload;
pub mod upload_proxy;
pub mod vm;
pub mod wait;
pub mod worker;
