"""The reviewer's decisions read from the report text and applied to the draft's findings
(:mod:`medassist.review`), which the SR and FHIR exports state."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medassist.draft import ReportDraft
from medassist.review import (
    BLOCK,
    REVIEWER_SIDE,
    REVIEWER_SIZE,
    Decision,
    ProseIssue,
    decision_line,
    prose_issues,
    rejected_but_stated,
    reviewed_finding,
    reviewed_findings,
    split_findings,
    split_text,
    undecided,
)

from .factories import decided, draft_dict


def _draft(**finding0: object) -> ReportDraft:
    d = draft_dict()
    d["findings"][0] = {**d["findings"][0], **finding0}
    return ReportDraft.from_dict(d)


def test_a_line_reads_back_as_written() -> None:
    lines = [decision_line("lung_nodule", "edited", "left", 11.25, "An 11 mm\n nodule."),
             decision_line("pleural_effusion", "rejected", "left", 14.0, "ignored"),
             decision_line("pneumothorax", "accepted", "", None, "")]
    assert lines == ["- lung_nodule [edited] side=left size=11.25 mm: An 11 mm nodule.",
                     "- pleural_effusion [rejected]", "- pneumothorax [accepted]"]
    narrative, decided = split_findings("Some text.\n\n" + "\n".join([BLOCK, *lines,
                                                                      "not a line"]))
    assert narrative == "Some text."
    assert decided == {
        "lung_nodule": Decision("edited", "left", 11.25, "An 11 mm nodule."),
        "pleural_effusion": Decision("rejected", "", None, ""),
        "pneumothorax": Decision("accepted", "", None, "")}
    assert split_findings("No block.") == ("No block.", {})
    assert split_text("loose\nIMPRESSION:\n1. x\n")["impression"] == "1. x"


def test_an_accepted_finding_is_the_drafts() -> None:
    draft = _draft(size_mm=55.31234, flags=["size_measured"], size_axes_mm=[55.3, 40.0, 48.0])
    f = draft.findings[0]
    # the line as the UI writes it (side and size as drafted; the size printed with :g)
    d = split_findings(BLOCK + "\n" + decision_line("lung_nodule", "accepted", "right",
                                                     f.size_mm, f.sentence))[1]["lung_nodule"]
    assert d.size_mm == 55.3123
    assert reviewed_finding(f, d) == f
    assert reviewed_finding(f, None) is f


def test_a_rejected_finding_is_left_out_and_the_others_keep_their_index() -> None:
    draft = _draft()
    text = draft.render_text().replace(
        "\n\nIMPRESSION:", f"\n\n{BLOCK}\n- lung_nodule [rejected]\n\nIMPRESSION:")
    assert [i for i, _ in reviewed_findings(draft, text)] == [1, 2]
    assert reviewed_findings(draft, draft.render_text()) == tuple(enumerate(draft.findings))


def test_the_reviewers_side_and_size() -> None:
    f = _draft(flags=["size_measured", "side_uncertain"], size_axes_mm=[9.0, 8.0, 7.0],
               side_evidence={"left": 0.14, "right": 0.16}).findings[0]
    moved = reviewed_finding(f, Decision("edited", "left", 12.0, "A left nodule."))
    assert moved is not None
    assert (moved.laterality, moved.size_mm, moved.size_axes_mm, moved.sentence) == (
        "left", 12.0, None, "A left nodule.")
    assert moved.flags == (REVIEWER_SIDE, REVIEWER_SIZE)
    assert moved.side_evidence == (0.14, 0.16)  # the model's evidence stays
    kept = reviewed_finding(f, Decision("accepted", "right", 9.0, ""))
    assert kept is not None
    # the side confirmed, the measured size unchanged, the draft's sentence kept
    assert kept.flags == ("size_measured", REVIEWER_SIDE)
    assert (kept.size_axes_mm, kept.sentence) == (f.size_axes_mm, f.sentence)
    unsided = reviewed_finding(f, Decision("edited", "", None, ""))
    assert unsided is not None
    assert (unsided.laterality, unsided.side_evidence, unsided.size_mm) == (None, None, None)
    assert "size_measured" not in unsided.flags
    midline = reviewed_finding(replace(f, side_evidence=None),
                               Decision("edited", "midline", 9.0, ""))
    assert midline is not None and midline.laterality == "none"
    assert reviewed_finding(f, Decision("rejected", "", None, "")) is None


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_sure_side_kept_is_not_marked_as_the_reviewers(side: str) -> None:
    f = _draft(laterality=side).findings[0]
    r = reviewed_finding(f, Decision("accepted", side, f.size_mm, ""))
    assert r == f


def test_masking_keeps_the_kept_sentences_in_place() -> None:
    from medassist.review import mask_decisions

    body = ("Prose.\n" + BLOCK + "\n  - consolidation [rejected]\r\n"
            "- pneumothorax [accepted]: No pneumothorax.\nnot a decision")
    read, decided = mask_decisions(body)
    assert len(read) == len(body)
    assert read.split() == ["Prose.", "No", "pneumothorax.", "not", "a", "decision"]
    assert read.index("No pneumothorax.") == body.index("No pneumothorax.")
    assert sorted(decided) == ["consolidation", "pneumothorax"]
    assert mask_decisions("No block.") == ("No block.", {})


def test_undecided_findings_are_those_without_a_line() -> None:
    """Every AI finding, present or absent, needs a line in the FINDINGS block; a rejected
    one is decided; a label in the narrative or in another section decides nothing; the
    labels come in the draft's order. ``factories.decided`` (what the signing tests use)
    leaves none."""
    d = _draft()
    text = d.render_text()
    assert undecided(d, text) == ("lung_nodule", "pleural_effusion", "pneumothorax")
    some = text.replace("\n\nIMPRESSION:", "\n\n" + "\n".join(
        [BLOCK, "- pneumothorax [rejected]", "lung_nodule [accepted]"]) + "\n\nIMPRESSION:\n"
        "- pleural_effusion [accepted]")
    assert undecided(d, some) == ("lung_nodule", "pleural_effusion")
    assert undecided(d, decided(some, d)) == ()
    assert split_findings(split_text(decided(some, d))["findings"])[1]["pneumothorax"] == \
        Decision("rejected", "", None, "")


def test_prose_that_still_states_a_rejected_finding() -> None:
    """The narrative and the impression are read with the labeler's negation rules; the
    block's lines are not prose (a rejected line states nothing, an accepted one its text);
    a finding that was not rejected is no contradiction."""
    text = ("FINDINGS:\nPatchy consolidation in the right lower lobe. Small left pleural "
            "effusion.\n\n" + "\n".join([
                BLOCK, "- consolidation [rejected]",
                decision_line("pleural_effusion", "accepted", "left", None,
                              "Small left pleural effusion."),
                "- pneumothorax [rejected]"]) +
            "\n\nIMPRESSION:\n1. Right lower lobe consolidation.\n2. No pneumothorax.")
    assert rejected_but_stated(text) == (
        ("consolidation", "Patchy consolidation in the right lower lobe."),
        ("consolidation", "Right lower lobe consolidation."))
    fixed = text.replace("Patchy consolidation in the right lower lobe.", "No consolidation."
                         ).replace("1. Right lower lobe consolidation.", "1. Clear lungs.")
    assert rejected_but_stated(fixed) == ()
    assert rejected_but_stated(text.replace("- consolidation [rejected]",
                                            "- consolidation [accepted]")) == ()


def _text(findings: str, impression: str, *lines: str) -> str:
    return (f"FINDINGS:\n{findings}\n\n" + "\n".join([BLOCK, *lines]) +
            f"\n\nIMPRESSION:\n{impression}")


def test_prose_issues_side_and_size_against_an_edited_finding() -> None:
    """A sentence that affirms only an edited finding and names only the other side, or
    states a size more than 1.2x off the decided one, is an issue; a sentence naming both
    sides, one stating a size within 1.2x, a bilateral decision and an accepted line (the
    draft's own side, which the guard already checked) are not. Sentences are numbered as a
    reader counts them, a list item's "1." not being one."""
    edited = decision_line("lung_mass", "edited", "left", 42.0, "Left upper lobe mass, 42 mm.")
    text = _text("A 3.0 cm mass in the right upper lobe. Bilateral lower lobe changes, left "
                 "and right.", "1. Right upper lobe mass, 4.5 cm.\n2. Left mass, 4.0 cm.",
                 edited)
    assert prose_issues(text) == (
        ProseIssue("findings", 1, "lung_mass", "side",
                   "A 3.0 cm mass in the right upper lobe."),
        ProseIssue("findings", 1, "lung_mass", "size",
                   "A 3.0 cm mass in the right upper lobe."),
        ProseIssue("impression", 1, "lung_mass", "side", "Right upper lobe mass, 4.5 cm."))
    assert prose_issues(text.replace("[edited]", "[accepted]")) == ()
    assert prose_issues(text.replace("side=left", "side=bilateral")) == (
        ProseIssue("findings", 1, "lung_mass", "size",
                   "A 3.0 cm mass in the right upper lobe."),)
    assert prose_issues(_text("Mass, 50 mm.", "Mass.", edited)) == ()  # 1.19x


def test_prose_issues_read_the_reviewers_own_line_and_the_marks() -> None:
    """The text the reviewer kept on an edited line is prose too: a side set to right over
    a line that still says left is an issue. A sentence still carrying the guard's
    [UNVERIFIED] mark is one, tied to the finding it alone affirms; the other marks (a size
    restated from the CT) are not. ``describe`` names no sentence text."""
    line = decision_line("pleural_effusion", "edited", "right", None,
                         "Small left pleural effusion.")
    mark = "[UNVERIFIED: side uncertain on the CT] Right pneumothorax."
    text = _text(f"[SIZE MEASURED ON CT] A 4.2 cm mass. {mark}", "No acute change.", line)
    issues = prose_issues(text)
    assert issues == (
        ProseIssue("findings", 2, "pneumothorax", "unverified", mark),
        ProseIssue("findings", 3, "pleural_effusion", "side", "Small left pleural effusion."))
    assert [i.describe() for i in issues] == [
        "FINDINGS sentence 2 (pneumothorax): still carries the draft's [UNVERIFIED] mark",
        "FINDINGS sentence 3 (pleural_effusion): states the other side than the one you "
        "decided"]
    assert prose_issues(text.replace(mark, "Right pneumothorax.").replace(
        "Small left", "Small right")) == ()
