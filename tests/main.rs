//! End-to-end tests of the whole system: the built `rewind` binary against real repositories,
//! real mounts, a real directory server and a real browser. One binary, one shared harness.

#[macro_use]
mod support;

mod catalog;
mod compression;
mod encryption;
mod faults;
mod images;
mod mount;
mod portal;
mod portal_oracle;
mod prune;
mod replicas;
mod s3;
mod store;
mod web;
