//! The `authorization` header of the client API: `Bearer <API token>`. Clients write it with
//! [`bearer`]; the server reads it with [`parse_bearer`].

use hodei_domain::ApiToken;

/// Why an `authorization` value was refused. Never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error("authorization must be `Bearer <API token>`")]
    NotBearer,
    #[error("malformed authorization header: it is not text")]
    NotText,
    #[error(transparent)]
    Malformed(#[from] hodei_domain::MalformedApiToken),
}

/// The header value for `token`.
pub fn bearer(token: &ApiToken) -> String {
    format!("Bearer {}", token.expose())
}

/// The API token of an `authorization` header value.
pub fn parse_bearer(value: &[u8]) -> Result<ApiToken, AuthHeaderError> {
    let value = std::str::from_utf8(value).map_err(|_| AuthHeaderError::NotText)?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or(AuthHeaderError::NotBearer)?;
    Ok(ApiToken::parse(token.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_are_parsed_strictly_and_refusals_never_echo_the_value() {
        let token = ApiToken::generate();
        assert_eq!(parse_bearer(bearer(&token).as_bytes()), Ok(token.clone()));
        for bad in [
            token.expose().to_string(),
            format!("bearer {}", token.expose()),
            "Bearer ".into(),
            "Bearer hodei_zz".into(),
            format!("Basic {}", token.expose()),
        ] {
            let refused = parse_bearer(bad.as_bytes()).unwrap_err();
            assert!(!refused.to_string().contains(token.expose()), "{refused}");
        }
        assert_eq!(parse_bearer(&[0xff, 0xfe]), Err(AuthHeaderError::NotText));
    }
}
