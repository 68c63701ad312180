//! API key scopes: what a key may do inside its sandbox. Managing campaigns and executing them
//! are separate so that the key a client system embeds cannot change what gets sent; managing
//! keys is separate again, and a key can only hand out (or rotate) scopes it holds itself.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    CampaignsRead,
    CampaignsWrite,
    ProfilesRead,
    ProfilesWrite,
    ExecutionsWrite,
    ExecutionsRead,
    /// List, create, revoke and rotate the sandbox's keys (`/api-keys`).
    KeysAdmin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::CampaignsRead,
        Scope::CampaignsWrite,
        Scope::ProfilesRead,
        Scope::ProfilesWrite,
        Scope::ExecutionsWrite,
        Scope::ExecutionsRead,
        Scope::KeysAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::CampaignsRead => "campaigns:read",
            Scope::CampaignsWrite => "campaigns:write",
            Scope::ProfilesRead => "profiles:read",
            Scope::ProfilesWrite => "profiles:write",
            Scope::ExecutionsWrite => "executions:write",
            Scope::ExecutionsRead => "executions:read",
            Scope::KeysAdmin => "keys:admin",
        }
    }

    /// The scopes of `wanted` that `held` lacks, in order: what a key would gain by granting them.
    pub fn missing_from(wanted: &[Scope], held: &[Scope]) -> Vec<Scope> {
        let mut missing: Vec<Scope> = wanted.iter().copied().filter(|scope| !held.contains(scope)).collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Parses a comma-separated list; `all` stands for every scope.
    pub fn parse_list(list: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = Vec::new();
        for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            if item == "all" {
                scopes.extend(Scope::ALL);
            } else {
                scopes.push(item.parse()?);
            }
        }
        if scopes.is_empty() {
            return Err("at least one scope is required".into());
        }
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
            format!("unknown scope `{s}`; known scopes: all, {}", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_parse_with_all_as_a_shorthand() {
        assert_eq!(Scope::parse_list("executions:write").unwrap(), [Scope::ExecutionsWrite]);
        assert_eq!(Scope::parse_list("all,campaigns:read").unwrap(), Scope::ALL);
        assert!(Scope::parse_list("campaigns:delete").unwrap_err().contains("unknown scope"));
        assert!(Scope::parse_list(" , ").is_err());
        assert!(Scope::parse_list("all").unwrap().contains(&Scope::KeysAdmin));
        assert_eq!(Scope::parse_list("keys:admin").unwrap(), [Scope::KeysAdmin]);
    }

    #[test]
    fn missing_scopes_are_those_wanted_but_not_held() {
        let held = [Scope::CampaignsRead, Scope::KeysAdmin];
        assert_eq!(Scope::missing_from(&[Scope::CampaignsRead], &held), []);
        assert_eq!(
            Scope::missing_from(&[Scope::ExecutionsWrite, Scope::CampaignsRead, Scope::ExecutionsWrite], &held),
            [Scope::ExecutionsWrite]
        );
        assert_eq!(Scope::missing_from(&Scope::ALL, &Scope::ALL), []);
    }
}
