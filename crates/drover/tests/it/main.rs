//! End-to-end tests: the real `drover` binary against real files, processes and archives.

mod agent;
mod apps;
mod cli;
mod common;
mod config;
mod confine;
mod fleet;
mod health;
mod hosts;
mod link;
mod ops;
mod proxy;
mod runtimes;
mod store;
mod tls;
