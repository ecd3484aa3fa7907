//! What a Linux binary needs of the host that runs it, read from its ELF headers: the
//! machine it is built for and its C library (the newest `GLIBC_x.y` it references, musl, or
//! none when static). Pure functions over the file's bytes; `host setup` compares the result
//! with what a host reports before copying a binary there.

use std::fmt;

/// What a binary needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The ELF machine, in `uname -m` words where there is one (`x86_64`, `aarch64`, ...).
    pub machine: String,
    pub libc: Libc,
}

/// The C library a binary is linked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Libc {
    /// Statically linked: no program interpreter, nothing needed of the host.
    Static,
    /// Dynamically linked against glibc, needing at least this version (`None` when it
    /// references no versioned glibc symbol).
    Glibc(Option<Version>),
    /// Dynamically linked against musl (its interpreter is `ld-musl-*`).
    Musl,
    /// Another program interpreter.
    Other(String),
}

/// A glibc version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl Version {
    /// `2.34` (or `2.34.1`, the rest ignored).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Version(major, minor))
    }
}

impl fmt::Display for Libc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Libc::Static => f.write_str("static (no C library needed)"),
            Libc::Glibc(Some(v)) => write!(f, "glibc {v}"),
            Libc::Glibc(None) => f.write_str("glibc"),
            Libc::Musl => f.write_str("musl"),
            Libc::Other(interp) => write!(f, "the program interpreter {interp}"),
        }
    }
}

/// Why a file's needs cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    NotElf,
    /// An ELF file, but not one drover can read: what is wrong with it.
    Malformed(&'static str),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::NotElf => f.write_str("not an ELF executable"),
            ElfError::Malformed(what) => write!(f, "a malformed ELF file ({what})"),
        }
    }
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_VERNEED: u64 = 0x6fff_fffe;
const DT_VERNEEDNUM: u64 = 0x6fff_ffff;

/// The `uname -m` word for an ELF machine number.
pub fn machine_name(e_machine: u16) -> String {
    match e_machine {
        3 => "i686".into(),
        8 => "mips".into(),
        20 => "ppc".into(),
        21 => "ppc64".into(),
        22 => "s390x".into(),
        40 => "arm".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv64".into(),
        258 => "loongarch64".into(),
        n => format!("ELF machine {n}"),
    }
}

/// A host's `uname -m` in the words of [`machine_name`]: `amd64` is `x86_64`, `arm64` is
/// `aarch64`, `armv7l` is `arm`, `i386`..`i686` are `i686`, `ppc64le` is `ppc64`.
pub fn canonical_machine(uname: &str) -> String {
    let m = uname.trim();
    match m {
        "amd64" => "x86_64".into(),
        "arm64" => "aarch64".into(),
        "i386" | "i486" | "i586" | "i686" | "x86" => "i686".into(),
        "ppc64le" => "ppc64".into(),
        _ if m.starts_with("armv") => "arm".into(),
        _ => m.into(),
    }
}

/// Reads the machine and C library a binary needs from its ELF headers (program headers
/// only: section headers may be stripped).
pub fn needs(file: &[u8]) -> Result<Needs, ElfError> {
    let elf = Elf::new(file)?;
    let machine = machine_name(elf.u16(18, 0)?);
    let mut interp = None;
    let mut dynamic = None;
    let mut loads = Vec::new();
    for i in 0..elf.phnum {
        let ph = elf.phoff.saturating_add(i * elf.phentsize);
        let p_type = elf.u32(ph, 0)?;
        let (offset, vaddr, filesz) = if elf.wide {
            (elf.u64(ph, 8)?, elf.u64(ph, 16)?, elf.u64(ph, 32)?)
        } else {
            (
                elf.u32(ph, 4)? as u64,
                elf.u32(ph, 8)? as u64,
                elf.u32(ph, 16)? as u64,
            )
        };
        match p_type {
            PT_INTERP => interp = Some(elf.bytes(offset, filesz)?),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_LOAD => loads.push((offset, vaddr, filesz)),
            _ => {}
        }
    }
    let Some(interp) = interp else {
        return Ok(Needs {
            machine,
            libc: Libc::Static,
        });
    };
    let interp =
        String::from_utf8_lossy(interp.split(|&b| b == 0).next().unwrap_or(&[])).into_owned();
    let name = interp.rsplit('/').next().unwrap_or(&interp);
    let libc = if name.starts_with("ld-musl") {
        Libc::Musl
    } else if name.starts_with("ld-linux") || name.starts_with("ld64.so") || name == "ld.so.1" {
        Libc::Glibc(match dynamic {
            Some((off, size)) => newest_glibc(&elf, off, size, &loads)?,
            None => None,
        })
    } else {
        Libc::Other(interp)
    };
    Ok(Needs { machine, libc })
}

/// The newest `GLIBC_x.y` among the version needs of the dynamic section at `off`.
fn newest_glibc(
    elf: &Elf,
    off: u64,
    size: u64,
    loads: &[(u64, u64, u64)],
) -> Result<Option<Version>, ElfError> {
    let entry = if elf.wide { 16 } else { 8 };
    let (mut strtab, mut strsz, mut verneed, mut verneednum) = (None, None, None, 0);
    for i in 0..size / entry {
        let at = off.saturating_add(i * entry);
        let (tag, val) = if elf.wide {
            (elf.u64(at, 0)?, elf.u64(at, 8)?)
        } else {
            (elf.u32(at, 0)? as u64, elf.u32(at, 4)? as u64)
        };
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_VERNEED => verneed = Some(val),
            DT_VERNEEDNUM => verneednum = val,
            _ => {}
        }
    }
    let (Some(strtab), Some(verneed)) = (strtab, verneed) else {
        return Ok(None);
    };
    // Addresses to file offsets, through the loaded segment that holds them.
    let file_offset = |addr: u64| {
        loads
            .iter()
            .find(|(_, vaddr, filesz)| addr >= *vaddr && addr - vaddr < *filesz)
            .map(|(offset, vaddr, _)| offset.saturating_add(addr - vaddr))
            .ok_or(ElfError::Malformed(
                "an address outside the loaded segments",
            ))
    };
    let strtab = file_offset(strtab)?;
    let strsz = strsz.unwrap_or(u64::MAX);
    let string = |at: u64| -> Result<&[u8], ElfError> {
        if at >= strsz {
            return Err(ElfError::Malformed("a name outside the string table"));
        }
        let start = strtab.saturating_add(at);
        let rest = elf.bytes(start, (elf.file.len() as u64).saturating_sub(start))?;
        Ok(rest.split(|&b| b == 0).next().unwrap_or(&[]))
    };
    let mut newest = None;
    let mut need = file_offset(verneed)?;
    // Each Verneed entry (a library) has its Vernaux entries (the versions needed of it).
    for _ in 0..verneednum.min(1024) {
        let cnt = elf.u16(need, 2)? as u64;
        let aux = elf.u32(need, 8)? as u64;
        let next = elf.u32(need, 12)? as u64;
        let mut a = need.saturating_add(aux);
        for _ in 0..cnt.min(1024) {
            let name = elf.u32(a, 8)? as u64;
            let a_next = elf.u32(a, 12)? as u64;
            if let Some(v) = string(name)?
                .strip_prefix(b"GLIBC_")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(Version::parse)
            {
                newest = newest.max(Some(v));
            }
            if a_next == 0 {
                break;
            }
            a = a.saturating_add(a_next);
        }
        if next == 0 {
            break;
        }
        need = need.saturating_add(next);
    }
    Ok(newest)
}

/// An ELF file's bytes with its class and byte order.
struct Elf<'a> {
    file: &'a [u8],
    wide: bool,
    little: bool,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
}

impl<'a> Elf<'a> {
    fn new(file: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        if file.len() < 16 || &file[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        let wide = match file[4] {
            1 => false,
            2 => true,
            _ => return Err(ElfError::Malformed("an unknown class")),
        };
        let little = match file[5] {
            1 => true,
            2 => false,
            _ => return Err(ElfError::Malformed("an unknown byte order")),
        };
        let mut elf = Elf {
            file,
            wide,
            little,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
        };
        if wide {
            elf.phoff = elf.u64(32, 0)?;
            elf.phentsize = elf.u16(54, 0)? as u64;
            elf.phnum = elf.u16(56, 0)? as u64;
        } else {
            elf.phoff = elf.u32(28, 0)? as u64;
            elf.phentsize = elf.u16(42, 0)? as u64;
            elf.phnum = elf.u16(44, 0)? as u64;
        }
        if elf.phentsize < if wide { 56 } else { 32 } && elf.phnum > 0 {
            return Err(ElfError::Malformed("program headers too small"));
        }
        Ok(elf)
    }

    fn bytes(&self, at: u64, len: u64) -> Result<&'a [u8], ElfError> {
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.file.len() as u64)
            .ok_or(ElfError::Malformed("truncated"))?;
        Ok(&self.file[at as usize..end as usize])
    }

    /// The `len`-byte unsigned number at `base + off`, in the file's byte order.
    fn uint(&self, base: u64, off: u64, len: u64) -> Result<u64, ElfError> {
        let b = self.bytes(base.saturating_add(off), len)?;
        let big_end_first = |n: u64, d: &u8| (n << 8) | u64::from(*d);
        Ok(if self.little {
            b.iter().rev().fold(0, big_end_first)
        } else {
            b.iter().fold(0, big_end_first)
        })
    }

    fn u16(&self, base: u64, off: u64) -> Result<u16, ElfError> {
        Ok(self.uint(base, off, 2)? as u16)
    }

    fn u32(&self, base: u64, off: u64) -> Result<u32, ElfError> {
        Ok(self.uint(base, off, 4)? as u32)
    }

    fn u64(&self, base: u64, off: u64) -> Result<u64, ElfError> {
        self.uint(base, off, 8)
    }
}

/// Crafted ELF files, for the tests here and the end-to-end tests of `host setup`.
#[doc(hidden)]
pub mod craft {
    /// A little-endian 64-bit ELF executable for `e_machine`: with `interp`, dynamically
    /// linked with that program interpreter and the glibc versions `glibc` (e.g.
    /// `["GLIBC_2.17", "GLIBC_2.34"]`) needed of `libc.so.6`; without, static.
    pub fn elf64(e_machine: u16, interp: Option<&str>, glibc: &[&str]) -> Vec<u8> {
        // Layout: ELF header (64), 3 program headers (3*56) at 64, then the data at 0x100,
        // all in one PT_LOAD mapping file offset = vaddr + 0x400000.
        const BASE: u64 = 0x400000;
        let mut data = Vec::new();
        let interp_off = 0x100u64;
        if let Some(i) = interp {
            data.extend_from_slice(i.as_bytes());
            data.push(0);
        }
        // String table.
        let strtab_off = 0x100 + data.len() as u64;
        let mut strtab = vec![0u8];
        let libc_name = strtab.len() as u32;
        strtab.extend_from_slice(b"libc.so.6\0");
        let mut names = Vec::new();
        for v in glibc {
            names.push(strtab.len() as u32);
            strtab.extend_from_slice(v.as_bytes());
            strtab.push(0);
        }
        data.extend_from_slice(&strtab);
        while data.len() % 8 != 0 {
            data.push(0);
        }
        // Verneed: one entry (16 bytes) then its Vernaux entries (16 bytes each).
        let verneed_off = 0x100 + data.len() as u64;
        data.extend_from_slice(&1u16.to_le_bytes()); // vn_version
        data.extend_from_slice(&(names.len() as u16).to_le_bytes()); // vn_cnt
        data.extend_from_slice(&libc_name.to_le_bytes()); // vn_file
        data.extend_from_slice(&16u32.to_le_bytes()); // vn_aux
        data.extend_from_slice(&0u32.to_le_bytes()); // vn_next
        for (i, n) in names.iter().enumerate() {
            data.extend_from_slice(&0u32.to_le_bytes()); // vna_hash
            data.extend_from_slice(&0u16.to_le_bytes()); // vna_flags
            data.extend_from_slice(&(i as u16 + 2).to_le_bytes()); // vna_other
            data.extend_from_slice(&n.to_le_bytes()); // vna_name
            let next: u32 = if i + 1 < names.len() { 16 } else { 0 };
            data.extend_from_slice(&next.to_le_bytes()); // vna_next
        }
        // Dynamic section.
        let dynamic_off = 0x100 + data.len() as u64;
        for (tag, val) in [
            (1u64, libc_name as u64), // DT_NEEDED
            (super::DT_STRTAB, BASE + strtab_off),
            (super::DT_STRSZ, strtab.len() as u64),
            (super::DT_VERNEED, BASE + verneed_off),
            (super::DT_VERNEEDNUM, 1),
            (super::DT_NULL, 0),
        ] {
            data.extend_from_slice(&tag.to_le_bytes());
            data.extend_from_slice(&val.to_le_bytes());
        }
        let dynamic_size = 0x100 + data.len() as u64 - dynamic_off;
        let total = 0x100 + data.len() as u64;

        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&e_machine.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        let mut phs: Vec<(u32, u64, u64)> = vec![(super::PT_LOAD, 0, total)];
        if let Some(i) = interp {
            phs.push((super::PT_INTERP, interp_off, i.len() as u64 + 1));
            phs.push((super::PT_DYNAMIC, dynamic_off, dynamic_size));
        }
        f[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes()); // e_phnum
        for (i, (p_type, off, size)) in phs.into_iter().enumerate() {
            let at = 64 + i * 56;
            f[at..at + 4].copy_from_slice(&p_type.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&(BASE + off).to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        }
        f.extend_from_slice(&data);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::craft::elf64;
    use super::*;

    const LD: &str = "/lib64/ld-linux-x86-64.so.2";

    #[test]
    fn the_newest_glibc_version_needed() {
        let f = elf64(
            62,
            Some(LD),
            &["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.17", "GLIBC_PRIVATE"],
        );
        assert_eq!(
            needs(&f),
            Ok(Needs {
                machine: "x86_64".into(),
                libc: Libc::Glibc(Some(Version(2, 34))),
            })
        );
    }

    #[test]
    fn machine_static_and_musl() {
        let f = elf64(183, None, &[]);
        assert_eq!(
            needs(&f),
            Ok(Needs {
                machine: "aarch64".into(),
                libc: Libc::Static,
            })
        );
        let f = elf64(62, Some("/lib/ld-musl-x86_64.so.1"), &[]);
        assert_eq!(needs(&f).unwrap().libc, Libc::Musl);
        let f = elf64(62, Some(LD), &[]);
        assert_eq!(needs(&f).unwrap().libc, Libc::Glibc(None));
        let f = elf64(62, Some("/opt/ld-weird.so"), &[]);
        assert_eq!(
            needs(&f).unwrap().libc,
            Libc::Other("/opt/ld-weird.so".into())
        );
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        assert_eq!(needs(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotElf));
        assert_eq!(needs(b""), Err(ElfError::NotElf));
        let f = elf64(62, Some(LD), &["GLIBC_2.34"]);
        // Every truncation is an error (or, where the headers are whole, an answer).
        for len in 0..f.len() {
            let _ = needs(&f[..len]);
        }
        assert!(matches!(needs(&f[..100]), Err(ElfError::Malformed(_))));
        // Headers that point past the end: every byte of the header, set high.
        for at in 16..64 {
            let mut g = f.clone();
            g[at] = 0xff;
            let _ = needs(&g);
        }
    }

    #[test]
    fn both_byte_orders() {
        let mut f = elf64(62, None, &[]);
        let little = Elf::new(&f).unwrap();
        assert_eq!(little.u16(18, 0), Ok(62));
        assert_eq!(little.u64(32, 0), Ok(64));
        f[5] = 2;
        f.swap(18, 19);
        let big = Elf::new(&f).unwrap();
        assert_eq!(big.u16(18, 0), Ok(62));
        assert_eq!(big.u32(16, 4), Ok(0x0100_0000));
    }

    #[test]
    fn versions_and_machines() {
        assert_eq!(Version::parse("2.31"), Some(Version(2, 31)));
        assert_eq!(Version::parse("2.17.1\n"), Some(Version(2, 17)));
        assert_eq!(Version::parse("2"), None);
        assert!(Version(2, 9) < Version(2, 17));
        assert_eq!(canonical_machine("arm64"), "aarch64");
        assert_eq!(canonical_machine("armv7l"), "arm");
        assert_eq!(canonical_machine("x86_64\n"), "x86_64");
    }

    #[test]
    fn this_test_binary() {
        // Whatever built it, the test binary itself reads as a binary for this machine.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let n = needs(&exe).unwrap();
        assert_eq!(n.machine, canonical_machine(std::env::consts::ARCH));
        if let Libc::Glibc(v) = n.libc {
            assert!(v.is_some_and(|v| v >= Version(2, 2)));
        }
    }
}
