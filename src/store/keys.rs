//! Key codecs: every sled key is built and parsed here, never with `format!`.
//!
//! Integers are fixed-width big-endian so that byte order equals numeric order and each
//! query is a prefix scan or a range. Property tests check round trips and order.

use super::Error;

/// A user's numeric id, the prefix of all their keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub u32);

pub fn user(id: UserId) -> [u8; 4] {
    id.0.to_be_bytes()
}

pub fn user_seq(id: UserId, seq: u64) -> [u8; 12] {
    let mut k = [0; 12];
    k[..4].copy_from_slice(&id.0.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn user_u32(id: UserId, n: u32) -> [u8; 8] {
    let mut k = [0; 8];
    k[..4].copy_from_slice(&id.0.to_be_bytes());
    k[4..].copy_from_slice(&n.to_be_bytes());
    k
}

/// `user ‖ t u64` for a non-negative Unix time `t` (negative times clamp to 0).
pub fn user_time(id: UserId, t: i64) -> [u8; 12] {
    user_seq(id, u64::try_from(t).unwrap_or(0))
}

/// What a pending multi-step change does (see `schema::META`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Delete a user's records (the account itself is already gone).
    DeleteUser = b'd' as isize,
    /// Recount a user's statistics (after a time-zone change).
    RecountUser = b'r' as isize,
}

/// Prefix of the `meta` keys of pending changes.
pub const PENDING: &[u8] = b"pending\xff";

/// `pending 0xFF ‖ kind u8 ‖ user u32`: a change to finish, after a crash too.
pub fn pending(kind: Pending, id: UserId) -> [u8; 13] {
    let mut k = [0; 13];
    k[..8].copy_from_slice(PENDING);
    k[8] = kind as u8;
    k[9..].copy_from_slice(&id.0.to_be_bytes());
    k
}

/// The change a pending key names.
pub fn parse_pending(key: &[u8]) -> Option<(Pending, UserId)> {
    let rest = key.strip_prefix(PENDING)?;
    let (&kind, id) = rest.split_first()?;
    let id = UserId(u32::from_be_bytes(<[u8; 4]>::try_from(id).ok()?));
    match kind {
        b'd' => Some((Pending::DeleteUser, id)),
        b'r' => Some((Pending::RecountUser, id)),
        _ => None,
    }
}

pub fn time_key(t: i64) -> [u8; 8] {
    u64::try_from(t).unwrap_or(0).to_be_bytes()
}

pub fn u32_key(n: u32) -> [u8; 4] {
    n.to_be_bytes()
}

/// Bucket granularities in `userid_bucket_counts` keys.
pub const BUCKET_DAY: u8 = 0;
pub const BUCKET_MONTH: u8 = 1;
pub const BUCKET_YEAR: u8 = 2;
/// Node buckets only (`store::aggregates::node`): ISO weeks (numbered by their
/// Monday's day number) and all time (number 0).
pub const BUCKET_WEEK: u8 = 3;
pub const BUCKET_ALL: u8 = 4;

/// `user ‖ granularity u8 ‖ bucket number` with the signed number offset by 2^31 so
/// byte order is numeric order.
pub fn bucket(id: UserId, granularity: u8, number: i32) -> [u8; 9] {
    let mut k = [0; 9];
    k[..4].copy_from_slice(&id.0.to_be_bytes());
    k[4] = granularity;
    k[5..].copy_from_slice(&((number as u32) ^ 0x8000_0000).to_be_bytes());
    k
}

pub fn parse_bucket(tree: &'static str, key: &[u8]) -> Result<(UserId, u8, i32), Error> {
    if key.len() != 9 {
        return Err(Error::corrupt(tree, key, "key is not user ‖ granularity ‖ bucket"));
    }
    let n = u32::from_be_bytes(fixed(tree, key, 5)?) ^ 0x8000_0000;
    Ok((parse_user(tree, key)?, key[4], n as i32))
}

/// `kind u8 ‖ chunk u32`, the key of dictionary chunks.
pub fn kind_chunk(kind: u8, chunk: u32) -> [u8; 5] {
    let mut k = [0; 5];
    k[0] = kind;
    k[1..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// `user ‖ kind u8 ‖ item u32` (`userid_item_spelling`).
pub fn user_item(id: UserId, kind: u8, item: u32) -> [u8; 9] {
    let mut k = [0; 9];
    k[..4].copy_from_slice(&id.0.to_be_bytes());
    k[4] = kind;
    k[5..].copy_from_slice(&item.to_be_bytes());
    k
}

/// The UTC day number of a unix time (days since 1970-01-01).
pub fn day_of(listened_at: i64) -> u32 {
    // listened_at is validated to lie between 2002 and now + 1h, so this fits easily.
    u32::try_from(listened_at.div_euclid(86_400)).unwrap_or(u32::MAX)
}

fn fixed<const N: usize>(tree: &'static str, key: &[u8], at: usize) -> Result<[u8; N], Error> {
    key.get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| Error::corrupt(tree, key, "key too short"))
}

pub fn parse_user(tree: &'static str, key: &[u8]) -> Result<UserId, Error> {
    Ok(UserId(u32::from_be_bytes(fixed(tree, key, 0)?)))
}

pub fn parse_user_seq(tree: &'static str, key: &[u8]) -> Result<(UserId, u64), Error> {
    if key.len() != 12 {
        return Err(Error::corrupt(tree, key, "key is not user ‖ seq"));
    }
    Ok((parse_user(tree, key)?, u64::from_be_bytes(fixed(tree, key, 4)?)))
}

pub fn parse_user_u32(tree: &'static str, key: &[u8]) -> Result<(UserId, u32), Error> {
    if key.len() != 8 {
        return Err(Error::corrupt(tree, key, "key is not user ‖ u32"));
    }
    Ok((parse_user(tree, key)?, u32::from_be_bytes(fixed(tree, key, 4)?)))
}

pub fn parse_u32(tree: &'static str, bytes: &[u8]) -> Result<u32, Error> {
    if bytes.len() != 4 {
        return Err(Error::corrupt(tree, bytes, "not a 4-byte id"));
    }
    Ok(u32::from_be_bytes(fixed(tree, bytes, 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn user_seq_round_trips_and_orders(a in any::<(u32, u64)>(), b in any::<(u32, u64)>()) {
            let ka = user_seq(UserId(a.0), a.1);
            let kb = user_seq(UserId(b.0), b.1);
            prop_assert_eq!(parse_user_seq("t", &ka).expect("parse"), (UserId(a.0), a.1));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn user_u32_round_trips_and_orders(a in any::<(u32, u32)>(), b in any::<(u32, u32)>()) {
            let ka = user_u32(UserId(a.0), a.1);
            let kb = user_u32(UserId(b.0), b.1);
            prop_assert_eq!(parse_user_u32("t", &ka).expect("parse"), (UserId(a.0), a.1));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn buckets_round_trip_and_order(a in any::<(u32, u8, i32)>(), b in any::<(u32, u8, i32)>()) {
            let ka = bucket(UserId(a.0), a.1, a.2);
            let kb = bucket(UserId(b.0), b.1, b.2);
            prop_assert_eq!(parse_bucket("t", &ka).expect("parse"), (UserId(a.0), a.1, a.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn days_are_monotonic(a in 1_033_430_400i64..4_000_000_000, b in 1_033_430_400i64..4_000_000_000) {
            if a <= b { prop_assert!(day_of(a) <= day_of(b)); }
        }
    }

    #[test]
    fn short_keys_are_errors_not_panics() {
        assert!(parse_user_seq("t", &[1, 2, 3]).is_err());
        assert!(parse_user_u32("t", &[]).is_err());
        assert!(parse_u32("t", &[0; 5]).is_err());
    }
}
