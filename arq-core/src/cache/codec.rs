//! The L2 value format.
//!
//! `[version, tag, payload…]`: version 1; tag 0 is a negative entry (the loader found nothing,
//! no payload), tag 1 a value encoded with postcard.
//!
//! Why postcard: it is serde-native, compact (varint integers, no field names, so typically a
//! half to a third of the JSON size, which is Redis memory and network bytes on every L2 hit),
//! fast, and its wire format is specified and stable across 1.x. It is not self-describing, so a
//! value written by an older struct definition may fail to decode: that is treated as an L2 miss
//! (counted as a `decode` error) and the fresh value overwrites it. The version byte leaves room
//! for a different format later without misreading old entries.

use serde::Serialize;
use serde::de::DeserializeOwned;

const VERSION: u8 = 1;
const NEGATIVE: u8 = 0;
const VALUE: u8 = 1;

/// Encodes a value (`Some`) or a negative entry (`None`).
pub(crate) fn encode<V: Serialize>(value: Option<&V>) -> Result<Vec<u8>, postcard::Error> {
    match value {
        None => Ok(vec![VERSION, NEGATIVE]),
        Some(v) => {
            let mut out = vec![VERSION, VALUE];
            out = postcard::to_extend(v, out)?;
            Ok(out)
        }
    }
}

/// Decodes what [`encode`] produced; `Err` for anything else.
pub(crate) fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<Option<V>, postcard::Error> {
    match bytes {
        [VERSION, NEGATIVE] => Ok(None),
        [VERSION, VALUE, payload @ ..] => postcard::from_bytes(payload).map(Some),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    proptest! {
        #[test]
        fn round_trips(id: u64, name in ".*", tags in proptest::collection::vec(".*", 0..4)) {
            let u = User { id, name, tags };
            let bytes = encode(Some(&u)).unwrap();
            prop_assert_eq!(decode::<User>(&bytes).unwrap(), Some(u));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<User>(&bytes);
        }
    }

    #[test]
    fn negative_and_compactness() {
        assert_eq!(
            decode::<User>(&encode::<User>(None).unwrap()).unwrap(),
            None
        );
        let u = User {
            id: 7,
            name: "ada".into(),
            tags: vec![],
        };
        let bytes = encode(Some(&u)).unwrap();
        assert!(bytes.len() < serde_json::to_vec(&u).unwrap().len() / 3);
        assert!(decode::<User>(&[2, 1, 0]).is_err());
    }
}
