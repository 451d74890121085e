//! Postgres value mapping: guest parameters to typed Postgres parameters,
//! and result columns back to port values (exact numeric text, RFC 3339
//! timestamps, json text as stored). Timestamps and dates, infinities
//! included, are converted in `pg_time`.

use std::str::FromStr as _;

use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgRow, PgTypeInfo, PgValueFormat};
use sqlx::query::Query;
use sqlx::{Column as _, Executor as _, Postgres, Row as _, TypeInfo as _, ValueRef as _};

use super::pg_time::{INFINITY, NEG_INFINITY, RawDate, RawTimestampTz, temporal};
use super::placeholders::rewrite_placeholders_into;
use super::postgres::map_error;
use super::{SqlColumn, SqlError, SqlValue};

/// A NULL whose type the server infers from the statement.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

/// JSON sent as the `json` type's wire format (its text), so a `json`
/// column keeps the guest's text exactly.
struct JsonText(String);

impl sqlx::Type<Postgres> for JsonText {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(114))
    }
}

impl sqlx::Encode<'_, Postgres> for JsonText {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        buf.extend_from_slice(self.0.as_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// A `numeric` that is not a number: `NaN`, `Infinity` or `-Infinity`,
/// which Postgres stores (infinities since 14; older servers refuse them)
/// but `BigDecimal` cannot
/// hold. Sent in `numeric`'s binary format: no digits, and the sign word
/// saying which ([`numeric_text`] reads them back the same way).
pub(super) struct SpecialNumeric(u16);

impl SpecialNumeric {
    const NAN: u16 = 0xC000;
    const INFINITY: u16 = 0xD000;
    const NEG_INFINITY: u16 = 0xF000;

    /// The sign word of the special value `text` spells, in the forms
    /// Postgres accepts (`NaN`, `Infinity`, `+Infinity`, `-Infinity`,
    /// `inf`…, any case).
    fn parse(text: &str) -> Option<SpecialNumeric> {
        // Postgres ignores surrounding white space in numeric input.
        let text = text.trim();
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let word = if rest.eq_ignore_ascii_case("infinity") || rest.eq_ignore_ascii_case("inf") {
            if negative {
                Self::NEG_INFINITY
            } else {
                Self::INFINITY
            }
        } else if text.eq_ignore_ascii_case("nan") {
            Self::NAN
        } else {
            return None;
        };
        Some(SpecialNumeric(word))
    }
}

impl sqlx::Type<Postgres> for SpecialNumeric {
    fn type_info() -> PgTypeInfo {
        <bigdecimal::BigDecimal as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for SpecialNumeric {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        // ndigits, weight, sign, dscale.
        for word in [0, 0, self.0, 0] {
            buf.extend_from_slice(&word.to_be_bytes());
        }
        Ok(sqlx::encode::IsNull::No)
    }
}

pub(super) type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// A parameter converted once to its Postgres type, so the statement is
/// prepared with exactly the types that are then bound.
pub(super) enum PgParam {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    TimestampTz(chrono::DateTime<chrono::Utc>),
    Timestamp(chrono::NaiveDateTime),
    Date(chrono::NaiveDate),
    /// `infinity` or `-infinity`, as a `timestamptz`.
    InfiniteTimestamp(i64),
    /// `infinity` or `-infinity`, as a `date`.
    InfiniteDate(i32),
    Json(String),
    Uuid(sqlx::types::Uuid),
    Decimal(bigdecimal::BigDecimal),
    /// `NaN` or an infinity, as a `numeric`.
    SpecialDecimal(SpecialNumeric),
}

/// The longest decimal text a Postgres parameter may have: `numeric`
/// holds up to 131,072 digits before the point and 16,383 after, with a
/// sign, a point and an exponent.
const MAX_DECIMAL_CHARS: usize = 131_072 + 16_383 + 16;

/// The largest exponent either way of a Postgres decimal parameter.
const MAX_DECIMAL_EXPONENT: u32 = 131_072 + 16_383;

impl PgParam {
    fn from_value(v: SqlValue) -> Result<PgParam, SqlError> {
        let bad =
            |what: &str, v: &str| SqlError::InvalidInput(format!("{v:?} is not a valid {what}"));
        Ok(match v {
            SqlValue::Null => PgParam::Null,
            SqlValue::Boolean(b) => PgParam::Bool(b),
            SqlValue::Int(i) => PgParam::Int(i),
            SqlValue::Float(f) => PgParam::Float(f),
            SqlValue::Text(s) => PgParam::Text(s),
            SqlValue::Blob(b) => PgParam::Bytes(b),
            SqlValue::Timestamp(s) if s == INFINITY => PgParam::InfiniteTimestamp(i64::MAX),
            SqlValue::Timestamp(s) if s == NEG_INFINITY => PgParam::InfiniteTimestamp(i64::MIN),
            SqlValue::Date(s) if s == INFINITY => PgParam::InfiniteDate(i32::MAX),
            SqlValue::Date(s) if s == NEG_INFINITY => PgParam::InfiniteDate(i32::MIN),
            SqlValue::Timestamp(s) => match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => PgParam::TimestampTz(t.with_timezone(&chrono::Utc)),
                Err(_) => PgParam::Timestamp(
                    chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
                        .or_else(|_| {
                            chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f")
                        })
                        .map_err(|_| bad("timestamp (RFC 3339)", &s))?,
                ),
            },
            SqlValue::Date(s) => PgParam::Date(
                chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                    .map_err(|_| bad("date (YYYY-MM-DD)", &s))?,
            ),
            SqlValue::Json(s) => PgParam::Json(s),
            SqlValue::Uuid(s) => {
                PgParam::Uuid(sqlx::types::Uuid::parse_str(&s).map_err(|_| bad("UUID", &s))?)
            }
            SqlValue::Decimal(s) => match SpecialNumeric::parse(&s) {
                Some(special) => PgParam::SpecialDecimal(special),
                None => PgParam::Decimal({
                    super::decimal_in_bounds(&s, MAX_DECIMAL_CHARS, MAX_DECIMAL_EXPONENT)?;
                    bigdecimal::BigDecimal::from_str(&s).map_err(|_| bad("decimal", &s))?
                }),
            },
        })
    }

    fn type_info(&self) -> PgTypeInfo {
        use sqlx::Type;
        match self {
            PgParam::Null => <UntypedNull as Type<Postgres>>::type_info(),
            PgParam::Bool(_) => <bool as Type<Postgres>>::type_info(),
            PgParam::Int(_) => <i64 as Type<Postgres>>::type_info(),
            PgParam::Float(_) => <f64 as Type<Postgres>>::type_info(),
            PgParam::Text(_) => <String as Type<Postgres>>::type_info(),
            PgParam::Bytes(_) => <Vec<u8> as Type<Postgres>>::type_info(),
            PgParam::TimestampTz(_) => {
                <chrono::DateTime<chrono::Utc> as Type<Postgres>>::type_info()
            }
            PgParam::Timestamp(_) => <chrono::NaiveDateTime as Type<Postgres>>::type_info(),
            PgParam::Date(_) => <chrono::NaiveDate as Type<Postgres>>::type_info(),
            PgParam::InfiniteTimestamp(_) => <RawTimestampTz as Type<Postgres>>::type_info(),
            PgParam::InfiniteDate(_) => <RawDate as Type<Postgres>>::type_info(),
            PgParam::Json(_) => <JsonText as Type<Postgres>>::type_info(),
            PgParam::Uuid(_) => <sqlx::types::Uuid as Type<Postgres>>::type_info(),
            PgParam::Decimal(_) => <bigdecimal::BigDecimal as Type<Postgres>>::type_info(),
            PgParam::SpecialDecimal(_) => <SpecialNumeric as Type<Postgres>>::type_info(),
        }
    }

    /// The name of the Postgres type [`PgParam::bind`] sends this as (the
    /// same as [`PgParam::type_info`]'s), for [`statement_text`].
    fn type_tag(&self) -> &'static str {
        match self {
            PgParam::Null => "untyped",
            PgParam::Bool(_) => "bool",
            PgParam::Int(_) => "int8",
            PgParam::Float(_) => "float8",
            PgParam::Text(_) => "text",
            PgParam::Bytes(_) => "bytea",
            PgParam::TimestampTz(_) | PgParam::InfiniteTimestamp(_) => "timestamptz",
            PgParam::Timestamp(_) => "timestamp",
            PgParam::Date(_) | PgParam::InfiniteDate(_) => "date",
            PgParam::Json(_) => "json",
            PgParam::Uuid(_) => "uuid",
            PgParam::Decimal(_) | PgParam::SpecialDecimal(_) => "numeric",
        }
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        match self {
            PgParam::Null => q.bind(UntypedNull),
            PgParam::Bool(v) => q.bind(v),
            PgParam::Int(v) => q.bind(v),
            PgParam::Float(v) => q.bind(v),
            PgParam::Text(v) => q.bind(v),
            PgParam::Bytes(v) => q.bind(v),
            PgParam::TimestampTz(v) => q.bind(v),
            PgParam::Timestamp(v) => q.bind(v),
            PgParam::Date(v) => q.bind(v),
            PgParam::InfiniteTimestamp(v) => q.bind(RawTimestampTz(v)),
            PgParam::InfiniteDate(v) => q.bind(RawDate(v)),
            PgParam::Json(v) => q.bind(JsonText(v)),
            PgParam::Uuid(v) => q.bind(v),
            PgParam::Decimal(v) => q.bind(v),
            PgParam::SpecialDecimal(v) => q.bind(v),
        }
    }
}

pub(super) fn convert(params: Vec<SqlValue>) -> Result<Vec<PgParam>, SqlError> {
    params.into_iter().map(PgParam::from_value).collect()
}

pub(super) fn bind(mut q: PgQuery<'_>, params: Vec<PgParam>) -> PgQuery<'_> {
    for p in params {
        q = p.bind(q);
    }
    q
}

/// The text sent to Postgres for `statement` run with `params`: `?`
/// placeholders rewritten to `$n`, after a comment naming the parameters'
/// types (`/*berth:int8,float8*/ `).
///
/// sqlx caches prepared statements per connection by their text alone and
/// reuses the parameter types of the first prepare. Without the comment,
/// `INSERT … VALUES (?)` run first with an int then with a float would
/// send the float's bytes where the cached statement expects an `int8`
/// (silently storing nonsense), and a first `NULL` would leave the type to
/// the server's inference for every later call. With it, each type
/// signature is its own cached statement. Built in one buffer, as this runs
/// for every statement.
pub(super) fn statement_text(statement: &str, params: &[PgParam]) -> String {
    let mut out = String::with_capacity(statement.len() + 16 + 12 * params.len());
    if !params.is_empty() {
        out.push_str("/*berth:");
        for (k, p) in params.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str(p.type_tag());
        }
        out.push_str("*/ ");
        rewrite_placeholders_into(&mut out, statement);
    } else {
        // Without parameters a `?` is Postgres's own (the jsonb operator).
        out.push_str(statement);
    }
    out
}

/// The Postgres types of converted parameters, as they will be bound.
pub(super) fn param_types(params: &[PgParam]) -> Vec<PgTypeInfo> {
    params.iter().map(PgParam::type_info).collect()
}

/// Prepares `sql` with the parameters' own types (so what is bound matches
/// what the server expects) and returns the statement's columns too.
pub(super) async fn prepare(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    types: &[PgTypeInfo],
) -> Result<sqlx::postgres::PgStatement<'static>, SqlError> {
    conn.prepare_with(sql, types)
        .await
        .map(|s| sqlx::Statement::to_owned(&s))
        .map_err(map_error)
}

pub(super) fn columns_of(cols: &[sqlx::postgres::PgColumn]) -> Vec<SqlColumn> {
    cols.iter()
        .map(|c| SqlColumn {
            name: c.name().to_string(),
            type_name: c.type_info().name().to_ascii_lowercase(),
        })
        .collect()
}

/// A lower bound of what `row` will hold once read ([`read_row`]'s values'
/// [`SqlValue::held_size`] summed), from its undecoded values, without
/// copying them: every value, plus the bytes of those read as their own
/// text or bytes (strings, bytea, json), which are where a huge row is.
pub(super) fn held_size_at_least(row: &PgRow) -> usize {
    let each = std::mem::size_of::<SqlValue>();
    (0..row.columns().len())
        .map(|i| {
            let Ok(raw) = row.try_get_raw(i) else {
                return each;
            };
            let copied = match raw.type_info().name() {
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" | "BYTEA" | "JSON" => {
                    raw.as_bytes().map_or(0, <[u8]>::len)
                }
                // The binary format's version byte is not kept.
                "JSONB" => raw.as_bytes().map_or(0, |b| b.len().saturating_sub(1)),
                _ => 0,
            };
            each + copied
        })
        .sum()
}

pub(super) fn read_row(row: &PgRow) -> Result<Vec<SqlValue>, SqlError> {
    (0..row.columns().len())
        .map(|i| read_value(row, i))
        .collect()
}

fn read_value(row: &PgRow, i: usize) -> Result<SqlValue, SqlError> {
    let raw = row.try_get_raw(i).map_err(map_error)?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    let type_info = raw.type_info();
    let type_name = type_info.name();
    let get = |e: sqlx::Error| map_error(e);
    Ok(match type_name {
        "BOOL" => SqlValue::Boolean(row.try_get(i).map_err(get)?),
        "INT2" => SqlValue::Int(row.try_get::<i16, _>(i).map_err(get)?.into()),
        "INT4" => SqlValue::Int(row.try_get::<i32, _>(i).map_err(get)?.into()),
        "INT8" => SqlValue::Int(row.try_get(i).map_err(get)?),
        "OID" => SqlValue::Int(row.try_get::<Oid, _>(i).map_err(get)?.0.into()),
        "FLOAT4" => SqlValue::Float(row.try_get::<f32, _>(i).map_err(get)?.into()),
        "FLOAT8" => SqlValue::Float(row.try_get(i).map_err(get)?),
        "NUMERIC" => {
            let bytes = raw.as_bytes().map_err(|e| SqlError::Other(e.to_string()))?;
            let text = match raw.format() {
                PgValueFormat::Binary => numeric_text(bytes)
                    .ok_or_else(|| SqlError::UnsupportedType("malformed numeric".into()))?,
                PgValueFormat::Text => String::from_utf8_lossy(bytes).into_owned(),
            };
            SqlValue::Decimal(text)
        }
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
            SqlValue::Text(row.try_get(i).map_err(get)?)
        }
        "BYTEA" => SqlValue::Blob(row.try_get(i).map_err(get)?),
        "TIMESTAMPTZ" | "TIMESTAMP" | "DATE" => {
            let bytes = raw.as_bytes().map_err(|e| SqlError::Other(e.to_string()))?;
            temporal(row, i, type_name, raw.format(), bytes)?
        }
        "UUID" => SqlValue::Uuid(
            row.try_get::<sqlx::types::Uuid, _>(i)
                .map_err(get)?
                .hyphenated()
                .to_string(),
        ),
        "JSON" | "JSONB" => {
            let bytes = raw.as_bytes().map_err(|e| SqlError::Other(e.to_string()))?;
            // jsonb's binary format starts with a version byte.
            let text = if type_name == "JSONB" && raw.format() == PgValueFormat::Binary {
                &bytes[1.min(bytes.len())..]
            } else {
                bytes
            };
            SqlValue::Json(String::from_utf8_lossy(text).into_owned())
        }
        "BOOL[]" => array_json::<bool>(row, i)?,
        "INT2[]" => array_json::<i16>(row, i)?,
        "INT4[]" => array_json::<i32>(row, i)?,
        "INT8[]" => array_json::<i64>(row, i)?,
        "FLOAT4[]" => float_array_json::<f32>(row, i)?,
        "FLOAT8[]" => float_array_json::<f64>(row, i)?,
        "TEXT[]" | "VARCHAR[]" | "BPCHAR[]" | "NAME[]" => array_json::<String>(row, i)?,
        "UUID[]" => array_json::<sqlx::types::Uuid>(row, i)?,
        // Each element's own text (`serde_json::Value` would round a number
        // with more digits than an f64 holds).
        "JSON[]" | "JSONB[]" => {
            array_json::<sqlx::types::Json<Box<sqlx::types::JsonRawValue>>>(row, i)?
        }
        other => {
            return Err(SqlError::UnsupportedType(format!(
                "column {} has type {other}, which the sql port cannot carry; cast it (e.g. to text)",
                i + 1
            )));
        }
    })
}

/// A one-dimensional array of scalars as a JSON array (`NULL` elements as
/// `null`). Element types without an exact JSON form (numeric, timestamps)
/// are not listed by the caller and stay `unsupported-type`.
fn array_json<T>(row: &PgRow, i: usize) -> Result<SqlValue, SqlError>
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + serde::Serialize,
    Vec<Option<T>>: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    let values = flat_array::<T>(row, i)?;
    serde_json::to_string(&values)
        .map(SqlValue::Json)
        .map_err(|e| SqlError::Other(e.to_string()))
}

/// A float array as [`array_json`] gives it, unless an element is NaN or
/// infinite: JSON has no such numbers (serde writes them as `null`, which
/// would pass for a NULL element), so that is `unsupported-type`.
fn float_array_json<T>(row: &PgRow, i: usize) -> Result<SqlValue, SqlError>
where
    T: for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + serde::Serialize
        + Copy
        + Into<f64>,
    Vec<Option<T>>: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    let values = flat_array::<T>(row, i)?;
    if values.iter().flatten().any(|v| !(*v).into().is_finite()) {
        return Err(SqlError::UnsupportedType(format!(
            "column {} holds NaN or an infinity in a float array, which JSON cannot carry; cast it (e.g. to text[])",
            i + 1
        )));
    }
    serde_json::to_string(&values)
        .map(SqlValue::Json)
        .map_err(|e| SqlError::Other(e.to_string()))
}

/// Column `i` as a one-dimensional array.
fn flat_array<T>(row: &PgRow, i: usize) -> Result<Vec<Option<T>>, SqlError>
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    Vec<Option<T>>: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(i).map_err(|e| match e {
        // Multi-dimensional arrays do not decode into a flat vector.
        sqlx::Error::ColumnDecode { .. } => SqlError::UnsupportedType(format!(
            "column {} is a multi-dimensional or malformed array, which the sql port cannot carry",
            i + 1
        )),
        other => map_error(other),
    })
}

/// Renders Postgres' binary `numeric` exactly, with its declared scale
/// (`12.50` stays `12.50`). Layout: ndigits, weight, sign, dscale (i16/u16)
/// then base-10000 digits.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| b.get(i..i + 2).map(|w| i16::from_be_bytes([w[0], w[1]]));
    let (ndigits, weight, sign, dscale) = (
        word(0)? as usize,
        word(2)? as i32,
        word(4)? as u16,
        word(6)? as usize,
    );
    let digits: Vec<i16> = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Option<_>>()?;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digit = |idx: i32| {
        if idx >= 0 && (idx as usize) < ndigits {
            digits[idx as usize]
        } else {
            0
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for idx in 0..=weight {
            if idx == 0 {
                out.push_str(&digit(idx).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(idx)));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut idx = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(idx)));
            idx += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

#[cfg(test)]
#[path = "pg_values_tests.rs"]
mod tests;
