//! What the contract accepts as a phone number and an amount.

use protocol::ErrorCode;

use crate::error::{Error, Result};

/// `^1[3-9][0-9]{9}$` over ASCII digits only: full-width digits, other
/// scripts' digits and trailing newlines are all refused.
pub fn validate_phone(phone: &str) -> Result<()> {
    let b = phone.as_bytes();
    let ok = b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b[2..].iter().all(u8::is_ascii_digit);
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(ErrorCode::InvalidPhone))
    }
}

/// `138****8001`.
pub fn mask_mobile(m: &str) -> String {
    if m.len() == 11 && m.is_ascii() {
        format!("{}****{}", &m[..3], &m[7..])
    } else {
        "****".into()
    }
}

/// An amount as the contract allows it: ASCII digits, at most two decimal
/// places, 0.01–9 999.99. Returns hundredths.
pub fn parse_amount(s: &str) -> Result<u32> {
    let bad = || Error::Refused(ErrorCode::InvalidAmount);
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 4 || !digits(whole) || frac.len() > 2 || !digits(frac) {
        return Err(bad());
    }
    if s.ends_with('.') {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let cents = whole * 100 + frac;
    if !(1..=999_999).contains(&cents) {
        return Err(bad());
    }
    Ok(cents)
}

/// `floor(amount × 10)`.
pub fn estimated_points(cents: u32) -> u32 {
    cents / 10
}

/// A verification code as typed: six ASCII digits.
pub fn is_code_shaped(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_follow_the_contract_pattern_over_ascii_only() {
        assert!(validate_phone("13800138001").is_ok());
        assert!(validate_phone("19912345678").is_ok());
        for bad in [
            "12800138001",
            "1380013800",
            "138001380011",
            "13800138001\n",
            "１３８００１３８００１",
            "1380013800١",
            "+8613800138001",
            "",
        ] {
            assert!(validate_phone(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mobiles_are_masked() {
        assert_eq!(mask_mobile("13800138001"), "138****8001");
    }

    #[test]
    fn amounts_follow_the_contract() {
        assert_eq!(parse_amount("0.01").unwrap(), 1);
        assert_eq!(parse_amount("12.5").unwrap(), 1250);
        assert_eq!(parse_amount("9999.99").unwrap(), 999_999);
        assert_eq!(parse_amount("88").unwrap(), 8800);
        for bad in [
            "", "abc", "NaN", "0.001", "0", "0.00", "10000", "-1", "+1", "1e3", "1.", ".5", "１２",
            " 1", "1,5", "inf",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn points_are_the_floor_of_ten_times_the_amount() {
        assert_eq!(estimated_points(1), 0);
        assert_eq!(estimated_points(1250), 125);
        assert_eq!(estimated_points(1259), 125);
        assert_eq!(estimated_points(999_999), 99_999);
    }
}
