"""A forwarding library: plain BLAS / LAPACK names that jump to `scipy_`-prefixed ones.

`scipy-openblas32` (the OpenBLAS wheel that NumPy and SciPy build against) is a
self-contained, every-x86-CPU OpenBLAS on PyPI, but its symbols carry a prefix
(`scipy_cblas_sgemm`, `scipy_sgetrf_`), while MLX's CPU library calls the plain names
(`cblas_sgemm`, `sgetrf_`) through the dynamic linker. This module writes, in memory,
a small ELF shared object that exports each plain name MLX needs as a 6-byte stub
`jmp *slot(%rip)`, whose slot the dynamic linker fills with the address of the prefixed
function (an R_X86_64_GLOB_DAT relocation). A tail jump leaves every argument register
and the stack as the caller set them, so the stub forwards any signature unchanged.
Loaded with RTLD_GLOBAL before `mlx.core`, it takes the place of the reference BLAS
inside the `mlx-cpu` wheel, as a system `libopenblas.so.0` would.

Why generated instead of compiled: a user's `pip install .` must bring a fast BLAS
with no compiler. The object is a few kilobytes, made in milliseconds, and never
written to disk (a memfd; a deleted temporary file where memfd is missing).

Layout of the object (one read+execute segment, one read+write segment):
    ELF header | program headers | .hash | .dynsym | .dynstr | .rela.dyn | .text
    (page)     | .dynamic | .got | section headers (for readelf / nm only)
"""

from __future__ import annotations

import os
import platform
import struct
import tempfile
from dataclasses import dataclass

PAGE = 0x1000
STUB_SIZE = 8  # `jmp *disp32(%rip)` is 6 bytes, padded with int3 to 8

# ELF constants (System V gABI, x86-64 psABI)
ET_DYN, EM_X86_64 = 3, 62
PT_LOAD, PT_DYNAMIC, PT_GNU_STACK = 1, 2, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4
SHT_PROGBITS, SHT_STRTAB, SHT_RELA, SHT_HASH, SHT_DYNAMIC, SHT_DYNSYM = 1, 3, 4, 5, 6, 11
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK = 1, 2, 4, 0x40
DT_NULL, DT_NEEDED, DT_HASH, DT_STRTAB, DT_SYMTAB = 0, 1, 4, 5, 6
DT_RELA, DT_RELASZ, DT_RELAENT, DT_STRSZ, DT_SYMENT, DT_SONAME = 7, 8, 9, 10, 11, 14
STB_GLOBAL, STT_FUNC, STT_GNU_IFUNC = 1, 2, 10
R_X86_64_GLOB_DAT = 6

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")
DYN = struct.Struct("<qQ")


class ForwardError(Exception):
    """The forwarding library cannot be made here; the message says why."""


@dataclass
class DynamicSymbols:
    """The dynamic symbols of one ELF shared object, by name."""

    defined_functions: set[str]
    undefined: set[str]


def read_dynamic_symbols(path: str) -> DynamicSymbols:
    """Read the .dynsym table of a little-endian ELF64 shared object (section headers)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ForwardError(f"{path} is not a little-endian 64-bit ELF file")
    header = EHDR.unpack_from(data, 0)
    shoff, shentsize, shnum = header[6], header[11], header[12]
    if shoff == 0 or shnum == 0:
        raise ForwardError(f"{path} has no section headers to read its symbols from")
    sections = [SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    dynsym = next((s for s in sections if s[1] == SHT_DYNSYM), None)
    if dynsym is None:
        raise ForwardError(f"{path} has no dynamic symbol table")
    strtab = sections[dynsym[6]]
    str_off = strtab[4]
    defined, undefined = set(), set()
    for i in range(1, dynsym[5] // SYM.size):
        st_name, st_info, _, st_shndx, _, _ = SYM.unpack_from(data, dynsym[4] + i * SYM.size)
        end = data.index(b"\0", str_off + st_name)
        name = data[str_off + st_name:end].decode()
        if st_shndx == 0:
            undefined.add(name)
        elif st_info & 0xF in (STT_FUNC, STT_GNU_IFUNC) and st_info >> 4 != 0:  # global or weak function
            defined.add(name)
    return DynamicSymbols(defined, undefined)


def elf_hash(name: bytes) -> int:
    """The System V ELF symbol hash (the DT_HASH table's)."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def build_forwarder(pairs: list[tuple[str, str]], needed: str, soname: str) -> bytes:
    """An x86-64 ELF shared object exporting each `pairs[i][0]` as a jump to `pairs[i][1]`
    (resolved in the library `needed`, a path or a soname). Returns the file's bytes."""
    n = len(pairs)
    # Strings: "" first, then names; each symbol's st_name is its offset here.
    strtab = bytearray(b"\0")

    def add_string(s: str) -> int:
        off = len(strtab)
        strtab.extend(s.encode() + b"\0")
        return off

    needed_off, soname_off = add_string(needed), add_string(soname)
    export_names = [add_string(a) for a, _ in pairs]
    import_names = [add_string(b) for _, b in pairs]
    nsyms = 1 + 2 * n  # null, the exports (1..n), the imports (n+1..2n)

    # Read+execute segment, from file offset 0.
    phnum = 4
    off_hash = _align(EHDR.size + phnum * PHDR.size, 8)
    nbucket = max(1, n)
    size_hash = 4 * (2 + nbucket + nsyms)
    off_dynsym = _align(off_hash + size_hash, 8)
    off_dynstr = off_dynsym + nsyms * SYM.size
    off_rela = _align(off_dynstr + len(strtab), 8)
    off_text = _align(off_rela + n * RELA.size, 16)
    end_text = off_text + n * STUB_SIZE
    # Read+write segment, on its own page.
    off_dynamic = _align(end_text, PAGE)
    dyn_entries = [(DT_NEEDED, needed_off), (DT_SONAME, soname_off), (DT_HASH, off_hash),
                   (DT_STRTAB, off_dynstr), (DT_SYMTAB, off_dynsym), (DT_STRSZ, len(strtab)),
                   (DT_SYMENT, SYM.size), (DT_RELA, off_rela), (DT_RELASZ, n * RELA.size),
                   (DT_RELAENT, RELA.size), (DT_NULL, 0)]
    off_got = _align(off_dynamic + len(dyn_entries) * DYN.size, 8)
    end_data = off_got + 8 * n

    shstrtab = b"\0.hash\0.dynsym\0.dynstr\0.rela.dyn\0.text\0.dynamic\0.got\0.shstrtab\0"
    off_shstrtab = end_data
    off_shdrs = _align(off_shstrtab + len(shstrtab), 8)
    sections = [  # (name, type, flags, offset, size, link, info, align, entsize)
        (".hash", SHT_HASH, SHF_ALLOC, off_hash, size_hash, 2, 0, 8, 4),
        (".dynsym", SHT_DYNSYM, SHF_ALLOC, off_dynsym, nsyms * SYM.size, 3, 1, 8, SYM.size),
        (".dynstr", SHT_STRTAB, SHF_ALLOC, off_dynstr, len(strtab), 0, 0, 1, 0),
        (".rela.dyn", SHT_RELA, SHF_ALLOC | SHF_INFO_LINK, off_rela, n * RELA.size, 2, 7, 8, RELA.size),
        (".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, off_text, n * STUB_SIZE, 0, 0, 16, 0),
        (".dynamic", SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, off_dynamic, len(dyn_entries) * DYN.size, 3, 0, 8, DYN.size),
        (".got", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, off_got, 8 * n, 0, 0, 8, 8),
        (".shstrtab", SHT_STRTAB, 0, off_shstrtab, len(shstrtab), 0, 0, 1, 0),
    ]
    text_index = 5  # section index of .text (0 is the null section)
    out = bytearray(off_shdrs + (len(sections) + 1) * SHDR.size)

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    EHDR.pack_into(out, 0, ident, ET_DYN, EM_X86_64, 1, 0, EHDR.size, off_shdrs, 0,
                   EHDR.size, PHDR.size, phnum, SHDR.size, len(sections) + 1, len(sections))
    phdrs = [
        (PT_LOAD, PF_R | PF_X, 0, 0, 0, end_text, end_text, PAGE),
        (PT_LOAD, PF_R | PF_W, off_dynamic, off_dynamic, off_dynamic,
         end_data - off_dynamic, end_data - off_dynamic, PAGE),
        (PT_DYNAMIC, PF_R | PF_W, off_dynamic, off_dynamic, off_dynamic,
         len(dyn_entries) * DYN.size, len(dyn_entries) * DYN.size, 8),
        (PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16),  # no executable stack
    ]
    for i, ph in enumerate(phdrs):
        PHDR.pack_into(out, EHDR.size + i * PHDR.size, *ph)

    # Hash table: every symbol in one of nbucket chains.
    buckets, chains = [0] * nbucket, [0] * nsyms
    names = [""] + [a for a, _ in pairs] + [b for _, b in pairs]
    for index in range(1, nsyms):
        b = elf_hash(names[index].encode()) % nbucket
        chains[index], buckets[b] = buckets[b], index
    struct.pack_into(f"<{2 + nbucket + nsyms}I", out, off_hash, nbucket, nsyms, *buckets, *chains)

    func = (STB_GLOBAL << 4) | STT_FUNC
    for i in range(n):
        stub = off_text + i * STUB_SIZE
        slot = off_got + 8 * i
        SYM.pack_into(out, off_dynsym + (1 + i) * SYM.size, export_names[i], func, 0, text_index, stub, 6)
        SYM.pack_into(out, off_dynsym + (1 + n + i) * SYM.size, import_names[i], func, 0, 0, 0, 0)
        RELA.pack_into(out, off_rela + i * RELA.size, slot, ((1 + n + i) << 32) | R_X86_64_GLOB_DAT, 0)
        out[stub:stub + STUB_SIZE] = b"\xff\x25" + struct.pack("<i", slot - (stub + 6)) + b"\xcc\xcc"
    out[off_dynstr:off_dynstr + len(strtab)] = strtab
    for i, (tag, value) in enumerate(dyn_entries):
        DYN.pack_into(out, off_dynamic + i * DYN.size, tag, value)

    out[off_shstrtab:off_shstrtab + len(shstrtab)] = shstrtab
    for i, (name, kind, flags, off, size, link, info, align, entsize) in enumerate(sections, start=1):
        addr = off if flags & SHF_ALLOC else 0
        SHDR.pack_into(out, off_shdrs + i * SHDR.size, shstrtab.index(name.encode() + b"\0"),
                       kind, flags, addr, off, size, link, info, align, entsize)
    return bytes(out)


def forwarding_pairs(target: str, client: str, prefix: str, extra: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(plain, prefixed) names for every symbol `client` leaves undefined that `target`
    defines with `prefix`, plus the plain names in `extra` (e.g. thread control)."""
    provided = read_dynamic_symbols(target).defined_functions
    wanted = read_dynamic_symbols(client).undefined | set(extra)
    return sorted((name, prefix + name) for name in wanted if prefix + name in provided)


def load_forwarder(image: bytes, name: str):
    """dlopen the object `image` with RTLD_GLOBAL, without leaving a file behind."""
    import ctypes

    try:
        fd = os.memfd_create(name)
        path = f"/proc/self/fd/{fd}"
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(suffix=".so", prefix=name)
    try:
        os.write(fd, image)
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    finally:
        os.close(fd)
        if not path.startswith("/proc/"):
            os.unlink(path)


def supported() -> bool:
    """Whether this module can write a forwarder for this machine (x86-64 Linux)."""
    return platform.machine().lower() in ("x86_64", "amd64")
