//! # launcher
//!
//! The consumer: VirtualMachine spec to a qemu command line, supervision, serial console, QMP.
//! Not built yet: see the launcher issue.
