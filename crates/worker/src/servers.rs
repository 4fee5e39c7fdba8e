//! The servers a worker may re-connect to: `HODEI_SERVER`, and the other servers of its
//! instance that a server named (`SessionInfo.worker_addresses`, `Move`). After losing one, the
//! worker tries the others first and the lost one last: with several servers, the one that
//! died is the least likely to answer; with one, it is the only one, and is tried every round.

use crate::{
    config::{Config, TlsCa},
    connection::{Target, endpoint_for},
};

pub struct Servers {
    configured: String,
    /// What the last server said, without `configured`.
    learned: Vec<String>,
    tls_ca: Option<TlsCa>,
    /// The address the current (or last) stream went to.
    connected: String,
}

impl Servers {
    pub fn new(config: &Config) -> Self {
        Self {
            configured: config.server.clone(),
            learned: Vec::new(),
            tls_ca: config.tls_ca.clone(),
            connected: config.server.clone(),
        }
    }

    /// A server named the instance's servers: they replace what an earlier one said.
    pub fn learn(&mut self, addresses: &[String]) {
        let mut learned = Vec::new();
        for address in addresses {
            if address.is_empty() || *address == self.configured || learned.contains(address) {
                continue;
            }
            learned.push(address.clone());
        }
        if learned != self.learned {
            tracing::info!(servers = ?learned, "other servers of the instance");
            self.learned = learned;
        }
    }

    pub fn connected_to(&mut self, address: String) {
        self.connected = address;
    }

    pub fn connected(&self) -> &str {
        &self.connected
    }

    /// Every known server, in the order to try after losing `lost`: the others first, from a
    /// random one on (every worker of a dead server starting with the same survivor would
    /// double that one's load and leave the rest idle), `lost` last. Addresses that cannot make
    /// an endpoint are left out (and said so).
    pub fn reconnect_targets(&self, lost: &str) -> Vec<Target> {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        self.reconnect_targets_from(lost, usize::try_from(random % 1024).unwrap_or(0))
    }

    /// [`Self::reconnect_targets`], the others rotated by `start`.
    fn reconnect_targets_from(&self, lost: &str, start: usize) -> Vec<Target> {
        let mut all: Vec<&String> = std::iter::once(&self.configured)
            .chain(self.learned.iter())
            .collect();
        if let Some(at) = all.iter().position(|a| a.as_str() == lost) {
            all.rotate_left(at + 1);
            let others = all.len() - 1;
            if others > 0 {
                all[..others].rotate_left(start % others);
            }
        } else if !all.is_empty() {
            let n = all.len();
            all.rotate_left(start % n);
        }
        all.into_iter()
            .filter_map(
                |address| match endpoint_for(address, self.tls_ca.as_ref()) {
                    Ok(endpoint) => Some(Target {
                        address: address.clone(),
                        endpoint,
                    }),
                    Err(reason) => {
                        tracing::warn!(address, reason, "a server address that cannot be used");
                        None
                    }
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(configured: &str) -> Servers {
        Servers {
            configured: configured.into(),
            learned: Vec::new(),
            tls_ca: None,
            connected: configured.into(),
        }
    }

    fn order(servers: &Servers, lost: &str) -> Vec<String> {
        order_from(servers, lost, 0)
    }

    fn order_from(servers: &Servers, lost: &str, start: usize) -> Vec<String> {
        servers
            .reconnect_targets_from(lost, start)
            .into_iter()
            .map(|t| t.address)
            .collect()
    }

    #[test]
    fn after_losing_a_server_the_others_come_first_and_it_last() {
        let mut known = servers("http://a:1");
        known.learn(&[
            "http://a:1".into(),
            "http://b:1".into(),
            "http://c:1".into(),
            "http://b:1".into(),
            String::new(),
        ]);
        assert_eq!(
            order(&known, "http://a:1"),
            ["http://b:1", "http://c:1", "http://a:1"]
        );
        assert_eq!(
            order(&known, "http://b:1"),
            ["http://c:1", "http://a:1", "http://b:1"]
        );
        assert_eq!(
            order(&known, "http://elsewhere:1"),
            ["http://a:1", "http://b:1", "http://c:1"],
            "an unknown lost server: every one, in turn"
        );
        assert_eq!(
            order_from(&known, "http://a:1", 1),
            ["http://c:1", "http://b:1", "http://a:1"],
            "workers start at different survivors; the lost one stays last"
        );
        let firsts: std::collections::HashSet<String> = (0..64)
            .map(|_| known.reconnect_targets("http://a:1")[0].address.clone())
            .collect();
        assert_eq!(
            firsts,
            ["http://b:1".to_string(), "http://c:1".to_string()].into(),
            "the first survivor tried is spread over all of them"
        );
    }

    #[test]
    fn alone_the_configured_server_is_tried_every_time_and_bad_addresses_are_skipped() {
        let mut known = servers("http://a:1");
        assert_eq!(order(&known, "http://a:1"), ["http://a:1"]);
        known.learn(&["not a url at all".into()]);
        assert_eq!(order(&known, "http://a:1"), ["http://a:1"]);
        known.learn(&["http://b:1".into()]);
        known.learn(&["http://c:1".into()]);
        assert_eq!(
            order(&known, "http://a:1"),
            ["http://c:1", "http://a:1"],
            "what the last server said replaces the earlier list"
        );
    }
}
