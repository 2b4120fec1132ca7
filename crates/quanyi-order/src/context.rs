//! Where an order came from: the channel, the client and the host's own attributes, stored with
//! the order so that risk rules, analytics and backtests can read them later.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest device id, user agent or referral code, in characters.
pub const MAX_CONTEXT_TEXT_CHARS: usize = 512;
/// The most attributes an order context carries.
pub const MAX_CONTEXT_ATTRIBUTES: usize = 32;
/// The longest attribute name, in bytes (printable ASCII).
pub const MAX_ATTRIBUTE_NAME: usize = 64;
/// The longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 256;

/// Where the buyer placed the order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Channel {
    /// A web shop.
    #[default]
    Web,
    /// A mobile app.
    App,
    /// A mini-program (小程序) inside a super-app.
    MiniProgram,
    /// A link a member shared.
    ShareLink,
    /// A partner's server through an API.
    PartnerApi,
    /// An automatic renewal of a subscription.
    Renewal,
    /// A channel of the host's own: 1 to 64 printable ASCII characters.
    Other(String),
}

impl Channel {
    /// The channel's name: `web`, `app`, `mini_program`, `share_link`, `partner_api`,
    /// `renewal`, or the host's own.
    pub fn as_str(&self) -> &str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::MiniProgram => "mini_program",
            Channel::ShareLink => "share_link",
            Channel::PartnerApi => "partner_api",
            Channel::Renewal => "renewal",
            Channel::Other(name) => name,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The context of an order: channel, client IP, device id, user agent, referral or share code,
/// and attributes the host supplies. Every part is optional but the channel (default `web`).
///
/// `Debug` masks the IP (the last part of an IPv4 address, all but the first three groups of
/// an IPv6 one) and the device id (all but its last four characters), so a context can be
/// logged.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderContext {
    /// Where the order was placed.
    #[serde(default)]
    pub channel: Channel,
    /// The buyer's IP address as the host saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// The buyer's device id (a fingerprint the host's client computes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The client's user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// A referral or share code the buyer came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<String>,
    /// The host's own attributes (campaign, page, experiment arm...), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl OrderContext {
    /// True for the default context (the web, nothing else), which orders do not store.
    pub fn is_default(&self) -> bool {
        self.channel == Channel::default()
            && self.client_ip.is_none()
            && self.device_id.is_none()
            && self.user_agent.is_none()
            && self.referral.is_none()
            && self.attributes.is_empty()
    }

    /// A context of `channel` with nothing else.
    pub fn new(channel: Channel) -> Self {
        OrderContext {
            channel,
            ..OrderContext::default()
        }
    }

    /// With the buyer's IP address.
    #[must_use]
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// With the buyer's device id.
    #[must_use]
    pub fn device_id(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// With the client's user agent.
    #[must_use]
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// With a referral or share code.
    #[must_use]
    pub fn referral(mut self, code: impl Into<String>) -> Self {
        self.referral = Some(code.into());
        self
    }

    /// With one of the host's attributes (a later value for the same name replaces it).
    #[must_use]
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Checks every part's size and characters.
    ///
    /// # Errors
    /// [`Error::InvalidContext`] naming the part.
    pub fn check(&self) -> Result<()> {
        let bad = |part: &'static str| Err(Error::InvalidContext { part });
        if let Channel::Other(name) = &self.channel {
            if !ascii_name(name) {
                return bad("channel");
            }
        }
        let texts = [
            ("device_id", &self.device_id),
            ("user_agent", &self.user_agent),
            ("referral", &self.referral),
        ];
        for (part, text) in texts {
            if text
                .as_deref()
                .is_some_and(|t| !printable(t, MAX_CONTEXT_TEXT_CHARS))
            {
                return bad(part);
            }
        }
        if self.attributes.len() > MAX_CONTEXT_ATTRIBUTES {
            return bad("attributes");
        }
        for (name, value) in &self.attributes {
            if !ascii_name(name) || !printable_or_empty(value, MAX_ATTRIBUTE_VALUE_CHARS) {
                return bad("attributes");
            }
        }
        Ok(())
    }

    /// The IP address masked: `203.0.113.*`, `2001:db8:85a3:*`.
    pub fn masked_ip(&self) -> Option<String> {
        self.client_ip.map(|ip| match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                format!("{a}.{b}.{c}.*")
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:*", s[0], s[1], s[2])
            }
        })
    }

    /// The device id masked: `***` and its last four characters (only `***` when it has eight
    /// or fewer).
    pub fn masked_device(&self) -> Option<String> {
        self.device_id.as_deref().map(|id| {
            let n = id.chars().count();
            if n <= 8 {
                "***".to_owned()
            } else {
                let tail: String = id.chars().skip(n - 4).collect();
                format!("***{tail}")
            }
        })
    }
}

impl fmt::Debug for OrderContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderContext")
            .field("channel", &self.channel)
            .field("client_ip", &self.masked_ip())
            .field("device_id", &self.masked_device())
            .field("user_agent", &self.user_agent)
            .field("referral", &self.referral)
            .field("attributes", &self.attributes)
            .finish()
    }
}

fn ascii_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ATTRIBUTE_NAME
        && name.bytes().all(|b| b.is_ascii_graphic())
}

fn printable(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && printable_or_empty(text, max)
}

fn printable_or_empty(text: &str, max: usize) -> bool {
    text.chars().count() <= max && !text.chars().any(char::is_control)
}
