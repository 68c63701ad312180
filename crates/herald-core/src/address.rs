//! Syntax checks for the addresses Herald sends to. They are deliberately conservative: an
//! address that passes here may still bounce, but one that fails would certainly be rejected by
//! the provider, so it is better refused at the door.

/// Longest address SMTP accepts in a path (RFC 5321 §4.5.3.1.3).
const MAX_EMAIL_LENGTH: usize = 254;
const MAX_LOCAL_PART_LENGTH: usize = 64;

/// Whether `address` is a plausible `local@domain` email address with a dotted domain.
pub fn is_valid_email(address: &str) -> bool {
    if address.len() > MAX_EMAIL_LENGTH || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > MAX_LOCAL_PART_LENGTH || local.contains('@') {
        return false;
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Whether `number` is an E.164 phone number: `+`, a non-zero country digit, 8 to 15 digits in all.
pub fn is_valid_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

/// Whether `sender_id` is an alphanumeric SMS sender id: 1 to 11 letters, digits or spaces,
/// with at least one letter (carriers reject all-digit sender ids).
pub fn is_valid_sms_sender_id(sender_id: &str) -> bool {
    (1..=11).contains(&sender_id.len())
        && sender_id.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && sender_id.chars().any(|c| c.is_ascii_alphabetic())
}

/// Whether `arn` names an SNS platform application (`arn:aws:sns:REGION:ACCOUNT:app/PLATFORM/NAME`).
pub fn is_valid_platform_application_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !parts[1].starts_with("aws") || parts[2] != "sns" {
        return false;
    }
    let region_ok = !parts[3].is_empty();
    let account_ok = parts[4].len() == 12 && parts[4].chars().all(|c| c.is_ascii_digit());
    let resource: Vec<&str> = parts[5].split('/').collect();
    region_ok && account_ok && resource.len() == 3 && resource[0] == "app" && resource.iter().all(|p| !p.is_empty())
}

/// Masks an address for display: `j***@example.com`, `+33******89`. Used wherever an address
/// must be shown to an operator without revealing it.
pub fn mask(address: &str) -> String {
    if let Some((local, domain)) = address.rsplit_once('@') {
        let first: String = local.chars().take(1).collect();
        return format!("{first}***@{domain}");
    }
    let chars: Vec<char> = address.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_emails_are_accepted_and_broken_ones_refused() {
        assert!(is_valid_email("jane.doe@example.com"));
        assert!(is_valid_email("a+tag@sub.example.co.uk"));
        for bad in [
            "",
            "jane",
            "jane@",
            "@example.com",
            "jane@example",
            "jane doe@example.com",
            "a..b@example.com",
            "jane@-example.com",
            "a@b@example.com",
        ] {
            assert!(!is_valid_email(bad), "{bad} should be refused");
        }
    }

    #[test]
    fn e164_needs_a_plus_and_eight_to_fifteen_digits() {
        assert!(is_valid_e164("+33612345678"));
        assert!(is_valid_e164("+14155550123"));
        for bad in ["33612345678", "+0612345678", "+12", "+1234567890123456", "+3361234567a"] {
            assert!(!is_valid_e164(bad), "{bad} should be refused");
        }
    }

    #[test]
    fn sender_ids_are_short_and_alphanumeric() {
        assert!(is_valid_sms_sender_id("Herald"));
        assert!(!is_valid_sms_sender_id("TooLongSenderId"));
        assert!(!is_valid_sms_sender_id("12345"));
        assert!(!is_valid_sms_sender_id("Bad-Id"));
    }

    #[test]
    fn platform_application_arns_are_recognised() {
        assert!(is_valid_platform_application_arn("arn:aws:sns:eu-west-1:123456789012:app/GCM/herald-android"));
        assert!(!is_valid_platform_application_arn("arn:aws:sns:eu-west-1:123456789012:topic"));
        assert!(!is_valid_platform_application_arn("not-an-arn"));
    }

    #[test]
    fn masking_keeps_only_a_hint_of_the_address() {
        assert_eq!(mask("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask("+33612345678"), "+33*******78");
    }
}
