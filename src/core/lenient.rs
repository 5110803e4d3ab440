//! JSON integers as JSON Schema counts them: `1.0` is the integer 1 (a number with a zero
//! fractional part), so a field the OpenAPI document declares `integer` must accept it.
//! serde's integer types refuse `1.0`; these deserializers take any JSON number with no
//! fractional part within the int64 range, and refuse fractions, values beyond the range
//! and non-numbers with a message.

use serde::de::{self, Deserialize, Deserializer};
use serde_json::Number;

fn to_i64<E: de::Error>(n: &Number) -> Result<i64, E> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // The document declares these fields int64: beyond its range is an error too.
        Some(f) if f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&f) => Ok(f as i64),
        Some(f) if f.fract() == 0.0 => Err(E::custom(format!("integer {n} is out of range"))),
        _ => Err(E::custom(format!("expected an integer, got {n}"))),
    }
}

/// An optional integer field (`null` or absent = `None`).
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Number>::deserialize(d)?
        .map(|n| to_i64(&n))
        .transpose()
}

/// An optional count (`null` or absent = `None`); negative values are refused.
pub fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match opt_i64(d)? {
        None => Ok(None),
        Some(v) if v < 0 => Err(de::Error::custom(format!(
            "expected a non-negative integer, got {v}"
        ))),
        Some(v) => Ok(Some(v as usize)),
    }
}

/// A required integer field.
pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    to_i64(&Number::deserialize(d)?)
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_i64")]
        a: Option<i64>,
        #[serde(default, deserialize_with = "super::opt_usize")]
        b: Option<usize>,
    }

    fn parse(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_numbers_of_any_spelling() {
        let t = parse(r#"{"a": 1.0, "b": 3e2}"#).unwrap();
        assert_eq!((t.a, t.b), (Some(1), Some(300)));
        let t = parse(r#"{"a": null}"#).unwrap();
        assert_eq!((t.a, t.b), (None, None));
        let t = parse(r#"{"a": -9223372036854775808, "b": 9.0e18}"#).unwrap();
        assert_eq!(
            (t.a, t.b),
            (Some(i64::MIN), Some(9_000_000_000_000_000_000))
        );
        assert!(parse(r#"{"a": 18446744073709551615}"#)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse(r#"{"b": 1e300}"#)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse(r#"{"a": 1.5}"#)
            .unwrap_err()
            .contains("expected an integer"));
        assert!(parse(r#"{"a": "1"}"#).is_err());
        assert!(parse(r#"{"b": -1}"#).unwrap_err().contains("non-negative"));
    }
}
