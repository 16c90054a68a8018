"""Extractive question answering: SQuAD v1.1 and v2.0 (``squad_v1``, ``squad_v2``)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from albert_jax import metrics as M
from albert_jax.training.tasks import squad_data as squad
from albert_jax.training.tasks.base import Encoded, Family, cross_entropy, limit, split_file


class SquadFamily(Family):
    """Extractive QA (SQuAD v1.1 / v2.0 JSON): windows with a doc stride, n-best decoding."""

    head = "question_answering"

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)
        self.version_2 = config.task == "squad_v2"

    def load(self, split, tokenizer, training=False, path=None) -> Encoded:
        d = self.config.data
        path = path or split_file(d, split)
        examples = limit(squad.read_squad(path),
                          d.max_train_examples if training else d.max_eval_examples)
        features = squad.make_features(
            examples, tokenizer, max_length=self.config.max_seq_length,
            doc_stride=d.doc_stride, max_query_length=d.max_query_length,
            is_training=training)
        arrays = squad.stack_features(features)
        return Encoded(arrays, examples, features)

    def loss(self, out, batch):
        start = cross_entropy(out.start_logits, batch["start_positions"])
        end = cross_entropy(out.end_logits, batch["end_positions"])
        n = batch["start_positions"].shape[0]
        return {"loss": jnp.sum(start + end) / 2.0,
                "count": jnp.asarray(n, jnp.float32)}

    def outputs(self, out):
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    def _decode(self, preds, enc) -> dict[str, str]:
        e = self.config.eval
        return squad.decode(enc.extra, enc.examples, preds["start_logits"], preds["end_logits"],
                            n_best_size=e.n_best_size, max_answer_length=e.max_answer_length,
                            version_2=self.version_2,
                            null_score_diff_threshold=e.null_score_diff_threshold)

    def evaluate(self, preds, enc) -> dict[str, float]:
        answers = self._decode(preds, enc)
        em = f1 = 0.0
        for ex in enc.examples:
            gold = [text for text, _ in ex.answers] or [""]
            em += M.squad_exact_match(answers.get(ex.qid, ""), gold, squad_v2=self.version_2)
            f1 += M.squad_f1(answers.get(ex.qid, ""), gold, squad_v2=self.version_2)
        n = max(len(enc.examples), 1)
        return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}

    def records(self, preds, enc) -> list[dict]:
        answers = self._decode(preds, enc)
        return [{"id": ex.qid, "answer": answers.get(ex.qid, "")} for ex in enc.examples]

    def default_metric(self) -> str:
        return "f1"


Family = SquadFamily
TASKS = ("squad_v1", "squad_v2")
