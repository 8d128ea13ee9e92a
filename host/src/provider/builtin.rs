//! Providers linked into the host: the same strategies the `.so` plugins export.

use super::BuiltinInit;
use memplex_abi::{MemoryProvider, Plugin, PluginDescription};
use memplex_providers::{Heap, HugePage, Shm, Slab};

pub(super) struct Builtin {
    pub(super) name: &'static str,
    pub(super) describe: fn() -> PluginDescription,
    pub(super) init: BuiltinInit,
}

const fn builtin<P: Plugin>(name: &'static str) -> Builtin {
    Builtin {
        name,
        describe: P::describe,
        init: |params| P::init(params).map(|p| Box::new(p) as Box<dyn MemoryProvider>),
    }
}

const BUILTINS: [Builtin; 4] = [
    builtin::<Heap>("heap"),
    builtin::<Slab>("slab"),
    builtin::<HugePage>("hugepage"),
    builtin::<Shm>("shm"),
];

pub(super) fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub(super) fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}
