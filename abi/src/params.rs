//! What the host passes to a provider's `init`.

use crate::ProviderError;
use abi_stable::std_types::{RString, RVec, Tuple2};
use abi_stable::StableAbi;
use core::str::FromStr;

/// Init params, like the kernel's `page_pool_params` plus the provider's own settings.
///
/// `config` holds the provider's own table from the TOML config, flattened to
/// `key = "value"` strings (numbers and booleans are written in their TOML form).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Default)]
pub struct InitParams {
    /// Which receive queue this instance serves.
    pub queue_id: u32,
    /// The smallest buffer the host will accept.
    pub buf_size: u32,
    /// How many buffers the host's pool in front of this instance may hold.
    pub pool_size: u32,
    /// The provider's own settings.
    pub config: RVec<Tuple2<RString, RString>>,
}

impl InitParams {
    /// Params with no provider settings.
    pub fn new(queue_id: u32, buf_size: u32, pool_size: u32) -> Self {
        InitParams {
            queue_id,
            buf_size,
            pool_size,
            config: RVec::new(),
        }
    }

    /// Adds one provider setting.
    #[must_use]
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.config.push(Tuple2(key.into(), value.into()));
        self
    }

    /// The raw value of setting `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .rev()
            .find(|kv| kv.0.as_str() == key)
            .map(|kv| kv.1.as_str())
    }

    /// Setting `key` parsed as `T`; `Ok(None)` when absent, an error naming the key, the
    /// value and the expected type when it does not parse.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, ProviderError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|_| {
                ProviderError::invalid_config(format!(
                    "setting `{key}` = {raw:?} is not a valid {}",
                    core::any::type_name::<T>()
                ))
            }),
        }
    }

    /// Fails with an error naming the first setting not in `known`, and listing `known`.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), ProviderError> {
        match self
            .config
            .iter()
            .find(|kv| !known.contains(&kv.0.as_str()))
        {
            None => Ok(()),
            Some(kv) => Err(ProviderError::invalid_config(format!(
                "unknown setting `{}`; this provider knows: {}",
                kv.0,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }
}
