//! One condition at a time: parse, type-check against the schema, estimate the cost, compile to
//! closures. A policy file runs every rule through one [`ConditionCompiler`]; tools that check or
//! benchmark a single rule use it directly.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cel::{Checker, EvalError, Expr, ParseOptions, Type, parse};

use super::compile::{BoolFn, Compiler, Ctx, Slot};
use super::index::{self, Guard};
use super::schema::Schema;
use super::source::{AttributeSource, Entity};
use super::{DEFAULT_MAX_COST, DEFAULT_RUNTIME_BUDGET, cost};

/// Why a condition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConditionError {
    /// The condition does not parse, does not type-check, or is not boolean.
    #[error("{message} (byte {pos})")]
    Invalid {
        /// What is wrong.
        message: String,
        /// Byte offset of the problem in the condition text.
        pos: u32,
    },
    /// The static cost estimate is over the limit.
    #[error("estimated cost {estimate} exceeds the limit {limit}")]
    Cost {
        /// Estimated cost.
        estimate: u64,
        /// Configured limit.
        limit: u64,
    },
}

/// Compiles conditions against one schema. The schema's slots and the checker's declarations
/// are prepared once, in [`new`](Self::new); each [`compile`](Self::compile) then does only the
/// work of its own condition.
///
/// # Example
///
/// ```
/// use arq_auth::policy::{AttrType, ConditionCompiler, Entity, NoAttributes, Schema};
///
/// let mut schema = Schema::default();
/// schema.declare(Entity::Principal, "level", AttrType::Int);
/// let mut compiler = ConditionCompiler::new(schema);
/// let c = compiler.compile("principal.level >= 3").unwrap();
/// assert!(c.cost() > 0);
/// // Evaluation errors (here: a missing attribute) are reported, and deny in a policy set.
/// assert!(c.evaluate(&NoAttributes, &NoAttributes, &NoAttributes).is_err());
/// assert!(compiler.compile("principal.level + 'x'").is_err());
/// ```
#[derive(Debug)]
pub struct ConditionCompiler {
    schema: Arc<Schema>,
    slots: HashMap<(Entity, String), Slot>,
    checker: Checker,
    max_cost: u64,
}

/// A checked and compiled condition.
pub struct CompiledCondition {
    pub(crate) cost: u64,
    pub(crate) eval: BoolFn,
    pub(crate) guards: Vec<Guard>,
    schema: Arc<Schema>,
}

impl std::fmt::Debug for CompiledCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCondition")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl CompiledCondition {
    /// The static cost estimate.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Evaluates the condition with the default runtime budget.
    ///
    /// # Errors
    /// A missing attribute, a value of the wrong type or size, overflow, an exhausted budget.
    pub fn evaluate(
        &self,
        principal: &dyn AttributeSource,
        resource: &dyn AttributeSource,
        request: &dyn AttributeSource,
    ) -> Result<bool, EvalError> {
        let ctx = Ctx::new(
            [principal, resource, request],
            &self.schema,
            DEFAULT_RUNTIME_BUDGET,
        );
        (self.eval)(&ctx)
    }
}

impl ConditionCompiler {
    /// A compiler for conditions over `schema`, with the default cost limit.
    pub fn new(schema: Schema) -> Self {
        let mut slots = HashMap::new();
        let mut checker = Checker::new();
        for entity in [Entity::Principal, Entity::Resource, Entity::Request] {
            checker.declare_namespace(entity.as_str());
            for (i, (name, ty)) in schema.attributes(entity).iter().enumerate() {
                slots.insert(
                    (entity, name.clone()),
                    Slot {
                        entity,
                        index: u16::try_from(i).unwrap_or(u16::MAX),
                        name: Arc::from(name.as_str()),
                        ty: ty.clone(),
                    },
                );
                checker.declare(&format!("{}.{name}", entity.as_str()), ty.cel_type());
            }
        }
        Self {
            schema: Arc::new(schema),
            slots,
            checker,
            max_cost: DEFAULT_MAX_COST,
        }
    }

    /// Sets the static cost limit of each condition.
    #[must_use]
    pub fn with_max_cost(mut self, max_cost: u64) -> Self {
        self.max_cost = max_cost;
        self
    }

    /// The schema conditions are checked against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn shared_schema(&self) -> Arc<Schema> {
        Arc::clone(&self.schema)
    }

    /// Parses, checks, estimates and compiles one condition.
    ///
    /// # Errors
    /// [`ConditionError`] with the byte position of the problem, or the cost over the limit.
    pub fn compile(&mut self, condition: &str) -> Result<CompiledCondition, ConditionError> {
        let expr =
            parse(condition, ParseOptions::default()).map_err(|e| ConditionError::Invalid {
                message: e.message,
                pos: e.pos,
            })?;
        self.compile_expr(&expr)
    }

    fn compile_expr(&mut self, expr: &Expr) -> Result<CompiledCondition, ConditionError> {
        let (ty, types) =
            self.checker
                .check_with_types(expr)
                .map_err(|e| ConditionError::Invalid {
                    message: e.message,
                    pos: e.pos,
                })?;
        if ty != Type::Bool && ty != Type::Dyn {
            return Err(ConditionError::Invalid {
                message: format!("condition has type {ty}; it must be bool"),
                pos: 0,
            });
        }
        let (estimate, _) = cost::estimate(expr, &self.schema);
        if estimate > self.max_cost {
            return Err(ConditionError::Cost {
                estimate,
                limit: self.max_cost,
            });
        }
        let compiler = Compiler {
            slots: &self.slots,
            types: &types,
        };
        let eval = compiler.bool_fn(expr);
        let guards = index::guards(expr, &|e| compiler.slot_of(e));
        Ok(CompiledCondition {
            cost: estimate,
            eval,
            guards,
            schema: Arc::clone(&self.schema),
        })
    }
}
