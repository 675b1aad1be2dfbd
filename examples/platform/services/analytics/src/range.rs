//! Ranges of days (`from`, `to`, both included) as the API takes them, and the problem
//! responses every handler shares.

use arq_core::Problem;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use chrono::NaiveDate;
use serde::Serialize;

/// The longest range a request may cover, in days, both ends included (a leap year).
pub const MAX_DAYS: i64 = 366;

/// A validated range of days: `from <= to`, at most [`MAX_DAYS`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DayRange {
    /// The first day.
    pub from: NaiveDate,
    /// The last day (included).
    pub to: NaiveDate,
}

impl DayRange {
    /// Validates a range given as `YYYY-MM-DD` strings, reporting every problem at once (turn
    /// them into the 400 problem with [`invalid`]).
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let from = day("from", from, &mut errors);
        let to = day("to", to, &mut errors);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(errors);
        };
        if from > to {
            errors.push(FieldError {
                field: "to",
                message: format!("must not be before from ({from}); swap them"),
            });
        } else if (to - from).num_days() + 1 > MAX_DAYS {
            errors.push(FieldError {
                field: "to",
                message: format!(
                    "the range covers {} days; at most {MAX_DAYS} days (both ends included) per request: split it",
                    (to - from).num_days() + 1
                ),
            });
        }
        if errors.is_empty() {
            Ok(Self { from, to })
        } else {
            Err(errors)
        }
    }

    /// How many days the range covers, both ends included.
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }
}

fn day(
    field: &'static str,
    value: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<NaiveDate> {
    let Some(value) = value else {
        errors.push(FieldError {
            field,
            message: "is required: a day as YYYY-MM-DD".to_owned(),
        });
        return None;
    };
    // chrono alone accepts `2030-1-5`; the API promises exactly YYYY-MM-DD.
    let parsed = (value.len() == 10)
        .then(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .flatten();
    if parsed.is_none() {
        errors.push(FieldError {
            field,
            message: format!("{value:?} is not a day: use YYYY-MM-DD, e.g. 2030-01-31"),
        });
    }
    parsed
}

/// One field's validation failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field (JSON or query name).
    pub field: &'static str,
    /// What is wrong with it and what is accepted.
    pub message: String,
}

/// Every validation failure of a request, reported together as one 400 problem whose `errors`
/// extension lists them.
pub fn invalid(errors: Vec<FieldError>) -> Problem {
    let detail = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    let list: Vec<serde_json::Value> = errors
        .iter()
        .map(|e| serde_json::json!({ "field": e.field, "message": e.message }))
        .collect();
    Problem::new(StatusCode::BAD_REQUEST)
        .with_detail(detail)
        .with_extension("errors", list)
}

/// One field's validation failure as a 400 problem.
pub fn invalid_one(field: &'static str, message: impl Into<String>) -> Problem {
    invalid(vec![FieldError {
        field,
        message: message.into(),
    }])
}

/// A body that is not the expected JSON: 415 without a JSON content type, 400 otherwise
/// (syntax errors, unknown fields, wrong types), saying what serde found.
pub fn body_problem(e: &JsonRejection) -> Problem {
    let status = match e.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    Problem::new(status).with_detail(format!(
        "{}; send {{\"from\": \"YYYY-MM-DD\", \"to\": \"YYYY-MM-DD\"}} with Content-Type: application/json",
        e.body_text()
    ))
}

/// A query string that does not fit the handler's parameters (an unknown parameter, a bad
/// number).
pub fn query_problem(e: &QueryRejection) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST).with_detail(e.body_text())
}

/// A path whose id is not a UUID names no report.
pub fn path_problem(e: &PathRejection) -> Problem {
    Problem::not_found(format!(
        "no such report ({}); report ids are UUIDs",
        e.body_text()
    ))
}

/// A database failure: 500, logged by arq-core without the query's values.
pub fn database(e: &(dyn std::error::Error + 'static)) -> Problem {
    Problem::internal(e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        let p = invalid(errors);
        assert_eq!(p.status(), StatusCode::BAD_REQUEST);
        p.extensions()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_leap_year_is_the_longest_range() {
        let r = DayRange::parse(Some("2024-01-01"), Some("2024-12-31")).unwrap();
        assert_eq!(r.days(), 366);
        let e = DayRange::parse(Some("2024-01-01"), Some("2025-01-01")).unwrap_err();
        assert!(e[0].message.contains("367 days"), "{e:?}");
        assert_eq!(fields(e), ["to"]);
        assert_eq!(
            DayRange::parse(Some("2030-05-05"), Some("2030-05-05"))
                .unwrap()
                .days(),
            1
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let e = DayRange::parse(None, Some("2030-1-5")).unwrap_err();
        assert_eq!(fields(e), ["from", "to"]);
        let e = DayRange::parse(Some("2030-02-30"), Some("yesterday")).unwrap_err();
        assert_eq!(fields(e), ["from", "to"]);
        let e = DayRange::parse(Some("2030-02-02"), Some("2030-02-01")).unwrap_err();
        assert!(e[0].message.contains("swap"), "{e:?}");
        assert_eq!(fields(e), ["to"]);
    }
}
