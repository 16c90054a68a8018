"""Golden values of the real albert-base-v2 (transformers' integration test, model card).

The weights cannot be downloaded on the build machines: these tests run when albert-base-v2
is in the local Hugging Face cache and skip, with the reason, otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from albert_jax import hub

NAME = "albert-base-v2"

pytestmark = pytest.mark.skipif(
    not hub.is_cached(NAME),
    reason=f"{NAME} is not in the local Hugging Face cache ({hub.cache_dir()}); "
    f"run `hf download albert/{NAME}` on a machine with network access to enable",
)


@pytest.fixture(scope="module")
def fill_mask():
    from albert_jax import FillMask

    return FillMask.from_pretrained(NAME)


def test_last_hidden_state_slice():
    from albert_jax import load_model

    model, params = load_model(NAME, head="base")
    ids = np.array([[0, 345, 232, 328, 740, 140, 1695, 69, 6078, 1588, 2]])
    mask = np.array([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    out = model.apply(params, ids, mask).last_hidden_state
    expected = np.array([[[-0.6513, 1.5035, -0.2766], [-0.6515, 1.5046, -0.2780],
                          [-0.6512, 1.5049, -0.2784]]])
    np.testing.assert_allclose(np.asarray(out[:, 1:4, 1:4]), expected, atol=1e-4)


def test_fill_mask_model_card(fill_mask):
    results = fill_mask("Hello I'm a [MASK] model.")
    assert [r["token_str"] for r in results] == [
        "modeling", "modelling", "model", "runway", "lingerie"]
    assert results[0]["token"] == 12807
    assert abs(results[0]["score"] - 0.0582) < 5e-4


def test_fill_mask_paris(fill_mask):
    results = fill_mask("Paris is the [MASK] of France.")
    assert [r["token_str"] for r in results] == [
        "capital", "capitol", "comune", "arrondissement", "bastille"]
