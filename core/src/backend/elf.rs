//! ELF64 headers: whether a binary is statically linked, without running it (the agent search
//! needs it for every backend; the docker image also checks busybox and included files).

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Whether `path` is a statically linked ELF64 executable: it has no `PT_INTERP` program
/// header, so it needs no dynamic loader (`static-pie` included). `Ok(false)` for a dynamically
/// linked ELF64 file; an error for anything else (missing, unreadable, not ELF64), naming the
/// file.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    match elf_linkage(path)? {
        ElfLinkage::Static => Ok(true),
        ElfLinkage::Dynamic => Ok(false),
        ElfLinkage::NotElf64 => Err(Error::invalid(
            path.display().to_string(),
            "not an ELF64 executable",
        )),
    }
}

/// What the ELF reader tells about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElfLinkage {
    /// ELF64 without `PT_INTERP`.
    Static,
    /// ELF64 with `PT_INTERP`: needs the dynamic loader it names.
    Dynamic,
    /// Not an ELF64 file (a script, data, a 32-bit binary…).
    NotElf64,
}

/// Reads the ELF64 header and program headers of `path` (a few hundred bytes) and reports
/// whether there is a `PT_INTERP` entry.
pub(crate) fn elf_linkage(path: &Path) -> Result<ElfLinkage> {
    let io_err = |e| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    // Program headers sit right after the 64-byte header in every linker's output, so the
    // first 4 KiB almost always hold them; a table beyond is read with a seek below.
    let mut head = Vec::with_capacity(4096);
    file.by_ref().take(4096).read_to_end(&mut head).map_err(io_err)?;
    let Some(header) = Elf64Header::parse(&head) else {
        return Ok(ElfLinkage::NotElf64);
    };
    let table_len = usize::from(header.phentsize) * usize::from(header.phnum);
    let table_end = header.phoff.checked_add(table_len as u64);
    let table = match table_end {
        Some(end) if end <= head.len() as u64 => head[header.phoff as usize..end as usize].to_vec(),
        Some(_) => {
            use std::io::{Seek, SeekFrom};
            let mut table = vec![0; table_len];
            file.seek(SeekFrom::Start(header.phoff)).map_err(io_err)?;
            file.read_exact(&mut table).map_err(io_err)?;
            table
        }
        None => return Ok(ElfLinkage::NotElf64),
    };
    Ok(header.linkage(&table))
}

/// The fields of an ELF64 file header the linkage check needs.
#[derive(Debug)]
pub(crate) struct Elf64Header {
    /// Byte order: true for little-endian (`ELFDATA2LSB`).
    little: bool,
    /// File offset of the program header table.
    phoff: u64,
    /// Size of one program header.
    phentsize: u16,
    /// Number of program headers.
    phnum: u16,
}

impl Elf64Header {
    /// `PT_INTERP`: the program header naming the dynamic loader.
    const PT_INTERP: u32 = 3;
    /// Size of an ELF64 program header.
    const PHENT_SIZE: u16 = 56;

    /// Parses the first 64 bytes; `None` unless they are an ELF64 header with a sane
    /// program header size.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 64 || bytes[..4] != *b"\x7fELF" || bytes[4] != 2 {
            return None;
        }
        let little = match bytes[5] {
            1 => true,
            2 => false,
            _ => return None,
        };
        let u16_at = |at: usize| {
            let b = [bytes[at], bytes[at + 1]];
            if little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        };
        let mut b8 = [0; 8];
        b8.copy_from_slice(&bytes[0x20..0x28]);
        let phoff = if little {
            u64::from_le_bytes(b8)
        } else {
            u64::from_be_bytes(b8)
        };
        let header = Self {
            little,
            phoff,
            phentsize: u16_at(0x36),
            phnum: u16_at(0x38),
        };
        // An ELF64 program header is 56 bytes. Insisting on it also bounds the table a
        // malformed file can make us read (65535 × 56 bytes).
        (header.phnum == 0 || header.phentsize == Self::PHENT_SIZE).then_some(header)
    }

    /// Scans the program header `table` for `PT_INTERP`.
    pub(crate) fn linkage(&self, table: &[u8]) -> ElfLinkage {
        if self.phnum == 0 {
            return ElfLinkage::Static;
        }
        let interp = table.chunks_exact(usize::from(self.phentsize)).any(|ph| {
            let b = [ph[0], ph[1], ph[2], ph[3]];
            let p_type = if self.little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            };
            p_type == Self::PT_INTERP
        });
        if interp {
            ElfLinkage::Dynamic
        } else {
            ElfLinkage::Static
        }
    }
}
