"""Token classification (named entities, CoNLL-2003 format): ``conll2003``."""

from __future__ import annotations

import numpy as np

from albert_jax import metrics as M
from albert_jax.training.run_config import resolve_path
from albert_jax.training.tasks.base import Encoded, Family, classification_loss, limit, split_file
from albert_jax.training.tasks.datasets import read_conll


class TokenFamily(Family):
    """Token classification (CoNLL files): each word's label on its first piece."""

    head = "token_classification"

    def setup(self, label_names=None) -> None:
        d = self.config.data
        if label_names:
            self.label_names = tuple(label_names)
        elif d.label_names:
            self.label_names = tuple(d.label_names)
        else:
            self.label_names = read_conll(resolve_path(d.train_file)).label_names

    def load(self, split, tokenizer, training=False, path=None) -> Encoded:
        d = self.config.data
        data = read_conll(path or split_file(d, split), label_names=self.label_names)
        sentences = limit(data.sentences,
                           d.max_train_examples if training else d.max_eval_examples)
        max_len = self.config.max_seq_length
        n = len(sentences)
        ids = np.zeros((n, max_len), np.int32)
        mask = np.zeros((n, max_len), np.int32)
        labels = np.full((n, max_len), -1, np.int32)
        # All words of all sentences go to sentencepiece in one batched call; a word alone
        # gives the pieces it has in context (each word starts with "▁").
        words = [w for tokens, _ in sentences for w in tokens]
        pieces = tokenizer._encode_texts(words) if words else []
        first: list[list[int]] = []  # position of each word's first piece (-1: truncated)
        index = {t: i for i, t in enumerate(self.label_names or ())}
        k = 0
        for row, (_, tags) in enumerate(sentences):
            seq, lab, starts = [tokenizer.cls_token_id], [-1], []
            for tag in tags:
                p = pieces[k] or [tokenizer.unk_token_id]
                k += 1
                if len(seq) + len(p) > max_len - 1:
                    starts.append(-1)
                    continue
                starts.append(len(seq))
                lab.extend([index[tag]] + [-1] * (len(p) - 1))
                seq.extend(p)
            seq.append(tokenizer.sep_token_id)
            lab.append(-1)
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
            labels[row, : len(lab)] = lab
            first.append(starts)
        arrays = {"input_ids": ids, "attention_mask": mask,
                  "token_type_ids": np.zeros_like(ids), "labels": labels}
        return Encoded(arrays, sentences, first)

    def loss(self, out, batch):
        return classification_loss(out.logits, batch["labels"])

    def _tags(self, preds, enc) -> list[list[str]]:
        best = preds["logits"].argmax(-1)
        names = self.label_names or ()
        outside = "O" if "O" in names else names[0]
        return [[names[best[i, p]] if p >= 0 else outside for p in starts]
                for i, starts in enumerate(enc.extra)]

    def evaluate(self, preds, enc) -> dict[str, float]:
        pred = self._tags(preds, enc)
        gold = [tags for _, tags in enc.examples]
        out = M.entity_scores(gold, pred, scheme=self.config.eval.tag_scheme)
        flat_gold = [t for s in gold for t in s]
        flat_pred = [t for s in pred for t in s]
        out["accuracy"] = M.accuracy(flat_gold, flat_pred)
        return out

    def records(self, preds, enc) -> list[dict]:
        return [{"tokens": tokens, "tags": tags}
                for (tokens, _), tags in zip(enc.examples, self._tags(preds, enc), strict=True)]

    def default_metric(self) -> str:
        return "f1"


Family = TokenFamily
TASKS = ("conll2003", "ner", "token_classification")
