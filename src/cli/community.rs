//! `hearsay community …`, `hearsay node id` and `hearsay peers`. Community commands
//! work on the data directory (stop the node first, as for the other offline commands;
//! a running node picks the changes up at its next start and spreads new manifest
//! versions to the members).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::config::Config;
use crate::federation::community::{
    Admission, Link, ManifestV1, Member, Settled, TicketV2, open_manifest, proposal_from_text, proposal_text, settle,
};
use crate::federation::{CommunityId, short_hex};
use crate::identity::NodeIdentity;
use crate::store::Store;
use crate::store::values::FollowV1;

#[derive(Subcommand)]
pub enum CommunityCmd {
    /// Create a community with this node as its administrator and first member.
    Create {
        name: String,
        /// Let any node publish there (taken after a probation of this many periods)
        /// instead of only an allow-list. Nodes not listed as members only corroborate: each item
        /// shows how many of them reported it; they change no count or rank.
        #[arg(long)]
        open_probation: Option<u32>,
        /// Privacy floor: the most ε per user-week a member's releases may spend (a
        /// release's ε times the releases its period length makes in a week).
        #[arg(long, default_value = "4")]
        max_epsilon_week: f64,
        /// Privacy floor: the most δ per user-week a member's releases may spend.
        #[arg(long, default_value = "1e-6")]
        max_delta_week: f64,
        /// Privacy floor: the least pre-threshold k a member's releases may use.
        #[arg(long, default_value = "5")]
        min_k: u32,
    },
    /// Print an invitation ticket; with --node, first add that node as a member.
    Invite {
        /// Community name or id (as `community list` shows it).
        community: String,
        /// PeerId of the node to admit (allow-list communities).
        #[arg(long)]
        node: Option<String>,
        /// Addresses of this node to put in the ticket (default: `p2p.external`, else
        /// the non-wildcard `p2p.listen` addresses).
        #[arg(long)]
        addr: Vec<String>,
    },
    /// Join a community from a ticket: follow it and publish this node's releases there.
    Join { ticket: String },
    /// Follow a community from a ticket: receive and show its charts, publish nothing.
    Follow { ticket: String },
    /// Link a community you administer to another (from that one's ticket), so the
    /// federated chart includes it with this weight (0..=1).
    Link {
        community: String,
        ticket: String,
        #[arg(long, default_value = "0.5")]
        weight: f64,
    },
    /// Change a community's administrators and how many of them must sign each new
    /// version (the threshold). The change itself needs the current threshold: with
    /// more than one, this prints a proposal for the other administrators to approve.
    Admins {
        community: String,
        /// PeerId of a node to make an administrator (also made a member).
        #[arg(long)]
        add: Vec<String>,
        /// PeerId of an administrator to remove.
        #[arg(long)]
        remove: Vec<String>,
        /// How many administrators must sign each later version (1 up to their number).
        #[arg(long)]
        threshold: Option<u16>,
    },
    /// Count the members' aggregate users by secure aggregation (or stop, with
    /// `--off`): two aggregator nodes, which should be run by different people, each
    /// receive one encrypted share of every report; only their noised total is released.
    Secure {
        community: String,
        /// PeerId of the leader aggregator (it announces each period's round).
        #[arg(long, required_unless_present = "off")]
        leader: Option<String>,
        /// PeerId of the helper aggregator.
        #[arg(long, required_unless_present = "off")]
        helper: Option<String>,
        /// ε of each period's release (each aggregator's noise alone gives it), charged
        /// to each reported user: the default fits the default weekly budget.
        #[arg(long, default_value_t = f64::from(crate::federation::secagg::DEFAULT_EPS_MILLI) / 1000.0)]
        epsilon: f64,
        /// Items counted per user per chart.
        #[arg(long, default_value_t = 1)]
        l0: u32,
        /// Least accepted reports for a release…
        #[arg(long, default_value_t = 10)]
        min_users: u32,
        /// …from at least this many member nodes.
        #[arg(long, default_value_t = 3)]
        min_nodes: u32,
        /// Items with fewer noisy listeners are not shown. Default: the threshold at
        /// which noise alone makes a row once in 20 releases, for this ε, L0 and
        /// vocabulary (169 at the defaults).
        #[arg(long)]
        min_listeners: Option<u32>,
        /// Items per chart in each round's public vocabulary.
        #[arg(long, default_value_t = crate::federation::secagg::DEFAULT_VOCABULARY)]
        vocabulary: u32,
        /// Most reports one member node may send per period.
        #[arg(long, default_value_t = 64)]
        max_reports_per_node: u32,
        /// The release schedule: one round per period of this many seconds (it must
        /// divide a week, and the members' `privacy.period_secs` must equal it: a node
        /// of another period takes no part). Default: this node's period.
        #[arg(long)]
        period: Option<u32>,
        /// Stop counting by secure aggregation.
        #[arg(long)]
        off: bool,
    },
    /// Co-sign a proposal another administrator printed; when it has the signatures the
    /// community requires, it is published (else the extended proposal is printed, for
    /// the next administrator).
    Approve {
        proposal: String,
        /// Sign: without it, the command only prints what the proposal changes.
        #[arg(long)]
        yes: bool,
    },
    /// Withdraw this node's signature of a pending proposal (the next version), so it
    /// may sign a different one.
    Withdraw { community: String },
    /// Stop following a community (and publishing there). Its held snapshots stay until
    /// retention removes them.
    Leave { community: String },
    /// List followed communities.
    List,
}

fn open(config: &Config) -> anyhow::Result<(Store, NodeIdentity)> {
    let store = crate::node::open_store(config)?;
    let id = NodeIdentity::load_or_create(&config.node.data_dir)?;
    Ok((store, id))
}

fn find(store: &Store, what: &str) -> anyhow::Result<(CommunityId, crate::federation::community::SignedManifest)> {
    for (id, _) in store.followed()? {
        if let Some(m) = store.manifest(&id)?
            && (short_hex(&id) == what || hex::encode(id) == what || m.manifest.name == what)
        {
            return Ok((id, m));
        }
    }
    bail!("no followed community is named or has the id {what:?} (see `hearsay community list`)")
}

/// This node's addresses for tickets, each ending in /p2p/<PeerId>.
fn own_addrs(config: &Config, peer: &str, extra: &[String]) -> Vec<String> {
    let mut base: Vec<String> = if !extra.is_empty() {
        extra.to_vec()
    } else if !config.p2p.external.is_empty() {
        config.p2p.external.clone()
    } else {
        config.p2p.listen.iter().filter(|a| !a.contains("/0.0.0.0/") && !a.contains("/::/")).cloned().collect()
    };
    for a in &mut base {
        if !a.contains("/p2p/") {
            a.push_str(&format!("/p2p/{peer}"));
        }
    }
    base
}

/// Where a proposal's text goes: stdout when it is the command's product (`admins`,
/// `link`, `approve`), stderr when stdout carries something else (`invite`: the ticket).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProposalTo {
    Stdout,
    Stderr,
}

/// Refuses to sign a second body of a version this node already signed (two signed
/// bodies of one version are a fork, shown everywhere as evidence against the signer).
fn claim(store: &Store, cid: &CommunityId, m: &ManifestV1) -> anyhow::Result<()> {
    if store.claim_manifest_signature(cid, m.version, &m.body_hash())?.is_err() {
        bail!(
            "this node already signed a different version {} of {:?} (a proposal still pending): signing \
             another would fork the community's history. Finish that one, or withdraw it first with \
             `hearsay community withdraw {:?}` (if it still gathers its signatures elsewhere, the two \
             would be a fork)",
            m.version,
            m.name,
            m.name
        );
    }
    Ok(())
}

/// Signs the next version and stores it, or, when the community needs more
/// administrators' signatures, prints the proposal for them (returns whether it was
/// published).
fn publish_manifest(
    store: &Store,
    id: &NodeIdentity,
    cid: &CommunityId,
    m: &ManifestV1,
    to: ProposalTo,
) -> anyhow::Result<bool> {
    claim(store, cid, m)?;
    let signed = open_manifest(&id.sign_manifest(m)).map_err(|e| anyhow::anyhow!("{e}"))?;
    publish_or_propose(store, cid, signed, to)
}

fn publish_or_propose(
    store: &Store,
    cid: &CommunityId,
    signed: crate::federation::community::SignedManifest,
    to: ProposalTo,
) -> anyhow::Result<bool> {
    let current = store.manifest(cid)?;
    match settle(cid, current.as_ref(), signed).map_err(|e| anyhow::anyhow!("{e}"))? {
        Settled::Complete(m) => {
            if !store.put_manifest(&m)? {
                bail!("another version {} of the community arrived meanwhile: nothing published", m.manifest.version);
            }
            Ok(true)
        }
        Settled::NeedsMore { proposal, have, need } => {
            match to {
                ProposalTo::Stdout => println!("{}", proposal_text(&proposal)),
                ProposalTo::Stderr => eprintln!("{}", proposal_text(&proposal)),
            }
            eprintln!(
                "manifest v{} is signed by {have} of the {need} administrators it needs: nothing changes until \
                 the others run `hearsay community approve PROPOSAL` with the line above (each prints it \
                 again with their signature added, for the next)",
                proposal.manifest.version
            );
            Ok(false)
        }
    }
}

pub fn run(config: &Config, cmd: CommunityCmd) -> anyhow::Result<ExitCode> {
    let (store, id) = open(config)?;
    let now = crate::now_unix();
    match cmd {
        CommunityCmd::Create { name, open_probation, max_epsilon_week, max_delta_week, min_k } => {
            if !(max_epsilon_week > 0.0 && max_epsilon_week <= 1e12) || min_k < 2 {
                bail!("--max-epsilon-week must be above 0 (at most 1e12) and --min-k at least 2");
            }
            if !(max_delta_week > 0.0 && max_delta_week <= 1.0) {
                bail!("--max-delta-week must be above 0 and at most 1");
            }
            let mut m = ManifestV1::genesis(&name, id.public_key(), now);
            m.floor.max_eps_week_milli = (max_epsilon_week * 1000.0).round() as u64;
            m.floor.max_delta_week_pico = (max_delta_week * 1e12).round() as u64;
            m.floor.min_k = min_k;
            if let Some(p) = open_probation {
                m.admission = Admission::Open { probation_periods: p };
            }
            m.bootstrap = own_addrs(config, &id.peer_id(), &[]);
            let signed = open_manifest(&id.sign_manifest(&m)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let cid = m.community();
            store.put_manifest(&signed)?;
            store.follow(&cid, &FollowV1 { member: true, bootstrap: Vec::new(), since: now })?;
            println!("{}", short_hex(&cid));
            eprintln!("community {name:?} created: id {}", hex::encode(cid));
        }
        CommunityCmd::Invite { community, node, addr } => {
            let (cid, current) = find(&store, &community)?;
            let mut manifest = current.manifest.clone();
            if let Some(node) = node {
                let key = crate::p2p::node_of_text(&node).context("--node is not an ed25519 PeerId")?;
                if !manifest.admins.contains(&id.public_key()) {
                    bail!("this node is not an administrator of {community:?}");
                }
                if !manifest.is_member(&key) {
                    manifest = manifest.next(now, |m| m.members.push(Member { node: key, weight_milli: 1000 }));
                    if publish_manifest(&store, &id, &cid, &manifest, ProposalTo::Stderr)? {
                        eprintln!("{node} is now a member (manifest v{})", manifest.version);
                    } else {
                        eprintln!("{node} becomes a member once the proposal is approved; its ticket follows");
                    }
                }
            }
            let latest = store.manifest(&cid)?.context("manifest vanished")?;
            let mut bootstrap = own_addrs(config, &id.peer_id(), &addr);
            bootstrap.extend(manifest.bootstrap.iter().cloned());
            bootstrap.sort();
            bootstrap.dedup();
            let (chain, head) = store.ticket_chain(&cid)?;
            if chain.is_empty() {
                bail!(
                    "this node does not hold version 1 of {} (it joined with a ticket of the first format, which carried only version {}): ask an administrator whose node holds the whole chain for the ticket",
                    latest.manifest.name,
                    head
                );
            }
            println!("{}", TicketV2::new(cid, chain, head, bootstrap).to_text());
        }
        CommunityCmd::Join { ticket } => follow(&store, &ticket, true, now)?,
        CommunityCmd::Follow { ticket } => follow(&store, &ticket, false, now)?,
        CommunityCmd::Leave { community } => {
            let (cid, m) = find(&store, &community)?;
            store.unfollow(&cid)?;
            eprintln!("left {} ({}): no longer followed or published to", m.manifest.name, short_hex(&cid));
        }
        CommunityCmd::Link { community, ticket, weight } => {
            if !(0.0..=1.0).contains(&weight) {
                bail!("--weight must be between 0 and 1");
            }
            let (cid, current) = find(&store, &community)?;
            if !current.manifest.admins.contains(&id.public_key()) {
                bail!("this node is not an administrator of {community:?}");
            }
            let (t, chain) = TicketV2::from_text(&ticket).map_err(|e| anyhow::anyhow!(e))?;
            let other = chain.last().context("a checked chain is never empty")?;
            let link = Link {
                community: t.community,
                name: other.manifest.name.clone(),
                weight_milli: (weight * 1000.0).round() as u16,
                bootstrap: t.bootstrap.clone(),
            };
            let next = current.manifest.next(now, |m| {
                m.links.retain(|l| l.community != link.community);
                m.links.push(link);
            });
            if publish_manifest(&store, &id, &cid, &next, ProposalTo::Stdout)? {
                // Follow the linked community to receive its snapshots.
                follow(&store, &ticket, false, now)?;
                eprintln!("linked {} -> {} (manifest v{})", current.manifest.name, other.manifest.name, next.version);
            }
        }
        CommunityCmd::Admins { community, add, remove, threshold } => {
            let (cid, current) = find(&store, &community)?;
            if !current.manifest.admins.contains(&id.public_key()) {
                bail!("this node is not an administrator of {community:?}");
            }
            let node = |text: &String| {
                crate::p2p::node_of_text(text).with_context(|| format!("{text} is not an ed25519 PeerId"))
            };
            let add = add.iter().map(node).collect::<anyhow::Result<Vec<_>>>()?;
            let remove = remove.iter().map(node).collect::<anyhow::Result<Vec<_>>>()?;
            let mut next = current.manifest.next(now, |m| {
                m.admins.retain(|a| !remove.contains(a));
                m.admins.extend(add.iter().copied());
                for a in &add {
                    if !m.is_member(a) {
                        m.members.push(Member { node: *a, weight_milli: 1000 });
                    }
                }
                if let Some(t) = threshold {
                    m.admin_threshold = t;
                }
            });
            // `next` sorts what the edit added; the threshold's schema follows it.
            next = next.manifest_checked().map_err(|e| anyhow::anyhow!("{e}"))?;
            if next.admin_threshold > 1 && usize::from(next.admin_threshold) == next.admins.len() {
                eprintln!(
                    "warning: every administrator must sign each later version: one lost node key freezes the community"
                );
            }
            if publish_manifest(&store, &id, &cid, &next, ProposalTo::Stdout)? {
                eprintln!(
                    "administrators of {} (manifest v{}): {} · each later version needs {} of their signatures",
                    next.name,
                    next.version,
                    next.admins.len(),
                    next.admin_threshold
                );
            }
        }
        CommunityCmd::Secure {
            community,
            leader,
            helper,
            epsilon,
            l0,
            min_users,
            min_nodes,
            min_listeners,
            vocabulary,
            max_reports_per_node,
            period,
            off,
        } => {
            let (cid, current) = find(&store, &community)?;
            if !current.manifest.admins.contains(&id.public_key()) {
                bail!("this node is not an administrator of {community:?}");
            }
            let node = |text: Option<&String>| -> anyhow::Result<crate::federation::NodeId> {
                let text = text.context("--leader and --helper are required")?;
                crate::p2p::node_of_text(text).with_context(|| format!("{text} is not an ed25519 PeerId"))
            };
            let secure = if off {
                None
            } else {
                if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= 100.0) {
                    bail!("--epsilon must be in (0, 100], got {epsilon}");
                }
                let eps_milli = (epsilon * 1000.0).round() as u32;
                let params = crate::federation::secagg::SecureParams {
                    eps_milli,
                    l0,
                    min_users,
                    min_nodes,
                    max_reports_per_node,
                    min_listeners: min_listeners.unwrap_or_else(|| {
                        crate::federation::secagg::suggested_min_listeners(eps_milli, l0, vocabulary)
                    }),
                    vocabulary,
                };
                params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
                // Unless given: the schedule the manifest has (0 keeps a schema 3 one as it
                // is, for members on builds before schema 4), else this node's period.
                let period_secs = match (period, &current.manifest.secure) {
                    (Some(p), _) => p,
                    (None, Some(held)) => held.period_secs,
                    (None, None) => config.privacy.period_secs,
                };
                if period.is_some()
                    && (period_secs == 0 || crate::privacy::params::WEEK_SECS % i64::from(period_secs) != 0)
                {
                    bail!("--period must divide a week (604800 s), got {period_secs}");
                }
                Some(crate::federation::community::SecureAggregation {
                    period_secs,
                    leader: node(leader.as_ref())?,
                    helper: node(helper.as_ref())?,
                    params,
                })
            };
            let next = current.manifest.next(now, |m| m.secure = secure);
            let next = next.manifest_checked().map_err(|e| anyhow::anyhow!("{e}"))?;
            if publish_manifest(&store, &id, &cid, &next, ProposalTo::Stdout)? {
                match &next.secure {
                    Some(sa) => eprintln!(
                        "{} (manifest v{}) counts by secure aggregation: leader {}, helper {}",
                        next.name,
                        next.version,
                        crate::p2p::peer_id_of(&sa.leader).map(|p| p.to_string()).unwrap_or_default(),
                        crate::p2p::peer_id_of(&sa.helper).map(|p| p.to_string()).unwrap_or_default()
                    ),
                    None => {
                        eprintln!("{} (manifest v{}) no longer counts by secure aggregation", next.name, next.version)
                    }
                }
            }
        }
        CommunityCmd::Withdraw { community } => {
            let (cid, current) = find(&store, &community)?;
            let next = current.manifest.version.saturating_add(1);
            if store.withdraw_manifest_signature(&cid, next)? {
                eprintln!(
                    "withdrew this node's signature of a pending version {next} of {}: it may sign another",
                    current.manifest.name
                );
            } else {
                eprintln!("this node signed no pending version {next} of {}", current.manifest.name);
            }
        }
        CommunityCmd::Approve { proposal, yes } => {
            let new = proposal_from_text(&proposal).map_err(|e| anyhow::anyhow!(e))?;
            let cid = new.manifest.community();
            let current = store.manifest(&cid)?.context("this node does not follow the proposal's community")?;
            if !current.manifest.admins.contains(&id.public_key()) {
                bail!("this node is not an administrator of {}", current.manifest.name);
            }
            if new.manifest.version != current.manifest.version.saturating_add(1) {
                bail!(
                    "the proposal is version {} and this node holds version {}: it can only approve the next one",
                    new.manifest.version,
                    current.manifest.version
                );
            }
            eprintln!("version {} of {} changes:", new.manifest.version, current.manifest.name);
            let peer = |n: &crate::federation::NodeId| {
                crate::p2p::peer_id_of(n).map_or_else(|| hex::encode(n), |p| p.to_string())
            };
            for line in crate::federation::community::describe_change(&current.manifest, &new.manifest, peer) {
                eprintln!("  {line}");
            }
            if !yes {
                bail!("nothing signed: read the changes above, then run the same command with --yes to sign them");
            }
            claim(&store, &cid, &new.manifest)?;
            let cosigned = id.cosign_manifest(&new).map_err(|e| anyhow::anyhow!("{e}"))?;
            if publish_or_propose(&store, &cid, cosigned, ProposalTo::Stdout)? {
                eprintln!(
                    "manifest v{} of {} approved and published: the node sends it to the members",
                    new.manifest.version, new.manifest.name
                );
            }
        }
        CommunityCmd::List => {
            for (cid, f) in store.followed()? {
                if let Some(m) = store.manifest(&cid)? {
                    println!(
                        "{}\t{}\tv{}\t{} members\t{}",
                        short_hex(&cid),
                        m.manifest.name,
                        m.manifest.version,
                        m.manifest.members.len(),
                        if f.member { "member" } else { "following" }
                    );
                }
            }
        }
    }
    store.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn follow(store: &Store, ticket: &str, member: bool, now: i64) -> anyhow::Result<()> {
    let (t, chain) = TicketV2::from_text(ticket).map_err(|e| anyhow::anyhow!(e))?;
    let m = chain.last().context("a checked chain is never empty")?;
    // The chain was checked from the community id; versions held here already stay
    // (another body of a held version is a fork: the rest of the ticket's chain does
    // not follow from what is held, so it is not stored; peers bring the rest).
    for version in &chain {
        match store.manifest_at(&t.community, version.manifest.version)? {
            Some(held) if held.body_hash() == version.body_hash() => continue,
            Some(_) => {
                eprintln!(
                    "warning: this node holds another manifest of version {} of this community than the ticket: keeping its own",
                    version.manifest.version
                );
                break;
            }
            None => {
                if !store.put_manifest(version)? {
                    break;
                }
            }
        }
    }
    // Versions held above the ticket's chain must follow from it (a node that once took
    // a first-format ticket may hold a later version nothing vouched for).
    let mut prev = store.manifest_at(&t.community, m.manifest.version)?;
    while let Some(p) = prev {
        let Some(next) = store.manifest_at(&t.community, p.manifest.version.saturating_add(1))? else { break };
        if let Err(e) = crate::federation::community::accept(&t.community, Some(&p), &next) {
            eprintln!(
                "warning: the manifest version {} this node holds does not follow from the ticket's chain ({e}): it stays as it is; ask the community's administrators which history is theirs",
                next.manifest.version
            );
            break;
        }
        prev = Some(next);
    }
    if m.manifest.version < t.head {
        eprintln!(
            "the ticket carries versions 1–{} of {}; the node takes the rest from its members",
            m.manifest.version, t.head
        );
    }
    let keep_member = store.followed()?.into_iter().any(|(id, f)| id == t.community && f.member);
    store.follow(&t.community, &FollowV1 { member: member || keep_member, bootstrap: t.bootstrap, since: now })?;
    eprintln!(
        "{} community {:?} ({})",
        if member { "joined" } else { "following" },
        m.manifest.name,
        short_hex(&t.community)
    );
    Ok(())
}

/// `hearsay peers`: asks the running node (over its HTTP port) for its peers and
/// communities.
pub fn peers(config: &Config) -> anyhow::Result<ExitCode> {
    let addr = config.http_listen()?;
    let url = format!("http://{addr}/api/network");
    // The control token makes this the operator's request: peers' addresses included.
    let token = std::fs::read_to_string(config.node.data_dir.join(crate::node::CONTROL_TOKEN_FILE)).unwrap_or_default();
    let body = ureq::get(&url)
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .with_context(|| format!("is the node running? {url}"))?
        .into_string()?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    println!("this node: {}", v["peer_id"].as_str().unwrap_or("?"));
    for p in v["p2p"]["peers"].as_array().into_iter().flatten() {
        println!(
            "peer {} {} {}",
            p["peer_id"].as_str().unwrap_or("?"),
            p["address"].as_str().unwrap_or(""),
            p["agent"].as_str().unwrap_or("")
        );
    }
    for c in v["communities"].as_array().into_iter().flatten() {
        println!(
            "community {} {} v{}: {} origins in the latest chart",
            c["id"].as_str().unwrap_or("?"),
            c["name"].as_str().unwrap_or("?"),
            c["version"],
            c["chart"]["origins"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
