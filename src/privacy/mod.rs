//! Privacy of what leaves a node. This module is the **only** way to make something
//! publishable: `release::release` is the one constructor of `Publishable<SnapshotV1>`,
//! and the signing and sending code accepts nothing else.
//!
//! - `level`: the three sharing levels a user chooses between;
//! - `params`: the mechanism's parameters (ε, δ, k, L0, C), budgets and floors;
//! - `noise`: exact integer discrete Laplace noise (CKS20) and the selection threshold;
//! - `accountant`: the per-user, per-week ledger that refuses releases over budget and a
//!   second release of a period;
//! - `snapshot`: the published snapshot and its canonical encoding;
//! - `release`: contribution bounding, DP partition selection and the public section.
//!
//! Pure: no I/O; randomness is passed in (`noise::RandomSource`).

pub mod accountant;
pub mod level;
pub mod noise;
pub mod params;
pub mod release;
pub mod snapshot;

pub use level::SharingLevel;
pub use release::{Publishable, Release, release};
