//! Numbers in configs, strictly: a whole-number key takes a whole number (a float such as
//! `2048.5` or `1e3` is refused, not rounded), within its type's range; a string of
//! digits (how `MEMPLEX_*` environment overrides arrive) is parsed the same way.
//! Durations and intervals are checked in `Config::validate`, where the key is known:
//! finite, not negative, and inside a stated range.
//!
//! The config crate adds the key to every error raised here (`... for key
//! providers.hdr.buf_size`).

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A whole-number type a config key may have.
pub trait Whole: Sized + TryFrom<u64> + TryFrom<i64> {
    /// The type's largest value, for messages.
    const MAX: u64;
}

macro_rules! whole {
    ($($t:ty),*) => {$(
        impl Whole for $t {
            const MAX: u64 = <$t>::MAX as u64;
        }
    )*};
}
whole!(u16, u32, u64, usize);

struct WholeVisitor<T>(PhantomData<T>);

fn out_of_range<T: Whole, E: de::Error>(v: impl fmt::Display) -> E {
    E::custom(format_args!(
        "{v} is out of range: a whole number from 0 to {} is needed",
        T::MAX
    ))
}

impl<T: Whole> Visitor<'_> for WholeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| out_of_range::<T, E>(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| out_of_range::<T, E>(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        u64::try_from(v)
            .ok()
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| out_of_range::<T, E>(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<T, E> {
        i64::try_from(v)
            .ok()
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| out_of_range::<T, E>(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Debug, not Display: `1e300` stays short (Display writes out all 301 digits).
        Err(E::custom(format_args!(
            "{v:?} is not a whole number (a float is not rounded); write it as digits only"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let t = v.trim();
        if let Ok(n) = t.parse::<u64>() {
            return self.visit_u64(n);
        }
        if let Ok(n) = t.parse::<i64>() {
            return self.visit_i64(n);
        }
        if t.parse::<f64>().is_ok() {
            return Err(E::custom(format_args!(
                "`{t}` is not a whole number (a float is not rounded); write it as digits only"
            )));
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(out_of_range::<T, E>(t));
        }
        Err(E::custom(format_args!("`{t}` is not a whole number")))
    }
}

/// A whole number of type `T`; see the module docs.
pub fn whole<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(WholeVisitor(PhantomData))
}

/// An optional whole number of type `T`.
pub fn whole_opt<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<Option<T>, D::Error> {
    whole(d).map(Some)
}

/// What is wrong with a number of seconds, if anything: it must be finite, not
/// negative, and (when not 0 and 0 is `zero_ok`) between `min` and `max`.
pub fn check_seconds(v: f64, zero_ok: bool, min: f64, max: f64) -> Option<String> {
    if !v.is_finite() {
        return Some(format!("is {v}, not a finite number"));
    }
    if v < 0.0 {
        return Some(format!("is {v}, below 0"));
    }
    if v == 0.0 && zero_ok {
        return None;
    }
    if v < min {
        return Some(format!("is {v}, below the smallest allowed ({min})"));
    }
    if v > max {
        return Some(format!("is {v}, above the largest allowed ({max})"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "whole")]
        n: u16,
        #[serde(default, deserialize_with = "whole_opt")]
        m: Option<u64>,
    }

    fn parse(toml_text: &str) -> Result<T, String> {
        config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<T>())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_only_in_range() {
        assert_eq!(parse("n = 7").unwrap().n, 7);
        assert_eq!(parse("n = 7\nm = 9").unwrap().m, Some(9));
        for (text, want) in [
            ("n = 2048.5", "not a whole number"),
            ("n = 1e3", "1000.0 is not a whole number"),
            ("n = 1e300", "1e300 is not a whole number"),
            ("n = 70000", "out of range"),
            ("n = -1", "out of range"),
            ("n = nan", "not a whole number"),
            ("n = \"x\"", "not a whole number"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want) && e.contains("key"), "{text}: {e}");
        }
    }

    #[test]
    fn seconds_are_finite_positive_and_bounded() {
        assert_eq!(check_seconds(0.0, true, 0.01, 10.0), None);
        assert_eq!(check_seconds(1.5, false, 0.01, 10.0), None);
        for v in [f64::NAN, f64::INFINITY, -1.0, 1e-310, 11.0] {
            assert!(check_seconds(v, true, 0.01, 10.0).is_some(), "{v}");
        }
        assert!(check_seconds(0.0, false, 0.01, 10.0).is_some());
    }
}
