//! SNS message signatures: SignatureVersion 1 is SHA1withRSA and 2 is SHA256withRSA over the
//! message's string to sign, with the key of the X.509 certificate at `SigningCertURL`. Only a
//! certificate URL whose origin matches the configured pattern (`https://sns.<region>.amazonaws.com`
//! by default) is ever fetched, and only `https` unless the pattern says otherwise (tests serve
//! their own certificate on loopback). Certificates are cached by URL: SNS signs with a few.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use herald_core::feedback::sns::SnsMessage;
use regex::Regex;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a message's signature was not accepted (each is a 403, nothing recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("the message is not signed (SignatureVersion, Signature and SigningCertURL are required)")]
    Unsigned,
    #[error("SignatureVersion {0} is not one SNS uses (1 or 2)")]
    UnknownVersion(String),
    #[error("the signing certificate URL is not an SNS one")]
    CertificateHost,
    #[error("the signing certificate could not be fetched: {0}")]
    CertificateUnavailable(String),
    #[error("the signing certificate could not be read")]
    CertificateUnreadable,
    #[error("the signature does not match the message")]
    Mismatch,
}

/// Certificates kept at most (SNS rotates a few; a flood of distinct URLs cannot match the pattern).
const MAX_CACHED: usize = 32;
/// Largest certificate read (SNS's are about 2 KiB).
const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct Verifier {
    origin: Regex,
    http: reqwest::Client,
    /// DER SubjectPublicKeyInfo by certificate URL.
    keys: Mutex<HashMap<String, Vec<u8>>>,
}

impl Verifier {
    /// `origin` matches a URL's `scheme://host[:port]`.
    pub(crate) fn new(origin: Regex) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { origin, http, keys: Mutex::new(HashMap::new()) }
    }

    /// Whether `url` may be fetched: an absolute http(s) URL whose origin matches the pattern.
    pub(crate) fn allowed(&self, url: &str) -> Option<reqwest::Url> {
        let parsed = reqwest::Url::parse(url).ok()?;
        if !matches!(parsed.scheme(), "https" | "http") || !parsed.username().is_empty() || parsed.password().is_some()
        {
            return None;
        }
        let origin = parsed.origin().ascii_serialization();
        self.origin.is_match(&origin).then_some(parsed)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) async fn verify(&self, message: &SnsMessage) -> Result<(), SignatureError> {
        let (Some(version), Some(signature), Some(url)) =
            (&message.signature_version, &message.signature, &message.signing_cert_url)
        else {
            return Err(SignatureError::Unsigned);
        };
        let algorithm: &'static aws_lc_rs::signature::RsaParameters = match version.as_str() {
            "1" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            other => return Err(SignatureError::UnknownVersion(other.chars().take(8).collect())),
        };
        let signed = message.string_to_sign().ok_or(SignatureError::Unsigned)?;
        let signature =
            base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| SignatureError::Mismatch)?;
        let key = self.public_key(url).await?;
        aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| SignatureError::Mismatch)
    }

    async fn public_key(&self, url: &str) -> Result<Vec<u8>, SignatureError> {
        let parsed = self.allowed(url).ok_or(SignatureError::CertificateHost)?;
        if !parsed.path().ends_with(".pem") {
            return Err(SignatureError::CertificateHost);
        }
        if let Some(key) = self.keys.lock().ok().and_then(|keys| keys.get(url).cloned()) {
            return Ok(key);
        }
        let unavailable =
            |error: reqwest::Error| SignatureError::CertificateUnavailable(error.without_url().to_string());
        let mut response = self.http.get(parsed).send().await.map_err(unavailable)?;
        if !response.status().is_success() {
            return Err(SignatureError::CertificateUnavailable(format!("answered {}", response.status())));
        }
        if response.content_length().is_some_and(|n| n > MAX_CERTIFICATE_BYTES as u64) {
            return Err(SignatureError::CertificateUnreadable);
        }
        // Read as it comes, and no further than a certificate can be: a server that streams
        // without end must not grow this process.
        let mut pem = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if pem.len() + chunk.len() > MAX_CERTIFICATE_BYTES {
                return Err(SignatureError::CertificateUnreadable);
            }
            pem.extend_from_slice(&chunk);
        }
        let key = public_key_of(&pem).ok_or(SignatureError::CertificateUnreadable)?;
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() >= MAX_CACHED {
                keys.clear();
            }
            keys.insert(url.to_string(), key.clone());
        }
        Ok(key)
    }
}

/// The DER SubjectPublicKeyInfo of the first certificate in `pem`.
fn public_key_of(pem: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    let certificate = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(certificate.subject_public_key_info().as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier::new(Regex::new(r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$").unwrap())
    }

    #[test]
    fn only_sns_origins_are_fetched() {
        let verifier = verifier();
        assert!(verifier.allowed("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem").is_some());
        assert!(verifier.allowed("https://sns.cn-north-1.amazonaws.com.cn/x.pem").is_some());
        for url in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(verifier.allowed(url).is_none(), "{url}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(public_key_of(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), None);
        assert_eq!(public_key_of(b""), None);
    }
}
