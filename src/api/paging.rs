//! `?limit=&before=` for list endpoints. A limit of any size or sign is accepted (the domain
//! clamps it); only a limit that is not an integer at all is a 400.

use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// How `limit` is documented: any integer, with no format. An `i64` would say `format: int64`,
/// and a larger number, which is saturated and accepted, would then be called invalid.
pub struct Limit;

impl utoipa::PartialSchema for Limit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .into()
    }
}

impl utoipa::ToSchema for Limit {}

#[derive(Deserialize)]
#[serde(bound = "C: DeserializeOwned")]
pub struct PageQuery<C> {
    #[serde(default, deserialize_with = "saturating_limit")]
    pub limit: Option<i64>,
    /// The id of the last item already seen.
    #[serde(default)]
    pub before: Option<C>,
}

/// An integer, saturated to `i64` when out of range; empty means "not given".
pub fn saturating_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let raw = String::deserialize(d)?;
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if let Ok(n) = raw.parse::<i64>() {
        return Ok(Some(n));
    }
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, raw.strip_prefix('+').unwrap_or(raw)),
    };
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Some(if negative { i64::MIN } else { i64::MAX }));
    }
    Err(serde::de::Error::custom("limit must be an integer"))
}
