//! What the web dashboard's suites share: a server with the dashboard on, and a small HTTP/1.0
//! client (one request per connection, the body read to its end) so the refusals are checked
//! on the wire, exactly as a browser or a forger would send them.
#![allow(dead_code)] // each suite uses a different part

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use hodei_domain::ApiToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestServer;

/// A server with the local provider and the dashboard on a random loopback port.
pub async fn server() -> anyhow::Result<TestServer> {
    TestServer::local(|settings| {
        settings.web_listen = Some("127.0.0.1:0".parse().expect("static address"));
    })
    .await
}

pub fn web_addr(server: &TestServer) -> anyhow::Result<SocketAddr> {
    server
        .server()
        .web_addr()
        .context("the web dashboard is not enabled")
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request; `headers` are added to `Host`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("{method} {path} did not complete within 30s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in the answer to {method} {path}: {text}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Queues `command` as the principal of `token` (its owner is the token's name).
pub async fn queue_as(
    server: &TestServer,
    token: &ApiToken,
    command: &str,
) -> anyhow::Result<String> {
    let mut jobs = hodei_proto::v1::job_service_client::JobServiceClient::new(
        server.channel_as(Some(token)).await?,
    );
    let job = jobs
        .queue_job(hodei_proto::v1::QueueJobRequest {
            spec: Some(hodei_testkit::jobs::spec(command)),
        })
        .await?
        .into_inner();
    Ok(job.id)
}

/// Signs in with `token` and returns the `Cookie` header value that carries the session.
pub async fn sign_in(addr: SocketAddr, token: &ApiToken) -> anyhow::Result<String> {
    let response = http(
        addr,
        "POST",
        "/login",
        &[],
        Some(&format!("token={}", token.expose())),
    )
    .await?;
    anyhow::ensure!(response.status == 303, "sign-in answered {response:?}");
    let cookie = response
        .header("set-cookie")
        .context("sign-in set no cookie")?;
    Ok(cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// The value of the first `csrf` form field of a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let start = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let len = html[start..].find('"')?;
    Some(html[start..start + len].to_owned())
}

/// One log line as the stream sends it: `(sequence, stream, text)`, stream 1 stdout, 2 stderr.
pub type SentLine = (u64, i64, String);

/// Every line in the server-sent `lines` events, and the `end` event's data if there was one.
pub fn parse_log_events(body: &str) -> anyhow::Result<(Vec<SentLine>, Option<String>)> {
    let mut lines = Vec::new();
    let mut end = None;
    for block in body.split("\n\n") {
        let mut event = "message";
        let mut data = String::new();
        for field in block.lines() {
            if let Some(name) = field.strip_prefix("event:") {
                event = name.trim();
            } else if let Some(value) = field.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        match event {
            "lines" => {
                let batch: Vec<SentLine> = serde_json::from_str(&data)
                    .with_context(|| format!("a lines event that is not JSON: {data}"))?;
                lines.extend(batch);
            }
            "end" => end = Some(data),
            _ => {}
        }
    }
    Ok((lines, end))
}
