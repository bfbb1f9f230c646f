//! Values from how SQLite stores them to what PostgreSQL's columns take.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rusqlite::types::ValueRef;
use sqlx::{Postgres, postgres::PgArguments, query::Query};
use uuid::Uuid;

/// What a value becomes in PostgreSQL, by its column's type.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Uuid,
    Time,
    Date,
    Bool,
    Int8,
    Int4,
    Int2,
    Float8,
    Bytes,
    Text,
    Json,
}

impl Kind {
    /// By `information_schema.columns.udt_name`.
    pub(super) fn of(udt: &str) -> Option<Self> {
        Some(match udt {
            "uuid" => Self::Uuid,
            "timestamptz" => Self::Time,
            "date" => Self::Date,
            "bool" => Self::Bool,
            "int8" => Self::Int8,
            "int4" => Self::Int4,
            "int2" => Self::Int2,
            "float8" | "float4" => Self::Float8,
            "bytea" => Self::Bytes,
            "text" | "varchar" | "bpchar" => Self::Text,
            "jsonb" | "json" => Self::Json,
            _ => return None,
        })
    }

    /// The value SQLite stored (as sqlx writes it: ids as 16-byte blobs, times as RFC 3339
    /// text, days as `YYYY-MM-DD`, booleans as 0 or 1) as this kind. The error says why,
    /// never what the value was (it may be a password hash or a key).
    pub(super) fn convert(self, value: ValueRef<'_>) -> Result<Cell, &'static str> {
        use ValueRef::{Blob, Integer, Null, Real, Text};
        Ok(match (self, value) {
            (Self::Uuid, Null) => Cell::Uuid(None),
            (Self::Uuid, Blob(b)) => {
                Cell::Uuid(Some(Uuid::from_slice(b).map_err(|_| "not a UUID")?))
            }
            (Self::Uuid, Text(t)) => Cell::Uuid(Some(
                std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| Uuid::parse_str(t).ok())
                    .ok_or("not a UUID")?,
            )),
            (Self::Time, Null) => Cell::Time(None),
            (Self::Time, Text(t)) => Cell::Time(Some(parse_time(t).ok_or("not a time")?)),
            (Self::Time, Integer(seconds)) => Cell::Time(Some(
                DateTime::from_timestamp(seconds, 0).ok_or("not a time")?,
            )),
            (Self::Date, Null) => Cell::Date(None),
            (Self::Date, Text(t)) => Cell::Date(Some(
                std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| NaiveDate::parse_from_str(t, "%F").ok())
                    .ok_or("not a day")?,
            )),
            (Self::Bool, Null) => Cell::Bool(None),
            (Self::Bool, Integer(i)) => Cell::Bool(Some(i != 0)),
            (Self::Int8, Null) => Cell::Int8(None),
            (Self::Int8, Integer(i)) => Cell::Int8(Some(i)),
            (Self::Int4, Null) => Cell::Int4(None),
            (Self::Int4, Integer(i)) => {
                Cell::Int4(Some(i32::try_from(i).map_err(|_| "out of range")?))
            }
            (Self::Int2, Null) => Cell::Int2(None),
            (Self::Int2, Integer(i)) => {
                Cell::Int2(Some(i16::try_from(i).map_err(|_| "out of range")?))
            }
            (Self::Float8, Null) => Cell::Float8(None),
            (Self::Float8, Real(f)) => Cell::Float8(Some(f)),
            #[allow(clippy::cast_precision_loss)] // a whole number in a float column
            (Self::Float8, Integer(i)) => Cell::Float8(Some(i as f64)),
            (Self::Bytes, Null) => Cell::Bytes(None),
            (Self::Bytes, Blob(b) | Text(b)) => Cell::Bytes(Some(b.to_vec())),
            (Self::Text, Null) => Cell::Text(None),
            (Self::Text, Text(t)) => Cell::Text(Some(
                String::from_utf8(t.to_vec()).map_err(|_| "not UTF-8")?,
            )),
            (Self::Json, Null) => Cell::Json(None),
            (Self::Json, Text(t)) => {
                Cell::Json(Some(serde_json::from_slice(t).map_err(|_| "not JSON")?))
            }
            _ => return Err("stored with a type that does not fit the column"),
        })
    }
}

/// An RFC 3339 time (sqlx's and the group commit's writing), or a naive one taken as UTC.
fn parse_time(text: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(text).ok()?;
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.to_utc());
    }
    ["%F %T%.f", "%FT%T%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
}

/// A value ready to bind, typed even when NULL.
pub(super) enum Cell {
    Uuid(Option<Uuid>),
    Time(Option<DateTime<Utc>>),
    Date(Option<NaiveDate>),
    Bool(Option<bool>),
    Int8(Option<i64>),
    Int4(Option<i32>),
    Int2(Option<i16>),
    Float8(Option<f64>),
    Bytes(Option<Vec<u8>>),
    Text(Option<String>),
    Json(Option<serde_json::Value>),
}

impl Cell {
    pub(super) fn bind(
        self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Query<'_, Postgres, PgArguments> {
        match self {
            Self::Uuid(v) => query.bind(v),
            Self::Time(v) => query.bind(v),
            Self::Date(v) => query.bind(v),
            Self::Bool(v) => query.bind(v),
            Self::Int8(v) => query.bind(v),
            Self::Int4(v) => query.bind(v),
            Self::Int2(v) => query.bind(v),
            Self::Float8(v) => query.bind(v),
            Self::Bytes(v) => query.bind(v),
            Self::Text(v) => query.bind(v),
            Self::Json(v) => query.bind(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_converted_as_sqlx_stores_them_in_sqlite() {
        let id = Uuid::new_v4();
        assert!(matches!(
            Kind::Uuid.convert(ValueRef::Blob(id.as_bytes())),
            Ok(Cell::Uuid(Some(u))) if u == id
        ));
        assert!(matches!(
            Kind::Time.convert(ValueRef::Text(b"2025-11-24T21:03:04.123+00:00")),
            Ok(Cell::Time(Some(t))) if t.timestamp_subsec_millis() == 123
        ));
        assert!(matches!(
            Kind::Time.convert(ValueRef::Text(b"2025-11-24T21:03:04Z")),
            Ok(Cell::Time(Some(_)))
        ));
        assert!(matches!(
            Kind::Date.convert(ValueRef::Text(b"2025-11-24")),
            Ok(Cell::Date(Some(_)))
        ));
        assert!(matches!(
            Kind::Bool.convert(ValueRef::Integer(1)),
            Ok(Cell::Bool(Some(true)))
        ));
        assert!(matches!(
            Kind::Int8.convert(ValueRef::Null),
            Ok(Cell::Int8(None))
        ));
        assert!(Kind::Int4.convert(ValueRef::Integer(1 << 40)).is_err());
        assert!(Kind::Uuid.convert(ValueRef::Blob(b"short")).is_err());
        assert!(Kind::Time.convert(ValueRef::Text(b"yesterday")).is_err());
        assert!(Kind::Text.convert(ValueRef::Blob(b"bytes")).is_err());
    }
}
