//! ISO 3166-1 alpha-3 country codes (`data/iso3166_alpha3.txt`) and the user-assigned ranges
//! (AAA–AAZ, QMA–QZZ, XAA–XZZ, ZZA–ZZZ) that tests and regional bodies use.

use std::collections::HashSet;
use std::sync::LazyLock;

static ASSIGNED: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/iso3166_alpha3.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// True for an officially assigned or a user-assigned alpha-3 code (upper case only).
pub fn is_valid(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    let user_assigned = (b[0] == b'A' && b[1] == b'A')
        || (b[0] == b'Q' && b[1] >= b'M')
        || b[0] == b'X'
        || (b[0] == b'Z' && b[1] == b'Z');
    user_assigned || ASSIGNED.contains(code)
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn accepts_assigned_and_user_ranges_only() {
        for ok in ["KEN", "FRA", "UGA", "XAA", "XZZ", "QMA", "ZZZ", "AAB"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "XA", "xaa", "XA1", "QAA", "ABC1", "ZZ", "KE N", "ÄAA"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
