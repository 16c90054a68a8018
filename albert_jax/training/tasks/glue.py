"""GLUE (and GLUE-format) sentence and sentence-pair classification and regression:
``sst2``, ``cola``, ``mnli``, ... read from local TSV files or the TFDS catalogue."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax import metrics as M
from albert_jax.training.run_config import resolve_path
from albert_jax.training.tasks import base
from albert_jax.training.tasks.datasets import GLUE_TASKS, load_glue, read_glue_tsv
from albert_jax.training.trainer import main_process_first

# Metrics of each GLUE task; the first is the default selection metric.
GLUE_METRICS = {
    "cola": ("mcc", "accuracy"),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "ax": ("mcc",),
}


class GlueFamily(base.Family):
    """Sentence (pair) classification and regression (STS-B) on GLUE-format data."""

    head = "sequence_classification"

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)
        self.spec = GLUE_TASKS[config.task]
        self.regression = self.spec.label_names is None

    def setup(self, label_names=None) -> None:
        self.label_names = None if self.regression else tuple(
            label_names or self.spec.label_names)

    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names or ())

    def splits(self) -> tuple[str, ...]:
        if self.spec.name == "mnli":
            return ("train", "validation_matched")
        return ("train", "validation")

    def load(self, split, tokenizer, training=False, path=None) -> base.Encoded:
        d = self.config.data
        if path is not None:
            examples = list(read_glue_tsv(self.spec.name, path, "test"))
        else:
            data_dir = resolve_path(d.tfds_data_dir) if d.tfds_data_dir else None
            manual = resolve_path(d.manual_dir) if d.manual_dir else None
            # Process 0 prepares the TFDS dataset; the others then open it.
            examples = main_process_first(
                lambda: load_glue(self.spec.name, split, manual_dir=manual, data_dir=data_dir),
                f"glue {split}").examples
        # Sliced before materialising: each record of the lazy source is decoded on access.
        examples = base.limit(examples, d.max_train_examples if training else d.max_eval_examples)
        if not examples:
            raise base.FinetuneError(f"GLUE {self.spec.name} {path or split}: no examples")
        pair = self.spec.text_b is not None
        arrays = base.encode_pairs(tokenizer, [e["text_a"] for e in examples],
                               [e["text_b"] for e in examples] if pair else None,
                               self.config.max_seq_length)
        dtype = np.float32 if self.regression else np.int32
        arrays["labels"] = np.asarray([e["label"] for e in examples], dtype)
        return base.Encoded(arrays, examples)

    def loss(self, out, batch):
        labels = batch["labels"]
        if self.regression:
            pred = out.logits[:, 0].astype(jnp.float32)
            valid = (labels > -1.0).astype(jnp.float32)  # unlabeled rows read as -1.0
            return {"loss": jnp.sum(jnp.square(pred - labels) * valid),
                    "count": jnp.sum(valid)}
        return base.classification_loss(out.logits, labels)

    def evaluate(self, preds, enc) -> dict[str, float]:
        labels = enc.arrays["labels"]
        logits = preds["logits"]
        if self.regression:
            return M.compute(("pearson", "spearman"), labels, logits[:, 0])
        names = GLUE_METRICS.get(self.spec.name, ("accuracy",))
        return M.compute(names, labels, logits.argmax(-1))

    def records(self, preds, enc) -> list[dict]:
        logits = preds["logits"]
        if self.regression:
            return [{"idx": e["idx"], "score": float(s)} for e, s in zip(
                enc.examples, logits[:, 0], strict=True)]
        probs = base.softmax(logits)
        names = self.label_names or ()
        return [{"idx": e["idx"], "label": names[int(p.argmax())],
                 "probabilities": {n: round(float(x), 6) for n, x in zip(names, p, strict=True)}}
                for e, p in zip(enc.examples, probs, strict=True)]

    def default_metric(self) -> str:
        return GLUE_METRICS.get(self.spec.name, ("accuracy",))[0]


Family = GlueFamily
TASKS = tuple(GLUE_TASKS)
