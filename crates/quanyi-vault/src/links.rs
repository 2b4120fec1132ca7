//! Signed, expiring links: a URL the buyer opens, which the host's redemption endpoint checks
//! without any lookup.

use std::fmt;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use quanyi_core::TenantId;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::root::{RootKey, hmac_sha256};

/// Why a link does not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link is not one this signer made, or was changed.
    #[error("link signature does not match")]
    BadSignature,
    /// The link was made correctly but its time has passed.
    #[error("link has expired")]
    Expired,
    /// The link lacks its subject, expiry or signature.
    #[error("malformed link")]
    Malformed,
}

/// Makes and checks signed links for one tenant, with a key derived from the root key (HKDF,
/// its own purpose), so no extra secret has to be kept.
#[derive(Clone)]
pub struct LinkSigner {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSigner(<redacted>)")
    }
}

fn subject_ok(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 128
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl LinkSigner {
    /// The signer of `tenant`'s links under `root`.
    pub fn new(root: &RootKey, tenant: &TenantId) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"quanyi-links"), root.bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(tenant.as_str().as_bytes(), &mut *key);
        LinkSigner {
            mac: hmac_sha256(&key),
        }
    }

    fn tag(&self, subject: &str, expires: i64) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(subject.as_bytes());
        mac.update(b"\x1f");
        mac.update(expires.to_string().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// `base` with `t=<subject>&e=<expiry, unix seconds>&s=<signature>` appended. The subject is
    /// 1 to 128 characters of letters, digits and `_ - .`; `None` otherwise.
    pub fn sign(&self, base: &str, subject: &str, expires: DateTime<Utc>) -> Option<String> {
        if !subject_ok(subject) {
            return None;
        }
        let e = expires.timestamp();
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(format!(
            "{base}{sep}t={subject}&e={e}&s={}",
            hex::encode(self.tag(subject, e))
        ))
    }

    /// The subject of a link this signer made, if it is unchanged and not expired at `now`.
    ///
    /// # Errors
    /// [`LinkError::Malformed`], [`LinkError::BadSignature`], [`LinkError::Expired`].
    pub fn verify(&self, link: &str, now: DateTime<Utc>) -> Result<String, LinkError> {
        let query = link
            .split_once('?')
            .map(|(_, q)| q)
            .ok_or(LinkError::Malformed)?;
        let (mut t, mut e, mut s) = (None, None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("t", v)) => t = Some(v),
                Some(("e", v)) => e = Some(v),
                Some(("s", v)) => s = Some(v),
                _ => {}
            }
        }
        let (Some(t), Some(e), Some(s)) = (t, e, s) else {
            return Err(LinkError::Malformed);
        };
        let expires: i64 = e.parse().map_err(|_| LinkError::Malformed)?;
        let sig = hex::decode(s).map_err(|_| LinkError::Malformed)?;
        if !subject_ok(t) {
            return Err(LinkError::Malformed);
        }
        let mut mac = self.mac.clone();
        mac.update(t.as_bytes());
        mac.update(b"\x1f");
        mac.update(expires.to_string().as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| LinkError::BadSignature)?;
        if now.timestamp() >= expires {
            return Err(LinkError::Expired);
        }
        Ok(t.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn check(
        link: &str,
        now: DateTime<Utc>,
        signer: &LinkSigner,
        expected: Result<&str, LinkError>,
    ) {
        assert_eq!(
            signer.verify(link, now).as_deref().map_err(|e| *e),
            expected,
            "{link}"
        );
    }

    #[test]
    fn links_verify_until_they_expire_and_not_after_a_change() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let root = RootKey::from_bytes([3; 32]);
        let tenant = TenantId::default();
        let signer = LinkSigner::new(&root, &tenant);
        let link = signer
            .sign(
                "https://shop.example/redeem",
                "ord_1.1.1",
                t0 + Duration::days(7),
            )
            .unwrap();
        assert!(link.starts_with("https://shop.example/redeem?t=ord_1.1.1&e="));
        check(&link, t0, &signer, Ok("ord_1.1.1"));
        check(
            &link,
            t0 + Duration::days(7),
            &signer,
            Err(LinkError::Expired),
        );
        check(
            &link.replace("ord_1.1.1", "ord_1.1.2"),
            t0,
            &signer,
            Err(LinkError::BadSignature),
        );
        let later = link.replace("&e=", "&e=9");
        check(&later, t0, &signer, Err(LinkError::BadSignature));
        check(
            "https://shop.example/redeem",
            t0,
            &signer,
            Err(LinkError::Malformed),
        );
        check(
            "https://x/?t=a&e=1&s=zz",
            t0,
            &signer,
            Err(LinkError::Malformed),
        );
        let other_tenant = LinkSigner::new(&root, &TenantId::new("other").unwrap());
        check(&link, t0, &other_tenant, Err(LinkError::BadSignature));
        let other_root = LinkSigner::new(&RootKey::from_bytes([4; 32]), &tenant);
        check(&link, t0, &other_root, Err(LinkError::BadSignature));
        assert!(signer.sign("https://x", "bad subject", t0).is_none());
        assert_eq!(format!("{signer:?}"), "LinkSigner(<redacted>)");
        let with_query = signer
            .sign("https://x/r?from=app", "s", t0 + Duration::hours(1))
            .unwrap();
        assert!(with_query.contains("?from=app&t=s&e="));
        check(&with_query, t0, &signer, Ok("s"));
    }
}
