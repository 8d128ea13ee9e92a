//! `hugepage`: a slab on huge pages.
//!
//! It first asks for hugetlbfs pages (`MAP_HUGETLB`), which exist only where the
//! administrator reserved some (`vm.nr_hugepages`). Without them it maps ordinary anonymous
//! memory aligned to 2 MiB and asks for transparent huge pages with `madvise`; `info`
//! says which it got, and whether the kernel allows THP at all.

use crate::slab::Carved;
use crate::{Geometry, COMMON_KEYS};
use memmap2::{Advice, MmapMut, MmapOptions};
use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, Netmem, Plugin, PluginDescription, ProviderError,
    ProviderInfo, Stat,
};

const HUGE: usize = 2 << 20;

/// A slab on hugetlbfs pages, else transparent huge pages.
///
/// Settings: `buffers`, `align` as for `slab`; `mode` = `auto` (default), `hugetlb`
/// (fail without reserved huge pages) or `thp`.
pub struct HugePage {
    carved: Carved,
    backing: String,
    huge: bool,
}

impl MemoryProvider for HugePage {
    fn info(&self) -> ProviderInfo {
        let mut caps = Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE;
        if self.huge {
            caps = caps | Capabilities::HUGE_PAGES;
        }
        self.carved.info("hugepage", caps, &self.backing)
    }
    fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
        Ok(self.carved.alloc_bulk(out))
    }
    fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
        self.carved.release_bulk(bufs)
    }
    fn stats(&self) -> Vec<Stat> {
        self.carved.stats()
    }
}

/// What `/sys/kernel/mm/transparent_hugepage/enabled` selects: `always`, `madvise` or `never`.
fn thp_policy() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| Some(s.split('[').nth(1)?.split(']').next()?.to_string()))
        .unwrap_or_else(|| "unavailable".to_string())
}

impl Plugin for HugePage {
    fn describe() -> PluginDescription {
        PluginDescription::new(
            "hugepage",
            env!("CARGO_PKG_VERSION"),
            "slab on MAP_HUGETLB pages, else transparent huge pages (madvise)",
        )
    }

    fn init(params: &InitParams) -> Result<Self, ProviderError> {
        let mut known = COMMON_KEYS.to_vec();
        known.push("mode");
        params.deny_unknown(&known)?;
        let geometry = Geometry::from_params(params)?;
        let mode = params.get("mode").unwrap_or("auto");
        if !["auto", "hugetlb", "thp"].contains(&mode) {
            return Err(ProviderError::invalid_config(format!(
                "setting `mode` = {mode:?} is not one of: auto, hugetlb, thp"
            )));
        }
        let len = geometry.bytes().next_multiple_of(HUGE);
        if mode != "thp" {
            match MmapOptions::new().len(len).huge(None).map_anon() {
                Ok(map) => {
                    return Ok(HugePage {
                        carved: Carved::new(map, 0, geometry),
                        backing: format!("hugetlbfs (MAP_HUGETLB), {} MiB", len >> 20),
                        huge: true,
                    })
                }
                Err(e) if mode == "hugetlb" => {
                    return Err(ProviderError::resource(format!(
                        "MAP_HUGETLB of {len} bytes failed ({e}); reserve pages with sysctl vm.nr_hugepages"
                    )))
                }
                Err(_) => {}
            }
        }
        // Over-map by one huge page so the buffers can start on a 2 MiB boundary, which THP
        // needs to back them with huge pages.
        let map = MmapMut::map_anon(len + HUGE).map_err(|e| {
            ProviderError::resource(format!("mmap of {} bytes failed: {e}", len + HUGE))
        })?;
        let start = map.as_ptr() as usize;
        let offset = start.next_multiple_of(HUGE) - start;
        let policy = thp_policy();
        let advised = map.advise(Advice::HugePage).is_ok();
        let huge = advised && (policy == "always" || policy == "madvise");
        let backing = if huge {
            format!("transparent huge pages (madvise; no hugetlbfs pages reserved; THP policy {policy})")
        } else {
            format!("4 KiB pages (no hugetlbfs pages reserved; THP policy {policy})")
        };
        Ok(HugePage {
            carved: Carved::new(map, offset, geometry),
            backing,
            huge,
        })
    }
}
