//! The client API's `authorization` header (`hodei_contract::auth::parse_bearer`, what the
//! server's access layer reads from every call) and API token parsing
//! (`hodei_domain::ApiToken::parse`, what the CLI reads from `HODEI_API_TOKEN` and its config
//! file), fed with arbitrary bytes, and with headers built from them that are nearly valid
//! (random bytes almost never form `Bearer hodei_` and 64 hex digits, so without them the
//! accepting path would go untested).
//!
//! Properties:
//! - nothing panics;
//! - an accepted header is `Bearer ` and a token, and the token is exactly the header's token
//!   text (trimmed, hex digits lowercased): nothing else is normalised away;
//! - an accepted token round-trips: `bearer(token)` parses back to the same token, whose hash is
//!   that of the same text in upper case;
//! - a refusal's message is one of a fixed set of sentences whatever the input, so it can never
//!   carry any part of the input (a token pasted in the wrong place stays out of logs and
//!   error messages).
#![no_main]

use hodei_contract::auth::{AuthHeaderError, bearer, parse_bearer};
use hodei_domain::{ApiToken, MalformedApiToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_header(data);
    if let Ok(text) = std::str::from_utf8(data) {
        check_token_text(text);
    }
    if let Some((&shape, rest)) = data.split_first() {
        let header = nearly_valid_header(shape, rest);
        check_header(header.as_bytes());
        if let Some(token) = header.strip_prefix("Bearer ") {
            check_token_text(token);
        }
    }
});

/// Every sentence a refusal may say.
fn refusal_messages() -> [String; 3] {
    [
        AuthHeaderError::NotBearer.to_string(),
        AuthHeaderError::NotText.to_string(),
        AuthHeaderError::Malformed(MalformedApiToken).to_string(),
    ]
}

fn check_header(value: &[u8]) {
    match parse_bearer(value) {
        Ok(token) => {
            let text = std::str::from_utf8(value).expect("an accepted header is text");
            let rest = text
                .strip_prefix("Bearer ")
                .expect("an accepted header starts with `Bearer `");
            check_accepted(&token, rest.trim());
        }
        Err(refused) => {
            let message = refused.to_string();
            assert!(
                refusal_messages().contains(&message),
                "a refusal says one of the fixed sentences, got {message:?}"
            );
        }
    }
}

fn check_token_text(text: &str) {
    match ApiToken::parse(text) {
        Ok(token) => {
            check_accepted(&token, text);
            assert_eq!(
                parse_bearer(bearer(&token).as_bytes()),
                Ok(token),
                "a token accepted alone is accepted in a header"
            );
        }
        Err(refused) => assert_eq!(refused.to_string(), refusal_messages()[2]),
    }
}

fn check_accepted(token: &ApiToken, text: &str) {
    assert_eq!(
        token.expose(),
        text.to_ascii_lowercase(),
        "only the case of hex digits is normalised"
    );
    assert!(token.expose().starts_with("hodei_") && token.expose().len() == 6 + 64);
    assert_eq!(
        parse_bearer(bearer(token).as_bytes()).as_ref(),
        Ok(token),
        "bearer() parses back to the same token"
    );
    assert_eq!(ApiToken::parse(token.expose()).as_ref(), Ok(token));
    let upper = format!("hodei_{}", token.expose()[6..].to_ascii_uppercase());
    assert_eq!(ApiToken::parse(&upper).map(|t| t.hash()), Ok(token.hash()));
}

/// `Bearer hodei_<hex>` with the hex digits (either case) taken from `bytes`, so their number is
/// the input's length, and each bit of `shape` breaking it in one way.
fn nearly_valid_header(shape: u8, bytes: &[u8]) -> String {
    const HEX: &[u8] = b"0123456789abcdefABCDEF";
    let mut digits: String = bytes
        .iter()
        .map(|b| char::from(HEX[usize::from(*b) % HEX.len()]))
        .collect();
    if shape & 0x01 != 0 && !digits.is_empty() {
        // A byte that is not a hex digit, somewhere.
        // `digits` is ASCII, so every index is a character boundary.
        let at = usize::from(bytes[0]) % digits.len();
        let replacement = char::from(bytes[bytes.len() - 1]).to_string();
        digits.replace_range(at..at + 1, &replacement);
    }
    let scheme = if shape & 0x02 != 0 { "bearer " } else { "Bearer " };
    let prefix = if shape & 0x04 != 0 { "hodei-" } else { "hodei_" };
    let before = if shape & 0x08 != 0 { " \t" } else { "" };
    let after = if shape & 0x10 != 0 { "\r\n" } else { "" };
    let double_space = if shape & 0x20 != 0 { " " } else { "" };
    format!("{scheme}{double_space}{before}{prefix}{digits}{after}")
}
