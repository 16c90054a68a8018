"""Multiple choice (RACE, SWAG as JSON Lines): ``race``, ``swag``."""

from __future__ import annotations

import numpy as np

from albert_jax import metrics as M
from albert_jax.training.tasks import base
from albert_jax.training.tasks.datasets import read_multiple_choice


class MultipleChoiceFamily(base.Family):
    """Multiple choice (RACE/SWAG JSON Lines): one [CLS] context [SEP] question+choice
    [SEP] row per choice, a score per row, base.softmax over the choices."""

    head = "multiple_choice"

    def load(self, split, tokenizer, training=False, path=None) -> base.Encoded:
        d = self.config.data
        source = path or base.split_file(d, split)
        examples = base.limit(read_multiple_choice(source, num_choices=d.num_choices or None),
                              d.max_train_examples if training else d.max_eval_examples)
        if not examples:
            raise base.FinetuneError(f"{path or split}: no examples")
        c = len(examples[0]["choices"])
        if any(len(e["choices"]) != c for e in examples):
            raise base.FinetuneError(f"{path or split}: examples have different numbers of choices "
                                "(set data.num_choices to check each line)")
        first, second = [], []
        for e in examples:
            for choice in e["choices"]:
                q = e["question"]
                # RACE cloze questions put the blank as "_"; others append the choice.
                text = q.replace("_", choice) if "_" in q else f"{q} {choice}".strip()
                first.append(e["context"] or text)
                second.append(text if e["context"] else "")
        has_second = any(second)
        arrays = base.encode_pairs(tokenizer, first, second if has_second else None,
                               self.config.max_seq_length)
        arrays = {k: v.reshape(len(examples), c, -1) for k, v in arrays.items()}
        arrays["labels"] = np.asarray([e["label"] for e in examples], np.int32)
        return base.Encoded(arrays, examples)

    def loss(self, out, batch):
        return base.classification_loss(out.logits, batch["labels"])

    def evaluate(self, preds, enc) -> dict[str, float]:
        labels = enc.arrays["labels"]
        keep = labels >= 0
        return {"accuracy": M.accuracy(labels[keep], preds["logits"].argmax(-1)[keep])}

    def records(self, preds, enc) -> list[dict]:
        probs = base.softmax(preds["logits"])
        return [{"id": e["id"], "label": int(p.argmax()),
                 "probabilities": [round(float(x), 6) for x in p]}
                for e, p in zip(enc.examples, probs, strict=True)]

    def default_metric(self) -> str:
        return "accuracy"


Family = MultipleChoiceFamily
TASKS = ("race", "swag", "multiple_choice")
