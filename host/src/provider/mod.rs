//! Memory providers as the host sees them.
//!
//! One abstraction, [`MemoryProvider`] (from `memplex-abi`), is implemented by built-in
//! providers linked into this binary and by native `.so` plugins loaded through
//! abi_stable; everything above this module holds a `Box<dyn MemoryProvider>` wrapped in
//! a [`CheckedProvider`], which checks every descriptor the provider hands out and
//! quarantines a provider that breaks the contract.
//!
//! ```text
//!  "slab" / "builtin:slab" / "./libfoo.so"
//!        |  discovery (MEMPLEX_PLUGIN_PATH, build dir)
//!        v
//!  ProviderPlugin --instantiate(InitParams)--> CheckedProvider --> Pool
//!   (built-in | native .so)                      (descriptor checks, quarantine)
//! ```

mod builtin;
mod checked;
mod discovery;
mod elf;
mod native;
mod regions;
pub mod wasm;

pub use checked::{quarantines, CheckedProvider, Fault, Gathering, ProviderCounters, Trust};
pub use discovery::{PluginPath, PluginSpec};
pub use memplex_abi::{
    Capabilities, InitParams, MemoryProvider, Netmem, PluginDescription, ProviderError,
    ProviderInfo, Stat,
};

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a plugin could not be found, loaded or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// No plugin of that name on the plugin path.
    #[error(
        "no provider plugin named `{name}`: tried {} in {}; {}{}",
        if tried.is_empty() { "no file".to_string() } else { tried.join(", ") },
        fmt_dirs(searched),
        fmt_available(available),
        builtin_hint(name)
    )]
    NotFound {
        /// The name asked for.
        name: String,
        /// The file names tried in each directory.
        tried: Vec<String>,
        /// The directories searched.
        searched: Vec<PathBuf>,
        /// The providers found there instead: the name each reports, and its file.
        available: Vec<(String, PathBuf)>,
    },
    /// The file does not exist or cannot be read.
    #[error("plugin file {}: {reason}", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        reason: String,
    },
    /// The dynamic loader refused the file (not a shared library, wrong architecture ...).
    #[error("{} is not a loadable shared library: {reason}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A shared library that exports no memplex provider.
    #[error("{} is a shared library but not a memplex provider (it exports no provider root module)", path.display())]
    NotAProvider {
        /// The file.
        path: PathBuf,
    },
    /// Built against another version of the provider ABI.
    #[error(
        "plugin {} was built against memplex-abi {found}, but this host speaks {expected}; \
         rebuild the plugin against memplex-abi {expected}",
        path.display()
    )]
    IncompatibleAbi {
        /// The file.
        path: PathBuf,
        /// The ABI version this host implements.
        expected: String,
        /// The ABI version the plugin declares.
        found: String,
    },
    /// Same version, but the module's layout differs (a different build of the ABI crate).
    #[error("plugin {} has a provider module whose layout does not match this host's: {detail}", path.display())]
    Layout {
        /// The file.
        path: PathBuf,
        /// abi_stable's account of the difference.
        detail: String,
    },
    /// The plugin's `describe` or `init` failed.
    #[error("provider `{plugin}` failed in {op}: {error}")]
    Provider {
        /// The plugin's name and origin.
        plugin: String,
        /// `describe` or `init`.
        op: &'static str,
        /// What it returned (a caught panic shows as kind `panicked`).
        error: ProviderError,
    },
    /// The host would read or write the provider's buffers by address, but it declares
    /// no region to check those addresses against.
    #[error(
        "provider `{plugin}` lets the host read or write its buffers by address but declares no memory region, so no address it hands out can be checked; declare the regions its buffers lie in (`ProviderInfo::region(base, len)`), or trust it as it is with `unverified = true` in its provider table"
    )]
    NoRegion {
        /// The plugin's name and origin.
        plugin: String,
    },
    /// The provider's `info` makes no sense.
    #[error("provider `{plugin}` reported unusable info: {reason}")]
    BadInfo {
        /// The plugin's name and origin.
        plugin: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn fmt_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no directories)".into();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_available(available: &[(String, PathBuf)]) -> String {
    if available.is_empty() {
        return "no provider was found there".into();
    }
    let names: Vec<String> = available
        .iter()
        .map(|(name, file)| {
            let file = file.file_name().map_or_else(
                || file.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            );
            format!("{name} ({file})")
        })
        .collect();
    format!("providers found there: {}", names.join(", "))
}

fn builtin_hint(name: &str) -> String {
    match builtin::find(name) {
        Some(_) => format!("; `builtin:{name}` is linked into memplex, or run `cargo xtask build` to build the .so"),
        None => format!("; built-in providers: {}", builtin::names().join(", ")),
    }
}

type BuiltinInit = fn(&InitParams) -> Result<Box<dyn MemoryProvider>, ProviderError>;

#[derive(Clone)]
enum Kind {
    Builtin(BuiltinInit),
    Native(native::Module),
    Wasm(wasm::WasmModule, wasm::WasmLimits),
}

/// A provider plugin, loaded and checked, from which instances are made (one per queue).
#[derive(Clone)]
pub struct ProviderPlugin {
    description: PluginDescription,
    origin: Origin,
    kind: Kind,
    trust: Trust,
}

/// Where a plugin came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Linked into this binary.
    Builtin,
    /// A native shared library.
    Native(PathBuf),
    /// A sandboxed WASM module.
    Wasm(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Native(p) | Origin::Wasm(p) => write!(f, "{}", p.display()),
        }
    }
}

impl std::fmt::Debug for ProviderPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProviderPlugin({} from {})",
            self.description.name, self.origin
        )
    }
}

impl ProviderPlugin {
    /// Finds and loads the plugin `spec` names: `builtin:NAME`, a path, a file name on
    /// `path`, or a name on `path`: by its file names first, then by the name a plugin
    /// there reports. A miss lists what was tried, where, and what was found instead.
    pub fn load(spec: &str, path: &PluginPath) -> Result<Self, LoadError> {
        match path.resolve(spec) {
            Ok(PluginSpec::Builtin(name)) => {
                Self::builtin(&name).ok_or_else(|| LoadError::NotFound {
                    name: spec.to_string(),
                    tried: Vec::new(),
                    searched: Vec::new(),
                    available: builtin::names()
                        .iter()
                        .map(|n| (format!("builtin:{n}"), PathBuf::from("linked in")))
                        .collect(),
                })
            }
            Ok(PluginSpec::File(file)) => Self::open(&file),
            Err(LoadError::NotFound {
                name,
                tried,
                searched,
                ..
            }) => {
                let mut available = Vec::new();
                for file in path.list() {
                    // A file that does not load is not a candidate; `memplex providers`
                    // shows why.
                    if let Ok(plugin) = Self::open(&file) {
                        if plugin.description.name.as_str() == spec {
                            return Ok(plugin);
                        }
                        available.push((plugin.description.name.to_string(), file));
                    }
                }
                Err(LoadError::NotFound {
                    name,
                    tried,
                    searched,
                    available,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The built-in provider `name` (`heap`, `slab`, `hugepage`).
    pub fn builtin(name: &str) -> Option<Self> {
        let b = builtin::find(name)?;
        Some(ProviderPlugin {
            description: (b.describe)(),
            origin: Origin::Builtin,
            kind: Kind::Builtin(b.init),
            trust: Trust::Checked,
        })
    }

    /// Loads a plugin from a file: a WASM module (`.wasm`, `.wat`), compiled and checked
    /// against the WASM contract, or a native library, checked for ABI version and layout.
    pub fn open(file: &Path) -> Result<Self, LoadError> {
        if matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("wasm" | "wat")
        ) {
            let module = wasm::load(file)?;
            let description = PluginDescription::new(
                &module.name(),
                "wasm",
                "sandboxed WASM provider (wasmtime)",
            );
            return Ok(ProviderPlugin {
                description,
                origin: Origin::Wasm(file.to_path_buf()),
                kind: Kind::Wasm(module, wasm::WasmLimits::default()),
                trust: Trust::Checked,
            });
        }
        let module = native::load(file)?;
        let description = native::describe(module).map_err(|error| LoadError::Provider {
            plugin: file.display().to_string(),
            op: "describe",
            error,
        })?;
        Ok(ProviderPlugin {
            description,
            origin: Origin::Native(file.to_path_buf()),
            kind: Kind::Native(module),
            trust: Trust::Checked,
        })
    }

    /// Sets the sandbox limits of a WASM plugin's instances (no effect on others).
    #[must_use]
    pub fn with_wasm_limits(mut self, limits: wasm::WasmLimits) -> Self {
        if let Kind::Wasm(_, l) = &mut self.kind {
            *l = limits;
        }
        self
    }

    /// Takes instances that the host reads or writes by address although they declare no
    /// memory region (`unverified = true` in the config); see [`Trust`].
    #[must_use]
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// How far instances are trusted.
    pub fn trust(&self) -> Trust {
        self.trust
    }

    /// The provider ABI revision a native plugin is driven through (`0.1.0`; `0.1.1` with
    /// typed regions and bulk fill; `0.1.2` with gathered fill); `None` for built-ins and
    /// WASM modules.
    pub fn abi_revision(&self) -> Option<&'static str> {
        match &self.kind {
            Kind::Native(m) => Some(m.revision()),
            _ => None,
        }
    }

    /// True for a sandboxed WASM plugin.
    pub fn is_wasm(&self) -> bool {
        matches!(self.kind, Kind::Wasm(..))
    }

    /// Name, version and summary.
    pub fn description(&self) -> &PluginDescription {
        &self.description
    }

    /// Where it was loaded from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// `name (origin)`, for messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.description.name, self.origin)
    }

    /// Makes a bare instance, without the host's checks: for benchmarks and diagnostics.
    /// Everything else should use [`instantiate`](Self::instantiate).
    pub fn instantiate_unchecked(
        &self,
        params: &InitParams,
    ) -> Result<Box<dyn MemoryProvider>, LoadError> {
        let result = match &self.kind {
            Kind::Builtin(init) => match catch_unwind(AssertUnwindSafe(|| init(params))) {
                Ok(r) => r,
                Err(payload) => Err(ProviderError::new(
                    memplex_abi::ErrorKind::PANICKED,
                    format!(
                        "provider panicked: {}",
                        memplex_abi::ffi::panic_message(&*payload)
                    ),
                )),
            },
            Kind::Native(module) => native::init(*module, params),
            Kind::Wasm(module, limits) => module.instantiate(params, *limits),
        };
        result.map_err(|error| LoadError::Provider {
            plugin: self.label(),
            op: "init",
            error,
        })
    }

    /// Makes an instance for one queue, behind the host's descriptor checks.
    pub fn instantiate(&self, params: &InitParams) -> Result<CheckedProvider, LoadError> {
        let provider = self.instantiate_trusting(params, self.trust)?;
        // Once per plugin and process: a bench opens a config every round, and a
        // warning per queue per round buried its table.
        static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
        if provider.is_unverified() && WARNED.lock().map_or(true, |mut w| w.insert(self.label())) {
            tracing::warn!(
                provider = %self.label(),
                "provider declares no memory region; its buffer addresses go unchecked (trusted by `unverified = true`; said once per process)"
            );
        }
        Ok(provider)
    }

    /// [`instantiate`](Self::instantiate) with another [`Trust`] than the plugin's.
    pub fn instantiate_trusting(
        &self,
        params: &InitParams,
        trust: Trust,
    ) -> Result<CheckedProvider, LoadError> {
        let inner = self.instantiate_unchecked(params)?;
        let label: Arc<str> = format!("{} q{}", self.label(), params.queue_id).into();
        let provider = CheckedProvider::new(inner, label, params.buf_size, trust)?.gathering_by(
            match &self.kind {
                Kind::Native(m) if m.gathers() => Gathering::Bursts,
                Kind::Native(_) => Gathering::Frames,
                Kind::Builtin(_) | Kind::Wasm(..) => Gathering::Vectors,
            },
        );
        let info = provider.info();
        tracing::info!(
            provider = %provider.label(),
            buf_size = info.buf_size,
            capacity = info.capacity,
            caps = %info.caps,
            backing = %info.backing,
            "provider started"
        );
        Ok(provider)
    }
}
