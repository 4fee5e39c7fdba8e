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

    /// Every known server, in the order to try after losing `lost`: the ones after it first,
    /// `lost` last. Addresses that cannot make an endpoint are left out (and said so).
    pub fn reconnect_targets(&self, lost: &str) -> Vec<Target> {
        let mut all: Vec<&String> = std::iter::once(&self.configured)
            .chain(self.learned.iter())
            .collect();
        if let Some(at) = all.iter().position(|a| a.as_str() == lost) {
            all.rotate_left(at + 1);
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
        servers
            .reconnect_targets(lost)
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
            "an unknown lost server changes nothing"
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
