//! The plain-HTTP POST of the platform's clients for signed answers (OCSP, time-stamping):
//! what they fetch is signed and checked, so TLS adds nothing to it; the exchange is
//! bounded in time and in size.

use std::time::Duration;

/// One POST of a DER request: its media types, time bounds and the largest answer read.
#[derive(Clone, Debug)]
pub struct DerPost<'a> {
    pub content_type: &'a str,
    pub accept: &'a str,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_answer: u64,
}

impl DerPost<'_> {
    /// POSTs `request` to `url` and reads the answer of a 200 (a redirect is not
    /// followed: any other status is an error naming it).
    pub fn send(&self, url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Name resolution and connection, then the answer; and the whole exchange
            // bounded by their sum, whatever stalls.
            .timeout_global(Some(self.connect_timeout + self.read_timeout))
            .timeout_resolve(Some(self.connect_timeout))
            .timeout_connect(Some(self.connect_timeout))
            .timeout_recv_response(Some(self.read_timeout))
            .timeout_recv_body(Some(self.read_timeout))
            .max_redirects(0)
            .build()
            .into();
        let mut answer = agent
            .post(url)
            .header("Content-Type", self.content_type)
            .header("Accept", self.accept)
            .send(request)
            .map_err(|e| e.to_string())?;
        if answer.status() != 200 {
            return Err(format!("HTTP {} (a 200 was expected)", answer.status()));
        }
        answer
            .body_mut()
            .with_config()
            .limit(self.max_answer)
            .read_to_vec()
            .map_err(|e| e.to_string())
    }
}
