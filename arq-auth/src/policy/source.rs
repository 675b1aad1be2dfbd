//! Where attribute values come from: the [`AttributeSource`] trait, which the principal, the
//! resource and the request implement, and the borrowed [`AttrValue`] they hand out.

use std::sync::Arc;

use crate::cel::{MapValue, Value};

/// Which entity an attribute belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Entity {
    /// The caller (`principal.*`).
    Principal,
    /// The thing acted on (`resource.*`).
    Resource,
    /// The request context (`request.*`).
    Request,
}

impl Entity {
    /// The variable name in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Principal => "principal",
            Entity::Resource => "resource",
            Entity::Request => "request",
        }
    }
    pub(crate) fn index(self) -> usize {
        match self {
            Entity::Principal => 0,
            Entity::Resource => 1,
            Entity::Request => 2,
        }
    }
}

/// The key of an attribute as declared in the schema: its name and its position among the
/// entity's declared attributes. Both are fixed when the policy set is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrKey<'s> {
    pub(crate) name: &'s str,
    pub(crate) index: u16,
}

impl<'s> AttrKey<'s> {
    /// The attribute's name (`department`).
    pub fn name(&self) -> &'s str {
        self.name
    }
    /// Its position among the entity's attributes in the schema, in declaration order.
    pub fn index(&self) -> usize {
        usize::from(self.index)
    }
}

/// A borrowed attribute value. Strings and lists are borrowed from the source: binding an
/// attribute never copies it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum AttrValue<'a> {
    /// `bool`.
    Bool(bool),
    /// `int`.
    Int(i64),
    /// `uint`.
    Uint(u64),
    /// `double`.
    Double(f64),
    /// `string`.
    Str(&'a str),
    /// `bytes`.
    Bytes(&'a [u8]),
    /// `list(string)` held as owned strings.
    StrList(&'a [String]),
    /// `list(string)` held as borrowed strings.
    StrRefs(&'a [&'a str]),
    /// `list(string)` held as shared strings.
    ArcStrList(&'a [Arc<str>]),
    /// `list(int)`.
    IntList(&'a [i64]),
    /// Any other value (maps, nested lists, timestamps, `dyn`), on the dynamic path.
    Value(&'a Value),
}

impl AttrValue<'_> {
    /// The value on the dynamic path (copies strings; used only where types are dynamic).
    pub fn to_value(&self) -> Value {
        match *self {
            AttrValue::Bool(b) => Value::Bool(b),
            AttrValue::Int(i) => Value::Int(i),
            AttrValue::Uint(u) => Value::Uint(u),
            AttrValue::Double(d) => Value::Double(d),
            AttrValue::Str(s) => Value::string(s),
            AttrValue::Bytes(b) => Value::Bytes(Arc::from(b)),
            AttrValue::StrList(l) => {
                Value::list(l.iter().map(|s| Value::string(s.as_str())).collect())
            }
            AttrValue::StrRefs(l) => Value::list(l.iter().map(|s| Value::string(*s)).collect()),
            AttrValue::ArcStrList(l) => {
                Value::list(l.iter().map(|s| Value::String(s.clone())).collect())
            }
            AttrValue::IntList(l) => Value::list(l.iter().map(|i| Value::Int(*i)).collect()),
            AttrValue::Value(v) => v.clone(),
        }
    }

    /// Number of elements when the value is a list.
    pub(crate) fn list_len(&self) -> Option<usize> {
        match self {
            AttrValue::StrList(l) => Some(l.len()),
            AttrValue::StrRefs(l) => Some(l.len()),
            AttrValue::ArcStrList(l) => Some(l.len()),
            AttrValue::IntList(l) => Some(l.len()),
            AttrValue::Value(Value::List(l)) => Some(l.len()),
            _ => None,
        }
    }
}

/// Something that has attributes: the principal, the resource or the request.
///
/// Implement it on your own types; the policy engine asks only for the attributes a policy uses,
/// at most once per decision each, and keeps what it gets borrowed.
///
/// # Example
///
/// ```
/// use arq_auth::policy::{AttrKey, AttrValue, AttributeSource};
///
/// struct User { department: String, cost_centers: Vec<String> }
///
/// impl AttributeSource for User {
///     fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
///         match key.name() {
///             "department" => Some(AttrValue::Str(&self.department)),
///             "costCenters" => Some(AttrValue::StrList(&self.cost_centers)),
///             _ => None,
///         }
///     }
/// }
/// ```
pub trait AttributeSource: Send + Sync {
    /// The value of an attribute declared in the schema, or `None` when it is absent (a policy
    /// reading an absent attribute fails to evaluate, and the decision is a deny).
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>>;

    /// An identifier for audit events (user id, resource id).
    fn entity_id(&self) -> Option<&str> {
        None
    }
}

/// An entity without attributes (for an empty request context, for instance).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAttributes;

impl AttributeSource for NoAttributes {
    fn attribute(&self, _: AttrKey<'_>) -> Option<AttrValue<'_>> {
        None
    }
}

/// Attributes held in a CEL map (used by policy test files and dynamic callers).
#[derive(Clone, Debug, Default)]
pub struct MapAttributes {
    id: Option<String>,
    map: MapValue,
}

impl MapAttributes {
    /// Attributes from a map of name → value.
    pub fn new(map: MapValue) -> Self {
        Self { id: None, map }
    }
    /// Sets the identifier used in audit events.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

impl AttributeSource for MapAttributes {
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
        match self.map.get_str(key.name())? {
            Value::Bool(b) => Some(AttrValue::Bool(*b)),
            Value::Int(i) => Some(AttrValue::Int(*i)),
            Value::Uint(u) => Some(AttrValue::Uint(*u)),
            Value::Double(d) => Some(AttrValue::Double(*d)),
            Value::String(s) => Some(AttrValue::Str(s)),
            Value::Bytes(b) => Some(AttrValue::Bytes(b)),
            v => Some(AttrValue::Value(v)),
        }
    }
    fn entity_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}
