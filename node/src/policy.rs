//! Per-partner sharing policies, as data (design §6), and the decision of what one partner may
//! see of one record version. Default deny: a partner without a policy, or with mode `none`,
//! gets nothing; records marked do-not-share or TLP RED never leave.
//!
//! The decision is made per disclosure path (see [`crate::envelope`]), and every path comes
//! with the reason it is or is not disclosed, so `policy show` and the preview endpoint can say
//! exactly what a partner would receive and why.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The partner pulls a feed of views of every shareable record version.
    Replicate,
    /// Live queries are answered with views.
    Query,
    /// Live queries are answered with a count and opaque references only.
    HitNoHit,
    /// Nothing.
    #[default]
    None,
}

/// How much of the event location leaves, from most to least precise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LocationPrecision {
    /// Country only.
    #[default]
    Country,
    /// Country and first-level subdivision.
    Admin1,
    /// Adds second-level subdivision, place name, UN/LOCODE and facility type.
    Settlement,
    /// Everything, coordinates included.
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tlp {
    #[serde(rename = "CLEAR")]
    Clear,
    #[serde(rename = "GREEN")]
    Green,
    #[serde(rename = "AMBER")]
    Amber,
    #[serde(rename = "AMBER+STRICT")]
    AmberStrict,
    #[serde(rename = "RED")]
    Red,
}

/// One partner's policy. Every field defaults to the most restrictive value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub mode: Mode,
    /// Item categories that may leave (`item_category` values); `"*"` for all.
    pub categories: Vec<String>,
    /// Field paths that may leave: JSON pointers where `*` matches one segment, each covering
    /// everything beneath it; `"*"` for all. Identity fields (record id, version, origin,
    /// schema version, item id and category) always go with a shared record.
    pub fields: Vec<String>,
    pub location_precision: LocationPrecision,
    /// Hours after a version is signed before this partner may receive it.
    pub embargo_hours: u32,
    /// Whether `case_refs` may leave.
    pub case_references: bool,
    /// Whether casualty counts may leave.
    pub casualties: bool,
    /// Whether the partner may pass what it receives on to others.
    pub relay: bool,
    /// The most sensitive TLP label that may leave (never RED).
    pub max_tlp: Option<Tlp>,
}

impl Policy {
    fn max_tlp(&self) -> Tlp {
        self.max_tlp.unwrap_or(Tlp::Green).min(Tlp::AmberStrict)
    }

    /// Digest of the policy (canonical JSON), sent with every feed page: when it changes the
    /// partner replays the feed from the start, so a widened policy reaches back in history.
    pub fn digest(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        let bytes = crate::envelope::canonical(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(bytes))
    }

    pub fn validate(&self) -> Result<(), String> {
        for f in &self.fields {
            if f != "*" && !f.starts_with('/') {
                return Err(format!("field path {f:?} must be \"*\" or start with '/'"));
            }
        }
        if self.max_tlp == Some(Tlp::Red) {
            return Err("max_tlp RED is not allowed: TLP RED never leaves the node".into());
        }
        Ok(())
    }
}

/// Why a path is or is not disclosed.
#[derive(Debug, Clone, Serialize)]
pub struct PathDecision {
    pub path: String,
    pub disclosed: bool,
    pub reason: &'static str,
}

/// What one partner receives of one record version.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub shared: bool,
    /// Why the record as a whole is or is not shared.
    pub reason: String,
    pub paths: Vec<PathDecision>,
}

impl Decision {
    fn refuse(reason: impl Into<String>) -> Decision {
        Decision {
            shared: false,
            reason: reason.into(),
            paths: Vec::new(),
        }
    }

    pub fn disclosed(&self) -> impl Iterator<Item = &str> {
        self.paths
            .iter()
            .filter(|p| p.disclosed)
            .map(|p| p.path.as_str())
    }
}

const ALWAYS: [&str; 4] = [
    "/record_id",
    "/record_version",
    "/originating_state",
    "/schema_version",
];

fn segments(path: &str) -> Vec<&str> {
    path.split('/').skip(1).collect()
}

/// Whether `pattern` (a pointer with `*` segments) covers `path`.
pub fn pattern_covers(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let p = segments(pattern);
    let s = segments(path);
    p.len() <= s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

fn location_allows(precision: LocationPrecision, key: &str) -> bool {
    match key {
        "country" | "precision" => true,
        "admin1" => precision >= LocationPrecision::Admin1,
        "admin2" | "place_name" | "unlocode" | "facility_type" => {
            precision >= LocationPrecision::Settlement
        }
        _ => precision >= LocationPrecision::Exact,
    }
}

/// Decides what `partner` under `policy` receives of `record` (a stored version), path by path
/// over `paths` (the record's disclosure paths). `age_hours` is the time since the version was
/// signed, for the embargo.
pub fn decide(
    partner: &str,
    policy: &Policy,
    record: &Value,
    paths: &[String],
    age_hours: i64,
) -> Decision {
    if policy.mode == Mode::None {
        return Decision::refuse("the policy's mode is none");
    }
    let sharing = record.get("sharing");
    if sharing
        .and_then(|s| s.get("do_not_share"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Decision::refuse("the record is marked do-not-share");
    }
    let tlp = sharing
        .and_then(|s| s.get("tlp"))
        .and_then(|t| serde_json::from_value::<Tlp>(t.clone()).ok())
        .unwrap_or(Tlp::Red);
    if tlp == Tlp::Red {
        return Decision::refuse("the record is TLP RED (or has no valid TLP label)");
    }
    if tlp > policy.max_tlp() {
        return Decision::refuse(format!(
            "the record's TLP is above this partner's max_tlp {:?}",
            policy.max_tlp()
        ));
    }
    if let Some(list) = sharing
        .and_then(|s| s.get("releasable_to"))
        .and_then(Value::as_array)
        && !list
            .iter()
            .any(|v| v.as_str() == Some("*") || v.as_str() == Some(partner))
    {
        return Decision::refuse(format!(
            "the record's releasable_to does not name {partner}"
        ));
    }
    if age_hours < i64::from(policy.embargo_hours) {
        return Decision::refuse(format!(
            "under embargo: {} h of {} h elapsed",
            age_hours.max(0),
            policy.embargo_hours
        ));
    }
    let all_categories = policy.categories.iter().any(|c| c == "*");
    let item_allowed: Vec<bool> = record
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    all_categories
                        || item
                            .get("item_category")
                            .and_then(Value::as_str)
                            .is_some_and(|c| policy.categories.iter().any(|p| p == c))
                })
                .collect()
        })
        .unwrap_or_default();
    if !item_allowed.iter().any(|a| *a) {
        return Decision::refuse("no item is in a category this partner may receive");
    }
    let paths = paths
        .iter()
        .map(|path| {
            let (disclosed, reason) = path_rule(policy, &item_allowed, path);
            PathDecision {
                path: path.clone(),
                disclosed,
                reason,
            }
        })
        .collect();
    Decision {
        shared: true,
        reason: format!("shared under mode {:?}", policy.mode).to_lowercase(),
        paths,
    }
}

fn path_rule(policy: &Policy, item_allowed: &[bool], path: &str) -> (bool, &'static str) {
    let segs = segments(path);
    if segs.first() == Some(&"items") {
        let index = segs.get(1).and_then(|i| i.parse::<usize>().ok());
        if !index.is_some_and(|i| item_allowed.get(i).copied().unwrap_or(false)) {
            return (false, "item category not shared with this partner");
        }
        if matches!(segs.get(2), Some(&"item_id") | Some(&"item_category")) && segs.len() == 3 {
            return (true, "identity field");
        }
    }
    if ALWAYS.contains(&path) {
        return (true, "identity field");
    }
    if segs.first() == Some(&"sharing") {
        return (true, "sharing rules travel with the record");
    }
    if segs.first() == Some(&"case_refs") && !policy.case_references {
        return (false, "case references are not shared with this partner");
    }
    if segs.first() == Some(&"casualties") && !policy.casualties {
        return (false, "casualty counts are not shared with this partner");
    }
    if segs.len() >= 3
        && segs[0] == "event"
        && segs[1] == "location"
        && !location_allows(policy.location_precision, segs[2])
    {
        return (false, "finer than this partner's location precision");
    }
    if policy.fields.iter().any(|f| pattern_covers(f, path)) {
        (true, "field path allowed by policy")
    } else {
        (false, "field path not in policy")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "record_id": "r", "record_version": 1, "originating_state": "XAA",
            "event": {"location": {"country": "XAA", "admin1": "XAA-01", "place_name": "Port",
                                   "point": {"lat_e6": 1, "lon_e6": 2}}},
            "items": [
                {"item_id": "a", "item_category": "small_arms_ammunition", "lot": {"raw": "1"}},
                {"item_id": "b", "item_category": "grenade", "lot": {"raw": "2"}}
            ],
            "case_refs": [{"system": "police", "ref": "C-1"}],
            "casualties": {"relevant": true},
            "sharing": {"tlp": "GREEN"}
        })
    }

    fn paths(r: &Value) -> Vec<String> {
        crate::envelope::leaves(r)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    fn replicate() -> Policy {
        Policy {
            mode: Mode::Replicate,
            categories: vec!["small_arms_ammunition".into()],
            fields: vec!["*".into()],
            location_precision: LocationPrecision::Admin1,
            ..Policy::default()
        }
    }

    #[test]
    fn default_policy_denies() {
        let r = record();
        let d = decide("XBB", &Policy::default(), &r, &paths(&r), 100);
        assert!(!d.shared);
        assert_eq!(d.disclosed().count(), 0);
    }

    #[test]
    fn replicate_view_respects_categories_location_and_case_refs() {
        let r = record();
        let d = decide("XBB", &replicate(), &r, &paths(&r), 0);
        assert!(d.shared, "{}", d.reason);
        let shown: Vec<&str> = d.disclosed().collect();
        assert!(shown.contains(&"/items/0/lot/raw"));
        assert!(shown.contains(&"/event/location/admin1"));
        assert!(!shown.iter().any(|p| p.starts_with("/items/1")));
        assert!(!shown.contains(&"/event/location/place_name"));
        assert!(!shown.iter().any(|p| p.contains("point")));
        assert!(!shown.iter().any(|p| p.starts_with("/case_refs")));
        assert!(!shown.iter().any(|p| p.starts_with("/casualties")));
    }

    #[test]
    fn do_not_share_red_embargo_and_releasability_refuse() {
        let mut r = record();
        r["sharing"] = json!({"tlp": "GREEN", "do_not_share": true});
        assert!(!decide("XBB", &replicate(), &r, &paths(&r), 0).shared);
        r["sharing"] = json!({"tlp": "RED"});
        let mut p = replicate();
        p.max_tlp = Some(Tlp::AmberStrict);
        assert!(!decide("XBB", &p, &r, &paths(&r), 0).shared);
        r["sharing"] = json!({"tlp": "AMBER"});
        assert!(!decide("XBB", &replicate(), &r, &paths(&r), 0).shared);
        assert!(decide("XBB", &p, &r, &paths(&r), 0).shared);
        r["sharing"] = json!({"tlp": "GREEN", "releasable_to": ["XCC"]});
        assert!(!decide("XBB", &replicate(), &r, &paths(&r), 0).shared);
        r["sharing"] = json!({"tlp": "GREEN"});
        p.embargo_hours = 24;
        assert!(!decide("XBB", &p, &r, &paths(&r), 23).shared);
        assert!(decide("XBB", &p, &r, &paths(&r), 24).shared);
    }

    #[test]
    fn field_patterns() {
        assert!(pattern_covers("/items/*/lot", "/items/3/lot/raw"));
        assert!(!pattern_covers("/items/*/lot", "/items/3/calibre/raw"));
        assert!(!pattern_covers("/items/*/lot/raw", "/items/3/lot"));
        assert!(pattern_covers("*", "/x"));
    }
}
