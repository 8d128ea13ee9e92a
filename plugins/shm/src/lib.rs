//! The `shm` provider from `memplex-providers`, exported as a native plugin.
memplex_abi::export_provider!(memplex_providers::Shm);
