//! `shm`: memory made to be handed to consumer processes. One sealed memfd (it can never
//! shrink or grow, and nobody can map it writable after the host), cut into fixed
//! buffers; huge pages on request.

use crate::memfd::{Pages, Shared};
use crate::slab::{carved_ops, Backing, Carved};
use crate::{Geometry, COMMON_KEYS};
use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, Plugin, PluginDescription, ProviderError,
    ProviderInfo,
};

/// A sealed memfd cut into fixed buffers, shareable by file descriptor.
///
/// Settings: `buffers`, `align` as for `slab`; `huge` = `off` (default, 4 KiB pages),
/// `try` (hugetlbfs pages when reserved, else 4 KiB) or `require` (fail without them).
pub struct Shm {
    carved: Carved,
    huge: bool,
}

impl MemoryProvider for Shm {
    fn info(&self) -> ProviderInfo {
        let mut caps = Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE;
        if self.huge {
            caps = caps | Capabilities::HUGE_PAGES;
        }
        let backing = if self.huge {
            "sealed memfd on hugetlbfs pages, shareable read-only"
        } else {
            "sealed memfd, 4 KiB pages, shareable read-only"
        };
        self.carved.info("shm", caps, backing)
    }
    carved_ops!(carved);
}

impl Plugin for Shm {
    fn describe() -> PluginDescription {
        PluginDescription::new(
            "shm",
            env!("CARGO_PKG_VERSION"),
            "sealed memfd for consumer processes, 4 KiB or huge pages",
        )
    }

    fn init(params: &InitParams) -> Result<Self, ProviderError> {
        params.deny_unknown(&[COMMON_KEYS[0], COMMON_KEYS[1], "huge"])?;
        let geometry = Geometry::from_params(params)?;
        let huge = params.get("huge").unwrap_or("off");
        let want = match huge {
            "off" => false,
            "try" | "require" => true,
            other => {
                return Err(ProviderError::invalid_config(format!(
                    "setting `huge` = {other:?} is not one of: off, try, require"
                )))
            }
        };
        if want {
            let len = geometry.bytes().next_multiple_of(2 << 20);
            match Shared::new("memplex-shm", len, Pages::HugeTlb) {
                Ok(s) => {
                    return Ok(Shm {
                        carved: Carved::new(Backing::Shared(s), 0, geometry),
                        huge: true,
                    })
                }
                Err(e) if huge == "require" => return Err(e),
                Err(_) => {}
            }
        }
        let s = Shared::new("memplex-shm", geometry.bytes(), Pages::Small)?;
        Ok(Shm {
            carved: Carved::new(Backing::Shared(s), 0, geometry),
            huge: false,
        })
    }
}
