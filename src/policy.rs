//! Cedar policies: which agent may run which tool, and which agent may see raw tokens of
//! which provider and scopes (SPEC §9).
//!
//! Every `*.cedar` file in `policies_dir` is parsed, its policies renamed `file.cedar#N`
//! (so a decision names the file it came from), and the whole set validated strictly
//! against `strongbox.cedarschema` from the same directory, or the built-in copy of the
//! contract's schema when the directory has none. No policy, no permit: default deny.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

/// The schema of SPEC §9, used when `policies_dir` has no `strongbox.cedarschema`.
pub const BUILTIN_SCHEMA: &str = include_str!("../policies/strongbox.cedarschema");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: the schema does not parse: {reason}")]
    Schema { path: String, reason: String },
    #[error("{path}: does not parse: {reason}")]
    Parse { path: String, reason: String },
    #[error("policies do not validate against the schema: {0}")]
    Invalid(String),
    #[error("cannot build the authorization request: {0}")]
    Request(String),
}

/// What is being asked.
#[derive(Debug, Clone)]
pub enum Action<'a> {
    RunTool {
        tool: &'a str,
        provider: &'a str,
        tool_scopes: &'a [String],
    },
    FetchCredential {
        provider: &'a str,
    },
}

/// The answer, with the policies that decided it (for the audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Ids of the policies that determined the decision (empty for the default deny).
    pub policies: Vec<String>,
    /// Evaluation errors, by policy id; any error makes the answer a deny.
    pub errors: Vec<String>,
}

/// A loaded, validated policy set.
pub struct Policies {
    schema: Schema,
    set: PolicySet,
    files: Vec<String>,
    authorizer: Authorizer,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("files", &self.files)
            .field("policies", &self.set.policies().count())
            .finish_non_exhaustive()
    }
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let t = EntityTypeName::from_str(kind).map_err(|e| PolicyError::Request(e.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

fn string_set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().cloned().map(RestrictedExpression::new_string))
}

impl Policies {
    /// Loads `dir/*.cedar` and validates them. A missing directory is an empty set.
    pub fn load(dir: &Path) -> Result<Policies, PolicyError> {
        let schema_path = dir.join("strongbox.cedarschema");
        let (schema_text, schema_name) = match std::fs::read_to_string(&schema_path) {
            Ok(text) => (text, schema_path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (BUILTIN_SCHEMA.to_owned(), "built-in schema".to_owned())
            }
            Err(e) => {
                return Err(PolicyError::Read {
                    path: schema_path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let mut files = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "cedar") {
                        files.push(path);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PolicyError::Read {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
        files.sort();
        let mut sources = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            sources.push((name, text));
        }
        Policies::from_sources(&schema_name, &schema_text, &sources)
    }

    /// Builds the set from `(file name, text)` pairs and a schema.
    pub fn from_sources(
        schema_name: &str,
        schema_text: &str,
        sources: &[(String, String)],
    ) -> Result<Policies, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(schema_text).map_err(|e| PolicyError::Schema {
                path: schema_name.to_owned(),
                reason: e.to_string(),
            })?;
        let mut set = PolicySet::new();
        for (name, text) in sources {
            let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
                path: name.clone(),
                reason: e.to_string(),
            })?;
            if parsed.templates().next().is_some() {
                return Err(PolicyError::Parse {
                    path: name.clone(),
                    reason: "templates are not supported".into(),
                });
            }
            for (i, policy) in parsed.policies().enumerate() {
                let renamed = policy.new_id(PolicyId::new(format!("{name}#{i}")));
                set.add(renamed).map_err(|e| PolicyError::Parse {
                    path: name.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        // Warnings count: an impossible policy (one that can never apply, such as a
        // principal of the wrong type) is a mistake the operator must hear about.
        if !result.validation_passed_without_warnings() {
            let errors: Vec<String> = result
                .validation_errors()
                .map(|e| format!("{}: {e}", e.policy_id()))
                .chain(
                    result
                        .validation_warnings()
                        .map(|w| format!("{}: {w}", w.policy_id())),
                )
                .collect();
            return Err(PolicyError::Invalid(errors.join("; ")));
        }
        Ok(Policies {
            schema,
            set,
            files: sources.iter().map(|(n, _)| n.clone()).collect(),
            authorizer: Authorizer::new(),
        })
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.set.policies().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policy files loaded, by name.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Decides whether `agent`, acting for `user`, may do `action` with `scopes`.
    pub fn decide(
        &self,
        agent: &str,
        user: &str,
        action: &Action<'_>,
        scopes: &[String],
    ) -> Result<Verdict, PolicyError> {
        // Debug builds (the tests) validate every request against the schema; release
        // builds skip it: the requests are built here to the schema's shape.
        let schema = cfg!(debug_assertions).then_some(&self.schema);
        self.decide_checked(agent, user, action, scopes, schema)
    }

    /// [`Policies::decide`], optionally validating the request and entities against the
    /// schema (the tests do; the service need not: it builds them to the schema's shape,
    /// and the policies were validated at load).
    fn decide_checked(
        &self,
        agent: &str,
        user: &str,
        action: &Action<'_>,
        scopes: &[String],
        schema: Option<&Schema>,
    ) -> Result<Verdict, PolicyError> {
        let principal = uid("Agent", agent)?;
        let user_uid = uid("User", user)?;
        let mut entities = vec![
            Entity::new_no_attrs(principal.clone(), HashSet::new()),
            Entity::new_no_attrs(user_uid.clone(), HashSet::new()),
        ];
        let (action_id, resource) = match action {
            Action::RunTool {
                tool,
                provider,
                tool_scopes,
            } => {
                let provider_uid = uid("Provider", provider)?;
                let tool_uid = uid("Tool", tool)?;
                let attrs = HashMap::from([
                    (
                        "provider".to_owned(),
                        RestrictedExpression::new_entity_uid(provider_uid.clone()),
                    ),
                    ("scopes".to_owned(), string_set(tool_scopes)),
                ]);
                entities.push(Entity::new_no_attrs(provider_uid, HashSet::new()));
                entities.push(
                    Entity::new(tool_uid.clone(), attrs, HashSet::new())
                        .map_err(|e| PolicyError::Request(e.to_string()))?,
                );
                ("run_tool", tool_uid)
            }
            Action::FetchCredential { provider } => {
                let provider_uid = uid("Provider", provider)?;
                entities.push(Entity::new_no_attrs(provider_uid.clone(), HashSet::new()));
                ("fetch_credential", provider_uid)
            }
        };
        let context = Context::from_pairs([
            (
                "user".to_owned(),
                RestrictedExpression::new_entity_uid(user_uid),
            ),
            ("scopes".to_owned(), string_set(scopes)),
        ])
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let request = Request::new(
            principal,
            uid("Action", action_id)?,
            resource,
            context,
            schema,
        )
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let entities = Entities::from_entities(entities, schema)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.set, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        // Cedar skips a policy whose evaluation errs, so a `forbid` that errs would let a
        // `permit` through. With the requests built to the built-in schema's shape that
        // cannot happen, but an operator's schema may declare attributes this service does
        // not supply (validated at load, never at a release build's decision): an error
        // is a deny.
        Ok(Verdict {
            allowed: response.decision() == Decision::Allow && errors.is_empty(),
            // A deny for errors has no determining policy: the permits that matched did
            // not decide it.
            policies: if errors.is_empty() {
                diagnostics.reason().map(ToString::to_string).collect()
            } else {
                Vec::new()
            },
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
permit(principal == Agent::"chat-backend", action == Action::"run_tool", resource)
  when { resource.provider == Provider::"spotify" };
permit(principal == Agent::"chat-backend", action == Action::"fetch_credential",
       resource == Provider::"spotify")
  when { ["user-read-private", "user-read-email"].containsAll(context.scopes) };
"#;

    fn example() -> Policies {
        Policies::from_sources(
            "built-in",
            BUILTIN_SCHEMA,
            &[("example.cedar".into(), EXAMPLE.into())],
        )
        .unwrap()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_spec_example_decides_as_written() {
        let p = example();
        let tool_scopes = s(&["user-read-private"]);
        let run = |agent: &str, provider: &str| {
            p.decide(
                agent,
                "u1",
                &Action::RunTool {
                    tool: "spotify.me",
                    provider,
                    tool_scopes: &tool_scopes,
                },
                &tool_scopes,
            )
            .unwrap()
        };
        let yes = run("chat-backend", "spotify");
        assert!(yes.allowed);
        assert_eq!(yes.policies, vec!["example.cedar#0".to_owned()]);
        assert!(!run("chat-backend", "google").allowed);
        assert!(!run("other-agent", "spotify").allowed);

        let fetch = |scopes: &[&str]| {
            p.decide(
                "chat-backend",
                "u1",
                &Action::FetchCredential {
                    provider: "spotify",
                },
                &s(scopes),
            )
            .unwrap()
            .allowed
        };
        assert!(fetch(&["user-read-private"]));
        assert!(fetch(&["user-read-private", "user-read-email"]));
        assert!(!fetch(&["user-read-private", "playlist-modify-public"]));
    }

    #[test]
    fn the_shipped_example_validates_and_its_forbid_wins() {
        let p = Policies::from_sources(
            "built-in",
            BUILTIN_SCHEMA,
            &[(
                "chat-backend.cedar".into(),
                include_str!("../policies/examples/chat-backend.cedar").into(),
            )],
        )
        .unwrap();
        assert_eq!(p.len(), 3);
        let writes = s(&["https://www.googleapis.com/auth/calendar"]);
        let v = p
            .decide(
                "chat-backend",
                "u",
                &Action::RunTool {
                    tool: "google.calendar.write",
                    provider: "spotify",
                    tool_scopes: &writes,
                },
                &writes,
            )
            .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.policies, vec!["chat-backend.cedar#2".to_owned()]);
    }

    #[test]
    fn requests_conform_to_the_schema() {
        let p = example();
        let scopes = s(&["user-read-private"]);
        for action in [
            Action::RunTool {
                tool: "spotify.me",
                provider: "spotify",
                tool_scopes: &scopes,
            },
            Action::FetchCredential {
                provider: "spotify",
            },
        ] {
            let checked = p
                .decide_checked("chat-backend", "u1", &action, &scopes, Some(&p.schema))
                .unwrap();
            assert_eq!(
                checked,
                p.decide("chat-backend", "u1", &action, &scopes).unwrap()
            );
        }
    }

    #[test]
    fn an_evaluation_error_denies_even_unvalidated() {
        // An operator's schema gives agents a team the service does not supply: the
        // policies validate at load, and the forbid errs on every request. A release
        // build decides without validating the request, as `decide_checked(.., None)`.
        let schema = BUILTIN_SCHEMA.replace("entity Agent;", "entity Agent { team: String };");
        let policy = r#"
permit(principal, action == Action::"fetch_credential", resource);
forbid(principal, action == Action::"fetch_credential", resource)
  when { principal.team == "contractors" };
"#;
        let p = Policies::from_sources("operator", &schema, &[("ops.cedar".into(), policy.into())])
            .unwrap();
        let v = p
            .decide_checked(
                "a",
                "u",
                &Action::FetchCredential { provider: "github" },
                &[],
                None,
            )
            .unwrap();
        assert!(!v.errors.is_empty(), "{v:?}");
        assert!(!v.allowed, "an erring forbid let the permit through: {v:?}");
        assert!(
            v.policies.is_empty(),
            "the permit did not decide this deny: {v:?}"
        );
    }

    #[test]
    fn no_policies_deny_everything() {
        let p = Policies::from_sources("built-in", BUILTIN_SCHEMA, &[]).unwrap();
        let v = p
            .decide(
                "a",
                "u",
                &Action::FetchCredential { provider: "github" },
                &[],
            )
            .unwrap();
        assert!(!v.allowed && v.policies.is_empty());
    }

    #[test]
    fn policies_that_do_not_fit_the_schema_are_refused() {
        for (bad, why) in [
            (
                r#"permit(principal == User::"x", action == Action::"run_tool", resource);"#,
                "validate",
            ),
            (
                r#"permit(principal, action == Action::"run_tool", resource) when { resource.colour == "red" };"#,
                "validate",
            ),
            (r#"permit(principal, action, resource"#, "parse"),
        ] {
            let err =
                Policies::from_sources("s", BUILTIN_SCHEMA, &[("bad.cedar".into(), bad.into())])
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains(why) || err.contains("bad.cedar"),
                "{bad}: {err}"
            );
        }
    }
}
