//! The access policy: the **one** place that decides what a viewer may learn about a
//! user, for each purpose. Every read path that shows one user's data to someone (web
//! pages, the scrobbler APIs' reads, node charts, neighbours, similar artists, exports,
//! releases) asks `may`, and nothing else compares sharing levels to decide it
//! (`tests/it/layering.rs` fails on a `SharingLevel::Public` or `::Aggregate` outside
//! this module, `privacy` and the store's records; the two-worlds test in
//! `tests/it/two_worlds.rs` crawls every route and fails on anything that leaks).
//!
//! The rules, per purpose (the subject is the user looked at; "self" is the subject):
//!
//! | purpose | self | others, subject public | others, subject aggregate or private |
//! | --- | --- | --- | --- |
//! | `Profile`, `History`, `Charts` | yes | yes | no (answered as "no such user"); through a scrobbler API (`Viewer::Api`, with or without a token) yes if the subject opened their API reads and is not private |
//! | `Export` | yes | no | no |
//! | `Accounting` (ledger: what releases charged; independent of activity, since every aggregate user is charged every period) | yes | administrators | administrators |
//! | `Similarity`, `NodeChart` (computed from the subject, shown to others) | — | exact | not at all |
//! | `Release` | — | exact (public section) | aggregate: only through the DP section; private: never read |
//! | `Directory` (name, level, account age: administrators' user list) | yes | administrators | administrators |
//!
//! So an aggregate user reaches anyone else only through the accounted DP release; a
//! private user reaches no one. Pure: no I/O.

use crate::privacy::SharingLevel;

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// Not signed in (a visitor, a crawler, another node's operator in a browser).
    Anonymous,
    /// A signed-in user of this node; `admin` if named in `node.admins`.
    Member { id: u32, admin: bool },
    /// Another node, over libp2p.
    Peer,
    /// A read through a scrobbler API (ListenBrainz, Last.fm): by the member its token
    /// or session names (`id`), else by no one in particular. As that member or as
    /// anonymous, except that it also reaches subjects who opened their API reads.
    Api { id: Option<u32> },
}

impl Viewer {
    /// A signed-in member (not an administrator: the APIs grant nothing more to one), or
    /// an anonymous visitor.
    pub fn member_or_anonymous(id: Option<u32>) -> Viewer {
        id.map_or(Viewer::Anonymous, |id| Viewer::Member { id, admin: false })
    }

    /// The caller of a scrobbler API read: the member its token or session names, if any.
    pub fn api_caller(id: Option<u32>) -> Viewer {
        Viewer::Api { id }
    }
}

/// What the viewer wants to learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The profile page; Last.fm `user.getInfo`.
    Profile,
    /// Listens, listen counts, "playing now", history pages.
    History,
    /// Charts, item pages, weekly charts, the statistics APIs.
    Charts,
    /// The subject's listening feeds something shown to others about someone else:
    /// "neighbours", "similar artists on this node".
    Similarity,
    /// The subject's listening is summed into the node chart members see.
    NodeChart,
    /// The subject's listening goes into a release that leaves the node.
    Release,
    /// Everything the node holds of the subject, for download.
    Export,
    /// The subject's ledger and what of them went into each release.
    Accounting,
    /// That the account exists, its name, level and age (the administrators' list).
    Directory,
}

/// How the viewer may learn it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Not at all (and a route answers as if the user did not exist).
    Denied,
    /// Only through the accounted differentially private mechanism.
    ThroughDp,
    /// As it is.
    Exact,
}

impl Access {
    pub fn exact(self) -> bool {
        self == Access::Exact
    }
}

/// The user looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    pub id: u32,
    pub level: SharingLevel,
    /// The subject lets anyone read their profile, listens and charts through the
    /// scrobbler APIs without a token (a setting, off by default). Changes nothing for
    /// any other viewer or purpose.
    pub api_reads_open: bool,
}

/// What `viewer` may learn about `subject` for `purpose`.
pub fn may(viewer: Viewer, subject: Subject, purpose: Purpose) -> Access {
    let own = matches!(viewer, Viewer::Member { id, .. } | Viewer::Api { id: Some(id) } if id == subject.id);
    let admin = matches!(viewer, Viewer::Member { admin: true, .. });
    let public = subject.level == SharingLevel::Public;
    // A private user reaches no one, whatever else they switched on.
    let api_open =
        matches!(viewer, Viewer::Api { .. }) && subject.api_reads_open && subject.level != SharingLevel::Private;
    let yes = |b: bool| if b { Access::Exact } else { Access::Denied };
    match purpose {
        Purpose::Profile | Purpose::History | Purpose::Charts => yes(own || public || api_open),
        Purpose::Export => yes(own),
        // Every aggregate user is charged every period, so a ledger says nothing of
        // activity; administrators see them to answer users' questions.
        Purpose::Accounting => yes(own || admin),
        // Shown to others, so never from anyone who did not choose public, own or not.
        Purpose::Similarity | Purpose::NodeChart => yes(public),
        Purpose::Release => match subject.level {
            SharingLevel::Public => Access::Exact,
            SharingLevel::Aggregate => Access::ThroughDp,
            SharingLevel::Private => Access::Denied,
        },
        Purpose::Directory => yes(own || admin),
    }
}

/// Whether `level`'s users are summed, exactly, into what others see for `purpose`
/// (node charts, neighbours, similar artists): the filter for computations over many
/// users, where no single viewer is asked about.
pub fn counted_exactly(level: SharingLevel, purpose: Purpose) -> bool {
    may(Viewer::Anonymous, Subject { id: u32::MAX, level, api_reads_open: false }, purpose).exact()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_PURPOSES: [Purpose; 9] = [
        Purpose::Profile,
        Purpose::History,
        Purpose::Charts,
        Purpose::Similarity,
        Purpose::NodeChart,
        Purpose::Release,
        Purpose::Export,
        Purpose::Accounting,
        Purpose::Directory,
    ];

    #[test]
    fn only_public_users_are_shown_to_others_and_only_exactly_what_they_chose() {
        let viewers = [
            Viewer::Anonymous,
            Viewer::Member { id: 2, admin: false },
            Viewer::Member { id: 3, admin: true },
            Viewer::Peer,
            Viewer::Api { id: None },
            Viewer::Api { id: Some(2) },
        ];
        for level in SharingLevel::ALL {
            let subject = Subject { id: 1, level, api_reads_open: false };
            for viewer in viewers {
                for purpose in ALL_PURPOSES {
                    let access = may(viewer, subject, purpose);
                    match (level, purpose) {
                        (_, Purpose::Directory | Purpose::Accounting) => {
                            assert_eq!(access.exact(), viewer == Viewer::Member { id: 3, admin: true })
                        }
                        (SharingLevel::Private, _) => assert_eq!(access, Access::Denied, "{viewer:?} {purpose:?}"),
                        (SharingLevel::Aggregate, Purpose::Release) => assert_eq!(access, Access::ThroughDp),
                        (SharingLevel::Aggregate, _) => assert_eq!(access, Access::Denied, "{viewer:?} {purpose:?}"),
                        (SharingLevel::Public, Purpose::Export) => {
                            assert_eq!(access, Access::Denied)
                        }
                        (SharingLevel::Public, _) => assert_eq!(access, Access::Exact, "{viewer:?} {purpose:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_user_sees_all_of_themself_but_is_not_counted_exactly_anywhere_others_look() {
        for level in SharingLevel::ALL {
            let me = Viewer::Member { id: 1, admin: false };
            let subject = Subject { id: 1, level, api_reads_open: false };
            for purpose in [Purpose::Profile, Purpose::History, Purpose::Charts, Purpose::Export, Purpose::Accounting] {
                assert!(may(me, subject, purpose).exact());
            }
            assert_eq!(may(me, subject, Purpose::NodeChart).exact(), level == SharingLevel::Public);
            assert_eq!(counted_exactly(level, Purpose::Similarity), level == SharingLevel::Public);
        }
    }

    #[test]
    fn opened_api_reads_reach_only_api_calls_and_only_the_users_own_pages() {
        for level in SharingLevel::ALL {
            let open = Subject { id: 1, level, api_reads_open: true };
            let closed = Subject { api_reads_open: false, ..open };
            for purpose in ALL_PURPOSES {
                let shown = matches!(purpose, Purpose::Profile | Purpose::History | Purpose::Charts)
                    && level != SharingLevel::Private;
                // An API call, without a token or with another member's: what the subject
                // opened, no more; closed, exactly what the anonymous or that member get.
                for (api, as_whom) in [
                    (Viewer::Api { id: None }, Viewer::Anonymous),
                    (Viewer::Api { id: Some(2) }, Viewer::Member { id: 2, admin: false }),
                ] {
                    let want = shown || may(as_whom, closed, purpose).exact();
                    assert_eq!(may(api, open, purpose).exact(), want, "{api:?} {level:?} {purpose:?}");
                    assert_eq!(may(api, closed, purpose), may(as_whom, closed, purpose), "{api:?} {purpose:?}");
                }
                // The subject's own token is the subject.
                let me = Viewer::Api { id: Some(1) };
                assert_eq!(may(me, closed, purpose), may(Viewer::Member { id: 1, admin: false }, closed, purpose));
                // Nobody else gains anything from the switch: not the web's visitors,
                // other members, peers, nor what is summed for others or released.
                for viewer in [Viewer::Anonymous, Viewer::Member { id: 2, admin: false }, Viewer::Peer] {
                    assert_eq!(may(viewer, open, purpose), may(viewer, closed, purpose), "{viewer:?} {purpose:?}");
                }
            }
        }
    }
}
