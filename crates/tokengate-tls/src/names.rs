//! Memorable names for certificates (`adjective-noun-NNNN`), as users of the
//! seed's PaaS know them. The randomness is passed in, so callers choose the
//! source (a CSPRNG in production, a constant in tests).

const ADJECTIVES: [&str; 32] = [
    "amber", "brave", "calm", "daring", "eager", "fancy", "gentle", "happy", "icy", "jolly",
    "kind", "lively", "mellow", "nimble", "olive", "proud", "quiet", "rapid", "sunny", "tidy",
    "upbeat", "vivid", "witty", "young", "zesty", "bold", "crisp", "dusty", "fuzzy", "golden",
    "hidden", "lucky",
];

const NOUNS: [&str; 32] = [
    "anchor", "badger", "canyon", "dolphin", "ember", "falcon", "glacier", "harbor", "island",
    "jaguar", "kestrel", "lagoon", "meadow", "nebula", "otter", "pebble", "quartz", "raven",
    "summit", "tundra", "urchin", "valley", "walrus", "yak", "zephyr", "beacon", "comet", "delta",
    "fjord", "grove", "heron", "lantern",
];

/// A name such as `brave-falcon-0042`, made from `random`.
///
/// Different bits of `random` pick the adjective, the noun and the number
/// (0000–9999), so a uniformly random `u64` gives a uniformly random name
/// out of 32 × 32 × 10 000 (about ten million). Callers must still check the
/// name against the ones already in use.
pub fn memorable_name(random: u64) -> String {
    // The word lists have 32 entries: 5 bits each. The rest picks the number.
    let adjective = ADJECTIVES[(random & 31) as usize];
    let noun = NOUNS[((random >> 5) & 31) as usize];
    let number = (random >> 10) % 10_000;
    format!("{adjective}-{noun}-{number:04}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn deterministic_and_well_formed() {
        assert_eq!(memorable_name(0), "amber-anchor-0000");
        assert_eq!(memorable_name(0), memorable_name(0));
        assert_eq!(
            memorable_name(1 | (5 << 5) | (42 << 10)),
            "brave-falcon-0042"
        );
        assert_eq!(memorable_name(u64::MAX), "lucky-lantern-1983");
        for r in [0_u64, 7, 1 << 40, u64::MAX / 3] {
            let name = memorable_name(r);
            let parts: Vec<&str> = name.split('-').collect();
            assert_eq!(parts.len(), 3, "{name}");
            assert!(parts[0].chars().all(|c| c.is_ascii_lowercase()));
            assert!(parts[1].chars().all(|c| c.is_ascii_lowercase()));
            assert_eq!(parts[2].len(), 4);
            assert!(parts[2].chars().all(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn words_are_distinct_so_names_spread() {
        assert_eq!(
            ADJECTIVES.iter().collect::<HashSet<_>>().len(),
            ADJECTIVES.len()
        );
        assert_eq!(NOUNS.iter().collect::<HashSet<_>>().len(), NOUNS.len());
        let names: HashSet<String> = (0..1024_u64).map(memorable_name).collect();
        assert_eq!(names.len(), 1024);
    }
}
