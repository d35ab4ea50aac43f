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
    /// The most sensitive TLP label that may leave (never RED); absent: GREEN.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    let item_allowed = match gate(partner, policy, record, age_hours) {
        Ok(items) => items,
        Err(reason) => return Decision::refuse(reason),
    };
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

/// [`decide`] without the reasons, for serving many versions: `None` when the version is not
/// shared, else whether each of `paths`, in their order, is disclosed.
pub fn disclosed<'a>(
    partner: &str,
    policy: &Policy,
    record: &Value,
    paths: impl Iterator<Item = &'a str>,
    age_hours: i64,
) -> Option<Vec<bool>> {
    let item_allowed = gate(partner, policy, record, age_hours).ok()?;
    Some(
        paths
            .map(|path| path_rule(policy, &item_allowed, path).0)
            .collect(),
    )
}

/// The rules on the record as a whole: which of its items may leave, or why none of it does.
fn gate(
    partner: &str,
    policy: &Policy,
    record: &Value,
    age_hours: i64,
) -> Result<Vec<bool>, String> {
    if policy.mode == Mode::None {
        return Err("the policy's mode is none".into());
    }
    labels_allow(partner, policy, record)?;
    if age_hours < i64::from(policy.embargo_hours) {
        return Err(format!(
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
        return Err("no item is in a category this partner may receive".into());
    }
    Ok(item_allowed)
}

/// The record's own sharing labels against `partner` under `policy`: do-not-share, TLP (RED
/// or none never leaves; nothing above the partner's `max_tlp`) and `releasable_to`. These
/// hold for every version of a record once its latest carries them.
pub fn labels_allow(partner: &str, policy: &Policy, record: &Value) -> Result<(), String> {
    let sharing = record.get("sharing");
    if sharing
        .and_then(|s| s.get("do_not_share"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err("the record is marked do-not-share".into());
    }
    let tlp = sharing
        .and_then(|s| s.get("tlp"))
        .and_then(|t| serde_json::from_value::<Tlp>(t.clone()).ok())
        .unwrap_or(Tlp::Red);
    if tlp == Tlp::Red {
        return Err("the record is TLP RED (or has no valid TLP label)".into());
    }
    if tlp > policy.max_tlp() {
        return Err(format!(
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
        return Err(format!(
            "the record's releasable_to does not name {partner}"
        ));
    }
    Ok(())
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
    if matches!(path, "/sharing/tlp" | "/sharing/do_not_share") {
        return (true, "sharing labels travel with the record");
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
    // A place along the supply chain can name the seizure's place as well as its location
    // does: it is held to the same precision as a place name.
    let place_on_route = segs.len() == 4
        && segs[..2] == ["supply_chain", "route"]
        && matches!(segs[3], "place" | "unlocode");
    let diversion_place = segs == ["supply_chain", "diversion", "place"];
    if (place_on_route || diversion_place)
        && policy.location_precision < LocationPrecision::Settlement
    {
        return (
            false,
            "a place, finer than this partner's location precision",
        );
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

    /// At country precision (worked example 2 of docs/policies.md), no place reaches the
    /// partner through the supply chain, and nothing under `/sharing` but its labels goes
    /// beyond `fields`; at settlement precision the route's places go.
    #[test]
    fn country_precision_keeps_places_along_the_route_too() {
        let r = json!({
            "record_id": "r", "record_version": 1, "originating_state": "XAA",
            "event": {"location": {"country": "XAA", "admin1": "XAA-NO", "place_name": "Port A",
                                   "unlocode": "XA PTA"}},
            "items": [{"item_id": "a", "item_category": "small_arms_ammunition"}],
            "supply_chain": {"route": [{"seq": 1, "country": "XAA", "role": "destination",
                                        "place": "Port A", "unlocode": "XA PTA"}],
                             "diversion": {"place": "Port A warehouse 7"}},
            "sharing": {"tlp": "GREEN", "releasable_to": ["REG"],
                        "handling_note": "source: informant 17"}
        });
        let mut p = Policy {
            mode: Mode::Replicate,
            categories: vec!["small_arms_ammunition".into()],
            fields: vec!["/event".into(), "/items".into(), "/supply_chain".into()],
            location_precision: LocationPrecision::Country,
            ..Policy::default()
        };
        let shown = |p: &Policy| -> Vec<String> {
            decide("REG", p, &r, &paths(&r), 0)
                .disclosed()
                .map(str::to_owned)
                .collect()
        };
        let country = shown(&p);
        let places = [
            "/event/location/place_name",
            "/event/location/unlocode",
            "/supply_chain/route/0/place",
            "/supply_chain/route/0/unlocode",
            "/supply_chain/diversion/place",
        ];
        for leak in places
            .iter()
            .chain(&["/sharing/handling_note", "/sharing/releasable_to/0"])
        {
            assert!(
                !country.iter().any(|s| s == leak),
                "{leak} left: {country:?}"
            );
        }
        for kept in [
            "/sharing/tlp",
            "/supply_chain/route/0/country",
            "/event/location/country",
        ] {
            assert!(
                country.iter().any(|s| s == kept),
                "{kept} withheld: {country:?}"
            );
        }
        p.location_precision = LocationPrecision::Settlement;
        p.fields.push("/sharing".into());
        let settlement = shown(&p);
        for kept in places.iter().chain(&["/sharing/handling_note"]) {
            assert!(
                settlement.iter().any(|s| s == kept),
                "{kept} withheld: {settlement:?}"
            );
        }
    }

    #[test]
    fn field_patterns() {
        assert!(pattern_covers("/items/*/lot", "/items/3/lot/raw"));
        assert!(!pattern_covers("/items/*/lot", "/items/3/calibre/raw"));
        assert!(!pattern_covers("/items/*/lot/raw", "/items/3/lot"));
        assert!(pattern_covers("*", "/x"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::envelope::{Seal, seal};
    use proptest::prelude::*;
    use serde_json::json;

    const CATEGORIES: [&str; 4] = ["small_arms_ammunition", "grenade", "rocket", "fuze"];
    const LOCATION_KEYS: [&str; 7] = [
        "admin1",
        "admin2",
        "place_name",
        "unlocode",
        "facility_type",
        "point",
        "precision",
    ];
    const PATTERNS: [&str; 6] = [
        "*",
        "/items",
        "/items/*/lot",
        "/event",
        "/supply_chain",
        "/notes",
    ];

    fn record() -> impl Strategy<Value = Value> {
        (
            proptest::collection::vec((0usize..4, any::<bool>()), 1..4),
            proptest::collection::vec(any::<bool>(), 7),
            any::<bool>(),
            any::<bool>(),
            0usize..5,
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(
                prop_oneof![Just("XBB"), Just("XCC"), Just("*")],
                0..3,
            )),
        )
            .prop_map(|(items, loc, case, casualties, tlp, dns, releasable)| {
                let items: Vec<Value> = items
                    .iter()
                    .enumerate()
                    .map(|(i, (c, lot))| {
                        let mut item =
                            json!({"item_id": format!("i{i}"), "item_category": CATEGORIES[*c]});
                        if *lot {
                            item["lot"] = json!({"raw": format!("LOT-{i}")});
                            item["calibre"] = json!({"raw": "7.62x39"});
                        }
                        item
                    })
                    .collect();
                let mut location = json!({"country": "XAA"});
                for (k, on) in LOCATION_KEYS.iter().zip(&loc) {
                    if *on {
                        location[*k] = if *k == "point" {
                            json!({"lat_e6": 1, "lon_e6": 2})
                        } else {
                            json!(format!("{k}-value"))
                        };
                    }
                }
                let tlp = ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"][tlp];
                let mut r = json!({
                    "record_id": "01900000-0000-7000-8000-000000000001",
                    "record_version": 1,
                    "originating_state": "XAA",
                    "event": {"event_type": "seizure", "location": location},
                    "items": items,
                    "notes": "free text",
                    "supply_chain": {"route": [{"seq": 1, "country": "XCC"}]},
                    "sharing": {"tlp": tlp,
                                "do_not_share": dns},
                });
                if case {
                    r["case_refs"] = json!([{"system": "police", "ref": "C-1"}]);
                }
                if casualties {
                    r["casualties"] =
                        json!({"relevant": true, "counts": [{"outcome": "killed", "count": 1}]});
                }
                if let Some(list) = releasable {
                    r["sharing"]["releasable_to"] = json!(list);
                }
                r
            })
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            0usize..4,
            proptest::collection::vec(any::<bool>(), 5),
            proptest::collection::vec(any::<bool>(), 6),
            0usize..4,
            any::<bool>(),
            any::<bool>(),
            0usize..4,
        )
            .prop_map(
                |(mode, cats, fields, precision, case, casualties, tlp)| Policy {
                    mode: [Mode::Replicate, Mode::Query, Mode::HitNoHit, Mode::None][mode],
                    categories: CATEGORIES
                        .iter()
                        .chain(["*"].iter())
                        .zip(&cats)
                        .filter(|(_, on)| **on)
                        .map(|(c, _)| c.to_string())
                        .collect(),
                    fields: PATTERNS
                        .iter()
                        .zip(&fields)
                        .filter(|(_, on)| **on)
                        .map(|(f, _)| f.to_string())
                        .collect(),
                    location_precision: [
                        LocationPrecision::Country,
                        LocationPrecision::Admin1,
                        LocationPrecision::Settlement,
                        LocationPrecision::Exact,
                    ][precision],
                    case_references: case,
                    casualties,
                    max_tlp: Some([Tlp::Clear, Tlp::Green, Tlp::Amber, Tlp::AmberStrict][tlp]),
                    ..Policy::default()
                },
            )
    }

    /// The rules of docs/policies.md, written out independently of `decide`.
    fn allowed(policy: &Policy, record: &Value, partner: &str, path: &str) -> bool {
        let sharing = &record["sharing"];
        let tlp_rank = |t: &str| {
            ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]
                .iter()
                .position(|x| *x == t)
        };
        let max = match policy.max_tlp {
            Some(Tlp::Clear) => 0,
            Some(Tlp::Amber) => 2,
            Some(Tlp::AmberStrict) => 3,
            _ => 1,
        };
        if policy.mode == Mode::None
            || sharing["do_not_share"] == true
            || tlp_rank(sharing["tlp"].as_str().unwrap_or("RED")).is_none_or(|r| r == 4 || r > max)
        {
            return false;
        }
        if let Some(list) = sharing["releasable_to"].as_array()
            && !list.iter().any(|p| p == "*" || p == partner)
        {
            return false;
        }
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        if segs[0] == "items" {
            let i: usize = segs[1].parse().unwrap();
            let cat = record["items"][i]["item_category"].as_str().unwrap();
            if !policy.categories.iter().any(|c| c == "*" || c == cat) {
                return false;
            }
        }
        if segs[0] == "case_refs" && !policy.case_references {
            return false;
        }
        if segs[0] == "casualties" && !policy.casualties {
            return false;
        }
        if segs.len() >= 3 && segs[0] == "event" && segs[1] == "location" {
            let needed = match segs[2] {
                "country" | "precision" => LocationPrecision::Country,
                "admin1" => LocationPrecision::Admin1,
                "admin2" | "place_name" | "unlocode" | "facility_type" => {
                    LocationPrecision::Settlement
                }
                _ => LocationPrecision::Exact,
            };
            if policy.location_precision < needed {
                return false;
            }
        }
        let identity = [
            "/record_id",
            "/record_version",
            "/originating_state",
            "/schema_version",
        ]
        .contains(&path)
            || segs[0] == "sharing"
            || (segs[0] == "items"
                && segs.len() == 3
                && matches!(segs[2], "item_id" | "item_category"));
        identity
            || policy.fields.iter().any(|f| {
                f == "*" || {
                    let pat: Vec<&str> = f.split('/').skip(1).collect();
                    pat.len() <= segs.len()
                        && pat.iter().zip(&segs).all(|(a, b)| *a == "*" || a == b)
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// No disclosure a partner receives breaks a rule of its policy, and every view
        /// verifies under the origin's signature.
        #[test]
        fn no_disallowed_field_ever_leaves(record in record(), policy in policy()) {
            let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
            let s = Seal { origin: "XAA", seq: 1, prev: "", issued_at: "2026-01-01T00:00:00Z",
                           retracted: false, normaliser: "1" };
            let envelope = seal(&record, &s, &key).unwrap();
            let decision = decide("XBB", &policy, &record, &envelope.paths(), 0);
            let allowed_paths: std::collections::HashSet<&str> = decision.disclosed().collect();
            let view = envelope.view(|p| decision.shared && allowed_paths.contains(p));
            view.verify(&key.verifying_key()).unwrap();
            // The feed's way, without reasons or copies, gives the very same view.
            let paths = envelope.disclosures.iter().map(|d| d.path());
            let keep = disclosed("XBB", &policy, &record, paths, 0);
            prop_assert_eq!(keep.is_some(), decision.shared);
            let fast = envelope.clone().into_view(&keep.unwrap_or_default());
            prop_assert_eq!(serde_json::to_value(&fast).unwrap(), serde_json::to_value(&view).unwrap());
            for d in &view.disclosures {
                prop_assert!(allowed(&policy, &record, "XBB", d.path()),
                    "{} left under {:?}", d.path(), policy);
            }
            let text = view.record().to_string();
            if !policy.case_references { prop_assert!(!text.contains("C-1")); }
            if policy.location_precision < LocationPrecision::Exact { prop_assert!(!text.contains("lat_e6")); }
        }
    }
}
