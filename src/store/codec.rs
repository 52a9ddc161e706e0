//! Versioned values: one version byte, then postcard.
//!
//! Each stored type implements `Versioned`: `VERSION` is the marker it writes; `decode`
//! accepts that marker and, once a type has changed, older markers too (migrating the old
//! shape on read). A value that does not decode is `Error::Corrupt` naming tree and key.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

pub trait Versioned: Serialize + DeserializeOwned {
    const VERSION: u8;

    /// Decodes a value written with an older version marker. Nothing has changed yet,
    /// so every type accepts only its current version.
    fn decode_old(version: u8, _body: &[u8]) -> Result<Self, String> {
        Err(format!("unknown value version {version}"))
    }
}

pub fn encode<T: Versioned>(value: &T) -> Vec<u8> {
    let out = vec![T::VERSION];
    // postcard serialisation into a Vec fails only for types serde cannot express
    // (maps with unknown length), which no stored type uses.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(_) => vec![T::VERSION],
    }
}

pub fn decode<T: Versioned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(Error::corrupt(tree, key, "empty value"));
    };
    if version != T::VERSION {
        return T::decode_old(version, body).map_err(|reason| Error::corrupt(tree, key, &reason));
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(Error::corrupt(
            tree,
            key,
            &format!("{} trailing bytes", rest.len()),
        )),
        Err(e) => Err(Error::corrupt(tree, key, &e.to_string())),
    }
}
