//! Loading native provider plugins (`.so`) through abi_stable's checked loading.
//!
//! abi_stable's `RootModule::load_from_file` caches one library per root-module *type*, so
//! a second plugin would silently come back as the first. This module loads each file's
//! library header itself, checks the ABI version with memplex's own rule (same major, and
//! for `0.x` the same minor) to give an error that names both versions, and then lets
//! abi_stable check the root module's layout. Libraries are never unloaded (abi_stable
//! leaks them on purpose), so provider objects stay valid for the life of the process.
//!
//! A plugin built against ABI 0.1.1 or later also exports the extension module
//! (`memplex_abi::ffi::ProviderExtMod`, typed regions and bulk fill), and one built
//! against 0.1.2 or later the 0.1.2 extension too (`ProviderExt2Mod`, gathered fill). The
//! host drives an instance through the newest module the library has, each checked like
//! the root module, and otherwise through the 0.1.0 vtable (see docs/abi.md). Looking an
//! extension symbol up is the one `unsafe` call here.
#![allow(
    unsafe_code,
    reason = "reading the extension module's header from a loaded library"
)]

use super::LoadError;
use abi_stable::library::RootModule;
use abi_stable::library::{lib_header_from_path, AbiHeaderRef, LibraryError, RawLibrary};
use abi_stable::std_types::RSliceMut;
use memplex_abi::ffi::{
    FfiProviderBox, FfiProviderExt2Box, FfiProviderExtBox, ProviderExt2ModRef, ProviderExtModRef,
    ProviderModRef,
};
use memplex_abi::{
    FillOp, GatherOp, InitParams, MemoryProvider, MemoryRegion, Netmem, PluginDescription,
    ProviderError, ProviderInfo, Stat, ABI_VERSION,
};
use std::path::Path;

/// A loaded plugin's modules: the 0.1.0 root, and the extensions it has.
#[derive(Clone, Copy)]
pub(super) struct Module {
    root: ProviderModRef,
    ext: Option<ProviderExtModRef>,
    ext2: Option<ProviderExt2ModRef>,
}

impl Module {
    /// The ABI revision it is driven through.
    pub(super) fn revision(&self) -> &'static str {
        match (self.ext2, self.ext) {
            (Some(_), _) => "0.1.2",
            (None, Some(_)) => "0.1.1",
            (None, None) => "0.1.0",
        }
    }

    /// Whether its instances take a vector's parts in one `fill_gather` (0.1.2).
    pub(super) fn gathers(&self) -> bool {
        self.ext2.is_some()
    }
}

/// Opens `file` and returns its checked provider modules.
pub(super) fn load(file: &Path) -> Result<Module, LoadError> {
    let root = load_root(file)?;
    let ext = load_ext::<ProviderExtModRef>(file, memplex_abi::ffi::EXT_SYMBOL)?;
    let ext2 = load_ext::<ProviderExt2ModRef>(file, memplex_abi::ffi::EXT2_SYMBOL)?;
    Ok(Module { root, ext, ext2 })
}

/// The extension module `M` under `symbol`, if the library exports one; checked like the
/// root module.
fn load_ext<M: RootModule>(file: &Path, symbol: &str) -> Result<Option<M>, LoadError> {
    let path = file.to_path_buf();
    let raw = RawLibrary::load_at(file).map_err(|e| LoadError::Open {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let symbol = format!("{symbol}\0");
    // SAFETY: a library exporting this symbol made it with `export_provider!`, as a static
    // `LibHeader`; libloading hands back its address, which is what an `AbiHeaderRef`
    // holds (abi_stable reads its own root-module symbol the same way). The header is
    // then checked (abi_stable version, then layout) before anything in it is used, and
    // the library is never unloaded (`forget` below), so the `'static` it claims holds.
    let header = match unsafe { raw.get::<AbiHeaderRef>(symbol.as_bytes()) } {
        Ok(symbol) => *symbol,
        Err(_) => return Ok(None),
    };
    std::mem::forget(raw);
    let header = header.upgrade().map_err(|e| LoadError::Layout {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    header
        .check_layout::<M>()
        .map(Some)
        .map_err(|e| LoadError::Layout {
            path,
            detail: format!("its ABI extension module `{symbol}`: {e}"),
        })
}

fn load_root(file: &Path) -> Result<ProviderModRef, LoadError> {
    let path = file.to_path_buf();
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(LoadError::Missing {
                path,
                reason: "not a regular file".into(),
            })
        }
        Err(e) => {
            return Err(LoadError::Missing {
                path,
                reason: e.to_string(),
            })
        }
    }
    // dlopen of a truncated library can kill the process (SIGBUS on a page past the
    // file's end): check the headers first.
    let bytes = std::fs::read(file).map_err(|e| LoadError::Missing {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if let Some(reason) = super::elf::problem(&bytes) {
        return Err(LoadError::Open { path, reason });
    }
    drop(bytes);
    let header = lib_header_from_path(file).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path: path.clone(),
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAProvider { path: path.clone() },
        other => LoadError::Layout {
            path: path.clone(),
            detail: other.to_string(),
        },
    })?;
    let found = header.version_strings().version.as_str().to_string();
    if !compatible(ABI_VERSION, &found) {
        return Err(LoadError::IncompatibleAbi {
            path,
            expected: ABI_VERSION.into(),
            found,
        });
    }
    header
        .check_layout::<ProviderModRef>()
        .map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber {
                expected_version,
                actual_version,
                ..
            } => LoadError::IncompatibleAbi {
                path,
                expected: expected_version.to_string(),
                found: actual_version.to_string(),
            },
            other => LoadError::Layout {
                path,
                detail: other.to_string(),
            },
        })
}

/// memplex's rule: same major; while the major is 0, the same minor too.
fn compatible(expected: &str, found: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(expected), parts(found)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

pub(super) fn describe(module: Module) -> Result<PluginDescription, ProviderError> {
    module.root.describe()().into_result()
}

pub(super) fn init(
    module: Module,
    params: &InitParams,
) -> Result<Box<dyn MemoryProvider>, ProviderError> {
    if let Some(ext2) = module.ext2 {
        let object = ext2.init()(params).into_result()?;
        return Ok(Box::new(Ext2Provider(object)));
    }
    if let Some(ext) = module.ext {
        let object = ext.init()(params).into_result()?;
        return Ok(Box::new(ExtProvider(object)));
    }
    let object = module.root.init()(params).into_result()?;
    Ok(Box::new(NativeProvider(object)))
}

/// The ops both vtables have, forwarded the same way: errors come back as they are,
/// except where the trait cannot carry one (`info`, `stats`, `destroy`: an error there is
/// a panic already caught on the plugin side, and the instance's next call quarantines
/// it; an `info` that fails reports capacity 0, which the checker refuses).
macro_rules! forward_common_ops {
    () => {
        fn info(&self) -> ProviderInfo {
            self.0
                .info()
                .into_result()
                .unwrap_or_else(|e| ProviderInfo::new(&format!("<info failed: {e}>"), 0, 0))
        }

        #[inline]
        fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
            self.0
                .alloc_bulk(RSliceMut::from_mut_slice(out))
                .into_result()
                .map(|n| n as usize)
        }

        #[inline]
        fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
            self.0.release_bulk(bufs.into()).into_result()
        }

        fn fill(&mut self, buf: Netmem, offset: u32, bytes: &[u8]) -> Result<(), ProviderError> {
            self.0.fill(buf, offset, bytes.into()).into_result()
        }

        fn stats(&self) -> Vec<Stat> {
            self.0
                .stats()
                .into_result()
                .map(Vec::from)
                .unwrap_or_default()
        }

        fn destroy(&mut self) {
            let _ = self.0.destroy();
        }
    };
}

/// A provider object from a `.so` built against ABI 0.1.0, seen through the common trait:
/// no typed regions, and bulk fill done one `fill` at a time (the trait's default).
struct NativeProvider(FfiProviderBox);

impl MemoryProvider for NativeProvider {
    forward_common_ops!();
}

/// The ops both extensions (0.1.1 and 0.1.2) add to the 0.1.0 vtable's, forwarded the
/// same way.
macro_rules! forward_extension_ops {
    () => {
        fn memory(&self) -> Vec<MemoryRegion> {
            self.0
                .memory()
                .into_result()
                .map(Vec::from)
                .unwrap_or_default()
        }

        fn fill_bulk(&mut self, ops: &[FillOp], bytes: &[u8]) -> Result<usize, ProviderError> {
            self.0
                .fill_bulk(ops.into(), bytes.into())
                .into_result()
                .map(|n| n as usize)
        }
    };
}

/// A provider object from a `.so` with the 0.1.1 extension.
struct ExtProvider(FfiProviderExtBox);

impl MemoryProvider for ExtProvider {
    forward_common_ops!();
    forward_extension_ops!();
}

/// A provider object from a `.so` with the 0.1.2 extension.
struct Ext2Provider(FfiProviderExt2Box);

impl MemoryProvider for Ext2Provider {
    forward_common_ops!();
    forward_extension_ops!();

    fn fill_gather(&mut self, ops: &[GatherOp<'_>]) -> Result<usize, ProviderError> {
        self.0
            .fill_gather(ops.into())
            .into_result()
            .map(|n| n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn version_rule() {
        assert!(compatible("0.1.0", "0.1.7"));
        assert!(!compatible("0.1.0", "0.0.1"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(compatible("1.2.0", "1.0.0"));
        assert!(!compatible("1.0.0", "2.0.0"));
        assert!(!compatible("0.1.0", "garbage"));
    }
}
