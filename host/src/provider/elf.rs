//! A look at a native plugin's ELF headers before `dlopen` sees it.
//!
//! The dynamic loader maps a library's segments as the program headers say; a file cut
//! short maps pages past its end, and touching them kills the process with SIGBUS, in the
//! loader, before any check of ours can run. So the host reads the headers itself first
//! and refuses what the loader must not be given: not ELF, another word size, byte order
//! or architecture, not a shared object, headers or a loadable segment past the file's
//! end. Written here (a few dozen lines of bounds-checked reads) rather than with an ELF
//! crate: only these fields matter, and no byte is trusted before it is checked.

const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const CLASS_64: u8 = 2;
const DATA_LE: u8 = 1;
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
#[cfg(target_arch = "x86_64")]
const MACHINE: (u16, &str) = (62, "x86-64");
#[cfg(target_arch = "aarch64")]
const MACHINE: (u16, &str) = (183, "aarch64");
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MACHINE: (u16, &str) = (0, "this host's architecture");

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What is wrong with `bytes` as a shared library this host can load, if anything.
pub(super) fn problem(bytes: &[u8]) -> Option<String> {
    let len = bytes.len() as u64;
    if bytes.get(..4) != Some(&MAGIC[..]) {
        return Some("not an ELF file (no ELF magic at its start)".into());
    }
    if bytes.get(4) != Some(&CLASS_64) || bytes.get(5) != Some(&DATA_LE) {
        return Some("not a 64-bit little-endian ELF file".into());
    }
    let truncated = || Some(format!("truncated: {len} bytes end inside the ELF header"));
    let Some(kind) = u16_at(bytes, 16) else {
        return truncated();
    };
    if kind != ET_DYN {
        return Some(format!(
            "an ELF file of type {kind}, not a shared object (3)"
        ));
    }
    let Some(machine) = u16_at(bytes, 18) else {
        return truncated();
    };
    if MACHINE.0 != 0 && machine != MACHINE.0 {
        return Some(format!(
            "built for ELF machine {machine}, not {} ({})",
            MACHINE.1, MACHINE.0
        ));
    }
    let (Some(phoff), Some(shoff), Some(phentsize), Some(phnum), Some(shentsize), Some(shnum)) = (
        u64_at(bytes, 32),
        u64_at(bytes, 40),
        u16_at(bytes, 54),
        u16_at(bytes, 56),
        u16_at(bytes, 58),
        u16_at(bytes, 60),
    ) else {
        return truncated();
    };
    let table_end = |off: u64, size: u16, n: u16| off.checked_add(u64::from(size) * u64::from(n));
    match table_end(phoff, phentsize, phnum) {
        Some(end) if end <= len => {}
        _ => {
            return Some(format!(
                "truncated: its program headers end past its {len} bytes"
            ))
        }
    }
    if shoff != 0 && table_end(shoff, shentsize, shnum).is_none_or(|end| end > len) {
        return Some(format!(
            "truncated: its section headers end past its {len} bytes"
        ));
    }
    for i in 0..u64::from(phnum) {
        let at = (phoff + i * u64::from(phentsize)) as usize;
        let (Some(kind), Some(offset), Some(filesz)) = (
            u32_at(bytes, at),
            u64_at(bytes, at + 8),
            u64_at(bytes, at + 32),
        ) else {
            return Some("truncated: a program header is cut short".into());
        };
        if kind == PT_LOAD && offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Some(format!(
                "truncated: a loadable segment ends at byte {}, past its {len} bytes",
                offset.saturating_add(filesz)
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_library_passes_and_cut_or_bad_ones_say_why() {
        let lib = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is a PIE executable: ELF type 3 like a shared object.
        assert_eq!(problem(&lib), None);
        let cut = &lib[..lib.len() / 2];
        let why = problem(cut).unwrap();
        assert!(why.starts_with("truncated"), "{why}");
        assert!(problem(&lib[..20])
            .unwrap()
            .contains("inside the ELF header"));
        assert!(problem(b"#!/bin/sh\n").unwrap().contains("not an ELF file"));
        let mut other = lib.clone();
        other[18] = 40; // ARM
        assert!(
            problem(&other).unwrap().contains("ELF machine 40"),
            "{:?}",
            problem(&other)
        );
    }
}
