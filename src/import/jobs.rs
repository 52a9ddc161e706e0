//! Imports running on the node's behalf (started from the web view), in memory: what
//! each has read so far, for a progress page. Nothing here is written anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Summary;

/// One import started from the web view.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub user: u32,
    pub file: String,
    pub running: bool,
    /// (file or member, format, summary, note) per part; the last one is in progress.
    pub parts: Vec<(String, Option<&'static str>, Summary, Option<String>)>,
    /// How much of the file being read has been read, in percent.
    pub percent: Option<u64>,
    pub error: Option<String>,
}

/// The imports started on this node, by job id.
pub type Jobs = Arc<Mutex<HashMap<String, Job>>>;
