//! The one integration-test binary: `support` has the helpers (temp stores, a running
//! node process), each other module one area of behaviour.

mod api_as;
mod api_lastfm;
mod api_lb;
mod browser;
mod conformance;
mod deploy;
mod faults;
mod federation;
mod gen_history;
mod import;
mod layering;
mod log;
mod node;
mod privacy;
mod secagg;
mod stats;
mod support;
mod two_worlds;
mod web;
