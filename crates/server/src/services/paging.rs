//! Paging shared by the listings (`ListJobs`, `ListWorkers`): newest first, and a page token is
//! the time-ordered id of the last item of the previous page.

use std::{fmt::Display, str::FromStr};

use tonic::Status;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The page size for a requested `limit`: 0 asks for the default, anything above the cap gets
/// the cap.
pub fn page_size(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// The id a `page_token` continues after; `None` for the first page.
pub fn continue_after<Id: FromStr>(page_token: &str) -> Result<Option<Id>, Status> {
    if page_token.is_empty() {
        return Ok(None);
    }
    page_token
        .parse::<Id>()
        .map(Some)
        .map_err(|_| Status::invalid_argument("invalid page_token: pass next_page_token as given"))
}

/// The token of the page after `items`: empty when the page was not full, since then nothing
/// older is left. (A full page may be followed by an empty one.)
pub fn next_page_token<T, Id: Display>(items: &[T], size: u32, id: impl Fn(&T) -> Id) -> String {
    match items.last() {
        Some(last) if items.len() == size as usize => id(last).to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_page_gets_a_token_and_a_short_one_ends_the_listing() {
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(5000), 1000);
        assert_eq!(next_page_token(&[1, 2], 2, |n| *n), "2");
        assert_eq!(next_page_token(&[1], 2, |n| *n), "");
        assert_eq!(next_page_token::<u32, u32>(&[], 2, |n| *n), "");
        assert_eq!(continue_after::<u32>("").unwrap(), None);
        assert_eq!(continue_after::<u32>("7").unwrap(), Some(7));
        let refused = continue_after::<u32>("x").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
}
