//! Byte layouts of the state machine's RocksDB keys.
//!
//! History keys are `escape(user_key) ++ revision` so that all versions of one key sit together
//! in revision order and keys keep their byte order. Escaping (0x00 becomes 0x00 0xFF, then a
//! 0x00 0x00 terminator) keeps one key's encoding from being a prefix of another's.

/// The encoded form of `key`, order-preserving and prefix-free.
pub(crate) fn escape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// Splits a history key into (escaped user key with terminator, revision).
pub(crate) fn split_hist(hist_key: &[u8]) -> Option<(&[u8], i64)> {
    if hist_key.len() < 10 {
        return None;
    }
    let (k, r) = hist_key.split_at(hist_key.len() - 8);
    Some((k, i64::from_be_bytes(r.try_into().ok()?)))
}

#[cfg(test)]
pub(crate) fn unescape(escaped: &[u8]) -> Vec<u8> {
    let body = &escaped[..escaped.len().saturating_sub(2)];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        i += if body[i] == 0 { 2 } else { 1 };
    }
    out
}

pub(crate) fn hist_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut k = escape(key);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// Key of an event in the revision log: main revision then sub-revision.
pub(crate) fn rev_key(rev: i64, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&rev.to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

pub(crate) fn rev_of(rev_key: &[u8]) -> i64 {
    rev_key.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).unwrap_or(0)
}

pub(crate) fn lease_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn lease_key_attach(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The end of a range in etcd's convention: empty means the single key, "\0" means every key
/// from `key` on. Returns None for an open end.
pub(crate) enum RangeEnd<'a> {
    Single,
    Open,
    Before(&'a [u8]),
}

pub(crate) fn range_end(range_end: &[u8]) -> RangeEnd<'_> {
    match range_end {
        [] => RangeEnd::Single,
        [0] => RangeEnd::Open,
        end => RangeEnd::Before(end),
    }
}

/// Whether `key` lies in the range that starts at `start` and ends as `end` says.
pub(crate) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match range_end(end) {
        RangeEnd::Single => key == start,
        RangeEnd::Open => key >= start,
        RangeEnd::Before(e) => key >= start && key < e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_order_and_is_prefix_free() {
        let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"\0a", b"a", b"a\0", b"a\0\0", b"ab", b"b"];
        let enc: Vec<Vec<u8>> = keys.iter().map(|k| escape(k)).collect();
        for i in 0..enc.len() {
            assert_eq!(unescape(&enc[i]), keys[i]);
            for j in 0..enc.len() {
                if i != j {
                    assert!(!enc[j].starts_with(&enc[i]), "{:?} prefixes {:?}", keys[i], keys[j]);
                }
                assert_eq!(keys[i].cmp(keys[j]), enc[i].cmp(&enc[j]));
            }
        }
    }

    #[test]
    fn history_keys_of_one_key_sort_by_revision() {
        let a1 = hist_key(b"a", 1);
        let a2 = hist_key(b"a", 300);
        let a0b = hist_key(b"a\0", 2);
        assert!(a1 < a2 && a2 < a0b);
        assert_eq!(split_hist(&a2).map(|(_, r)| r), Some(300));
    }

    #[test]
    fn range_end_follows_etcd() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"zzz", b"a", b"\0"));
        assert!(in_range(b"ab", b"a", b"b"));
        assert!(!in_range(b"b", b"a", b"b"));
    }
}
