"""albert-mini, the model shipped with the package: it loads offline and it has learned.

Quality is measured on the held-out book (Macbeth, never seen in pretraining) with the
pretraining task itself: MLM accuracy at the masked positions against always predicting
the most frequent token of those same positions, and SOP accuracy against chance.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SHARED_DATA

from albert_jax import hub

HELD_OUT = SHARED_DATA / "corpus" / "gutenberg_nltk" / "shakespeare-macbeth.txt"
# SOP accuracy must beat chance (0.5) by this much; with the ~500 examples scored here one
# standard error of the estimate is about 0.022.
SOP_MARGIN = 0.05

pytestmark = pytest.mark.skipif(
    hub.packaged_model_dir("albert-mini") is None, reason="albert-mini is not in the package"
)


@pytest.fixture(scope="module")
def held_out_scores():
    if not HELD_OUT.exists():
        pytest.skip(f"the held-out book is absent ({HELD_OUT})")
    from albert_jax import load_pretrained
    from albert_jax.training.corpus_builder import parse_documents, read_text
    from albert_jax.training.pretrain_data import PretrainingDataset

    model, params, tokenizer = load_pretrained("albert-mini", head="pretraining")
    documents = [{"sentences": s} for s in parse_documents(read_text(HELD_OUT), "paragraphs")]
    data = PretrainingDataset(documents, tokenizer, max_seq_length=128,
                              max_predictions_per_seq=20, batch_size=64, seed=1234)
    forward = jax.jit(lambda p, b: model.apply(
        p, b["input_ids"], b["attention_mask"], b["token_type_ids"],
        masked_positions=b["masked_positions"]))
    predicted, targets, sop_hits, sop_total = [], [], 0, 0
    for _ in range(8):  # 512 examples: a little over two passes over the book's pairs.
        batch = next(data)
        out = forward(params, batch)
        real = batch["masked_weights"] > 0
        predicted.append(np.asarray(out.prediction_logits).argmax(-1)[real])
        targets.append(batch["masked_ids"][real])
        sop_hits += int((np.asarray(out.sop_logits).argmax(-1) == batch["sop_label"]).sum())
        sop_total += len(batch["sop_label"])
    return np.concatenate(predicted), np.concatenate(targets), sop_hits / sop_total


def test_mlm_accuracy_is_twice_the_most_frequent_token_baseline(held_out_scores):
    predicted, targets, _ = held_out_scores
    accuracy = float((predicted == targets).mean())
    _, counts = np.unique(targets, return_counts=True)
    baseline = counts.max() / len(targets)  # Always predicting the commonest target.
    print(f"albert-mini held-out MLM accuracy {accuracy:.3f}, most-frequent baseline "
          f"{baseline:.3f} on {len(targets)} positions")
    assert accuracy >= 2 * baseline


def test_sop_accuracy_beats_chance(held_out_scores):
    _, _, sop_accuracy = held_out_scores
    print(f"albert-mini held-out SOP accuracy {sop_accuracy:.3f}")
    assert sop_accuracy > 0.5 + SOP_MARGIN


def test_fill_mask_offline_answers(monkeypatch, tmp_path):
    """No hub, an empty cache: albert-mini still answers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from albert_jax import FillMask

    results = FillMask.from_pretrained("albert-mini")("where is my [MASK]?")
    assert len(results) == 5
    assert all(r["sequence"].startswith("where is my") for r in results)
