"""ASC codecs and page cache: bit-identical reconstruction, LRU, and malformed batches refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remusdb.compression import codec, rle
from remusdb.compression.codec import Codec, CodecError
from remusdb.compression.compressor import Compressor
from remusdb.compression.pagecache import PageCache

P = 4096


def sparse_edit(rng, page: np.ndarray, spots: int = 3) -> np.ndarray:
    out = page.copy()
    for _ in range(spots):
        at = int(rng.integers(0, P - 24))
        out[at : at + int(rng.integers(1, 24))] = rng.integers(0, 256, dtype=np.uint8)
    return out


class Standby:
    """The standby's side of the property: its RAM image is the only XOR base it has."""

    def __init__(self, block_pages):
        self.images = [np.zeros((n, P), np.uint8) for n in block_pages]

    def base(self, block, index):
        return lambda rows: np.stack([self.images[b][i] for b, i in
                                      zip(block[rows], index[rows].astype(np.int64), strict=True)])

    def apply(self, payload):
        blk, idx = codec.page_keys(payload)
        b, i, pages = codec.decode(payload, self.base(blk, idx))
        for k in range(len(b)):
            self.images[b[k]][int(i[k])] = pages[k]
        return b, i, pages


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cache_pages=st.integers(0, 40),
       mode=st.sampled_from(codec.MODES), epochs=st.integers(1, 12),
       batch=st.integers(1, 40))
def test_encode_decode_identity_across_epochs(seed, cache_pages, mode, epochs, batch):
    rng = np.random.default_rng(seed)
    block_pages = [48, 16]
    ram = [rng.integers(0, 256, (n, P), dtype=np.uint8) for n in block_pages]
    ram[0][rng.random(48) < 0.3] = 0
    history = [[[r[i].copy()] for i in range(len(r))] for r in ram]
    comp = Compressor(mode, block_pages, cache_pages)
    standby = Standby(block_pages)
    # Epoch 0: the full copy, uncached.
    for b, r in enumerate(ram):
        idx = np.arange(len(r), dtype=np.uint64)
        standby.apply(comp.batch(np.full(len(r), b, np.uint16), idx, r, cache=False))
    for _ in range(epochs):
        keys = [(b, i) for b in range(2) for i in range(block_pages[b])]
        chosen = rng.choice(len(keys), int(rng.integers(0, len(keys) + 1)), replace=False)
        pages, zeros, refs = [], [], []
        for k in chosen:
            b, i = keys[k]
            kind = rng.integers(0, 7)
            if kind == 0:
                new = sparse_edit(rng, ram[b][i])
            elif kind == 1:
                new = rng.integers(0, 256, P, dtype=np.uint8)
            elif kind == 2:  # back to an earlier content
                new = history[b][i][int(rng.integers(0, len(history[b][i])))].copy()
            elif kind == 3:  # dirty but unchanged
                new = ram[b][i].copy()
            elif kind == 4:
                zeros.append((b, i))
                ram[b][i] = 0
                history[b][i].append(ram[b][i].copy())
                continue
            elif kind == 5:  # sent another way (an RT reference): the standby gets it whole
                ram[b][i] = sparse_edit(rng, ram[b][i])
                history[b][i].append(ram[b][i].copy())
                refs.append((b, i))
                continue
            else:
                new = np.zeros(P, np.uint8)
                new[int(rng.integers(0, P))] = 1
            ram[b][i] = new
            history[b][i].append(new.copy())
            pages.append((b, i))
        for at in range(0, len(pages), batch):
            part = pages[at : at + batch]
            blk = np.array([b for b, _ in part], np.uint16)
            idx = np.array([i for _, i in part], np.uint64)
            data = np.stack([ram[b][i] for b, i in part])
            standby.apply(comp.batch(blk, idx, data))
        if zeros:
            comp.forget(np.array([b for b, _ in zeros], np.uint16),
                        np.array([i for _, i in zeros], np.uint64))
            for b, i in zeros:
                standby.images[b][i] = 0
        if refs:
            comp.sent_otherwise(np.array([b for b, _ in refs], np.uint16),
                                np.array([i for _, i in refs], np.uint64),
                                np.stack([ram[b][i] for b, i in refs]))
            for b, i in refs:
                standby.images[b][i] = ram[b][i]
        for b in range(2):
            assert np.array_equal(standby.images[b], ram[b])
    assert comp.cache.used <= comp.cache.capacity


def test_sparse_changes_compress_and_unchanged_pages_cost_nothing():
    rng = np.random.default_rng(7)
    old = rng.integers(0, 256, (64, P), dtype=np.uint8)
    new = np.stack([sparse_edit(rng, p) for p in old])
    new[:8] = old[:8]
    blk, idx = np.zeros(64, np.uint16), np.arange(64, dtype=np.uint64)
    for mode in codec.MODES:
        out = codec.encode(blk, idx, new, np.ones(64, bool), new ^ old, mode)
        codes = np.frombuffer(out, np.uint8, 64, codec.codes_offset(64))
        assert (codes[:8] == Codec.UNCHANGED).all()
        assert len(out) < 0.05 * new.nbytes, (mode, len(out))
        _, _, back = codec.decode(out, lambda rows: old[rows])
        assert np.array_equal(back, new)


def test_rewritten_pages_fall_back_to_whole_pages():
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, (4, P), dtype=np.uint8)
    new = rng.integers(0, 256, (4, P), dtype=np.uint8)
    out = codec.encode(np.zeros(4, np.uint16), np.arange(4, dtype=np.uint64), new,
                       np.ones(4, bool), new ^ old, "xor-rle")
    assert (np.frombuffer(out, np.uint8, 4, codec.codes_offset(4)) == Codec.RAW).all()
    assert codec.decode(out, lambda rows: old[rows])[2].tobytes() == new.tobytes()


def test_rle_edges_full_and_empty_pages():
    delta = np.zeros((5, P), np.uint8)
    delta[1, :4] = 1  # first word
    delta[1, -4:] = 2  # last word
    delta[2] = 0xFF  # every word
    delta[3, 8:12] = 3
    delta[3, 16:20] = 4  # after a one-word gap: a second run
    runs = rle.encode(delta)
    assert runs.counts.tolist() == [0, 2, 1, 2, 0]
    back = np.zeros_like(delta)
    rle.apply(back, runs)
    assert np.array_equal(back, delta)


def test_page_cache_evicts_least_recently_used():
    cache = PageCache([10], capacity=2)
    pg = np.ones((1, P), np.uint8)

    def touch(i):
        return cache.exchange(np.zeros(1, np.uint16), np.array([i], np.uint64), pg * i)[0][0]

    assert not touch(1) and not touch(2)
    assert touch(1)  # 2 is now least recently used
    assert not touch(3)  # evicts 2
    assert touch(1) and touch(3) and not touch(2)
    assert cache.evictions == 2 and cache.used == 2
    cache.drop(np.zeros(1, np.uint16), np.array([3], np.uint64))
    assert cache.used == 1 and not touch(3)
    assert cache.summary()["capacity_pages"] == 2 and cache.summary()["used_pages"] == 2


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 6),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 11)), max_size=80))
def test_page_cache_is_exact_lru_and_consistent(capacity, ops):
    """One page per batch, against an OrderedDict LRU; drops free their slot."""
    from collections import OrderedDict

    cache, model = PageCache([12], capacity), OrderedDict()
    b = np.zeros(1, np.uint16)
    for n, (drop, key) in enumerate(ops):
        k = np.array([key], np.uint64)
        if drop:
            cache.drop(b, k)
            model.pop(key, None)
        else:
            page = np.full((1, P), n % 251, np.uint8)
            hit, delta = cache.exchange(b, k, page)
            assert bool(hit[0]) == (key in model)
            if hit[0]:  # the delta is against the version last sent
                assert np.array_equal(delta[0] ^ page[0], np.full(P, model[key], np.uint8))
                model.move_to_end(key)
            elif len(model) == capacity:
                model.popitem(last=False)
            model[key] = n % 251
        cached = {int(cache.key[s]) for s in range(capacity) if cache.key[s] >= 0}
        assert cached == set(model)
        assert all(cache.slot_of[cache.key[s]] == s for s in range(capacity) if cache.key[s] >= 0)
        assert int((cache.slot_of >= 0).sum()) == len(model)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 6), ops=st.lists(st.tuples(
    st.booleans(), st.sets(st.integers(0, 11), min_size=1, max_size=8)), max_size=40))
def test_page_cache_batches_keep_slots_consistent(capacity, ops):
    """Batches of several pages: hits are exactly the cached pages, deltas are against the
    version last sent, every slot belongs to one page and the cache never overfills."""
    cache, sent = PageCache([12], capacity), {}
    for n, (drop, keys) in enumerate(ops):
        k = np.array(sorted(keys), np.uint64)
        b = np.zeros(len(k), np.uint16)
        before = {int(cache.key[s]) for s in range(capacity) if cache.key[s] >= 0}
        if drop:
            cache.drop(b, k)
            for key in keys:
                sent.pop(key, None)
            continue
        pages = np.stack([np.full(P, (n * 13 + key) % 251, np.uint8) for key in sorted(keys)])
        hit, delta = cache.exchange(b, k, pages)
        assert [bool(h) for h in hit] == [key in before for key in sorted(keys)]
        for d, key, page in zip(delta, k[hit], pages[hit], strict=True):
            assert np.array_equal(d ^ page, np.full(P, sent[int(key)], np.uint8))
        for key, page in zip(sorted(keys), pages, strict=True):
            sent[key] = int(page[0])
        owners = cache.key[cache.key >= 0]
        assert len(set(owners.tolist())) == len(owners) <= capacity
        assert all(cache.slot_of[cache.key[s]] == s for s in range(capacity) if cache.key[s] >= 0)
        assert int((cache.slot_of >= 0).sum()) == len(owners)


# Malformed batches: a clear error, and nothing written anywhere.

def good_batch():
    rng = np.random.default_rng(11)
    old = rng.integers(0, 256, (6, P), dtype=np.uint8)
    new = np.stack([sparse_edit(rng, p) for p in old])
    new[5] = rng.integers(0, 256, P, dtype=np.uint8)  # a whole page too
    out = codec.encode(np.zeros(6, np.uint16), np.arange(6, dtype=np.uint64), new,
                       np.array([1, 1, 1, 1, 1, 0], bool), new[:5] ^ old[:5], "xor-rle")
    return bytearray(out), old


def run_table_at(payload):
    n, nruns = np.frombuffer(payload, "<u4", 2, 0)
    codes = np.frombuffer(payload, np.uint8, n, codec.codes_offset(n))
    k = int((codes == Codec.XOR_RLE).sum())
    raw = int((codes == Codec.RAW).sum()) * P
    nlz = int(np.frombuffer(payload, "<u4", 1, 12)[0])
    at = codec.codes_offset(n) + n + raw + nlz
    return at + 2 * k, at + 2 * k + 2 * int(nruns), int(nruns)  # starts, lengths, runs


def corrupt(kind):
    p, old = good_batch()
    starts, lengths, nruns = run_table_at(p)
    if kind == "truncated":
        p = p[:-1]
    elif kind == "extended":
        p += b"\0"
    elif kind == "codec id":
        p[codec.codes_offset(6)] = 9
    elif kind == "zero run length":
        p[lengths : lengths + 2] = (0).to_bytes(2, "little")
    elif kind == "run past the page":
        p[starts : starts + 2] = (1023).to_bytes(2, "little")
    elif kind == "overlapping runs":
        assert nruns >= 2
        p[starts + 2 : starts + 4] = p[starts : starts + 2]
    elif kind == "too many pages":
        p[0:4] = (codec.MAX_PAGES + 1).to_bytes(4, "little")
    elif kind == "header only":
        p = p[:10]
    elif kind == "wrong base":
        old = old.copy()
        old[2, 100] ^= 1
    elif kind == "lz4 garbage":
        rng = np.random.default_rng(1)
        src = rng.integers(0, 4, (3, P), dtype=np.uint8)
        p = bytearray(codec.encode(np.zeros(3, np.uint16), np.arange(3, dtype=np.uint64), src,
                                   np.zeros(3, bool), src[:0], "xor-lz4"))
        assert (np.frombuffer(p, np.uint8, 3, codec.codes_offset(3)) == Codec.LZ4).all()
        p[codec.codes_offset(3) + 3 :] = b"\xff" * (len(p) - codec.codes_offset(3) - 3)
    return bytes(p), old


@pytest.mark.parametrize("kind", ["truncated", "extended", "codec id", "zero run length",
                                  "run past the page", "overlapping runs", "too many pages",
                                  "header only", "wrong base", "lz4 garbage"])
def test_malformed_batches_are_refused(kind):
    payload, old = corrupt(kind)
    before = old.copy()
    with pytest.raises(CodecError):
        codec.decode(payload, lambda rows: old[rows])
    assert np.array_equal(old, before)


def test_good_batch_decodes():
    payload, old = good_batch()
    _, _, pages = codec.decode(bytes(payload), lambda rows: old[rows])
    assert pages.shape == (6, P)
