//! `hugepage`: a slab on huge pages.
//!
//! It first asks for hugetlbfs pages (`MAP_HUGETLB`), which exist only where the
//! administrator reserved some (`vm.nr_hugepages`). Without them it maps ordinary anonymous
//! memory aligned to 2 MiB and asks for transparent huge pages with `madvise`; `info`
//! says which it got, and whether the kernel allows THP at all.

use crate::memfd::{Pages, Shared};
use crate::slab::{carved_ops, shared_setting, Backing, Carved};
use crate::{Geometry, COMMON_KEYS};
use memmap2::{Advice, MmapMut, MmapOptions};
use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, Plugin, PluginDescription, ProviderError,
    ProviderInfo,
};

const HUGE: usize = 2 << 20;

/// A slab on hugetlbfs pages, else transparent huge pages.
///
/// Settings: `buffers`, `align` as for `slab`; `mode` = `auto` (default), `hugetlb`
/// (fail without reserved huge pages) or `thp`; `shared` = `auto` (default: a shareable
/// memfd wherever that still gets huge pages, else private memory), `true` or `false`.
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
    carved_ops!(carved);
}

/// What `/sys/kernel/mm/transparent_hugepage/{file}` selects (`enabled` for anonymous
/// memory, `shmem_enabled` for shared): `always`, `madvise`, `never`, ...
fn thp_policy(file: &str) -> String {
    std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{file}"))
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
        known.extend(["mode", "shared"]);
        params.deny_unknown(&known)?;
        let geometry = Geometry::from_params(params)?;
        // `shared` defaults to `auto`: shared wherever huge pages can be had shared
        // (hugetlbfs, or a shmem THP policy that allows them), else private, because a
        // provider named hugepage must first of all give huge pages.
        let shmem_thp = ["always", "within_size", "advise", "force"]
            .contains(&thp_policy("shmem_enabled").as_str());
        let (shared, auto) = match params.get("shared") {
            None | Some("auto") => (true, true),
            Some(_) => (shared_setting(params)?, false),
        };
        let mode = params.get("mode").unwrap_or("auto");
        if !["auto", "hugetlb", "thp"].contains(&mode) {
            return Err(ProviderError::invalid_config(format!(
                "setting `mode` = {mode:?} is not one of: auto, hugetlb, thp"
            )));
        }
        let len = geometry.bytes().next_multiple_of(HUGE);
        if mode != "thp" {
            let tlb = if shared {
                Shared::new("memplex-hugepage", len, Pages::HugeTlb).map(Backing::Shared)
            } else {
                MmapOptions::new()
                    .len(len)
                    .huge(None)
                    .map_anon()
                    .map(Backing::Private)
                    .map_err(|e| ProviderError::resource(e.to_string()))
            };
            match tlb {
                Ok(backing) => {
                    return Ok(HugePage {
                        carved: Carved::new(backing, 0, geometry),
                        backing: format!(
                            "hugetlbfs{}, {} MiB",
                            if shared {
                                " memfd, shareable"
                            } else {
                                " (MAP_HUGETLB)"
                            },
                            len >> 20
                        ),
                        huge: true,
                    })
                }
                Err(e) if mode == "hugetlb" => {
                    return Err(ProviderError::resource(format!(
                    "hugetlb memory of {len} bytes: {}; reserve pages with sysctl vm.nr_hugepages",
                    e.message
                )))
                }
                Err(_) => {}
            }
        }
        // Transparent huge pages. Private memory is over-mapped by one huge page so the
        // buffers can start on a 2 MiB boundary, which THP needs; shared memory (a memfd)
        // gets THP only where the kernel's shmem policy allows it.
        let (backing, offset, policy) = if shared && (shmem_thp || !auto) {
            let s = Shared::new("memplex-hugepage", len, Pages::Small)?;
            (Backing::Shared(s), 0, thp_policy("shmem_enabled"))
        } else {
            let map = MmapMut::map_anon(len + HUGE).map_err(|e| {
                ProviderError::resource(format!("mmap of {} bytes failed: {e}", len + HUGE))
            })?;
            let start = map.as_ptr() as usize;
            let offset = start.next_multiple_of(HUGE) - start;
            (Backing::Private(map), offset, thp_policy("enabled"))
        };
        let advised = backing.map().advise(Advice::HugePage).is_ok();
        let huge = advised
            && ["always", "madvise", "advise", "within_size", "force"].contains(&policy.as_str());
        let what = match &backing {
            Backing::Shared(_) => "shareable memfd",
            Backing::Private(_) if auto => "anonymous (not shareable: no huge pages for shared memory here; `shared = true` trades them for sharing)",
            Backing::Private(_) => "anonymous",
        };
        let backing_text = if huge {
            format!("{what}, transparent huge pages (madvise; no hugetlbfs pages reserved; THP policy {policy})")
        } else {
            format!("{what}, 4 KiB pages (no hugetlbfs pages reserved; THP policy {policy})")
        };
        Ok(HugePage {
            carved: Carved::new(backing, offset, geometry),
            backing: backing_text,
            huge,
        })
    }
}
