//! Resource quantities as Kubernetes writes them: `500m`, `2`, `0.5`, `128Mi`, `1G`, `1e3`.

/// A quantity in thousandths of its unit (millicores for cpu, millibytes for memory), so both
/// cpu and memory compare exactly. `None` when `s` is not a quantity.
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.starts_with('-') {
        return None;
    }
    let (mantissa, exp10, factor): (&str, i32, i128) = match suffix {
        "" => (num, 0, 1),
        "m" => (num, -3, 1),
        "k" => (num, 3, 1),
        "M" => (num, 6, 1),
        "G" => (num, 9, 1),
        "T" => (num, 12, 1),
        "P" => (num, 15, 1),
        "Ki" => (num, 0, 1 << 10),
        "Mi" => (num, 0, 1 << 20),
        "Gi" => (num, 0, 1 << 30),
        "Ti" => (num, 0, 1 << 40),
        "Pi" => (num, 0, 1 << 50),
        e if e.starts_with(['e', 'E']) => (num, e[1..].parse().ok()?, 1),
        _ => return None,
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let digits: String = format!("{int_part}{frac_part}");
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut value: i128 = digits.parse().ok()?;
    // value * 10^(exp10 + 3 - frac_len) * factor
    let mut exp = exp10 + 3 - frac_part.len() as i32;
    value = value.checked_mul(factor)?;
    while exp > 0 {
        value = value.checked_mul(10)?;
        exp -= 1;
    }
    while exp < 0 {
        // Kubernetes rounds fractions of the smallest unit up.
        value = (value + 9) / 10;
        exp += 1;
    }
    Some(value)
}

/// Millicores of a cpu quantity.
pub fn cpu_millis(s: &str) -> Option<i64> {
    parse_milli(s).and_then(|m| i64::try_from(m).ok())
}

/// Bytes of a memory quantity.
pub fn bytes(s: &str) -> Option<i64> {
    parse_milli(s).and_then(|m| i64::try_from((m + 999) / 1000).ok())
}

/// Millicores as Kubernetes prints them: `1500m`, `2`.
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Bytes as Kubernetes prints them: `128Mi`, `2Gi`, `1000`.
pub fn format_bytes(b: i64) -> String {
    for (unit, size) in [("Ti", 1i64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b != 0 && b % size == 0 {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        for bad in ["", "abc", "-1", "1Qi", "1..2", "m"] {
            assert_eq!(parse_milli(bad), None, "{bad:?}");
        }
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
