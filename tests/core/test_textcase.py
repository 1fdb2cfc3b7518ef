"""The decoder's lower-case text presented as a report writes it (medassist.textcase)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medassist.labeler import label_text
from medassist.textcase import CASED_WORDS, present_text
from multimodal.errors import TokenizerError
from multimodal.tokenizer import WordTokenizer

#: what the demo decoder wrote for the shared A0001 CT, with the draft's marks
A0001_FINDINGS = (
    "[UNVERIFIED: size not measured on the CT] [UNVERIFIED: side uncertain on the CT] lungs "
    "and airways: there is airspace consolidation in the left lower lobe measuring about 4.7 "
    "cm. [UNVERIFIED: size not measured on the CT] there is a 3.4 cm lobulated mass in the "
    "left upper lobe. pleura: no pleural effusion. no pneumothorax. [UNVERIFIED: the model "
    "does not detect mediastinal lymphadenopathy reliably] mediastinum and heart: no enlarged "
    "mediastinal lymph nodes. the heart is normal in size. bones: no acute osseous "
    "abnormality.")
A0001_IMPRESSION = (
    "1. [UNVERIFIED: size not measured on the CT] 4.4 cm mass in the left upper lobe, "
    "suspicious for primary lung malignancy; recommend pet/ct and tissue sampling. 2. "
    "consolidation in the left lower lobe, nonspecific; clinical correlation recommended.")


def test_findings_read_as_a_report_one_heading_a_line() -> None:
    assert present_text(A0001_FINDINGS).splitlines() == [
        "Lungs and airways: [UNVERIFIED: size not measured on the CT] [UNVERIFIED: side "
        "uncertain on the CT] There is airspace consolidation in the left lower lobe "
        "measuring about 4.7 cm. [UNVERIFIED: size not measured on the CT] There is a 3.4 cm "
        "lobulated mass in the left upper lobe.",
        "Pleura: No pleural effusion. No pneumothorax.",
        "Mediastinum and heart: [UNVERIFIED: the model does not detect "
        "mediastinal lymphadenopathy reliably] No enlarged mediastinal lymph nodes. The heart "
        "is normal in size.",
        "Bones: No acute osseous abnormality."]


def test_impression_items_one_a_line_and_acronyms() -> None:
    assert present_text(A0001_IMPRESSION, headings=False).splitlines() == [
        "1. [UNVERIFIED: size not measured on the CT] 4.4 cm mass in the left upper lobe, "
        "suspicious for primary lung malignancy; recommend PET/CT and tissue sampling.",
        "2. Consolidation in the left lower lobe, nonspecific; clinical correlation "
        "recommended."]
    bullets = present_text("impression: - cardiomegaly. - moderate right pleural effusion.")
    assert bullets.splitlines() == ["Impression: - Cardiomegaly.",
                                    "- Moderate right pleural effusion."]


@pytest.mark.parametrize("text", [A0001_FINDINGS, A0001_IMPRESSION])
def test_only_case_and_line_breaks_change_and_every_sentence_reads_the_same(text: str) -> None:
    """Each sentence states the same findings, affirmed or negated, after the change, and
    the words are the same but for case (the marks before a heading move behind it)."""
    out = present_text(text)

    def read(t: str) -> list[dict[str, bool]]:
        return [s.labels for s in label_text(t) if s.labels]
    assert read(out) == read(text)
    assert sorted(out.lower().split()) == sorted(text.lower().split())
    # the marks are kept as written, none recased ("[UNVERIFIED: size ...]", not "Size")
    assert out.count("[UNVERIFIED: size not measured on the CT]") == text.count(
        "[UNVERIFIED: size not measured on the CT]")


def test_stations_decimals_and_words_it_does_not_know() -> None:
    assert present_text("enlarged lymph node at station 4 r, 14 mm short axis.") == (
        "Enlarged lymph node at station 4R, 14 mm short axis.")
    assert present_text("nodes at stations 2 r and 10 l, the largest 12 mm.") == (
        "Nodes at stations 2R and 10L, the largest 12 mm.")
    # a decimal's point ends no sentence; a list number's does
    assert present_text("ratio of about 0.58 on ct. 2. effusion 1.5 cm deep.") == (
        "Ratio of about 0.58 on CT.\n2. Effusion 1.5 cm deep.")
    # an acronym outside the table stays as written; a table of one's own is used instead
    assert present_text("egfr mutation known; 120 kvp.") == "Egfr mutation known; 120 kVp."
    assert present_text("egfr mutation; 120 kvp.", table={"egfr": "EGFR"}) == (
        "EGFR mutation; 120 kvp.")
    assert CASED_WORDS["mas"] == "mAs" and CASED_WORDS["lul"] == "LUL"
    # "ct-guided" and a word inside a longer one
    assert present_text("ct-guided biopsy; the pet scan, not peteous.") == (
        "CT-guided biopsy; the PET scan, not peteous.")


def test_without_headings_a_colon_inside_a_sentence_stays() -> None:
    text = "cardiomegaly: ratio 0.61. no effusion."
    assert present_text(text, headings=False) == "Cardiomegaly: ratio 0.61. No effusion."
    assert present_text("") == ""
    # a sentence already cased, or text after its marks, is left as it is
    assert present_text("[ADDED FROM THE FINDINGS LIST] Left consolidation (LLL), about 62 "
                        "mm (estimated, not measured on the CT).") == (
        "[ADDED FROM THE FINDINGS LIST] Left consolidation (LLL), about 62 mm (estimated, "
        "not measured on the CT).")


def test_the_reports_own_case_is_learned_with_the_vocabulary(tmp_path: Path) -> None:
    """A hospital's reports write "EGFR" and "CTA": the vocabulary built from them keeps
    that case (not a sentence's, heading's or item's first word, nor a single letter), saves
    and loads it, and the draft's text uses it over the built-in table; a vocabulary saved
    before stop 49 has none and loads as before."""
    from medassist.model_data import CaseRecord, build_tokenizer

    reports = [
        "FINDINGS:\nLungs: Spiculated mass, EGFR mutant per history. No CTA findings.\n"
        "Nodes: Station 4R node.\nIMPRESSION:\n1. Mass. Recommend CTA and EGFR testing.",
        "FINDINGS:\nLungs: The mass is smaller. CTA not performed; EGFR known.\nIMPRESSION:\n"
        "- Egfr-mutant mass, smaller.\n- The effusion resolved."]
    recs = [CaseRecord(case_id=str(i), hu=None, label_map=None, findings=[], emr=None,
                       report_text=t) for i, t in enumerate(reports)]
    tok = build_tokenizer(recs, max_size=400)
    assert tok.cased == {"cta": "CTA", "egfr": "EGFR"}  # "The", "Mass", "R" left out
    tok.save(tmp_path / "vocab.json")
    back = WordTokenizer.load(tmp_path / "vocab.json")
    assert back.cased == tok.cased and back.vocab == tok.vocab
    text = "lungs: egfr-mutant mass; cta not performed. 1. recommend pet/ct."
    assert present_text(text, table={**CASED_WORDS, **back.cased}) == (
        "Lungs: EGFR-mutant mass; CTA not performed.\n1. Recommend PET/CT.")
    # a vocabulary without the key (before stop 49) loads with none
    raw = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    del raw["cased"]
    (tmp_path / "old.json").write_text(json.dumps(raw), encoding="utf-8")
    assert WordTokenizer.load(tmp_path / "old.json").cased == {}
    # a cased form of a word outside the vocabulary, or another word, is refused
    for bad in ({"zzz": "ZZZ"}, {"cta": "CTX"}):
        raw["cased"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(raw), encoding="utf-8")
        with pytest.raises(TokenizerError, match=r"bad\.json: cased forms"):
            WordTokenizer.load(tmp_path / "bad.json")


def test_any_decoded_text_keeps_its_words_and_findings_and_a_second_pass_changes_nothing(
) -> None:
    """Seeded fuzz: 300 texts of report words, negations, numbers, marks, list numbers,
    bullets, headings, colons, "?", "!", line breaks and [UNK] in any order.  The
    characters are the same but for case and white space, each sentence reads the same
    findings, and presenting the result again changes nothing."""
    import random

    words = ["no", "there", "is", "a", "mass", "nodule", "pleural", "effusion", "left",
             "without", "not", "upper", "lobe", "pneumothorax", "ct", "pet", "/",
             "cardiomegaly", "the", "of", "4.5", "cm", "12", "mm", ".", ".", ",", ";", "!",
             "?", ":", "\n", "station", "stations", "and", "4", "r", "l", "[UNK]",
             "lungs and airways:", "pleura:", "1.", "2.", "-", "(", ")", "kvp",
             "[UNVERIFIED: size not measured on the CT]", "[ADDED FROM THE FINDINGS LIST]",
             "[SIZE MEASURED ON CT]"]
    rng = random.Random(0)
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        for headings in (True, False):
            out = present_text(text, headings=headings)
            # the same characters but for case and white space (the marks before a heading
            # move behind it; a station's "4 r" is written "4R")
            assert sorted("".join(out.lower().split())) == \
                sorted("".join(text.lower().split())), text
            assert [s.labels for s in label_text(out) if s.labels] == \
                [s.labels for s in label_text(text) if s.labels], text
            assert present_text(out, headings=headings) == out, text
