//! The native boundary: the root module a `.so` exports and the provider object it returns.
//!
//! Authors never touch this module; [`export_provider!`](crate::export_provider) writes the
//! glue. Every call that enters plugin code is wrapped in `catch_unwind` on the plugin side,
//! because abi_stable aborts the process when a panic unwinds across the boundary: a panic
//! comes back to the host as an [`ErrorKind::PANICKED`] error instead, and the instance
//! refuses all later calls with [`ErrorKind::POISONED`].
//!
//! Versioning follows abi_stable's prefix types: `ProviderMod` and the `FfiProvider`
//! vtable may gain fields at the end in later versions of this crate; a host checks the
//! plugin's ABI version and the root module's layout when it loads it.
//!
//! abi_stable lets a *newer* plugin load in an older host (its prefix types may have more
//! fields than the host knows), but refuses an older plugin whose vtable has fewer fields
//! than the host's. So revisions never touch the 0.1.0 module and vtable
//! ([`ProviderMod`], [`FfiProvider`]): a revision adds an *extension module* under its own
//! symbol ([`ProviderExtMod`], [`FfiProviderExt`], 0.1.1), which the host looks for first
//! and checks the same way. A 0.1.0 plugin has no extension and is driven through its
//! 0.1.0 vtable; a 0.1.1 plugin exports both, so a 0.1.0 host still loads it. The same
//! rule refuses a 0.1.1 plugin in a host whose extension vtable grew, so each revision
//! has its own extension module: 0.1.2 adds [`ProviderExt2Mod`] and [`FfiProviderExt2`]
//! (gathered fill) under a third symbol, and a 0.1.2 plugin exports all three. See
//! docs/abi.md.
//!
//! This is one of the few modules allowed `unsafe`: abi_stable's derives and `sabi_trait`
//! expand to unsafe impls, and the library header below needs one unsafe call.
#![allow(
    unsafe_code,
    reason = "abi_stable's macros expand to unsafe impls; see lib_header"
)]
#![allow(
    non_local_definitions,
    reason = "sabi_trait expands to impls inside consts"
)]

pub use crate::netmem::{Delivery, Segment};
use crate::{
    ErrorKind, FillOp, GatherOp, InitParams, MemoryProvider, MemoryRegion, Netmem, Plugin,
    PluginDescription, ProviderError, ProviderInfo, Stat,
};
use abi_stable::library::{LibHeader, RootModule, RootModuleResult};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSlice, RSliceMut, RVec};
use abi_stable::{sabi_trait, StableAbi};
use core::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The version of this contract that a plugin is built against and a host expects: the
/// version of the `memplex-abi` crate. Plugins built against another `0.x` minor version
/// are refused at load.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A provider instance as seen across the boundary. Only the glue implements it.
#[sabi_trait]
pub trait FfiProvider: Send {
    /// See [`MemoryProvider::info`].
    fn info(&self) -> RResult<ProviderInfo, ProviderError>;
    /// See [`MemoryProvider::alloc_bulk`]; returns the count written.
    fn alloc_bulk(&mut self, out: RSliceMut<'_, Netmem>) -> RResult<u32, ProviderError>;
    /// See [`MemoryProvider::release_bulk`].
    fn release_bulk(&mut self, bufs: RSlice<'_, Netmem>) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::fill`].
    fn fill(
        &mut self,
        buf: Netmem,
        offset: u32,
        bytes: RSlice<'_, u8>,
    ) -> RResult<(), ProviderError>;
    /// Reserved (0.1.0's `deliver`, which nothing called): kept so the vtable's layout
    /// does not change. Hosts never call it; the glue declines.
    fn deliver(&mut self, segments: RSlice<'_, Segment>) -> RResult<Delivery, ProviderError>;
    /// See [`MemoryProvider::stats`].
    fn stats(&self) -> RResult<RVec<Stat>, ProviderError>;
    /// See [`MemoryProvider::destroy`].
    #[sabi(last_prefix_field)]
    fn destroy(&mut self) -> RResult<(), ProviderError>;
}

/// An owned provider instance from a plugin.
pub type FfiProviderBox = FfiProvider_TO<'static, RBox<()>>;

/// A provider instance through the 0.1.1 extension: every op of [`MemoryProvider`] up to
/// 0.1.1, and nothing reserved. Frozen: 0.1.2 is [`FfiProviderExt2`].
#[sabi_trait]
pub trait FfiProviderExt: Send {
    /// See [`MemoryProvider::info`].
    fn info(&self) -> RResult<ProviderInfo, ProviderError>;
    /// See [`MemoryProvider::memory`].
    fn memory(&self) -> RResult<RVec<MemoryRegion>, ProviderError>;
    /// See [`MemoryProvider::alloc_bulk`]; returns the count written, unclamped.
    fn alloc_bulk(&mut self, out: RSliceMut<'_, Netmem>) -> RResult<u32, ProviderError>;
    /// See [`MemoryProvider::release_bulk`].
    fn release_bulk(&mut self, bufs: RSlice<'_, Netmem>) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::fill`].
    fn fill(
        &mut self,
        buf: Netmem,
        offset: u32,
        bytes: RSlice<'_, u8>,
    ) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::stats`].
    fn stats(&self) -> RResult<RVec<Stat>, ProviderError>;
    /// See [`MemoryProvider::destroy`].
    fn destroy(&mut self) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::fill_bulk`]; returns the count of ops done.
    #[sabi(last_prefix_field)]
    fn fill_bulk(
        &mut self,
        ops: RSlice<'_, FillOp>,
        bytes: RSlice<'_, u8>,
    ) -> RResult<u32, ProviderError>;
}

/// An owned provider instance through the extension.
pub type FfiProviderExtBox = FfiProviderExt_TO<'static, RBox<()>>;

/// A provider instance through the 0.1.2 extension: the 0.1.1 ops and the gathered fill.
/// Later revisions add a module of their own, as this one did.
#[sabi_trait]
pub trait FfiProviderExt2: Send {
    /// See [`MemoryProvider::info`].
    fn info(&self) -> RResult<ProviderInfo, ProviderError>;
    /// See [`MemoryProvider::memory`].
    fn memory(&self) -> RResult<RVec<MemoryRegion>, ProviderError>;
    /// See [`MemoryProvider::alloc_bulk`]; returns the count written, unclamped.
    fn alloc_bulk(&mut self, out: RSliceMut<'_, Netmem>) -> RResult<u32, ProviderError>;
    /// See [`MemoryProvider::release_bulk`].
    fn release_bulk(&mut self, bufs: RSlice<'_, Netmem>) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::fill`].
    fn fill(
        &mut self,
        buf: Netmem,
        offset: u32,
        bytes: RSlice<'_, u8>,
    ) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::stats`].
    fn stats(&self) -> RResult<RVec<Stat>, ProviderError>;
    /// See [`MemoryProvider::destroy`].
    fn destroy(&mut self) -> RResult<(), ProviderError>;
    /// See [`MemoryProvider::fill_bulk`]; returns the count of ops done.
    fn fill_bulk(
        &mut self,
        ops: RSlice<'_, FillOp>,
        bytes: RSlice<'_, u8>,
    ) -> RResult<u32, ProviderError>;
    /// See [`MemoryProvider::fill_gather`]; returns the count of ops done.
    #[sabi(last_prefix_field)]
    fn fill_gather(&mut self, ops: RSlice<'_, GatherOp<'_>>) -> RResult<u32, ProviderError>;
}

/// An owned provider instance through the 0.1.2 extension.
pub type FfiProviderExt2Box = FfiProviderExt2_TO<'static, RBox<()>>;

/// The symbol under which a plugin exports its [`ProviderExt2Mod`] header.
pub const EXT2_SYMBOL: &str = "memplex_provider_ext2";

/// The extension module of 0.1.2 a plugin exports beside the root and 0.1.1 modules.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ProviderExt2ModRef)))]
#[sabi(missing_field(option))]
pub struct ProviderExt2Mod {
    /// Makes one provider instance, driven through the 0.1.2 vtable.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(params: &InitParams) -> RResult<FfiProviderExt2Box, ProviderError>,
}

impl RootModule for ProviderExt2ModRef {
    abi_stable::declare_root_module_statics! {ProviderExt2ModRef}
    const BASE_NAME: &'static str = "memplex_provider_ext2";
    const NAME: &'static str = "memplex provider extension 0.1.2";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

/// The symbol under which a plugin exports its [`ProviderExtMod`] header.
pub const EXT_SYMBOL: &str = "memplex_provider_ext";

/// The extension module (0.1.1) a plugin exports beside its root module.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ProviderExtModRef)))]
#[sabi(missing_field(option))]
pub struct ProviderExtMod {
    /// Makes one provider instance, driven through the extension's vtable.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(params: &InitParams) -> RResult<FfiProviderExtBox, ProviderError>,
}

impl RootModule for ProviderExtModRef {
    abi_stable::declare_root_module_statics! {ProviderExtModRef}
    const BASE_NAME: &'static str = "memplex_provider_ext";
    const NAME: &'static str = "memplex provider extension";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

/// The root module every provider plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ProviderModRef)))]
#[sabi(missing_field(option))]
pub struct ProviderMod {
    /// Static facts about the plugin.
    pub describe: extern "C" fn() -> RResult<PluginDescription, ProviderError>,
    /// Makes one provider instance.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(params: &InitParams) -> RResult<FfiProviderBox, ProviderError>,
}

impl RootModule for ProviderModRef {
    abi_stable::declare_root_module_statics! {ProviderModRef}
    const BASE_NAME: &'static str = "memplex_provider";
    const NAME: &'static str = "memplex provider";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

/// Runs `f`, turning a panic into a [`ErrorKind::PANICKED`] error with the panic's message.
fn guard<T>(f: impl FnOnce() -> Result<T, ProviderError>) -> RResult<T, ProviderError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(payload) => RResult::RErr(ProviderError::new(
            ErrorKind::PANICKED,
            format!("provider panicked: {}", panic_message(&*payload)),
        )),
    }
}

/// The text of a panic payload, when it has one.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// A provider behind the boundary: catches panics and refuses calls after one.
struct Guarded<P> {
    inner: Option<P>,
    poisoned: Cell<bool>,
}

impl<P: MemoryProvider> Guarded<P> {
    fn call<T>(&self, f: impl FnOnce(&P) -> Result<T, ProviderError>) -> RResult<T, ProviderError> {
        match &self.inner {
            Some(inner) if !self.poisoned.get() => self.note(guard(|| f(inner))),
            _ => RResult::RErr(poisoned()),
        }
    }

    fn call_mut<T>(
        &mut self,
        f: impl FnOnce(&mut P) -> Result<T, ProviderError>,
    ) -> RResult<T, ProviderError> {
        let poisoned_flag = &self.poisoned;
        match &mut self.inner {
            Some(inner) if !poisoned_flag.get() => {
                let result = guard(|| f(inner));
                if matches!(&result, RResult::RErr(e) if e.kind == ErrorKind::PANICKED) {
                    poisoned_flag.set(true);
                }
                result
            }
            _ => RResult::RErr(poisoned()),
        }
    }

    fn note<T>(&self, result: RResult<T, ProviderError>) -> RResult<T, ProviderError> {
        if matches!(&result, RResult::RErr(e) if e.kind == ErrorKind::PANICKED) {
            self.poisoned.set(true);
        }
        result
    }
}

fn poisoned() -> ProviderError {
    ProviderError::new(
        ErrorKind::POISONED,
        "provider panicked earlier and takes no more calls",
    )
}

impl<P: MemoryProvider> FfiProvider for Guarded<P> {
    fn info(&self) -> RResult<ProviderInfo, ProviderError> {
        self.call(|p| Ok(p.info()))
    }

    fn alloc_bulk(&mut self, mut out: RSliceMut<'_, Netmem>) -> RResult<u32, ProviderError> {
        self.call_mut(|p| {
            let n = p.alloc_bulk(out.as_mut_slice())?;
            // The count goes to the host as the provider gave it, past the slice or not:
            // the host reads only the slice it passed and refuses an overcount as a
            // breach of the contract. (Clamping it here hid such a provider's bug.)
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    fn release_bulk(&mut self, bufs: RSlice<'_, Netmem>) -> RResult<(), ProviderError> {
        self.call_mut(|p| p.release_bulk(bufs.as_slice()))
    }

    fn fill(
        &mut self,
        buf: Netmem,
        offset: u32,
        bytes: RSlice<'_, u8>,
    ) -> RResult<(), ProviderError> {
        self.call_mut(|p| p.fill(buf, offset, bytes.as_slice()))
    }

    fn deliver(&mut self, _: RSlice<'_, Segment>) -> RResult<Delivery, ProviderError> {
        RResult::ROk(Delivery::Declined)
    }

    fn stats(&self) -> RResult<RVec<Stat>, ProviderError> {
        self.call(|p| Ok(p.stats().into()))
    }

    fn destroy(&mut self) -> RResult<(), ProviderError> {
        self.call_mut(|p| {
            p.destroy();
            Ok(())
        })
    }
}

impl<P: MemoryProvider> FfiProviderExt for Guarded<P> {
    fn info(&self) -> RResult<ProviderInfo, ProviderError> {
        FfiProvider::info(self)
    }

    fn memory(&self) -> RResult<RVec<MemoryRegion>, ProviderError> {
        self.call(|p| Ok(p.memory().into()))
    }

    fn alloc_bulk(&mut self, out: RSliceMut<'_, Netmem>) -> RResult<u32, ProviderError> {
        FfiProvider::alloc_bulk(self, out)
    }

    fn release_bulk(&mut self, bufs: RSlice<'_, Netmem>) -> RResult<(), ProviderError> {
        FfiProvider::release_bulk(self, bufs)
    }

    fn fill(
        &mut self,
        buf: Netmem,
        offset: u32,
        bytes: RSlice<'_, u8>,
    ) -> RResult<(), ProviderError> {
        FfiProvider::fill(self, buf, offset, bytes)
    }

    fn stats(&self) -> RResult<RVec<Stat>, ProviderError> {
        FfiProvider::stats(self)
    }

    fn destroy(&mut self) -> RResult<(), ProviderError> {
        FfiProvider::destroy(self)
    }

    fn fill_bulk(
        &mut self,
        ops: RSlice<'_, FillOp>,
        bytes: RSlice<'_, u8>,
    ) -> RResult<u32, ProviderError> {
        self.call_mut(|p| {
            let n = p.fill_bulk(ops.as_slice(), bytes.as_slice())?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }
}

impl<P: MemoryProvider> FfiProviderExt2 for Guarded<P> {
    fn info(&self) -> RResult<ProviderInfo, ProviderError> {
        FfiProvider::info(self)
    }

    fn memory(&self) -> RResult<RVec<MemoryRegion>, ProviderError> {
        FfiProviderExt::memory(self)
    }

    fn alloc_bulk(&mut self, out: RSliceMut<'_, Netmem>) -> RResult<u32, ProviderError> {
        FfiProvider::alloc_bulk(self, out)
    }

    fn release_bulk(&mut self, bufs: RSlice<'_, Netmem>) -> RResult<(), ProviderError> {
        FfiProvider::release_bulk(self, bufs)
    }

    fn fill(
        &mut self,
        buf: Netmem,
        offset: u32,
        bytes: RSlice<'_, u8>,
    ) -> RResult<(), ProviderError> {
        FfiProvider::fill(self, buf, offset, bytes)
    }

    fn stats(&self) -> RResult<RVec<Stat>, ProviderError> {
        FfiProvider::stats(self)
    }

    fn destroy(&mut self) -> RResult<(), ProviderError> {
        FfiProvider::destroy(self)
    }

    fn fill_bulk(
        &mut self,
        ops: RSlice<'_, FillOp>,
        bytes: RSlice<'_, u8>,
    ) -> RResult<u32, ProviderError> {
        FfiProviderExt::fill_bulk(self, ops, bytes)
    }

    fn fill_gather(&mut self, ops: RSlice<'_, GatherOp<'_>>) -> RResult<u32, ProviderError> {
        self.call_mut(|p| {
            let n = p.fill_gather(ops.as_slice())?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }
}

impl<P> Drop for Guarded<P> {
    fn drop(&mut self) {
        // A panic in the provider's own Drop must not unwind out of the vtable's drop.
        let inner = self.inner.take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(inner)));
    }
}

extern "C" fn describe<P: Plugin>() -> RResult<PluginDescription, ProviderError> {
    guard(|| Ok(P::describe()))
}

fn guarded<P: Plugin>(params: &InitParams) -> Result<Guarded<P>, ProviderError> {
    Ok(Guarded {
        inner: Some(P::init(params)?),
        poisoned: Cell::new(false),
    })
}

extern "C" fn init<P: Plugin>(params: &InitParams) -> RResult<FfiProviderBox, ProviderError> {
    guard(|| {
        let g = guarded::<P>(params)?;
        Ok(FfiProvider_TO::from_value(g, sabi_trait::TD_Opaque))
    })
}

extern "C" fn init_ext<P: Plugin>(
    params: &InitParams,
) -> RResult<FfiProviderExtBox, ProviderError> {
    guard(|| {
        let g = guarded::<P>(params)?;
        Ok(FfiProviderExt_TO::from_value(g, sabi_trait::TD_Opaque))
    })
}

extern "C" fn init_ext2<P: Plugin>(
    params: &InitParams,
) -> RResult<FfiProviderExt2Box, ProviderError> {
    guard(|| {
        let g = guarded::<P>(params)?;
        Ok(FfiProviderExt2_TO::from_value(g, sabi_trait::TD_Opaque))
    })
}

/// The root module for plugin type `P`.
pub fn module_for<P: Plugin>() -> ProviderModRef {
    ProviderMod {
        describe: describe::<P>,
        init: init::<P>,
    }
    .leak_into_prefix()
}

extern "C" fn root_module_loader<P: Plugin>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(module_for::<P>)
}

/// The extension module for plugin type `P`.
pub fn ext_module_for<P: Plugin>() -> ProviderExtModRef {
    ProviderExtMod {
        init: init_ext::<P>,
    }
    .leak_into_prefix()
}

extern "C" fn ext_module_loader<P: Plugin>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(ext_module_for::<P>)
}

/// The 0.1.2 extension module for plugin type `P`.
pub fn ext2_module_for<P: Plugin>() -> ProviderExt2ModRef {
    ProviderExt2Mod {
        init: init_ext2::<P>,
    }
    .leak_into_prefix()
}

extern "C" fn ext2_module_loader<P: Plugin>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(ext2_module_for::<P>)
}

/// The 0.1.2 extension header [`export_provider!`](crate::export_provider) puts in a
/// plugin.
#[doc(hidden)]
pub const fn ext2_header<P: Plugin>() -> LibHeader {
    // SAFETY: as for `lib_header`: `ext2_module_loader::<P>` returns the module of type
    // `ProviderExt2ModRef`, the type named here.
    unsafe {
        LibHeader::from_constructor::<ProviderExt2ModRef>(
            ext2_module_loader::<P>,
            abi_stable::library::CheckTypeLayout::Yes,
        )
    }
}

/// The extension header [`export_provider!`](crate::export_provider) puts in a plugin.
#[doc(hidden)]
pub const fn ext_header<P: Plugin>() -> LibHeader {
    // SAFETY: as for `lib_header`: `ext_module_loader::<P>` returns the module of type
    // `ProviderExtModRef`, the type named here.
    unsafe {
        LibHeader::from_constructor::<ProviderExtModRef>(
            ext_module_loader::<P>,
            abi_stable::library::CheckTypeLayout::Yes,
        )
    }
}

/// The library header [`export_provider!`](crate::export_provider) puts in a plugin.
#[doc(hidden)]
pub const fn lib_header<P: Plugin>() -> LibHeader {
    // SAFETY: `from_constructor` requires that the constructor return the root module of
    // type `ProviderModRef`, the type named here; `root_module_loader::<P>` builds exactly
    // that with `module_for::<P>`. This is what abi_stable's `#[export_root_module]`
    // expands to, spelled out so plugins need no direct abi_stable dependency.
    unsafe {
        LibHeader::from_constructor::<ProviderModRef>(
            root_module_loader::<P>,
            abi_stable::library::CheckTypeLayout::Yes,
        )
    }
}

/// Exports a [`Plugin`] type as this library's provider. Put it once in a `cdylib` crate:
///
/// ```ignore
/// memplex_abi::export_provider!(MyProvider);
/// ```
#[macro_export]
macro_rules! export_provider {
    ($plugin:ty) => {
        /// The abi_stable root module of this memplex provider plugin.
        #[doc(hidden)]
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __MEMPLEX_PROVIDER_ROOT_MODULE: $crate::ffi::__LibHeader =
            $crate::ffi::lib_header::<$plugin>();
        /// The memplex provider ABI extension module (0.1.1).
        #[doc(hidden)]
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(export_name = "memplex_provider_ext")]
        pub static __MEMPLEX_PROVIDER_EXT_MODULE: $crate::ffi::__LibHeader =
            $crate::ffi::ext_header::<$plugin>();
        /// The memplex provider ABI extension module (0.1.2).
        #[doc(hidden)]
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(export_name = "memplex_provider_ext2")]
        pub static __MEMPLEX_PROVIDER_EXT2_MODULE: $crate::ffi::__LibHeader =
            $crate::ffi::ext2_header::<$plugin>();
    };
}

#[doc(hidden)]
pub use abi_stable::library::LibHeader as __LibHeader;

#[cfg(test)]
mod tests {
    #[test]
    fn export_name_is_the_one_abi_stable_looks_up() {
        // export_provider! writes the symbol name literally; this pins it to abi_stable's.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
        assert_eq!(super::EXT_SYMBOL, "memplex_provider_ext");
        assert_eq!(super::EXT2_SYMBOL, "memplex_provider_ext2");
    }
}
