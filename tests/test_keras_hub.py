"""QKVAttention inside KerasHub: its cached attention's behaviours, its
`TransformerDecoder` and a GPT-2 with the attention swapped, and a
Llama-style block from `QKVAttention` with rotary positions.

KerasHub is an optional leg: `make test-hub` installs it (without
TensorFlow Text, which would bring a second TensorFlow) and runs this file.
"""

import keras
import numpy as np
import pytest

from keras_addons_qa.layers import QKVAttention
from keras_addons_qa.layers import replace_attention
from tests import harness

keras_hub = pytest.importorskip(
    "keras_hub", reason="KerasHub is an optional test leg: `make test-hub` installs it"
)
from keras_hub.layers import CachedMultiHeadAttention  # noqa: E402
from keras_hub.layers import TransformerDecoder  # noqa: E402
from keras_hub.src.models.llama.llama_attention import LlamaAttention  # noqa: E402

ATOL = 1e-5


def _inputs(batch=2, steps=6, features=16, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, steps, features)).astype("float32")


def _causal(batch, steps, length, start=0):
    """`(batch, steps, length)`: step `i` sees slots `<= start + i`."""
    rows = start + np.arange(steps)[:, None] >= np.arange(length)[None]
    return np.broadcast_to(rows, (batch, steps, length))


def _cached_steps(layer, x, length, prompt, call):
    """The prompt in one call, then a step per call, through a cache;
    `call(layer, x, mask, cache, index)` returns `(output, cache)` or
    `(output, scores, cache)`. Returns every call's results."""
    batch = x.shape[0]
    cache = np.zeros((batch, 2, length) + _cache_heads(layer), "float32")
    results = []
    for start, stop in [(0, prompt)] + [(t, t + 1) for t in range(prompt, x.shape[1])]:
        out = call(layer, x[:, start:stop], _causal(batch, stop - start, length, start),
                   cache, start)
        cache = out[-1]
        results.append([harness.to_numpy(o) for o in out])
    return results


def _cache_heads(layer):
    if isinstance(layer, LlamaAttention):
        return (layer.num_key_value_heads, layer._query_dense.kernel.shape[-1])
    return (layer.num_key_value_heads if isinstance(layer, QKVAttention) else layer._num_heads,
            layer._key_dim)


def _assert_all_close(ours, theirs):
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=ATOL)


# -- CachedMultiHeadAttention's behaviours ------------------------------------


def _cached_pair(**kwargs):
    theirs = CachedMultiHeadAttention(num_heads=2, key_dim=4, **kwargs)
    x = _inputs()
    theirs(x, x)
    return theirs, QKVAttention.from_multi_head_attention(theirs), x


def test_uncached_calls_equal_cached_multi_head_attention():
    theirs, ours, x = _cached_pair()
    memory = _inputs(steps=9, seed=1)
    mask = _causal(2, 6, 9, start=3)
    for args in ((x, x), (x, memory)):
        attention_mask = mask if args[1] is memory else None
        np.testing.assert_allclose(
            harness.to_numpy(ours(*args, attention_mask=attention_mask)),
            harness.to_numpy(theirs(*args, attention_mask=attention_mask)), atol=ATOL)


@pytest.mark.parametrize("scores", [False, True])
def test_cached_decoding_equals_cached_multi_head_attention(scores):
    theirs, ours, x = _cached_pair()

    def call(layer, x, mask, cache, index):
        return layer(x, x, attention_mask=mask, cache=cache, cache_update_index=index,
                     return_attention_scores=scores)

    ours_steps = _cached_steps(ours, x, 8, 3, call)
    _assert_all_close(ours_steps, _cached_steps(theirs, x, 8, 3, call))
    assert len(ours_steps[0]) == (3 if scores else 2)  # (output, [scores,] cache)
    # Reading the cache as it is (no index): the same as theirs.
    cache = ours_steps[-1][-1]
    np.testing.assert_allclose(harness.to_numpy(ours(x[:, :1], x[:, :1], cache=cache)[0]),
                               harness.to_numpy(theirs(x[:, :1], x[:, :1], cache=cache)[0]),
                               atol=ATOL)


def test_dropout_acts_in_training_only():
    theirs, ours, x = _cached_pair(dropout=0.5)
    inference = harness.to_numpy(ours(x, x, training=False))
    np.testing.assert_allclose(inference, harness.to_numpy(theirs(x, x, training=False)),
                               atol=ATOL)
    assert not np.allclose(harness.to_numpy(ours(x, x, training=True)), inference)


# -- TransformerDecoder -------------------------------------------------------


@pytest.mark.parametrize("normalize_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_transformer_decoder_with_swapped_attention(normalize_first, cross):
    keras.utils.set_random_seed(1)
    decoder = TransformerDecoder(intermediate_dim=8, num_heads=2,
                                 normalize_first=normalize_first)
    x, memory = _inputs(), _inputs(steps=5, seed=2)
    padding = np.ones((2, 6), bool)
    padding[1, 4:] = False
    encoder = memory if cross else None

    def run():
        full = decoder(x, encoder, decoder_padding_mask=padding)
        cache = np.zeros((2, 2, 6, 2, 8), "float32")  # key_dim: 16 features / 2 heads
        # Cross-attention: the encoder's keys and values written once, then read.
        cross_cache = np.zeros((2, 2, 5, 2, 8), "float32") if cross else None
        steps = []
        for t in range(6):
            extra = {} if not cross else dict(
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=0 if t == 0 else None,
            )
            out = decoder(x[:, t:t + 1], encoder, self_attention_cache=cache,
                          self_attention_cache_update_index=t, **extra)
            cache = out[1]
            cross_cache = out[2] if cross else None
            steps.append(harness.to_numpy(out[0]))
        return harness.to_numpy(full), np.concatenate(steps, axis=1), harness.to_numpy(cache)

    before = run()
    new = replace_attention(decoder)
    assert len(new) == (2 if cross else 1)
    assert isinstance(decoder._self_attention_layer, QKVAttention)
    for ours, theirs in zip(run(), before):
        np.testing.assert_allclose(ours, theirs, atol=ATOL)


# -- A tiny GPT-2 -------------------------------------------------------------


def _gpt2():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=24,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _layout_matches(model):
    pattern = "transformer_layer.*self_attention.*(query|key|value).kernel"
    layout = keras.distribution.LayoutMap(None)
    layout[pattern] = (None, "model", None)
    return [v.path for v in model.weights if layout[v.path] is not None]


def test_swapped_gpt2_keeps_outputs_generation_paths_and_saving(tmp_path):
    lm = _gpt2()
    tokens = np.random.default_rng(3).integers(1, 50, size=(3, 10)).astype("int32")
    padding = np.ones((3, 10), bool)
    padding[1, 7:] = False  # right-padded
    padding[2, :3] = False  # left-padded
    batch = {"token_ids": tokens, "padding_mask": padding}
    prompts = {"token_ids": np.where(np.arange(12) < [[4], [6]], 7, 0).astype("int32"),
               "padding_mask": np.arange(12) < [[4], [6]]}
    modes = {"eager": dict(run_eagerly=True), "graph": dict(jit_compile=False),
             "xla": dict(jit_compile=True)}

    def generated():
        out = {}
        for mode, options in modes.items():
            lm.compile(sampler="greedy", **options)
            out[mode] = harness.to_numpy(lm.generate(prompts, stop_token_ids=None)["token_ids"])
        return out

    outputs = harness.to_numpy(lm.backbone(batch))
    tokens_before = generated()
    matches = _layout_matches(lm)
    assert len(matches) == 6

    new = replace_attention(lm)
    assert len(new) == 2
    assert all(isinstance(layer._self_attention_layer, QKVAttention)
               for layer in lm.backbone.transformer_layers)
    np.testing.assert_allclose(harness.to_numpy(lm.backbone(batch)), outputs, atol=ATOL)
    for mode, tokens_after in generated().items():
        np.testing.assert_array_equal(tokens_after, tokens_before[mode], err_msg=mode)
    assert _layout_matches(lm) == matches

    restored = harness.save_and_reload(lm, tmp_path)
    np.testing.assert_allclose(harness.to_numpy(restored.backbone(batch)), outputs, atol=ATOL)
    replace_attention(restored)
    np.testing.assert_allclose(harness.to_numpy(restored.backbone(batch)), outputs, atol=ATOL)


# -- Llama-style attention ----------------------------------------------------


def test_llama_style_block_equals_llama_attention():
    keras.utils.set_random_seed(2)
    llama = LlamaAttention(num_query_heads=4, num_key_value_heads=2, rope_max_wavelength=100,
                           name="self_attention")
    x = _inputs(steps=7)
    reference = harness.to_numpy(llama(x, attention_mask=_causal(2, 7, 7)))
    ours = QKVAttention.from_grouped_query_attention(llama)
    assert [v.path for v in ours.weights] == [v.path for v in llama.weights]
    np.testing.assert_allclose(harness.to_numpy(ours(x, x, use_causal_mask=True)), reference,
                               atol=ATOL)

    def call(layer, x, mask, cache, index):
        if isinstance(layer, LlamaAttention):
            return layer(x, attention_mask=mask, cache=cache, cache_update_index=index)
        return layer(x, x, attention_mask=mask, cache=cache, cache_update_index=index)

    ours_steps = _cached_steps(ours, x, 9, 3, call)
    _assert_all_close(ours_steps, _cached_steps(llama, x, 9, 3, call))  # outputs and caches
    np.testing.assert_allclose(np.concatenate([s[0] for s in ours_steps], axis=1), reference,
                               atol=ATOL)
