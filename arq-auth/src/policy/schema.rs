//! The attribute schema of a policy file: what `principal`, `resource` and `request` carry,
//! with types and, for lists and maps, a maximum size (which bounds the static cost estimate).

use std::fmt;

use crate::cel::Type;

use super::source::Entity;

/// The declared type of an attribute.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AttrType {
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `uint`.
    Uint,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `bytes`.
    Bytes,
    /// `timestamp`.
    Timestamp,
    /// `duration`.
    Duration,
    /// `dyn`: any value, checked at run time.
    Dyn,
    /// `list(T)` with at most `max_size` elements.
    List {
        /// Element type.
        elem: Box<AttrType>,
        /// Largest accepted length.
        max_size: usize,
    },
    /// `map(string, T)` with at most `max_size` entries.
    Map {
        /// Value type.
        value: Box<AttrType>,
        /// Largest accepted number of entries.
        max_size: usize,
    },
}

impl AttrType {
    /// Parses `string`, `list(string)`, `map(string, int)`, …; `max_size` applies to the
    /// outermost list or map and is required for them.
    ///
    /// # Errors
    /// A message saying what is wrong with the type.
    pub fn parse(s: &str, max_size: Option<usize>) -> Result<AttrType, String> {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix("list(").and_then(|r| r.strip_suffix(')')) {
            let max_size = max_size.ok_or_else(|| {
                format!(
                    "list attribute of type {s} needs a max_size (it bounds the cost of policies)"
                )
            })?;
            return Ok(AttrType::List {
                elem: Box::new(AttrType::parse(inner, Some(max_size))?),
                max_size,
            });
        }
        if let Some(inner) = s.strip_prefix("map(").and_then(|r| r.strip_suffix(')')) {
            let max_size =
                max_size.ok_or_else(|| format!("map attribute of type {s} needs a max_size"))?;
            let (k, v) = inner
                .split_once(',')
                .ok_or_else(|| format!("map type {s} needs a key and a value type"))?;
            if k.trim() != "string" {
                return Err(format!(
                    "map attributes need string keys, found {}",
                    k.trim()
                ));
            }
            return Ok(AttrType::Map {
                value: Box::new(AttrType::parse(v, Some(max_size))?),
                max_size,
            });
        }
        Ok(match s {
            "bool" => AttrType::Bool,
            "int" => AttrType::Int,
            "uint" => AttrType::Uint,
            "double" => AttrType::Double,
            "string" => AttrType::String,
            "bytes" => AttrType::Bytes,
            "timestamp" => AttrType::Timestamp,
            "duration" => AttrType::Duration,
            "dyn" => AttrType::Dyn,
            other => {
                return Err(format!(
                    "unknown attribute type '{other}' (use bool, int, uint, double, string, bytes, timestamp, duration, dyn, list(T) or map(string, T))"
                ));
            }
        })
    }

    /// The checker type.
    pub fn cel_type(&self) -> Type {
        match self {
            AttrType::Bool => Type::Bool,
            AttrType::Int => Type::Int,
            AttrType::Uint => Type::Uint,
            AttrType::Double => Type::Double,
            AttrType::String => Type::String,
            AttrType::Bytes => Type::Bytes,
            AttrType::Timestamp => Type::Timestamp,
            AttrType::Duration => Type::Duration,
            AttrType::Dyn => Type::Dyn,
            AttrType::List { elem, .. } => Type::list(elem.cel_type()),
            AttrType::Map { value, .. } => Type::map(Type::String, value.cel_type()),
        }
    }

    /// The declared bound for lists and maps.
    pub fn max_size(&self) -> Option<usize> {
        match self {
            AttrType::List { max_size, .. } | AttrType::Map { max_size, .. } => Some(*max_size),
            _ => None,
        }
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cel_type())
    }
}

/// The declared attributes of the three entities, in declaration order.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub(crate) entities: [Vec<(String, AttrType)>; 3],
}

impl Schema {
    /// The declared attributes of an entity, in declaration order.
    pub fn attributes(&self, entity: Entity) -> &[(String, AttrType)] {
        &self.entities[entity.index()]
    }

    /// Declares an attribute (used when building a schema in code).
    pub fn declare(&mut self, entity: Entity, name: &str, ty: AttrType) {
        self.entities[entity.index()].push((name.to_owned(), ty));
    }
}
