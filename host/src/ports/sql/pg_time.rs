//! Postgres timestamps and dates: result columns to port values, and the
//! infinite parameters sent in their wire form.
//!
//! Timestamps and dates are read from their wire form (microseconds or
//! days since 2000-01-01) with checked arithmetic: sqlx's chrono decoding
//! panics on `infinity`, `-infinity` and years past chrono's range. The
//! infinities travel as Postgres spells them (`"infinity"`,
//! `"-infinity"`), both ways; other values chrono cannot represent give
//! `unsupported-type`.

use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueFormat};
use sqlx::{Postgres, Row as _};

use super::postgres::map_error;
use super::{SqlError, SqlValue};

/// Postgres' own spelling of the infinite timestamps and dates.
pub(super) const INFINITY: &str = "infinity";
/// Postgres' own spelling of the negative infinite timestamps and dates.
pub(super) const NEG_INFINITY: &str = "-infinity";

/// A `timestamptz` as its wire form, microseconds since 2000-01-01: how
/// `infinity` (`i64::MAX`) and `-infinity` (`i64::MIN`) are sent.
pub(super) struct RawTimestampTz(pub(super) i64);

impl sqlx::Type<Postgres> for RawTimestampTz {
    fn type_info() -> PgTypeInfo {
        <chrono::DateTime<chrono::Utc> as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for RawTimestampTz {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// A `date` as its wire form, days since 2000-01-01: how `infinity`
/// (`i32::MAX`) and `-infinity` (`i32::MIN`) are sent.
pub(super) struct RawDate(pub(super) i32);

impl sqlx::Type<Postgres> for RawDate {
    fn type_info() -> PgTypeInfo {
        <chrono::NaiveDate as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for RawDate {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// A `timestamptz`, `timestamp` or `date` column's value. Binary values
/// (what sqlx's prepared statements return) are converted from their wire
/// form without sqlx's chrono decoding, which panics when `epoch + value`
/// overflows; text values are parsed as before, after the infinities.
pub(super) fn temporal(
    row: &PgRow,
    i: usize,
    type_name: &str,
    format: PgValueFormat,
    bytes: &[u8],
) -> Result<SqlValue, SqlError> {
    let is_date = type_name == "DATE";
    let with_zone = type_name == "TIMESTAMPTZ";
    let text = match format {
        PgValueFormat::Binary => {
            let malformed = || {
                SqlError::UnsupportedType(format!(
                    "column {} holds a malformed {}",
                    i + 1,
                    type_name.to_ascii_lowercase()
                ))
            };
            if is_date {
                let days = <[u8; 4]>::try_from(bytes).map_err(|_| malformed())?;
                date_text(i32::from_be_bytes(days))?
            } else {
                let micros = <[u8; 8]>::try_from(bytes).map_err(|_| malformed())?;
                timestamp_text(i64::from_be_bytes(micros), with_zone)?
            }
        }
        PgValueFormat::Text => match std::str::from_utf8(bytes) {
            Ok(s) if s == INFINITY || s == NEG_INFINITY => s.to_owned(),
            _ if is_date => row
                .try_get::<chrono::NaiveDate, _>(i)
                .map_err(map_error)?
                .to_string(),
            _ if with_zone => row
                .try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .map_err(map_error)?
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            _ => row
                .try_get::<chrono::NaiveDateTime, _>(i)
                .map_err(map_error)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        },
    };
    Ok(if is_date {
        SqlValue::Date(text)
    } else {
        SqlValue::Timestamp(text)
    })
}

/// A timestamp given as Postgres' binary form, microseconds since
/// 2000-01-01 00:00: RFC 3339 in UTC with `Z` for a `timestamptz`
/// (`with_zone`), without an offset for a `timestamp`; fractional seconds
/// only when there are some. `i64::MAX`/`i64::MIN` are Postgres'
/// `infinity`/`-infinity`; instants past chrono's range (after the year
/// 262143; Postgres allows up to 294276) are `unsupported-type`.
fn timestamp_text(micros: i64, with_zone: bool) -> Result<String, SqlError> {
    match micros {
        i64::MAX => return Ok(INFINITY.to_owned()),
        i64::MIN => return Ok(NEG_INFINITY.to_owned()),
        _ => {}
    }
    let t = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::microseconds(micros)))
        .ok_or_else(|| {
            SqlError::UnsupportedType(
                "a timestamp outside the years the sql port can carry (cast it to text)".into(),
            )
        })?;
    Ok(if with_zone {
        t.and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()
    })
}

/// A date given as Postgres' binary form, days since 2000-01-01:
/// `YYYY-MM-DD`. `i32::MAX`/`i32::MIN` are `infinity`/`-infinity`; dates
/// past chrono's range (after the year 262143; Postgres allows up to
/// 5874897) are `unsupported-type`.
fn date_text(days: i32) -> Result<String, SqlError> {
    match days {
        i32::MAX => return Ok(INFINITY.to_owned()),
        i32::MIN => return Ok(NEG_INFINITY.to_owned()),
        _ => {}
    }
    chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::try_days(days.into())?))
        .map(|d| d.to_string())
        .ok_or_else(|| {
            SqlError::UnsupportedType(
                "a date outside the years the sql port can carry (cast it to text)".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::{SqlError, date_text, timestamp_text};

    #[test]
    fn timestamps_from_wire_micros() {
        let ts = |micros, zone| timestamp_text(micros, zone).unwrap();
        assert_eq!(ts(0, true), "2000-01-01T00:00:00Z");
        assert_eq!(ts(0, false), "2000-01-01T00:00:00");
        assert_eq!(ts(-1, true), "1999-12-31T23:59:59.999999Z");
        assert_eq!(ts(-1, false), "1999-12-31T23:59:59.999999");
        assert_eq!(ts(1_500_000, true), "2000-01-01T00:00:01.500Z");
        assert_eq!(ts(1_500_000, false), "2000-01-01T00:00:01.500");
        assert_eq!(ts(767_880_000_123_456, true), "2024-05-01T12:00:00.123456Z");
        assert_eq!(ts(i64::MAX, true), "infinity");
        assert_eq!(ts(i64::MIN, true), "-infinity");
        assert_eq!(ts(i64::MAX, false), "infinity");
        assert_eq!(ts(i64::MIN, false), "-infinity");
        // Valid in Postgres (up to year 294276), past chrono's range.
        for micros in [i64::MAX - 1, i64::MIN + 1] {
            for zone in [true, false] {
                assert!(
                    matches!(
                        timestamp_text(micros, zone),
                        Err(SqlError::UnsupportedType(_))
                    ),
                    "{micros}"
                );
            }
        }
    }

    #[test]
    fn dates_from_wire_days() {
        assert_eq!(date_text(0).unwrap(), "2000-01-01");
        assert_eq!(date_text(-1).unwrap(), "1999-12-31");
        assert_eq!(date_text(366).unwrap(), "2001-01-01");
        assert_eq!(date_text(8887).unwrap(), "2024-05-01");
        assert_eq!(date_text(i32::MAX).unwrap(), "infinity");
        assert_eq!(date_text(i32::MIN).unwrap(), "-infinity");
        for days in [i32::MAX - 1, i32::MIN + 1] {
            assert!(
                matches!(date_text(days), Err(SqlError::UnsupportedType(_))),
                "{days}"
            );
        }
    }
}
