//! Finding plugins by name.
//!
//! A plugin is named in three ways:
//! - `builtin:NAME`: a provider linked into memplex (`heap`, `slab`, `hugepage`);
//! - a path (anything with a `/`), loaded as given;
//! - a file name ending in `.so`, `.wasm` or `.wat`: looked up on the plugin path, else
//!   taken as a path;
//! - a bare name, looked up on the plugin path: each directory in `MEMPLEX_PLUGIN_PATH`
//!   (colon-separated), then the build's output directory (beside the `memplex` binary
//!   and its parent, so `target/debug` is found from `target/debug/deps` too). In each, the
//!   files `libmemplex_plugin_NAME.so`, `libNAME.so` and `NAME.so` are tried, with `-` read
//!   as `_`.

use super::LoadError;
use std::path::{Path, PathBuf};

/// How a plugin name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSpec {
    /// A built-in provider.
    Builtin(String),
    /// A shared library file.
    File(PathBuf),
}

/// The directories searched for plugins.
#[derive(Debug, Clone, Default)]
pub struct PluginPath {
    /// From `MEMPLEX_PLUGIN_PATH`: every `.so` and `.wasm` in them is listed.
    user: Vec<PathBuf>,
    /// The build's output directories: `libmemplex_plugin_*.so` and `*.wasm` are listed, so test
    /// fixtures built beside the plugins stay out of listings.
    build: Vec<PathBuf>,
}

impl PluginPath {
    /// `MEMPLEX_PLUGIN_PATH`, then the directory of the running executable and its parent.
    pub fn from_env() -> Self {
        let user = std::env::var_os("MEMPLEX_PLUGIN_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut build = Vec::new();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            if let Some(parent) = dir
                .parent()
                .filter(|_| dir.ends_with("deps") || dir.ends_with("examples"))
            {
                build.push(parent.to_path_buf());
            }
            build.push(dir);
        }
        PluginPath { user, build }
    }

    /// Exactly these directories, listed in full.
    pub fn with_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        PluginPath {
            user: dirs.into_iter().collect(),
            build: Vec::new(),
        }
    }

    /// Every directory, in search order.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.user.iter().chain(&self.build).map(PathBuf::as_path)
    }

    /// Resolves a plugin name. See the module docs.
    pub fn resolve(&self, spec: &str) -> Result<PluginSpec, LoadError> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            return Ok(PluginSpec::Builtin(name.to_string()));
        }
        if spec.contains('/') {
            return Ok(PluginSpec::File(PathBuf::from(spec)));
        }
        // A file name (`slab.wasm`, `libfoo.so`): on the plugin path, else as given.
        if [".so", ".wasm", ".wat"]
            .iter()
            .any(|ext| spec.ends_with(ext))
        {
            let found = self.dirs().map(|d| d.join(spec)).find(|p| p.is_file());
            return Ok(PluginSpec::File(
                found.unwrap_or_else(|| PathBuf::from(spec)),
            ));
        }
        let stem = spec.replace('-', "_");
        let candidates = [
            format!("libmemplex_plugin_{stem}.so"),
            format!("lib{stem}.so"),
            format!("{stem}.so"),
        ];
        for dir in self.dirs() {
            for file in &candidates {
                let path = dir.join(file);
                if path.is_file() {
                    return Ok(PluginSpec::File(path));
                }
            }
        }
        Err(LoadError::NotFound {
            name: spec.to_string(),
            tried: candidates.to_vec(),
            searched: self.dirs().map(Path::to_path_buf).collect(),
            available: Vec::new(),
        })
    }

    /// Every plugin file on the path, for `memplex providers`, without duplicates.
    pub fn list(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = Vec::new();
        let mut scan = |dir: &Path, all: bool| {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    (name.ends_with(".so") && (all || name.starts_with("libmemplex_plugin_")))
                        || name.ends_with(".wasm")
                })
                .collect();
            files.sort();
            for f in files {
                let canon = f.canonicalize().unwrap_or(f);
                if !found.contains(&canon) {
                    found.push(canon);
                }
            }
        };
        for dir in &self.user {
            scan(dir, true);
        }
        for dir in &self.build {
            scan(dir, false);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_builtins_paths_and_names() {
        let dir = std::env::temp_dir().join(format!("memplex-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libmemplex_plugin_my_pool.so"), b"x").unwrap();
        let path = PluginPath::with_dirs([dir.clone()]);
        assert_eq!(
            path.resolve("builtin:slab").unwrap(),
            PluginSpec::Builtin("slab".into())
        );
        assert_eq!(
            path.resolve("./x.so").unwrap(),
            PluginSpec::File("./x.so".into())
        );
        assert_eq!(
            path.resolve("my-pool").unwrap(),
            PluginSpec::File(dir.join("libmemplex_plugin_my_pool.so"))
        );
        let err = path.resolve("nothing").unwrap_err().to_string();
        assert!(
            err.contains("no provider plugin named `nothing`")
                && err.contains("libmemplex_plugin_nothing.so, libnothing.so, nothing.so")
                && err.contains(&dir.display().to_string()),
            "{err}"
        );
        assert_eq!(path.list().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
