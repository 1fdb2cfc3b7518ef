"""What the note states (medassist.history) and the guard's mark on a history it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from medassist.history import (
    FACTS,
    FEVER,
    HEART_FAILURE,
    HEAVY_SMOKING,
    KNOWN_CANCER,
    LEUKOCYTOSIS,
    NoteHistory,
    claimed_history,
    read_history,
    unsupported,
)
from medassist.labeler import guard, history_unstated_labels, label_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("note", "stated"), [
    ("CC/HPI: 69 yo M w/ HTN p/w fever to 39.3 C and productive cough x5d.", {FEVER}),
    ("Denies fever, chills, hemoptysis.", set()),
    ("Afebrile. Vitals: T 37.2 C, HR 80.", set()),
    ("51 yo F w/ no significant PMH p/w fever and cough.", {FEVER}),
    ("Vitals: T 38.6 C, HR 104.", {FEVER}),
    ("Temp 101.3 F overnight.", {FEVER}),
    ("A temperature of 38.9 C on arrival.", {FEVER}),
    ("Temp 99.1 F.", set()),
    ("Labs:\n  09/13/2023 WBC 5.1 10*3/uL\n  09/13/2023 CRP 163.2 mg/L", set()),
    ("  08/03/2021 WBC 11.3 10*3/uL", {LEUKOCYTOSIS}),
    ("White blood cell count 14,600 per uL.", {LEUKOCYTOSIS}),
    ("Fever and leukocytosis, evaluate for pneumonia.", {FEVER, LEUKOCYTOSIS}),
    ("No leukocytosis.", set()),
    ("51 yo M w/ CHF (HFrEF, EF 43%), COPD, HTN p/w worsening DOE.", {HEART_FAILURE}),
    ("No history of heart failure.", set()),
    ("FHx: Father with CHF.", set()),
    ("Pt with CHF, daughter at bedside.", {HEART_FAILURE}),
    ("Breast cancer in mother.", set()),
    ("History of breast cancer, here for lung cancer screening.", {KNOWN_CANCER}),
    ("History of breast cancer, surveillance / restaging.", {KNOWN_CANCER}),
    ("PMH: Malignant neoplasm of colon; Essential hypertension", {KNOWN_CANCER}),
    ("FHx: Sister with breast cancer.", set()),
    ("Hx: lung ca s/p RUL lobectomy 2019.", {KNOWN_CANCER}),
    ("Stage IIIA NSCLC on surveillance.", {KNOWN_CANCER}),
    ("  Ca 9.2 mg/dL", set()),
    ("No history of malignancy.", set()),
    ("Lung cancer screening, 40 pack-year smoking history.", {HEAVY_SMOKING}),
    ("Social: Current smoker, 29 pack-years.", set()),
    ("Social: Former smoker, 35 pk-yr, quit 2015.", {HEAVY_SMOKING}),
])
def test_read_history(note: str, stated: set[str]) -> None:
    assert read_history(note).stated == frozenset(stated)


def test_claims_of_a_draft_sentence() -> None:
    assert claimed_history("Consolidation in the left lower lobe, in the setting of fever and "
                           "leukocytosis consistent with pneumonia.") == [FEVER, LEUKOCYTOSIS]
    assert claimed_history("Right pleural effusion, likely cardiogenic given the history of "
                           "heart failure.") == [HEART_FAILURE]
    assert claimed_history("Pulmonary nodule (RUL) in a patient with known breast cancer, "
                           "suspicious for metastatic disease.") == [KNOWN_CANCER]
    assert claimed_history("Cardiomegaly, consistent with the known heart failure.") \
        == [HEART_FAILURE]
    assert claimed_history("Spiculated pulmonary nodule (RUL) in a heavy smoker (40 "
                           "pack-years), suspicious for primary lung malignancy.") \
        == [HEAVY_SMOKING]
    assert claimed_history("Consolidation in the right lower lobe, nonspecific.") == []
    assert claimed_history("No pneumonia.") == []
    with pytest.raises(ValueError, match="unknown history facts"):
        NoteHistory(frozenset({"gout"}))


def test_the_guard_marks_a_conclusion_the_note_does_not_support() -> None:
    """A pneumonia drawn for a febrile patient whose white count is normal (a held-out case
    the context head read as leukocytosis) is marked; the same sentence with a raised count,
    or a sentence drawing no conclusion, is not."""
    sentence = ("Consolidation in the left lower lobe, in the setting of fever and "
                "leukocytosis consistent with pneumonia.")
    head = {"consolidation": True}
    normal = read_history("p/w fever to 39.3 C.\n  09/13/2023 WBC 5.1 10*3/uL")
    raised = read_history("p/w fever to 39.3 C.\n  09/13/2023 WBC 14.2 10*3/uL")
    out, bad = guard(sentence, head, note_history=normal)
    assert out == ("[UNVERIFIED: rests on history the note does not state (leukocytosis)] "
                   + sentence)
    assert bad == set()  # the findings head is not contradicted
    assert history_unstated_labels(out) == {"consolidation"}  # the finding's flag
    assert history_unstated_labels(sentence) == set()
    assert guard(sentence, head, note_history=raised)[0] == sentence
    assert guard(sentence, head)[0] == sentence  # no history read: nothing to hold it to
    plain = "Consolidation in the left lower lobe, nonspecific."
    assert guard(plain, head, note_history=normal)[0] == plain
    # without an EMR the existing mark stands alone
    no_emr, _ = guard(sentence, head, has_emr=False, note_history=normal)
    assert no_emr.count("UNVERIFIED") == 1 and "note does not state" not in no_emr


def test_generated_notes_and_their_reference_reports() -> None:
    """On generated cases (both splits) the rules read each fact the note states as the
    generator set it, and mark no sentence of the reference report (whose conclusions the
    generator draws from the profile the note was written from) but where a short note
    leaves out the labs and the social history the conclusion rests on; of those, only what
    they state is compared."""
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary

    cfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    seen = dict.fromkeys(FACTS, 0)
    short_marks = 0
    for i in range(120):
        case = make_case(cfg, vocab, 5, i, "test", i % 2 == 1)
        p, note = case.profile, case.emr
        hist = read_history(note.text)
        expected = {FEVER: p.fever, HEART_FAILURE: p.heart_failure,
                    KNOWN_CANCER: bool(p.known_primary)}
        if note.kind != "short":
            # the count as the note prints it (one decimal: 11.04 reads "11")
            expected |= {LEUKOCYTOSIS: round(p.wbc, 1) >= 11.0, HEAVY_SMOKING: p.heavy_smoker}
        for fact, want in expected.items():
            if note.kind == "long" and fact == FEVER and not want:
                continue  # an earlier admission's course may have a temperature of 38 C
            assert hist.states(fact) == want, (case.case_id, fact, note.text)
            seen[fact] += want
        for s in label_text(case.report.text):
            missing = unsupported(s.text, hist)
            if note.kind == "short":
                # the reference draws from the profile: a short note's omitted labs or
                # pack-years leave its conclusion resting on what the note does not state
                missing = [f for f in missing if f not in (LEUKOCYTOSIS, HEAVY_SMOKING)]
                short_marks += len(unsupported(s.text, hist)) > 0
            assert missing == [], (case.case_id, s.text)
    assert min(seen.values()) >= 5, seen  # every fact stated in some notes
    assert short_marks <= 3  # rare: one of these 120 references


def test_where_the_note_states_each_fact() -> None:
    """stated_where: the sentences stating each fact, as character spans of the note."""
    from medassist.history import stated_where

    note = ("CC: 71F p/w cough.  Febrile to 38.9 C overnight.\nWBC 14.2 K/uL; lactate 1.1.\n"
            "No heart failure. Hx of breast cancer (2015).")
    where = stated_where(note)
    assert set(where) == {FEVER, LEUKOCYTOSIS, KNOWN_CANCER} == set(read_history(note).stated)
    assert [note[a:b] for a, b in where[FEVER]] == ["Febrile to 38.9 C overnight."]
    assert [note[a:b] for a, b in where[LEUKOCYTOSIS]] == ["WBC 14.2 K/uL;"]
    assert [note[a:b] for a, b in where[KNOWN_CANCER]] == ["Hx of breast cancer (2015)."]
    assert stated_where("") == {}


def test_a_draft_takes_the_context_its_note_states(tmp_path: Path) -> None:
    """The shipped checkpoint on held-out shift case 13 (seed 7, configs/synth/
    small_fleischner_body.yaml): a consolidation in a patient whose note states fever and
    leukocytosis reads "consistent with pneumonia", flagged context_from_note, its EMR
    evidence first the sentences stating them; the same case with those left out of the
    note draws no pneumonia."""
    from medassist.drafting import make_report
    from medassist.history import stated_where
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    cfg = load_config(ROOT / "configs/synth/small_fleischner_body.yaml")
    case = make_case(cfg, load_vocabulary(cfg.findings.vocabulary_path()), 7, 13, "test", True)
    assert case.profile.fever and case.profile.leukocytosis
    folder = tmp_path / "case"
    write_case(case, cfg, folder)
    note = (folder / "emr.txt").read_text(encoding="utf-8")
    d = make_report(folder / "dicom", folder / "emr.txt")
    cons = next(f for f in d["findings"] if f["label"] == "consolidation")
    assert cons["present"] and "context_from_note" in cons["flags"]
    assert "consistent with pneumonia" in d["sections"]["impression"]
    where = stated_where(note)
    facts = [sp for fact in (FEVER, LEUKOCYTOSIS) for sp in where[fact]]
    first = [tuple(sp) for sp in cons["evidence"]["emr_spans"][: len(set(facts))]]
    assert set(first) == set(facts)
    assert all(read_history(note[a:b]).stated & {FEVER, LEUKOCYTOSIS} for a, b in first)
    # the note without its fever and white count: no pneumonia is drawn from it
    plain = "\n".join(line for line in note.splitlines()
                      if not read_history(line).stated & {FEVER, LEUKOCYTOSIS})
    assert not read_history(plain).stated & {FEVER, LEUKOCYTOSIS}
    (folder / "plain.txt").write_text(plain, encoding="utf-8")
    d2 = make_report(folder / "dicom", folder / "plain.txt")
    imp = d2["sections"]["impression"]
    assert "consistent with pneumonia" not in imp and "nonspecific" in imp
    assert next(f for f in d2["findings"] if f["label"] == "consolidation")["present"]
