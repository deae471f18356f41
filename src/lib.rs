//! tenantgate: an edge gateway for multi-tenant SaaS platforms.
//!
//! Data flows through the modules in this order: [`config`] turns the file
//! into a validated model; [`routing`] compiles it into a domain table;
//! [`registry`] owns the live [`registry::Snapshot`]; [`proxy`] serves
//! requests from it; [`telemetry`] counts and logs what happened;
//! [`admin`] changes the registry through its one writer.

pub mod acme;
pub mod admin;
pub mod config;
pub mod demo;
pub mod limits;
pub mod proxy;
pub mod registry;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod tls;
