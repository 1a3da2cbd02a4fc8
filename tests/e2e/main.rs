//! End-to-end tests across crates, compiled into one binary to keep link time down.

mod acl;
mod badinput;
mod blackbox;
mod browser;
mod build;
mod conformance;
mod connections;
mod demo;
mod enrollment;
mod etcd;
mod etcd_ha;
mod flood;
mod install;
mod netns;
mod sentinel;
mod web;
