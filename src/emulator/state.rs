//! The data model: every record the emulator keeps, the id allocator, and how records render as
//! Zendesk JSON. Handlers in the sibling modules change a [`Store`]; nothing here knows HTTP.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::clock::Clock;
use super::errors::Reply;
use super::jobs::Jobs;
use super::table::{Record, Table};

/// The kinds of numeric id the emulator hands out. Each kind counts on its own from a base that
/// looks like a real Zendesk id, so runs with the same inputs get the same ids.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    User,
    Organization,
    Membership,
    Ticket,
    Identity,
    Field,
    Comment,
    Audit,
}

impl Kind {
    fn base(self) -> u64 {
        match self {
            Kind::User => 9_000_000_000_001,
            Kind::Organization => 9_100_000_000_001,
            Kind::Membership => 9_200_000_000_001,
            // Ticket ids are small account-wide sequence numbers in Zendesk.
            Kind::Ticket => 1,
            Kind::Identity => 9_300_000_000_001,
            Kind::Field => 9_400_000_000_001,
            Kind::Comment => 9_500_000_000_001,
            Kind::Audit => 9_600_000_000_001,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Ids {
    next: [u64; 8],
}

impl Ids {
    fn new() -> Ids {
        let kinds = [
            Kind::User,
            Kind::Organization,
            Kind::Membership,
            Kind::Ticket,
            Kind::Identity,
            Kind::Field,
            Kind::Comment,
            Kind::Audit,
        ];
        let mut next = [0; 8];
        for k in kinds {
            next[k.index()] = k.base();
        }
        Ids { next }
    }

    pub(crate) fn next(&mut self, kind: Kind) -> u64 {
        let id = self.next[kind.index()];
        self.next[kind.index()] += 1;
        id
    }

    /// Makes sure a seeded explicit id is never handed out again.
    pub(crate) fn observe(&mut self, kind: Kind, id: u64) {
        let slot = &mut self.next[kind.index()];
        if id >= *slot {
            *slot = id + 1;
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub id: u64,
    pub kind: String,
    pub value: String,
    pub verified: bool,
    pub primary: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub id: u64,
    pub name: String,
    pub external_id: Option<String>,
    pub phone: Option<String>,
    pub role: String,
    pub verified: bool,
    pub time_zone: String,
    pub locale: String,
    pub tags: Vec<String>,
    pub notes: String,
    pub details: String,
    pub alias: String,
    pub user_fields: Map<String, Value>,
    pub identities: Vec<Identity>,
    pub created_at: String,
    pub updated_at: String,
}

impl User {
    /// The primary email (the primary email identity, else the first email identity).
    pub(crate) fn email(&self) -> Option<&str> {
        let emails = || self.identities.iter().filter(|i| i.kind == "email");
        emails()
            .find(|i| i.primary)
            .or_else(|| emails().next())
            .map(|i| i.value.as_str())
    }

    pub(crate) fn has_email(&self, email: &str) -> bool {
        self.identities
            .iter()
            .any(|i| i.kind == "email" && i.value.eq_ignore_ascii_case(email))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Organization {
    pub id: u64,
    pub name: String,
    pub external_id: Option<String>,
    pub domain_names: Vec<String>,
    pub tags: Vec<String>,
    pub details: Option<String>,
    pub notes: Option<String>,
    pub group_id: Option<u64>,
    pub shared_tickets: bool,
    pub shared_comments: bool,
    pub organization_fields: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Membership {
    pub id: u64,
    pub user_id: u64,
    pub organization_id: u64,
    pub default: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Comment {
    pub id: u64,
    pub author_id: u64,
    pub body: String,
    pub html_body: Option<String>,
    pub public: bool,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub id: u64,
    pub external_id: Option<String>,
    pub subject: Option<String>,
    pub description: String,
    pub priority: Option<String>,
    pub status: String,
    pub kind: Option<String>,
    pub requester_id: u64,
    pub submitter_id: u64,
    pub assignee_id: Option<u64>,
    pub organization_id: Option<u64>,
    pub group_id: Option<u64>,
    pub tags: Vec<String>,
    pub custom_fields: Vec<Value>,
    pub due_at: Option<String>,
    pub comments: Vec<Comment>,
    pub audits: Vec<Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// A custom user field or organization field definition.
#[derive(Debug, Clone)]
pub(crate) struct FieldDef {
    pub id: u64,
    pub key: String,
    pub kind: String,
    pub title: String,
    pub description: String,
    pub position: u64,
    pub active: bool,
    pub regexp_for_validation: Option<String>,
    pub custom_field_options: Vec<Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// A Sunshine profile: the link between a source/type pair and a Zendesk user.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub id: String,
    pub user_id: u64,
    pub source: String,
    pub kind: String,
    pub name: Option<String>,
    pub identifiers: Vec<Value>,
}

/// One tracked event, as stored and as `GET users/{id}/events` shows it.
#[derive(Debug, Clone)]
pub(crate) struct UserEvent {
    pub id: String,
    pub user_id: u64,
    pub profile_id: String,
    pub source: String,
    pub kind: String,
    pub description: Option<String>,
    pub properties: Value,
    pub created_at: String,
    pub received_at: String,
}

/// A remembered ticket creation for `Idempotency-Key`.
#[derive(Debug, Clone)]
pub(crate) struct IdempotentEntry {
    pub request_body: Value,
    pub reply: Reply,
    pub stored_at_secs: u64,
}

/// What users are found by: each email identity and the external id, lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum UserKey {
    Email(String),
    ExternalId(String),
}

impl Record for User {
    type Key = UserKey;

    fn id(&self) -> u64 {
        self.id
    }

    fn keys(&self) -> Vec<UserKey> {
        let emails = self
            .identities
            .iter()
            .filter(|i| i.kind == "email")
            .map(|i| UserKey::Email(i.value.to_lowercase()));
        let external = self
            .external_id
            .iter()
            .map(|e| UserKey::ExternalId(e.to_lowercase()));
        emails.chain(external).collect()
    }
}

/// What organizations are found by: the external id and the name (trimmed), lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum OrgKey {
    ExternalId(String),
    Name(String),
}

impl Record for Organization {
    type Key = OrgKey;

    fn id(&self) -> u64 {
        self.id
    }

    fn keys(&self) -> Vec<OrgKey> {
        let mut keys = vec![OrgKey::Name(self.name.trim().to_lowercase())];
        keys.extend(
            self.external_id
                .iter()
                .map(|e| OrgKey::ExternalId(e.to_lowercase())),
        );
        keys
    }
}

/// What memberships are found by: their user and their organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum MembershipKey {
    User(u64),
    Organization(u64),
}

impl Record for Membership {
    type Key = MembershipKey;

    fn id(&self) -> u64 {
        self.id
    }

    fn keys(&self) -> Vec<MembershipKey> {
        vec![
            MembershipKey::User(self.user_id),
            MembershipKey::Organization(self.organization_id),
        ]
    }
}

/// What tickets are found by: the external id (lowercased; not unique) and the requester.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TicketKey {
    ExternalId(String),
    Requester(u64),
}

impl Record for Ticket {
    type Key = TicketKey;

    fn id(&self) -> u64 {
        self.id
    }

    fn keys(&self) -> Vec<TicketKey> {
        let mut keys = vec![TicketKey::Requester(self.requester_id)];
        keys.extend(
            self.external_id
                .iter()
                .map(|e| TicketKey::ExternalId(e.to_lowercase())),
        );
        keys
    }
}

/// Everything the emulator knows about the account.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    /// `https://{subdomain}.zendesk.com`, the prefix of every `url` field.
    pub base_url: String,
    pub ids: Ids,
    rng: StdRng,
    pub users: Table<User>,
    pub organizations: Table<Organization>,
    pub memberships: Table<Membership>,
    pub tickets: Table<Ticket>,
    pub user_fields: Vec<FieldDef>,
    pub organization_fields: Vec<FieldDef>,
    pub profiles: Vec<Profile>,
    /// (user, source, type) → position in `profiles`.
    pub profile_index: HashMap<(u64, String, String), usize>,
    pub events: Vec<UserEvent>,
    pub jobs: Jobs,
    pub idempotency: IdempotencyKeys,
    pub clock: Clock,
}

/// Remembered ticket creations by `Idempotency-Key`, forgotten oldest first once they are older
/// than the time Zendesk keeps them.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdempotencyKeys {
    entries: HashMap<String, IdempotentEntry>,
    /// Keys in the order they were stored (the order they expire in).
    stored: VecDeque<(u64, String)>,
}

impl IdempotencyKeys {
    /// Forgets the keys stored `ttl_secs` or longer before `now_secs`.
    pub(crate) fn expire(&mut self, now_secs: u64, ttl_secs: u64) {
        while let Some((at, _)) = self.stored.front()
            && now_secs.saturating_sub(*at) >= ttl_secs
        {
            if let Some((at, key)) = self.stored.pop_front()
                && self
                    .entries
                    .get(&key)
                    .is_some_and(|e| e.stored_at_secs == at)
            {
                self.entries.remove(&key);
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&IdempotentEntry> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&mut self, key: String, entry: IdempotentEntry) {
        self.stored.push_back((entry.stored_at_secs, key.clone()));
        self.entries.insert(key, entry);
    }
}

impl Store {
    pub(crate) fn new(subdomain: &str, seed: u64, clock: Clock) -> Store {
        Store {
            base_url: format!("https://{subdomain}.zendesk.com"),
            ids: Ids::new(),
            rng: StdRng::seed_from_u64(seed),
            users: Table::default(),
            organizations: Table::default(),
            memberships: Table::default(),
            tickets: Table::default(),
            user_fields: Vec::new(),
            organization_fields: Vec::new(),
            profiles: Vec::new(),
            profile_index: HashMap::new(),
            events: Vec::new(),
            jobs: Jobs::default(),
            idempotency: IdempotencyKeys::default(),
            clock,
        }
    }

    pub(crate) fn now(&self) -> String {
        self.clock.iso_now()
    }

    pub(crate) fn url(&self, resource: &str, id: impl std::fmt::Display) -> String {
        format!("{}/api/v2/{resource}/{id}.json", self.base_url)
    }

    /// A 32-hex-digit id, as job statuses have (deterministic under the seed).
    pub(crate) fn hex_id(&mut self) -> String {
        format!(
            "{:016x}{:016x}",
            self.rng.random::<u64>(),
            self.rng.random::<u64>()
        )
    }

    /// A 26-character ULID-like id, as Sunshine profiles and events have.
    pub(crate) fn ulid(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        (0..26)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }

    // ---- lookups shared by several modules ----

    pub(crate) fn user_by_email(&self, email: &str) -> Option<u64> {
        self.users
            .first(&UserKey::Email(email.trim().to_lowercase()))
    }

    pub(crate) fn user_by_external_id(&self, external_id: &str) -> Option<u64> {
        self.users
            .first(&UserKey::ExternalId(external_id.to_lowercase()))
    }

    pub(crate) fn org_by_external_id(&self, external_id: &str) -> Option<u64> {
        self.organizations
            .first(&OrgKey::ExternalId(external_id.to_lowercase()))
    }

    pub(crate) fn org_by_name(&self, name: &str) -> Option<u64> {
        self.organizations
            .first(&OrgKey::Name(name.trim().to_lowercase()))
    }

    /// The user's memberships in id order.
    pub(crate) fn memberships_by_user(&self, user_id: u64) -> impl Iterator<Item = &Membership> {
        self.memberships.find(&MembershipKey::User(user_id))
    }

    /// The membership of `user_id` in `org_id`, if any.
    pub(crate) fn membership_of(&self, user_id: u64, org_id: u64) -> Option<u64> {
        self.memberships_by_user(user_id)
            .find(|m| m.organization_id == org_id)
            .map(|m| m.id)
    }

    /// The user's memberships, default first, then by organization name.
    pub(crate) fn memberships_of_user(&self, user_id: u64) -> Vec<&Membership> {
        let mut list: Vec<&Membership> = self.memberships_by_user(user_id).collect();
        list.sort_by_key(|m| {
            let name = self
                .organizations
                .get(&m.organization_id)
                .map(|o| o.name.to_lowercase());
            (!m.default, name, m.id)
        });
        list
    }

    pub(crate) fn default_org_of(&self, user_id: u64) -> Option<u64> {
        self.memberships_by_user(user_id)
            .find(|m| m.default)
            .map(|m| m.organization_id)
    }

    /// Whether every table's index agrees with its records (and the profile index with the
    /// profiles): for tests.
    #[cfg(test)]
    pub(crate) fn indexes_agree(&self) -> bool {
        let profiles_agree = self.profile_index.len() == self.profiles.len()
            && self.profiles.iter().enumerate().all(|(i, p)| {
                self.profile_index
                    .get(&(p.user_id, p.source.clone(), p.kind.clone()))
                    == Some(&i)
            });
        self.users.index_agrees()
            && self.organizations.index_agrees()
            && self.memberships.index_agrees()
            && self.tickets.index_agrees()
            && profiles_agree
    }

    // ---- rendering ----

    pub(crate) fn render_user(&self, u: &User) -> Value {
        let mut user_fields = Map::new();
        for f in &self.user_fields {
            user_fields.insert(
                f.key.clone(),
                u.user_fields.get(&f.key).cloned().unwrap_or(Value::Null),
            );
        }
        let mut v = json!({
            "id": u.id,
            "url": self.url("users", u.id),
            "name": u.name,
            "email": u.email(),
            "created_at": u.created_at,
            "updated_at": u.updated_at,
            "time_zone": u.time_zone,
            "iana_time_zone": iana_zone(&u.time_zone),
            "phone": u.phone,
            "shared_phone_number": u.phone.as_ref().map(|_| false),
            "photo": null,
            "locale_id": 1,
            "locale": u.locale,
            "organization_id": self.default_org_of(u.id),
            "role": u.role,
            "verified": u.verified,
            "external_id": u.external_id,
            "tags": u.tags,
            "alias": u.alias,
            "active": true,
            "shared": false,
            "shared_agent": false,
            "two_factor_auth_enabled": null,
            "details": u.details,
            "notes": u.notes,
            "role_type": null,
            "custom_role_id": null,
            "moderator": false,
            "ticket_restriction": if u.role == "end-user" { json!("requested") } else { Value::Null },
            "only_private_comments": false,
            "restricted_agent": u.role == "end-user",
            "suspended": false,
            "report_csv": false,
            "user_fields": user_fields,
        });
        if u.email().is_none()
            && let Some(m) = v.as_object_mut()
        {
            // Zendesk sends null here; the OAS types email as a plain string, so leave it out.
            m.remove("email");
        }
        v
    }

    pub(crate) fn render_identity(&self, user_id: u64, i: &Identity) -> Value {
        json!({
            "id": i.id,
            "url": self.url(&format!("users/{user_id}/identities"), i.id),
            "user_id": user_id,
            "type": i.kind,
            "value": i.value,
            "verified": i.verified,
            "primary": i.primary,
            "verification_method": if i.verified { "low" } else { "none" },
            "deliverable_state": "deliverable",
            "undeliverable_count": 0,
            "created_at": i.created_at,
            "updated_at": i.updated_at,
        })
    }

    pub(crate) fn render_org(&self, o: &Organization) -> Value {
        let mut fields = Map::new();
        for f in &self.organization_fields {
            fields.insert(
                f.key.clone(),
                o.organization_fields
                    .get(&f.key)
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        json!({
            "id": o.id,
            "url": self.url("organizations", o.id),
            "name": o.name,
            "shared_tickets": o.shared_tickets,
            "shared_comments": o.shared_comments,
            "external_id": o.external_id,
            "created_at": o.created_at,
            "updated_at": o.updated_at,
            "domain_names": o.domain_names,
            "details": o.details,
            "notes": o.notes,
            "group_id": o.group_id,
            "tags": o.tags,
            "organization_fields": fields,
        })
    }

    pub(crate) fn render_membership(&self, m: &Membership) -> Value {
        let mut v = json!({
            "id": m.id,
            "url": self.url("organization_memberships", m.id),
            "user_id": m.user_id,
            "organization_id": m.organization_id,
            // Zendesk: "If false, returns null".
            "default": if m.default { json!(true) } else { Value::Null },
            "view_tickets": true,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        });
        if let (Some(o), Some(map)) = (
            self.organizations.get(&m.organization_id),
            v.as_object_mut(),
        ) {
            map.insert("organization_name".into(), json!(o.name));
        }
        v
    }

    pub(crate) fn render_ticket(&self, t: &Ticket) -> Value {
        let mut v = Map::new();
        let mut put = |k: &str, val: Value| {
            v.insert(k.to_string(), val);
        };
        put("id", json!(t.id));
        put("url", json!(self.url("tickets", t.id)));
        put(
            "via",
            json!({"channel": "api", "source": {"from": {}, "to": {}, "rel": null}}),
        );
        put("created_at", json!(t.created_at));
        put("updated_at", json!(t.updated_at));
        put("generated_timestamp", json!(self.clock.unix_secs()));
        put("subject", json!(t.subject.clone().unwrap_or_default()));
        put("raw_subject", json!(t.subject.clone().unwrap_or_default()));
        put("description", json!(t.description));
        put("status", json!(t.status));
        put("requester_id", json!(t.requester_id));
        put("submitter_id", json!(t.submitter_id));
        put("collaborator_ids", json!([]));
        put("follower_ids", json!([]));
        put("email_cc_ids", json!([]));
        put("has_incidents", json!(false));
        put(
            "is_public",
            json!(t.comments.first().is_none_or(|c| c.public)),
        );
        put("due_at", json!(t.due_at));
        put("tags", json!(t.tags));
        put("custom_fields", json!(t.custom_fields));
        put("sharing_agreement_ids", json!([]));
        put("followup_ids", json!([]));
        put("allow_channelback", json!(false));
        put("allow_attachments", json!(true));
        put("from_messaging_channel", json!(false));
        // Zendesk sends null for these when unset; the OAS types them as non-nullable, so
        // they are left out instead.
        let optional = [
            ("external_id", t.external_id.as_ref().map(|s| json!(s))),
            ("type", t.kind.as_ref().map(|s| json!(s))),
            ("priority", t.priority.as_ref().map(|s| json!(s))),
            ("assignee_id", t.assignee_id.map(|i| json!(i))),
            ("organization_id", t.organization_id.map(|i| json!(i))),
            ("group_id", t.group_id.map(|i| json!(i))),
        ];
        for (k, val) in optional {
            if let Some(val) = val {
                v.insert(k.to_string(), val);
            }
        }
        Value::Object(v)
    }

    pub(crate) fn render_comment(&self, c: &Comment) -> Value {
        json!({
            "id": c.id,
            "type": "Comment",
            "author_id": c.author_id,
            "body": c.body,
            "html_body": c.html_body.clone().unwrap_or_else(|| format!("<div class=\"zd-comment\"><p>{}</p></div>", html_escape(&c.body))),
            "plain_body": c.body,
            "public": c.public,
            "attachments": [],
            "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}},
            "created_at": c.created_at,
        })
    }

    pub(crate) fn render_field(&self, resource: &str, f: &FieldDef) -> Value {
        json!({
            "id": f.id,
            "url": self.url(resource, f.id),
            "key": f.key,
            "type": f.kind,
            "title": f.title,
            "raw_title": f.title,
            "description": f.description,
            "raw_description": f.description,
            "position": f.position,
            "active": f.active,
            "system": false,
            "regexp_for_validation": f.regexp_for_validation,
            "custom_field_options": f.custom_field_options,
            "created_at": f.created_at,
            "updated_at": f.updated_at,
        })
    }

    pub(crate) fn render_event(&self, e: &UserEvent) -> Value {
        json!({
            "id": e.id,
            "user_id": e.user_id.to_string(),
            "profile_id": e.profile_id,
            "source": e.source,
            "type": e.kind,
            "description": e.description,
            "properties": e.properties,
            "created_at": e.created_at,
            "received_at": e.received_at,
        })
    }

    pub(crate) fn render_profile(&self, p: &Profile) -> Value {
        json!({
            "id": p.id,
            "user_id": p.user_id.to_string(),
            "source": p.source,
            "type": p.kind,
            "name": p.name,
            "identifiers": p.identifiers,
        })
    }
}

/// A rough Rails-zone → IANA mapping for the zones people commonly send; others pass through.
fn iana_zone(rails: &str) -> String {
    match rails {
        "Eastern Time (US & Canada)" => "America/New_York",
        "Central Time (US & Canada)" => "America/Chicago",
        "Mountain Time (US & Canada)" => "America/Denver",
        "Pacific Time (US & Canada)" => "America/Los_Angeles",
        "Copenhagen" => "Europe/Copenhagen",
        "London" => "Europe/London",
        "Berlin" => "Europe/Berlin",
        "Paris" => "Europe/Paris",
        "UTC" => "Etc/UTC",
        other => other,
    }
    .to_string()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Reads an optional string member (`null` and absent are both `None`; numbers are stringified,
/// since senders often pass ids as numbers).
pub(crate) fn opt_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads an optional id member given as a number or a numeric string.
pub(crate) fn opt_id(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    match obj.get(key) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a list of strings (tags, domain names); a single string is split on spaces and commas,
/// as Zendesk does for tags.
pub(crate) fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s
            .split([' ', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}
