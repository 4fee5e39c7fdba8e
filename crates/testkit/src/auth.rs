//! Calling a server that requires authentication: an interceptor that adds
//! `authorization: Bearer <API token>` to every call that has none.

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Adds the token (if any) to each call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

/// A channel whose calls carry a token.
pub type Authed = InterceptedService<Channel, Bearer>;

impl Bearer {
    /// Calls carrying `token` (`hodei_…`).
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(Some(format!("Bearer {token}").parse()?)))
    }

    /// Calls without any token.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    /// A call that sets its own `authorization` (a worker's session credential, a test's bad
    /// token) keeps it.
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
