//! Chinese identifiers: 身份证号 (R-ID-1, GB 11643-1999) and mobile numbers (R-ID-2).

use jiff::civil::Date;

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK: [u8; 11] = *b"10X98765432";

/// A valid 18-character 身份证号, upper-cased (R-ID-1); `None` if invalid or 15-digit.
///
/// `today` bounds the embedded birth date (not in the future).
pub fn valid_id_card(raw: &str, today: Date) -> Option<String> {
    let v = raw.trim().to_ascii_uppercase();
    let b = v.as_bytes();
    if b.len() != 18
        || !b[..17].iter().all(u8::is_ascii_digit)
        || !(b[17].is_ascii_digit() || b[17] == b'X')
    {
        return None;
    }
    let birth = id_card_birth_date(&v)?;
    if birth > today {
        return None;
    }
    let sum: u32 = b[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    (CHECK[(sum % 11) as usize] == b[17]).then_some(v)
}

/// Birth date encoded in characters 7–14 of an 18-character 身份证号.
pub fn id_card_birth_date(v: &str) -> Option<Date> {
    let s = v.get(6..14)?;
    crate::time::parse_hl7_date(s).ok()
}

/// Normalise a phone value and return it if it is a valid mainland mobile (R-ID-2):
/// spaces, `-`, `(`, `)` removed; a leading `+86` / `0086` / `86` dropped when 13+ digits.
pub fn normalize_mobile(raw: &str) -> Option<String> {
    let mut s: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    if let Some(rest) = s.strip_prefix('+') {
        s = rest.to_string();
    }
    if s.len() >= 13 {
        for prefix in ["0086", "86"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                s = rest.to_string();
                break;
            }
        }
    }
    let b = s.as_bytes();
    let ok = b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b.iter().all(u8::is_ascii_digit);
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    const TODAY: Date = date(2026, 11, 23);

    #[test]
    fn r_id_1_check_digit() {
        assert_eq!(
            valid_id_card("110101199003071233", TODAY).as_deref(),
            Some("110101199003071233")
        );
        assert_eq!(valid_id_card("110101199003071234", TODAY), None);
    }

    #[test]
    fn r_id_1_lower_x_is_upper_cased_and_samples_are_valid() {
        assert_eq!(
            valid_id_card("31010419551212002x", TODAY).as_deref(),
            Some("31010419551212002X")
        );
        for v in [
            "440106194801010019",
            "320102198807074326",
            "31010119850202432X",
            "110101200001011232",
            "11010519660101111X",
            "330106197712123458",
        ] {
            assert!(valid_id_card(v, TODAY).is_some(), "{v}");
        }
    }

    #[test]
    fn r_id_1_rejects_15_digit_future_and_impossible_dates() {
        assert_eq!(valid_id_card("110101900307123", TODAY), None);
        assert_eq!(valid_id_card("110101209003071233", TODAY), None);
        assert_eq!(valid_id_card("110101199002301233", TODAY), None);
        assert_eq!(valid_id_card("11010119900307123Y", TODAY), None);
        assert_eq!(
            valid_id_card("１１０１０１１９９００３０７１２３３", TODAY),
            None
        );
    }

    #[test]
    fn r_id_2_mobile_normalisation() {
        assert_eq!(
            normalize_mobile("138 1234-5678").as_deref(),
            Some("13812345678")
        );
        assert_eq!(
            normalize_mobile("+86 138 1234 5678").as_deref(),
            Some("13812345678")
        );
        assert_eq!(
            normalize_mobile("008613812345678").as_deref(),
            Some("13812345678")
        );
        assert_eq!(
            normalize_mobile("8613812345678").as_deref(),
            Some("13812345678")
        );
        assert_eq!(normalize_mobile("02161234567"), None, "landline");
        assert_eq!(normalize_mobile("12812345678"), None);
        assert_eq!(normalize_mobile(""), None);
        assert_eq!(normalize_mobile("１３８１２３４５６７８"), None);
    }
}
