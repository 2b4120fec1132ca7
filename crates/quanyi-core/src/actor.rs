//! Who runs an operator command.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::IdError;

/// The longest actor name, in characters.
pub const MAX_ACTOR_NAME: usize = 64;

/// The longest role, in bytes.
pub const MAX_ROLE: usize = 32;

/// Who runs an operator command, and in which role: every operator command takes one, and its
/// audit record names it. The name is the host's own identity of the person or service (1 to
/// [`MAX_ACTOR_NAME`] printable characters); the role is 1 to [`MAX_ROLE`] of `a-z`, `0-9`,
/// `_` and `-` (for example `support`, `finance`, `stock`, `admin`). Shown as `role:name`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ActorParts", into = "ActorParts")]
pub struct Actor {
    name: Arc<str>,
    role: Arc<str>,
}

#[derive(Serialize, Deserialize)]
struct ActorParts {
    name: String,
    role: String,
}

impl TryFrom<ActorParts> for Actor {
    type Error = IdError;
    fn try_from(p: ActorParts) -> Result<Self, IdError> {
        Actor::new(p.name, p.role)
    }
}

impl From<Actor> for ActorParts {
    fn from(a: Actor) -> Self {
        ActorParts {
            name: a.name.to_string(),
            role: a.role.to_string(),
        }
    }
}

impl Actor {
    /// An actor named `name` in `role`.
    ///
    /// # Errors
    /// [`IdError`] when the name or the role is malformed.
    pub fn new(name: impl Into<String>, role: impl Into<String>) -> Result<Actor, IdError> {
        let (name, role) = (name.into(), role.into());
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_ACTOR_NAME || name.chars().any(char::is_control) {
            return Err(IdError::new("actor name", &name));
        }
        if name.trim() != name {
            return Err(IdError::new("actor name", &name));
        }
        if role.is_empty()
            || role.len() > MAX_ROLE
            || !role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(IdError::new("actor role", &role));
        }
        Ok(Actor {
            name: Arc::from(name),
            role: Arc::from(role),
        })
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The actor's role.
    pub fn role(&self) -> &str {
        &self.role
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actor({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_need_a_name_and_a_role_of_their_form() {
        let a = Actor::new("王小明", "support").unwrap();
        assert_eq!(a.to_string(), "support:王小明");
        assert_eq!((a.name(), a.role()), ("王小明", "support"));
        for (name, role) in [
            ("", "support"),
            (" padded", "support"),
            ("bell\u{7}", "support"),
            (&"n".repeat(MAX_ACTOR_NAME + 1), "support"),
            ("ann", ""),
            ("ann", "Support"),
            ("ann", "sup port"),
            ("ann", &"r".repeat(MAX_ROLE + 1)),
        ] {
            let err = Actor::new(name, role).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Invalid, "{name:?} {role:?}");
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Actor>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Actor>(r#"{"name":"","role":"x"}"#).is_err());
    }
}
