//! Privacy of what leaves a node (started): exact discrete noise and the partition
//! threshold. Sharing levels, contribution bounding, the accountant and the only
//! constructor of publishable snapshots come next. Pure: randomness is passed in.

pub mod noise;
