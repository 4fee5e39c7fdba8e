//! The tower layer in front of every service: the method's rule, the caller's identity, its
//! scopes. Nothing reaches a client service without a [`Caller`] in its extensions.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::{
    Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::{
    Access, Caller,
    rules::{Rule, rule_for},
};

#[derive(Clone)]
pub struct AccessLayer {
    access: Arc<Access>,
}

impl AccessLayer {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            access: self.access.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B> Service<http::Request<B>> for AccessService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the ready one serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = self.access.clone();
        // What the decision needs, taken out of the request so the body is not held across
        // the token lookup.
        let path = request.uri().path().to_owned();
        let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
        let subject = certificate_subject(&request);
        Box::pin(async move {
            let authorization = authorization.as_ref().map(|v| v.as_bytes());
            match admit(&access, &path, authorization, subject).await {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The caller of a client method, `None` for open and agent methods, or why it is refused.
/// The web dashboard asks the same question for the method each of its actions stands for.
pub(crate) async fn admit(
    access: &Access,
    path: &str,
    authorization: Option<&[u8]>,
    certificate_subject: Option<String>,
) -> Result<Option<Caller>, Status> {
    let scopes = match rule_for(path) {
        None => {
            return Err(Status::permission_denied(format!(
                "no authorization rule for {path}"
            )));
        }
        Some(Rule::Open | Rule::Agent) => return Ok(None),
        Some(Rule::AnyOf(scopes)) => scopes,
    };
    let caller = access
        .authenticate(authorization, certificate_subject)
        .await?;
    if !scopes.iter().any(|scope| caller.may(*scope)) {
        let needed: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "{} may not call {path}: it needs one of the scopes {}",
            caller.name(),
            needed.join(", ")
        )));
    }
    Ok(Some(caller))
}

/// The subject's common name (or the whole subject) of a verified client certificate.
fn certificate_subject<B>(request: &http::Request<B>) -> Option<String> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    Some(common_name.map_or_else(|| subject.to_string(), str::to_owned))
}
