"""Rule-based labeler (lexicon + negation) and the consistency guard."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import pytest

from medassist.labeler import (
    guard,
    label_sentence,
    label_text,
    stated_size_mm,
    text_findings,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("sentence", "expected"), [
    ("A 6 mm solid nodule with smooth margins is seen in the right upper lobe.",
     {"lung_nodule": True}),
    ("No suspicious pulmonary nodule or mass.", {"lung_nodule": False, "lung_mass": False}),
    ("No pleural effusion.", {"pleural_effusion": False}),
    ("There is a small left pleural effusion, layering dependently.",
     {"pleural_effusion": True}),
    ("No pericardial effusion.", {"pericardial_effusion": False}),
    ("The heart is normal in size.", {"cardiomegaly": False}),
    ("Cardiomegaly, with a cardiothoracic ratio of about 0.60.", {"cardiomegaly": True}),
    ("No enlarged mediastinal lymph nodes.", {"mediastinal_lymphadenopathy": False}),
    ("Enlarged subcarinal (station 7) lymph node measuring 14 mm in short axis.",
     {"mediastinal_lymphadenopathy": True}),
    ("There is an acute posterior left 9th rib fracture.", {"rib_fracture": True}),
    ("No acute osseous abnormality.", {"rib_fracture": False}),
    ("Bones: there is an acute fracture.", {"rib_fracture": True}),
    ("No acute fracture.", {"rib_fracture": False}),
    ("There is a hypoattenuating lesion in the right hepatic lobe measuring 12 mm.",
     {"liver_lesion": True}),
    ("The imaged upper abdomen is unremarkable.", {"liver_lesion": False}),
    # wording of real reports (since stop 37): a bare effusion is pleural, a pericardial one
    # is not; an organ's mass is not a lung mass, a hepatic one a liver lesion
    ("Small left effusion.", {"pleural_effusion": True}),
    ("No effusion or pneumothorax.", {"pleural_effusion": False, "pneumothorax": False}),
    ("Small pericardial effusion.", {"pericardial_effusion": True}),
    ("Pericardial effusion and bilateral pleural effusions.",
     {"pericardial_effusion": True, "pleural_effusion": True}),
    ("A 2.5 cm hepatic mass.", {"liver_lesion": True}),
    ("Left adrenal mass.", {}),
    ("Mediastinal adenopathy.", {"mediastinal_lymphadenopathy": True}),
    ("Emphysematous changes in both upper lobes.", {"emphysema": True}),
    ("Airspace opacity in the right lower lobe.", {"consolidation": True}),
    # a negation after the mention, as structured reports write it; not "not seen on the
    # prior" (a new finding)
    ("Pleural effusion: none.", {"pleural_effusion": False}),
    ("Pneumothorax is not seen.", {"pneumothorax": False}),
    ("Pulmonary nodules are not identified.", {"lung_nodule": False}),
    ("A 6 mm nodule, not seen on the prior study.", {"lung_nodule": True}),
    ("A 6 mm nodule not seen on prior.", {"lung_nodule": True}),
    # a rib fracture described without the word "rib fracture" (since stop 38)
    ("There is a lucent line through the posterior seventh rib.", {"rib_fracture": True}),
    ("Fractured left 5th rib.", {"rib_fracture": True}),
    ("Cortical break of the right 4th rib.", {"rib_fracture": True}),
    ("No lucency of the ribs.", {"rib_fracture": False}),
])
def test_label_sentence(sentence: str, expected: dict[str, bool]) -> None:
    assert label_sentence(sentence) == expected


@pytest.mark.parametrize(("text", "expected"), [
    # "the effusion" after a pericardial one is that one, not a pleural effusion
    ("Small pericardial effusion. The effusion measures 8 mm.",
     [{"pericardial_effusion": True}, {"pericardial_effusion": True}]),
    # a side or "pleural" names a pleural one
    ("Small pericardial effusion. The left effusion is small.",
     [{"pericardial_effusion": True}, {"pleural_effusion": True}]),
    ("Pericardial effusion. The pleural effusion is small.",
     [{"pericardial_effusion": True}, {"pleural_effusion": True}]),
    # the last one affirmed counts: a negated pericardial effusion is not referred to
    ("Small right pleural effusion. No pericardial effusion. The effusion is simple.",
     [{"pleural_effusion": True}, {"pericardial_effusion": False}, {"pleural_effusion": True}]),
    ("No pericardial effusion. The effusion is small.",
     [{"pericardial_effusion": False}, {"pleural_effusion": True}]),
])
def test_the_effusion_refers_to_the_last_one_named(text: str,
                                                   expected: list[dict[str, bool]]) -> None:
    assert [s.labels for s in label_text(text)] == expected
    # what a report-level reading makes of it
    found = text_findings(text, ("pleural_effusion", "pericardial_effusion"))
    assert found["pleural_effusion"] == any(e.get("pleural_effusion") for e in expected)


def test_labeler_agrees_with_generator_reports() -> None:
    from medassist.model_data import finding_labels
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary

    cfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    labels = finding_labels(ROOT / "configs/findings.yaml")
    n_abnormal = 0
    for i in range(40):
        case = make_case(cfg, vocab, 21, i, "val")
        want = {lab: any(f.kind == lab for f in case.findings) for lab in labels}
        n_abnormal += any(want.values())
        assert text_findings(case.report.findings, labels) == want, case.report.findings
    assert n_abnormal >= 10


def test_guard_flags_contradicting_sentences() -> None:
    text = "No pleural effusion. A 5 mm nodule in the left lower lobe. Heart size is normal."
    out, bad = guard(text, {"pleural_effusion": True, "lung_nodule": True,
                            "cardiomegaly": False})
    assert bad == {"pleural_effusion"}
    assert out.startswith("[UNVERIFIED") and "A 5 mm nodule" in out
    assert out.count("UNVERIFIED") == 1


def test_guard_marks_history_when_no_emr_was_given() -> None:
    """Without an EMR a sentence stating the patient's history has nothing behind it (a
    decoder wrote "in a patient with known ... carcinoma" on a real CT given no note)."""
    text = ("Consolidation in a patient with known squamous cell carcinoma, nonspecific. "
            "Cardiomegaly, consistent with the known heart failure. No pleural effusion.")
    head = {"consolidation": True, "cardiomegaly": True, "pleural_effusion": False}
    out, bad = guard(text, head, has_emr=False)
    assert out.count("[UNVERIFIED: states patient history, but no EMR was given]") == 2
    assert bad == set() and out.endswith("No pleural effusion.")
    same, _ = guard(text, head)  # with an EMR the history may be the note's
    assert "UNVERIFIED" not in same
    # conclusions that rest on the history: metastatic, cardiogenic, pneumonia
    concl = ("Pulmonary nodules, suspicious for metastatic disease. Consolidation, likely "
             "pneumonia. Right pleural effusion, likely cardiogenic. A 4 cm mass, suspicious "
             "for primary lung malignancy.")
    head2 = {"lung_nodule": True, "consolidation": True, "pleural_effusion": True,
             "lung_mass": True}
    out2, bad2 = guard(concl, head2, has_emr=False)
    assert out2.count("[UNVERIFIED: draws a conclusion that rests on patient history, but no "
                      "EMR was given]") == 3 and bad2 == set()
    assert out2.endswith(" A 4 cm mass, suspicious for primary lung malignancy.")
    assert "UNVERIFIED" not in guard(concl, head2)[0]


def test_guard_marks_negations_below_a_detectors_size_limit() -> None:
    """A label trained only on findings of 10 mm or more (presence_min_mm): "no nodule" is
    marked (a small one is not excluded); an affirmed one is not, nor is another label."""
    text = ("No suspicious pulmonary nodules. No pleural effusion. "
            "A 12 mm nodule in the left lower lobe.")
    head = {"lung_nodule": False, "pleural_effusion": False}
    out, bad = guard(text, head, min_mm={"lung_nodule": 10.0})
    assert out.startswith("[UNVERIFIED: the model does not assess lung nodule below 10 mm] "
                          "No suspicious")
    assert "] No pleural" not in out
    # the affirmed nodule contradicts the head (absent), not the size limit
    assert "[UNVERIFIED: contradicts the findings head (lung nodule)] A 12 mm" in out
    assert out.count("below 10 mm") == 1 and bad == {"lung_nodule"}
    assert guard(text, head)[0].count("UNVERIFIED") == 1  # without the limit
    # an unreliable detector's reason is given once, not the size limit as well
    weak, _ = guard("No pulmonary nodules.", head, unreliable={"lung_nodule"},
                    min_mm={"lung_nodule": 10.0})
    assert "reliably" in weak and "below" not in weak


def test_guard_marks_sentences_on_unreliable_detectors() -> None:
    text = "No pneumothorax. No pleural effusion. A 5 mm nodule in the left lower lobe."
    head = {"pneumothorax": False, "pleural_effusion": True, "lung_nodule": True}
    out, bad = guard(text, head, unreliable={"pneumothorax", "lung_nodule"})
    assert bad == {"pleural_effusion"}  # only contradictions count as contradicted
    assert out.startswith("[UNVERIFIED: the model does not detect pneumothorax reliably] "
                          "No pneumothorax.")
    assert "[UNVERIFIED: contradicts the findings head (pleural effusion)] No pleural" in out
    assert "[UNVERIFIED: the model does not detect lung nodule reliably] A 5 mm" in out
    assert out.count("UNVERIFIED") == 3
    assert guard(text, head)[0].count("UNVERIFIED") == 1  # none unreliable: as before
    # the annotations are not read as content: the marked text says what the unmarked says
    labels = ["pneumothorax", "pleural_effusion", "lung_nodule"]
    assert text_findings(out, labels) == text_findings(text, labels)
    assert [t.labels for t in label_text(out)] == [t.labels for t in label_text(text)]
    both, _ = guard("No pleural effusion.", head, unreliable={"pleural_effusion"})
    assert both.startswith("[UNVERIFIED: contradicts the findings head (pleural effusion) / "
                           "the model does not detect pleural effusion reliably] No pleural")
    assert label_text(both)[0].labels == {"pleural_effusion": False}


def test_decimal_point_does_not_end_a_sentence() -> None:
    text = "Consolidation in the right lower lobe measuring about 6.6 cm. No pleural effusion."
    assert [t.text for t in label_text(text)] == [
        "Consolidation in the right lower lobe measuring about 6.6 cm.",
        "No pleural effusion."]
    out, _ = guard(text, {"consolidation": True, "pleural_effusion": False})
    assert out == text  # rebuilt sentence by sentence, the size stays "6.6 cm"
    assert [t.text for t in label_text("1. Nodule. 2. Mass.")] == ["1.", "Nodule.", "2.",
                                                                   "Mass."]


def test_guard_flags_a_size_far_from_the_size_head() -> None:
    text = ("There is a smooth solid nodule in the right lower lobe measuring about 5.2 cm. "
            "Consolidation in the right lower lobe measuring about 6.6 cm.")
    head = {"lung_nodule": True, "consolidation": True}
    sizes = {"lung_nodule": 10.1, "consolidation": 69.0}
    out, bad = guard(text, head, sizes=sizes)
    assert bad == {"lung_nodule"}
    assert out.startswith("[UNVERIFIED: states a size far from the findings head's "
                          "(lung nodule: 10 mm)] There is a smooth")
    assert out.count("UNVERIFIED") == 1  # 66 mm against 69 mm is consistent
    assert guard(text, head)[0] == text  # without sizes: as before
    assert stated_size_mm("a 7 mm nodule, previously 0.5 cm") == 7.0
    assert stated_size_mm("recommend CT at 6-12 months") is None
    # within a factor of two either way is consistent
    assert guard("A 6 mm nodule.", head, sizes={"lung_nodule": 10.0})[1] == set()
    assert guard("A 4 mm nodule.", head, sizes={"lung_nodule": 10.0})[1] == {"lung_nodule"}


def test_guard_holds_a_size_measured_on_the_ct_to_a_tighter_factor() -> None:
    head = {"lung_mass": True}
    text = "There is a 4.5 cm lobulated mass in the left upper lobe."
    sizes = {"lung_mass": 58.0}  # 58 / 45 = 1.29: within the head's factor two
    assert guard(text, head, sizes=sizes)[1] == set()
    out, bad = guard(text, head, sizes=sizes, measured={"lung_mass"})
    assert bad == {"lung_mass"} and out.startswith(
        "[UNVERIFIED: states a size far from the one measured on the CT (lung mass: 58 mm)]")
    assert guard(text, head, sizes={"lung_mass": 50.0}, measured={"lung_mass"})[1] == set()


def test_guard_flags_the_other_side() -> None:
    text = ("A 5 mm nodule in the right upper lobe. Small left pleural effusion. "
            "Consolidation in the RLL. There is no pneumothorax on the left.")
    head = {"lung_nodule": True, "pleural_effusion": True, "consolidation": True,
            "pneumothorax": False}
    sides = {"lung_nodule": "left", "pleural_effusion": "left", "consolidation": "left"}
    out, bad = guard(text, head, sides)
    assert bad == {"lung_nodule", "consolidation"}  # right upper lobe; RLL
    assert out.count("names the other side") == 2 and out.count("UNVERIFIED") == 2
    assert "right upper lobe. Small left pleural effusion. [UNVERIFIED" in out  # not flagged
    # a bilateral finding, or no sides given: nothing about sides is flagged
    assert guard(text, head, {"lung_nodule": "bilateral"})[1] == set()
    assert guard(text, head)[1] == set()


def test_a_ratio_is_never_stated_in_millimetres() -> None:
    from medassist.drafting import _sentence

    # cardiomegaly's size is the cardiothoracic ratio (about 0.6): no "about 1 mm"; the
    # head's ratio is not stated, a measured one is
    assert _sentence("cardiomegaly", True, "midline", "heart", 0.7,
                     ratio=True) == "Cardiomegaly (heart)."
    assert _sentence("cardiomegaly", True, "midline", "heart", 0.62, ratio=True,
                     measured=True) == ("Cardiomegaly (heart), cardiothoracic ratio 0.62 "
                                        "measured on the CT.")
    assert _sentence("lung_mass", True, "left", None, 41.6) == (
        "Left lung mass, about 42 mm (estimated, not measured on the CT).")


def test_a_lesion_sentence_says_where_its_size_comes_from() -> None:
    from medassist.drafting import _sentence

    # a nodule's or mass's size: measured on the CT, or the size head's estimate
    assert _sentence("lung_mass", True, "left", "LUL", 55.3,
                     measured=True) == "Left lung mass (LUL), 55 mm measured on the CT."
    est = _sentence("lung_mass", True, "left", "LUL", 45.2)
    assert est == "Left lung mass (LUL), about 45 mm (estimated, not measured on the CT)."
    # read back as the mass, affirmed: "not measured" negates nothing; one sentence
    assert label_sentence(est) == {"lung_mass": True} and len(label_text(est)) == 1
    assert guard(est, {"lung_mass": True}, sizes={"lung_mass": 45.2})[1] == set()
    # a measured one states its axes as a reader does; the largest size it states is the
    # measured diameter, so the guard holds it to that
    dims = _sentence("lung_mass", True, "left", "LUL", 55.3, measured=True,
                     axes=(52.1, 41.0, 48.2))
    assert dims == ("Left lung mass (LUL), 55 mm measured on the CT (axial 52 x 41 mm, "
                    "craniocaudal 48 mm).")
    assert label_sentence(dims) == {"lung_mass": True} and len(label_text(dims)) == 1
    assert stated_size_mm(dims) == 55.0
    assert guard(dims, {"lung_mass": True}, sizes={"lung_mass": 55.3})[1] == set()
    # the size head's estimate has no axes to state
    assert _sentence("lung_mass", True, "left", "LUL", 45.2,
                     axes=(52.1, 41.0, 48.2)) == est


def test_a_size_nothing_on_the_ct_measures_is_stated_as_an_estimate() -> None:
    """A consolidation's extent, an effusion's depth: the size head's number, said so in the
    finding's own sentence (which still reads as that finding, affirmed, one sentence)."""
    from medassist.drafting import _sentence

    for label, lat, loc, size, want in (
            ("consolidation", "left", "LLL", 61.7,
             "Left consolidation (LLL), about 62 mm (estimated, not measured on the CT)."),
            ("pleural_effusion", "right", None, 18.4,
             "Right pleural effusion, about 18 mm (estimated, not measured on the CT)."),
            ("emphysema", "none", None, 7.0,
             "Emphysema, about 7 mm (estimated, not measured on the CT).")):
        got = _sentence(label, True, lat, loc, size)
        assert got == want
        assert label_sentence(got) == {label: True} and len(label_text(got)) == 1
    assert _sentence("pneumothorax", True, "left", None, None) == "Left pneumothorax."


def _marks_the_first_sentence_only(mark_fn: Callable[[str, Collection[str]],
                                                    tuple[str, set[str]]],
                                   mark: str, text: str) -> None:
    """``mark_fn`` on ``text`` for the lung mass marks its first sentence (the mass's) and
    no other, and the mark is an annotation: the findings read the same."""
    out, marked = mark_fn(text, {"lung_mass"})
    assert marked == {"lung_mass"} and out == f"{mark} {text}"
    head = {"lung_mass": True, "consolidation": True}
    assert text_findings(out, head) == text_findings(text, head)


def test_mark_unmeasured_sizes_marks_the_decoders_number() -> None:
    from medassist.labeler import ADDED_MARK, SIZE_UNMEASURED, mark_unmeasured_sizes

    text = ("there is a 3.4 cm lobulated mass in the left upper lobe. consolidation in the "
            "left lower lobe measuring about 4.7 cm. the mass abuts the pleura.")
    _marks_the_first_sentence_only(mark_unmeasured_sizes, SIZE_UNMEASURED, text)
    # measured (not in the set), no size, two findings in one sentence, or the draft's own
    # added sentence: left alone
    for t, labs in ((text, set()), ("a lobulated mass in the left upper lobe.", {"lung_mass"}),
                    ("a 4.5 cm mass and a 6.6 cm consolidation.", {"lung_mass"}),
                    (f"{ADDED_MARK} Left lung mass, about 45 mm (estimated, not measured on "
                     "the CT).", {"lung_mass"})):
        assert mark_unmeasured_sizes(t, labs) == (t, set()), t


def test_mark_uncertain_sides_marks_every_sentence_stating_the_side() -> None:
    from medassist.labeler import ADDED_MARK, SIDE_UNCERTAIN, mark_uncertain_sides

    # the third sentence names no side
    text = ("there is a 3.4 cm lobulated mass in the left upper lobe. consolidation in the "
            "left lower lobe. the mass abuts the pleura. no pleural effusion.")
    _marks_the_first_sentence_only(mark_uncertain_sides, SIDE_UNCERTAIN, text)
    # the draft's own sentence (capitalised, a lobe code) and one added from the list
    own = "Left lung mass (LUL), about 45 mm (estimated, not measured on the CT)."
    assert mark_uncertain_sides(own, {"lung_mass"}) == (f"{SIDE_UNCERTAIN} {own}",
                                                        {"lung_mass"})
    added = f"{ADDED_MARK} {own}"
    assert mark_uncertain_sides(added, {"lung_mass"})[0] == f"{SIDE_UNCERTAIN} {added}"
    # marked once; a side named only inside an annotation, a negated finding or another
    # label: left alone
    once = f"{SIDE_UNCERTAIN} {own}"
    for t, labs in ((once, {"lung_mass"}), (text, set()),
                    ("[UNVERIFIED: the left side] a lobulated mass.", {"lung_mass"}),
                    ("no mass in the left lung.", {"lung_mass"}),
                    ("consolidation in the left lower lobe.", {"lung_mass"})):
        assert mark_uncertain_sides(t, labs) == (t, set()), t


def test_restate_ratios_puts_the_measured_ratio_in_or_marks_the_decoders() -> None:
    from medassist.labeler import RATIO_MARK, RATIO_UNMEASURED, restate_ratios

    text = ("The heart is enlarged (cardiothoracic ratio approximately 0.58). "
            "No pericardial effusion. A 2.5 cm mass.")
    out, done, unmeasured = restate_ratios(text, {"cardiomegaly": 0.62}, {"cardiomegaly"})
    assert out.startswith(f"{RATIO_MARK} The heart is enlarged (cardiothoracic ratio "
                          "approximately 0.62).")
    assert out.endswith("No pericardial effusion. A 2.5 cm mass.")
    assert (done, unmeasured) == ({"cardiomegaly"}, set())
    # the same ratio: nothing to restate; called but not measured: marked
    assert restate_ratios(text, {"cardiomegaly": 0.58}, {"cardiomegaly"}) == (text, set(),
                                                                              set())
    out, done, unmeasured = restate_ratios(text, {}, {"cardiomegaly"})
    assert out.startswith(f"{RATIO_UNMEASURED} The heart is enlarged") and not done
    assert unmeasured == {"cardiomegaly"}
    # not called: untouched (the guard speaks for contradictions)
    assert restate_ratios(text, {}, set()) == (text, set(), set())
    # a ratio that ends the sentence
    out, done, _u = restate_ratios("Cardiomegaly, ratio of about 0.60.", {"cardiomegaly": 0.62},
                                   {"cardiomegaly"})
    assert out == f"{RATIO_MARK} Cardiomegaly, ratio of about 0.62." and done == {"cardiomegaly"}


def test_complete_adds_each_present_finding_the_text_leaves_out() -> None:
    from medassist.drafting import _sentence
    from medassist.labeler import complete
    from medassist.model_data import finding_labels

    labels = finding_labels(ROOT / "configs/findings.yaml")
    # every finding's structured sentence is read back as that finding by the labeler
    for lab in labels:
        sent = _sentence(lab, True, "left", "LUL", 12.0)
        out, added = complete("", {lab: True}, {lab: sent})
        assert added == {lab} and text_findings(out, [lab])[lab], out
    text = "Consolidation in the left upper lobe. No pleural effusion."
    head = {"consolidation": True, "lung_mass": True, "pleural_effusion": False,
            "lung_nodule": False}
    sentences = {lab: _sentence(lab, head[lab], "left", None, 50.0) for lab in head}
    out, added = complete(text, head, sentences)
    assert added == {"lung_mass"}
    assert out == (text + " [ADDED FROM THE FINDINGS LIST] Left lung mass, about 50 mm "
                   "(estimated, not measured on the CT).")
    # nothing left out: the text is unchanged
    assert complete(out, head, sentences) == (out, set())
    # a finding the text negates although the head calls it present is added too (the
    # negating sentence is the guard's to flag)
    out2, added2 = complete("No lung mass.", {"lung_mass": True}, sentences)
    assert added2 == {"lung_mass"} and out2.startswith("No lung mass. [ADDED")
    assert guard(out2, {"lung_mass": True})[1] == {"lung_mass"}


def test_impression_metrics_count_missed_and_unfounded_conclusions() -> None:
    """EMR-dependent impressions: recall on the cases whose reference draws one, and the
    cases whose impression draws one the reference does not (a nodule called in every case
    makes "metastatic" appear for every patient with a known primary)."""
    from medassist.model_data import CaseRecord
    from medassist.model_eval import impression_metrics

    def rec(*codes: str, impression: str = "") -> CaseRecord:
        return CaseRecord(case_id="c", hu=None, label_map=None, findings=[], emr=None,
                          report_text=f"FINDINGS:\nLungs: see below.\n\nIMPRESSION:\n{impression}",
                          meta={"impression": [{"code": c} for c in codes]})

    records = [rec("metastatic_disease_suspected",
                   impression="- Nodule, suspicious for metastatic disease."),
               rec("pneumonia", "pulmonary_nodule"), rec("pulmonary_nodule"), rec()]
    texts = ["findings: nodule. impression: 1. nodules, suspicious for metastatic disease.",
             "findings: consolidation. impression: 1. consolidation.",
             "findings: nodule. impression: 1. pulmonary nodule. metastatic disease suspected.",
             "findings: none. impression: no acute cardiopulmonary abnormality."]
    m = impression_metrics(records, texts)
    assert m["n_emr_dependent"] == 2 and m["impression_acc_emr_dependent"] == 0.5
    assert m["n_impression_false_emr_dependent"] == 1  # the third: no metastasis in its reference
    assert m["impression_by_code"] == {
        "metastatic_disease_suspected": {"cases": 1, "stated": 1},
        "primary_lung_malignancy_suspected": {"cases": 0, "stated": 0},
        "pneumonia": {"cases": 1, "stated": 0}, "effusion_cardiogenic": {"cases": 0, "stated": 0}}
    none = impression_metrics(records[2:], texts[3:] * 2)
    assert none["impression_acc_emr_dependent"] is None and none["n_emr_dependent"] == 0
    assert none["n_impression_false_emr_dependent"] == 0
    # "suspicious for primary lung malignancy" is what every mass's impression says, from the
    # image alone: not an EMR-dependent conclusion, right or wrong
    mass = rec("lung_mass_malignancy_suspected",
               impression="- 4.1 cm mass in the RUL, suspicious for primary lung malignancy.")
    said = "findings: a mass. impression: 1. mass, suspicious for primary lung malignancy."
    assert impression_metrics([mass], [said])["n_impression_false_emr_dependent"] == 0
    assert impression_metrics([rec()], [said])["n_impression_false_emr_dependent"] == 0
    # ... the EMR-dependent one states the smoking history it rests on
    smoker = rec("primary_lung_malignancy_suspected", impression=(
        "- Spiculated pulmonary nodule (RUL) in a heavy smoker (40 pack-years), suspicious for "
        "primary lung malignancy."))
    hit = impression_metrics([smoker], [
        "findings: a nodule. impression: 1. spiculated pulmonary nodule (rul) in a heavy smoker "
        "(40 pack-years), suspicious for primary lung malignancy."])
    assert hit["impression_acc_emr_dependent"] == 1.0
    assert impression_metrics([smoker], [said])["impression_acc_emr_dependent"] == 0.0
    unfounded = impression_metrics([mass], [
        "findings: a nodule. impression: 1. nodule in a heavy smoker, suspicious for primary lung "
        "malignancy."])
    assert unfounded["impression_false_by_phrase"] == {
        "metastatic": 0, "heavy smoker": 1, "pneumonia": 0, "cardiogenic": 0}
    assert m["impression_false_by_phrase"]["metastatic"] == 1


def test_guard_flags_another_lobe_than_the_location_head() -> None:
    from medassist.labeler import stated_lobes

    text = ("A 3.4 cm mass in the left lower lobe, suspicious for malignancy. "
            "Consolidation in the RLL and the right middle lobe. A nodule is seen.")
    head = {"lung_mass": True, "consolidation": True, "lung_nodule": True}
    lobes = {"lung_mass": "LUL", "consolidation": "RML", "lung_nodule": "RUL"}
    out, bad = guard(text, head, lobes=lobes)
    assert bad == {"lung_mass"}  # consolidation names RML among others; the nodule no lobe
    assert out.startswith("[UNVERIFIED: names another lobe than the findings head "
                          "(lung mass: LUL)] A 3.4 cm mass")
    assert out.count("UNVERIFIED") == 1
    assert guard(text, head)[1] == set()  # without lobes: as before
    # a location that is not a lobe (or none) checks nothing
    assert guard(text, head, lobes={"lung_mass": "none"})[1] == set()
    # the other side is reported as such, not twice
    out2, bad2 = guard(text, head, {"lung_mass": "right"}, lobes=lobes)
    assert bad2 == {"lung_mass"} and "other side" in out2 and "another lobe" not in out2
    assert stated_lobes("rul and Left Upper Lobe; lingula") == {"RUL", "LUL"}


def test_text_size_agreement_counts_sentences_against_the_measured_size() -> None:
    from medassist.model_eval import text_size_agreement
    from multimodal.outputs import FindingPrediction

    def pred(label: str, size: float | None, source: str) -> FindingPrediction:
        return FindingPrediction(label=label, present=True, probability=0.9,
                                 laterality="left", location="LUL", size_mm=size, slices=None,
                                 box_voxels=None, emr_token_spans=(), size_source=source)

    texts = ["FINDINGS: Lungs: there is a 4.5 cm lobulated mass in the left upper lobe. "
             "Consolidation in the left lower lobe measuring about 6.6 cm. "
             "IMPRESSION: 1. 5.5 cm mass.",
             "FINDINGS: There is a 5.2 cm mass in the left upper lobe. IMPRESSION: 1. Mass.",
             "FINDINGS: There is a 5.2 cm mass in the left upper lobe. IMPRESSION: 1. Mass."]
    preds = [[pred("lung_mass", 58.0, "image"), pred("consolidation", 66.0, "head")],
             [pred("lung_mass", 55.0, "image")],
             [pred("lung_mass", 40.0, "head")]]  # the head's size: not counted
    # case 1: 45 mm against 58 (1.29: out); the consolidation is not measured; the
    # Impression is not read.  Case 2: 52 against 55 (in)
    assert text_size_agreement(preds, texts) == {"sentences": 2, "within_factor": 1}


def test_lobe_agreement_scores_the_head_and_the_text_against_the_reference_lobes() -> None:
    from medassist.model_data import CaseRecord
    from medassist.model_eval import lobe_agreement
    from multimodal.outputs import FindingPrediction

    def pred(label: str, where: str | None, present: bool = True) -> FindingPrediction:
        return FindingPrediction(label=label, present=present, probability=0.9,
                                 laterality="left", location=where, size_mm=40.0,
                                 slices=None, box_voxels=None, emr_token_spans=())

    def rec(*findings: tuple[str, str]) -> CaseRecord:
        return CaseRecord(case_id="c", hu=None, label_map=None, emr=None, report_text="",
                          findings=[{"kind": k, "size_mm": 40.0, "attributes": {"lobe": lobe}}
                                    for k, lobe in findings])

    texts = ["FINDINGS: There is a 4 cm mass in the left upper lobe. Consolidation in the "
             "left lower lobe. IMPRESSION: 1. Mass in the right upper lobe.",
             "FINDINGS: A mass in the left lower lobe. A mass and consolidation in the LUL. "
             "IMPRESSION: Mass.",
             "FINDINGS: A mass in the left upper lobe. IMPRESSION: Mass."]
    preds = [[pred("lung_mass", "LUL"), pred("consolidation", "LUL")],
             [pred("lung_mass", "LUL")],
             [pred("lung_mass", "LUL", present=False)]]  # not called: not a true positive
    records = [rec(("lung_mass", "LUL"), ("consolidation", "LLL")),
               rec(("lung_mass", "LLL"), ("lung_mass", "LUL")),  # two masses, two lobes
               rec(("lung_mass", "LUL"))]
    # head: case 1 mass right, consolidation wrong; case 2 right (one of the reference
    # lobes).  Text (Findings only, one affirmed finding): case 1 both sentences right, the
    # consolidation's not the head's; case 2 the mass in LLL right but not the head's (the
    # sentence with two findings is not read)
    assert lobe_agreement(preds, texts, records) == {
        "head_tp": 3, "head_right": 2, "text_sentences": 3, "text_right": 3,
        "text_agree_head": 1}


def test_restate_sizes_puts_the_measured_size_into_the_text() -> None:
    from medassist.labeler import MEASURED_MARK, restate_sizes

    text = ("lungs and airways: there is a 4.5 cm lobulated mass in the left upper lobe. "
            "consolidation in the left lower lobe measuring about 6.6 cm.")
    out, done = restate_sizes(text, {"lung_mass": 55.3})
    assert done == {"lung_mass"}
    assert out == (f"{MEASURED_MARK} lungs and airways: there is a 5.5 cm lobulated mass in "
                   "the left upper lobe. consolidation in the left lower lobe measuring about "
                   "6.6 cm.")
    # the guard reads the restated sentence as agreeing with the measurement
    head = {"lung_mass": True, "consolidation": True}
    assert guard(out, head, sizes={"lung_mass": 55.3}, measured={"lung_mass"})[1] == set()
    assert text_findings(out, head) == text_findings(text, head)  # the mark is not a finding
    # a size that reads as the measurement in its own unit stays as written
    assert restate_sizes(text, {"lung_mass": 45.3}) == (text, set())
    # millimetres stay millimetres
    nod = "there is a smooth solid nodule in the right upper lobe measuring 6 mm."
    assert restate_sizes(nod, {"lung_nodule": 8.4})[0] == (
        f"{MEASURED_MARK} there is a smooth solid nodule in the right upper lobe measuring 8 mm.")
    # two sizes, two findings, or a finding not measured: left alone
    for t in ("a 7 mm nodule, previously 5 mm.", "a 4.5 cm mass and a 6.6 cm consolidation.",
              "there is a 4.5 cm mass in the left upper lobe."):
        assert restate_sizes(t, {"lung_nodule": 9.0, "consolidation": 70.0}) == (t, set())
    # a size inside an annotation is not the sentence's
    flagged = "[UNVERIFIED: reason (lung_mass: 55 mm)] there is a 4.5 cm mass in the lul."
    assert restate_sizes(flagged, {"lung_mass": 55.3})[0] == (
        f"{MEASURED_MARK} [UNVERIFIED: reason (lung_mass: 55 mm)] there is a 5.5 cm mass in "
        "the lul.")


def test_restate_estimates_writes_the_findings_lists_size_then_it_is_marked() -> None:
    """A0001's draft stated one mass at 3.4 cm (Findings), 4.4 cm (Impression) and 45 mm
    (its own sentence), none measured: the text now states the list's 4.5 cm, marked."""
    from medassist.labeler import (
        ADDED_MARK,
        SIZE_UNMEASURED,
        mark_unmeasured_sizes,
        restate_estimates,
    )

    text = ("lungs and airways: there is airspace consolidation in the left lower lobe "
            "measuring about 4.7 cm. there is a 3.4 cm lobulated mass in the left upper lobe.")
    est = {"lung_mass": 45.2, "consolidation": 61.7}
    out, done = restate_estimates(text, est)
    assert done == {"lung_mass", "consolidation"}
    assert out == ("lungs and airways: there is airspace consolidation in the left lower lobe "
                   "measuring about 6.2 cm. there is a 4.5 cm lobulated mass in the left upper "
                   "lobe.")
    # the findings read the same, and the marking that follows marks both sentences
    head = {"lung_mass": True, "consolidation": True}
    assert text_findings(out, head) == text_findings(text, head)
    marked, labs = mark_unmeasured_sizes(out, set(est))
    assert labs == set(est) and marked.count(SIZE_UNMEASURED) == 2
    # an effusion's depth in millimetres stays in millimetres; the same size, two sizes, two
    # findings, a finding with no estimate or the draft's own added sentence: left alone
    assert restate_estimates("right pleural effusion, 25 mm deep.", {"pleural_effusion":
                                                                     18.4})[0] == (
        "right pleural effusion, 18 mm deep.")
    for t in ("there is a 4.5 cm mass.", "a 4.5 cm mass, previously 3.1 cm.",
              "a 4.5 cm mass and a 6.6 cm consolidation.", "a 12 mm nodule in the rul.",
              f"{ADDED_MARK} Left lung mass (LUL), about 30 mm (estimated, not measured on the "
              "CT)."):
        assert restate_estimates(t, {"lung_mass": 45.2, "consolidation": 61.7}) == (t, set())


def test_text_size_vs_estimate_scores_the_decoders_numbers_and_the_estimate() -> None:
    import numpy as np

    from medassist.model_eval import text_size_vs_estimate
    from multimodal.outputs import FindingPrediction

    def pred(label: str, size: float, source: str = "head",
             present: bool = True) -> FindingPrediction:
        return FindingPrediction(label=label, present=present, probability=0.9,
                                 laterality="left", location="LUL", size_mm=size, slices=None,
                                 box_voxels=None, emr_token_spans=(), size_source=source)

    labels = ["lung_mass", "consolidation", "cardiomegaly"]
    texts = ["FINDINGS: There is a 3.4 cm mass in the left upper lobe. Consolidation in the "
             "left lower lobe measuring about 4.7 cm. Cardiomegaly, ratio 0.61. "
             "IMPRESSION: 1. 4.4 cm mass.",
             "FINDINGS: There is a 5.2 cm mass in the left upper lobe. IMPRESSION: 1. Mass.",
             "FINDINGS: There is a 5.2 cm mass and a 3 cm consolidation. IMPRESSION: None."]
    preds = [[pred("lung_mass", 45.0), pred("consolidation", 60.0), pred("cardiomegaly", 0.6)],
             [pred("lung_mass", 55.0, "image"), pred("consolidation", 50.0, present=False),
              pred("cardiomegaly", 0.5, present=False)],
             [pred("lung_mass", 40.0), pred("consolidation", 30.0),
              pred("cardiomegaly", 0.5, present=False)]]
    truth = np.array([[True, True, True], [True, False, False], [False, True, False]])
    size = np.array([[50.0, 70.0, 0.62], [52.0, np.nan, np.nan], [np.nan, 30.0, np.nan]])
    # case 1: the mass's two sentences (34 and 44 mm against 50; the estimate 45), the
    # consolidation's (47 against 70; 60); the ratio label is left out.  Case 2: measured.
    # Case 3: the mass is a false call, the sentence states two findings
    assert text_size_vs_estimate(labels, preds, texts, truth, size, ("cardiomegaly",)) == {
        "consolidation": {"sentences": 1, "text_mae_mm": 23.0, "estimate_mae_mm": 10.0,
                          "estimate_nearer": 1, "text_nearer": 0},
        "lung_mass": {"sentences": 2, "text_mae_mm": 11.0, "estimate_mae_mm": 5.0,
                      "estimate_nearer": 2, "text_nearer": 0}}


def test_looping_texts_counts_sentences_that_repeat_themselves() -> None:
    from medassist.model_eval import looping_texts

    loops = ["The heart is enlarged (cardiothoracic ratio approximately (cardiothoracic ratio "
             "approximately (cardiothoracic ratio approximately (cardiothoracic). No effusion.",
             "Cardiomegaly, with a cardiothoracic ratio of about of about of about of about."]
    fine = ["Pulmonary nodules (left lower lobe, right lower lobe, right upper lobe), largest "
            "8 mm.", "No pleural effusion. No pleural effusion on the left either."]
    assert looping_texts(loops) == 2
    assert looping_texts(fine) == 0  # a list of lobes, or a repeat across sentences
    assert looping_texts(loops + fine) == 2
