//! Which failures of a group commit are the fault of some of its rows, and which are the
//! database's own. A group whose rows are refused is retried in halves, so that only the jobs
//! at fault fail (`batch`); a database that is down fails every job at once, since retrying
//! would only add load to an outage.

use sqlx::{error::ErrorKind, postgres::PgDatabaseError};

use crate::error::Error;

/// A row a group needs that is not there (its user was deleted meanwhile, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct RowGone(pub &'static str);

/// Whether the database refused some of the rows it was given (a constraint they break, a
/// value it cannot take, a row they need gone) rather than failing as a whole (unreachable,
/// out of connections, closed).
pub fn is_about_rows(error: &Error) -> bool {
    let Error::Internal(e) = error else {
        return false;
    };
    e.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return sqlx_refused_rows(e);
        }
        if let Some(e) = cause.downcast_ref::<rusqlite::Error>() {
            return matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::ConstraintViolation | rusqlite::ErrorCode::TooBig)
            );
        }
        cause.is::<RowGone>()
    })
}

fn sqlx_refused_rows(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false; // I/O, pool timeout, closed pool, protocol...
    };
    match db.try_downcast_ref::<PgDatabaseError>() {
        // Class 22, data exception (a NUL byte in text, a value out of range); class 23,
        // integrity constraint violation. Others (deadlock, shutdown, disk full) are not the
        // rows' fault.
        Some(pg) => pg.code().starts_with("22") || pg.code().starts_with("23"),
        None => !matches!(db.kind(), ErrorKind::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_violations_are_about_rows_and_outages_are_not() {
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            Some("FOREIGN KEY constraint failed".into()),
        );
        let refused = Error::from(constraint).context("group commit failed");
        assert!(
            is_about_rows(&refused),
            "the cause is found under the context"
        );
        assert!(
            is_about_rows(&(Error::shared(refused))()),
            "and in a shared copy"
        );

        let io = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        );
        assert!(!is_about_rows(&Error::from(io)));
        assert!(!is_about_rows(&Error::from(sqlx::Error::PoolTimedOut)));
        assert!(!is_about_rows(&Error::from(sqlx::Error::PoolClosed)));
        assert!(!is_about_rows(&Error::NotFound("message")));
        assert!(is_about_rows(&Error::Internal(
            RowGone("user vanished").into()
        )));
    }
}
