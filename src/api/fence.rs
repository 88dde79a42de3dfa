//! Fencing of leader-elected writers, and the metadata headers of the object API.
//!
//! A leader-elected component (scheduler, controller manager) sends its claim to its Lease
//! with every write; the API server checks the claim against the Lease's fencing record in the
//! same store transaction as the write, so a deposed leader cannot change anything.

/// The reason (NotFound, Conflict, ...) of a failed call, sent as a response header so that
/// clients can print it as kubectl does.
pub const REASON_HEADER: &str = "rkube-reason";

/// The metadata header a leader-elected writer sends with each write: `<namespace>/<lease>
/// <holder> <transitions>`. The write applies only if that Lease still has that holder and
/// transition count, checked in the write's own transaction.
pub const FENCE_HEADER: &str = "rkube-fence";

/// Store key of a Lease's fencing record, whose value is `<holder> <transitions>`.
pub fn fence_key(namespace: &str, name: &str) -> Vec<u8> {
    format!("/registry/fences/{namespace}/{name}").into_bytes()
}

/// A writer's claim to a leader-election Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub namespace: String,
    pub lease: String,
    pub holder: String,
    pub transitions: i32,
}

impl Fence {
    pub fn parse(s: &str) -> Result<Fence, String> {
        let bad =
            || format!("malformed {FENCE_HEADER} header {s:?}: want \"<namespace>/<lease> <holder> <transitions>\"");
        let mut parts = s.split(' ');
        let (Some(lease), Some(holder), Some(tr), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (namespace, lease) = lease.split_once('/').ok_or_else(bad)?;
        Ok(Fence {
            namespace: namespace.into(),
            lease: lease.into(),
            holder: holder.into(),
            transitions: tr.parse().map_err(|_| bad())?,
        })
    }

    pub fn header_value(&self) -> String {
        format!("{}/{} {} {}", self.namespace, self.lease, self.holder, self.transitions)
    }

    pub fn record(&self) -> Vec<u8> {
        fence_record(&self.holder, self.transitions)
    }
}

pub fn fence_record(holder: &str, transitions: i32) -> Vec<u8> {
    format!("{holder} {transitions}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_parse_from_their_header() {
        let f = Fence::parse("kube-system/rkube-scheduler m1-abc 3").expect("parses");
        assert_eq!(f.lease, "rkube-scheduler");
        assert_eq!(f.transitions, 3);
        assert_eq!(Fence::parse(&f.header_value()).expect("round trip"), f);
        assert!(Fence::parse("kube-system/x holder").is_err());
        assert!(Fence::parse("nolease holder 1").is_err());
    }
}
