//! End-to-end tests across crates, compiled into one binary to keep link time down.

mod acl;
mod advertise;
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
mod etcd_roles;
mod flood;
mod identity;
mod install;
mod lb;
mod leastpriv;
mod logrotate;
mod netns;
mod node_sessions;
mod privilege;
mod sentinel;
mod signing;
mod upgrade;
mod web;
