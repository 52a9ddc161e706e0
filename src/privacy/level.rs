//! The three sharing levels. Stored with each user (`UserV2::visibility`), so the variant
//! order is part of the storage format.

use serde::{Deserialize, Serialize};

/// What of a user may be seen by others, on and off the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SharingLevel {
    /// Nothing derived from the user leaves the node or is shown to anyone else: not in
    /// node charts, not as anyone's neighbour, not in any release.
    Private,
    /// Counted in the members' node chart and, outside the node, only through the
    /// differentially private aggregate section of each release; the profile is hidden.
    #[default]
    Aggregate,
    /// Profile and history visible to anyone; listening counts enter the exact public
    /// section of each release.
    Public,
}

impl SharingLevel {
    pub const ALL: [SharingLevel; 3] = [SharingLevel::Private, SharingLevel::Aggregate, SharingLevel::Public];

    pub fn parse(text: &str) -> Option<SharingLevel> {
        match text {
            "private" => Some(SharingLevel::Private),
            "aggregate" => Some(SharingLevel::Aggregate),
            "public" => Some(SharingLevel::Public),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SharingLevel::Private => "private",
            SharingLevel::Aggregate => "aggregate",
            SharingLevel::Public => "public",
        }
    }
}
