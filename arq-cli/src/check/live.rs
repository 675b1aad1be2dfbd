//! `arq check --live`: arq-tenancy's catalog audit against a real database, its violations
//! mapped to `tenancy-*` rule ids. Findings point at `database` (the URL is not printed, since
//! it may carry a password).

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::rules::tenancy::map_id;
use super::{CheckError, Finding};

/// The pseudo-path live findings are reported against.
pub const LIVE_PATH: &str = "database";

/// Runs the audit for `runtime_role` on the database at `url`.
pub fn run(url: &str, runtime_role: &str) -> Result<Vec<Finding>, CheckError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CheckError::Live(format!("cannot start a runtime: {e}")))?;
    let report = rt.block_on(async {
        let mut conn = PgConnection::connect(url)
            .await
            .map_err(|e| CheckError::Live(format!("cannot connect: {e}")))?;
        let report = arq_tenancy::audit::audit(&mut conn, runtime_role)
            .await
            .map_err(|e| CheckError::Live(e.to_string()))?;
        let _ = conn.close().await;
        Ok::<_, CheckError>(report)
    })?;
    let mut out = Vec::new();
    for v in &report.violations {
        let Some(rule) = map_id(v.rule_id()) else {
            return Err(CheckError::Live(format!(
                "the audit reported {} which this arq does not know; upgrade arq-cli",
                v.rule_id()
            )));
        };
        let msg = v.to_string();
        let msg = msg
            .strip_prefix(&format!("[{}] ", v.rule_id()))
            .unwrap_or(&msg)
            .to_owned();
        out.push(Finding::new(rule, LIVE_PATH, 1, msg));
    }
    Ok(out)
}
