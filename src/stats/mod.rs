//! Statistics and charts, as pure functions over listens and aggregates.
//!
//! - `credits`: which artists a listen credits (the one documented rule);
//! - `period`: periods, time zones, and the bucket plan for a range;
//! - `chart`: summing bucket counts into ranked charts.
//!
//! The store keeps the aggregates up to date as listens are appended and erased
//! (`store::aggregates`); this module decides what they mean.

pub mod chart;
pub mod credits;
pub mod insights;
pub mod period;
