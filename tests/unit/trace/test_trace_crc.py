"""The decoder's CRC-32C: the SSE4.2 instruction (where the host has it) and the
table version compute the same function as the plugin's and the writer's."""

import numpy as np
import pytest
from numba import njit

from emu.trace import _decode as dk


@njit
def _fold_words(words, tab, use_any):
    c = np.uint32(0xFFFFFFFF)
    for i in range(words.shape[0]):
        if use_any:
            c = dk._crc_word_any(c, words[i], tab)
        else:
            c = dk._crc_word(c, words[i], tab)
    c = dk._crc_u32_any(c, np.uint32(words[0] & np.uint64(0xFFFFFFFF)), tab) if use_any \
        else dk._crc_u32(c, np.uint32(words[0] & np.uint64(0xFFFFFFFF)), tab)
    return c ^ np.uint32(0xFFFFFFFF)


@pytest.mark.parametrize("seed", range(4))
def test_word_paths_agree_with_bytewise_crc(seed):
    words = np.random.default_rng(seed).integers(0, 2**63, 257, dtype=np.uint64) * 3
    raw = words.tobytes() + words[:1].tobytes()[:4]
    expect = dk.crc32c_bytes(raw)
    assert int(_fold_words(words, dk.CRC_TABLES, False)) == expect
    assert int(_fold_words(words, dk.CRC_TABLES, True)) == expect


def test_known_vector():
    # CRC-32C check value of "123456789" (RFC 3720 / iSCSI).
    assert dk.crc32c_bytes(b"123456789") == 0xE3069283
