"""Descriptor encode/decode against the architecture manuals' bit positions."""

import pytest

from emu.arch import PROT_EXEC, PROT_READ, PROT_WRITE, get_arch
from emu.arch.profile import PROFILE_DIR, list_profiles, load_profile
from emu.errors import EmuError

RW = PROT_READ | PROT_WRITE
RX = PROT_READ | PROT_EXEC


def bit(d: int, n: int) -> int:
    return (d >> n) & 1


# ---------------------------------------------------------------- x86-64 (SDM Vol 3A 4.5)
def test_x86_pte_bits():
    a = get_arch("x86_64")
    d = a.mk_pte(0xABCDE, RW, young=True, dirty=True)
    assert bit(d, 0) == 1                       # P
    assert bit(d, 1) == 1                       # R/W
    assert bit(d, 2) == 1                       # U/S
    assert bit(d, 3) == 0 and bit(d, 4) == 0    # PWT, PCD
    assert bit(d, 5) == 1                       # A
    assert bit(d, 6) == 1                       # D
    assert bit(d, 7) == 0                       # PAT on a 4K PTE
    assert bit(d, 8) == 0                       # G: user pages are not global
    assert (d >> 12) & ((1 << 40) - 1) == 0xABCDE   # PFN bits 12..51
    assert bit(d, 63) == 1                      # NX: no PROT_EXEC
    x = a.mk_pte(5, RX)
    assert bit(x, 63) == 0 and bit(x, 1) == 0 and bit(x, 5) == 0 and bit(x, 6) == 0


def test_x86_leaves_and_tables():
    a = get_arch("x86_64")
    assert a.level_shifts == (39, 30, 21, 12)
    pmd = a.mk_pmd_leaf(512, RW)
    pud = a.mk_pud_leaf(1 << 18, RW)
    assert bit(pmd, 7) == 1 and bit(pud, 7) == 1          # PS
    assert a.is_leaf(pmd, 2) and a.is_leaf(pud, 1)
    t = a.mk_table(77)
    assert bit(t, 0) and bit(t, 1) and bit(t, 2) and not bit(t, 7)
    assert not a.is_leaf(t, 2) and a.pfn(t) == 77
    with pytest.raises(ValueError):
        a.mk_pmd_leaf(513, RW)                 # not 2 MiB aligned
    with pytest.raises(ValueError):
        a.mk_block(0, RW, 0)                   # no leaf in a PML4E


def test_x86_modifiers():
    a = get_arch("x86_64")
    d = a.mk_pte(9, RW, young=True, dirty=True)
    assert not a.young(a.mkold(d)) and a.young(d)
    assert not a.dirty(a.mkclean(d)) and a.dirty(d)
    w = a.wrprotect(d)
    assert not a.writable(w) and bit(w, 1) == 0 and a.pfn(w) == 9
    assert a.writable(a.mkwrite(w))
    m = a.modify_prot(d, PROT_READ)
    assert not a.writable(m) and a.young(m) and a.dirty(m) and a.pfn(m) == 9


# ---------------------------------------------------------------- arm64 (VMSAv8-64, 4K)
def test_arm64_page_bits():
    a = get_arch("arm64")
    d = a.mk_pte(0x12345, RW, young=True)
    assert d & 3 == 3                           # valid + page
    assert (d >> 2) & 7 == 0                    # AttrIndx: MT_NORMAL
    assert bit(d, 5) == 0                       # NS
    assert bit(d, 6) == 1                       # AP[1]: EL0 access
    assert bit(d, 7) == 1                       # AP[2]: read-only until written (clean)
    assert (d >> 8) & 3 == 3                    # SH: inner shareable
    assert bit(d, 10) == 1                      # AF
    assert bit(d, 11) == 1                      # nG
    assert (d >> 12) & ((1 << 36) - 1) == 0x12345   # OA bits 12..47
    assert bit(d, 51) == 1                      # DBM: writable
    assert bit(d, 52) == 0                      # Contiguous
    assert bit(d, 53) == 1                      # PXN
    assert bit(d, 54) == 1                      # UXN (no PROT_EXEC)
    assert bit(a.mk_pte(1, RW, cont=True), 52) == 1
    x = a.mk_pte(1, RX)
    assert bit(x, 54) == 0 and bit(x, 51) == 0 and bit(x, 7) == 1


def test_arm64_dirty_state_follows_dbm():
    a = get_arch("arm64")
    clean = a.mk_pte(3, RW)
    assert a.writable(clean) and not a.dirty(clean)
    dirty = a.mk_pte(3, RW, dirty=True)
    assert bit(dirty, 7) == 0 and a.dirty(dirty)         # AP[2] clear = hardware dirty
    hw_dirty = clean & ~(1 << 7)                          # what FEAT_HAFDBS does
    assert a.dirty(hw_dirty)
    wp = a.wrprotect(hw_dirty)
    assert not a.writable(wp) and a.dirty(wp) and bit(wp, 7) == 1   # dirtiness kept in SW bit
    assert not a.dirty(a.mkclean(wp))
    assert a.dirty(a.mkwrite(wp)) and bit(a.mkwrite(wp), 7) == 0
    assert not a.young(a.mkold(a.mk_pte(3, RW, young=True)))


def test_arm64_blocks_and_tables():
    a = get_arch("arm64")
    blk = a.mk_pmd_leaf(512, RW)
    assert blk & 3 == 1 and a.is_leaf(blk, 2)           # block: bits[1:0] = 01
    assert a.mk_pud_leaf(1 << 18, RW) & 3 == 1
    t = a.mk_table(42)
    assert t & 3 == 3 and not a.is_leaf(t, 2) and a.is_leaf(a.mk_pte(1, RW), 3)
    assert a.cont_ptes == 16


@pytest.mark.parametrize("name", ["x86_64", "arm64"])
def test_swap_and_protnone(name):
    a = get_arch(name)
    s = a.mk_swap(3, 0x12345)
    assert not a.is_valid(s) and not a.is_present(s) and a.is_swap(s)
    assert a.swp_type(s) == 3 and a.swp_offset(s) == 0x12345
    pn = a.mk_pte(7, 0)
    assert not a.is_valid(pn) and a.is_present(pn) and a.is_protnone(pn) and not a.is_swap(pn)
    assert a.is_none(0) and not a.is_present(0)
    back = a.modify_prot(pn, RW)
    assert a.is_valid(back) and a.pfn(back) == 7
    with pytest.raises(ValueError):
        a.mk_swap(99, 1)


@pytest.mark.parametrize("name", ["x86_64", "arm64"])
def test_attrs_equal_ignores_frame_and_ad(name):
    a = get_arch(name)
    assert a.attrs_equal(a.mk_pte(1, RW), a.mk_pte(2, RW, young=True, dirty=True))
    assert not a.attrs_equal(a.mk_pte(1, RW), a.mk_pte(1, PROT_READ))


def test_mthp_orders_and_errors():
    a = get_arch("aarch64")
    assert a.anon_mthp_orders == tuple(range(2, 10))
    with pytest.raises(EmuError):
        get_arch("sparc")
    with pytest.raises(NotImplementedError):
        get_arch("arm64", granule=16384)


def test_profiles_load():
    names = list_profiles()
    for need in ("skylake", "zen4", "neoverse_n1", "neoverse_v2", "generic-x86_64",
                 "generic-arm64"):
        assert need in names
    for n in names:
        p = load_profile(n)
        assert p.sources and all(t.entries % t.ways == 0 for t in p.tlbs)
    assert load_profile("neoverse_v2").tlbi_range and not load_profile("neoverse_n1").tlbi_range
    assert load_profile("zen4").coalesce == 4
    # Every profile models the plugin's L0 micro-TLB, and says it is emu's choice.
    for n in names:
        p = load_profile(n)
        assert p.utlb == 64 and "[U]" in p.utlb_source


def test_bad_profile_is_user_error(tmp_path):
    with pytest.raises(EmuError):
        load_profile("no-such-core")
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "x86_64"\n[[tlb]]\nname="x"\nside="data"\nlevel=1\n'
                   'sizes=["4k"]\nentries=10\nways=3\n')
    with pytest.raises(EmuError):
        load_profile(str(bad))
    good = (PROFILE_DIR / "generic-x86_64.toml").read_text()
    assert "entries = 64\nsource = \"[U] emu's choice\"" in good
    for entries in ("48", "512", "-4", '"64"'):
        bad.write_text(good.replace("entries = 64\nsource = \"[U]",
                                    f"entries = {entries}\nsource = \"[U]"))
        with pytest.raises(EmuError, match=r"\[utlb\]: entries must be 0 or a power of two"):
            load_profile(str(bad))
