"""Reference report: Indication, Technique (header values), Findings, EMR-aware Impression.

Phrasing comes from a small grammar: every slot has alternatives picked at random, so the
reports do not share one template.  Negatives are stated ("No pleural effusion.").  The
impression rules (issue 3):

* nodule + known primary cancer -> "suspicious for metastatic disease";
* nodule + heavy smoking (>= 30 pack-years) + spiculation -> "suspicious for primary lung
  malignancy" with a Fleischner-style recommendation;
* consolidation + fever + leukocytosis -> "pneumonia";
* pleural effusion + heart-failure history -> "likely cardiogenic".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medassist.synth.findings import Finding, ordinal

if TYPE_CHECKING:
    from medassist.synth.case import Acquisition, Profile
    from medassist.synth.emr import Note


@dataclass(frozen=True)
class ImpressionItem:
    code: str
    text: str
    finding_indices: tuple[int, ...]


@dataclass(frozen=True)
class Report:
    indication: str
    technique: str
    findings: str
    impression: tuple[ImpressionItem, ...]
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"impression": [{"code": i.code, "text": i.text,
                                "finding_indices": list(i.finding_indices)}
                               for i in self.impression]}


class _G:
    """Grammar helper: choose one alternative per slot."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, *alts: str) -> str:
        return alts[int(self.rng.integers(len(alts)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _mm(x: float) -> str:
    return f"{round(x):d} mm"


def _cm(x: float) -> str:
    return f"{x / 10:.1f} cm"


def effusion_grade(depth_mm: float) -> str:
    return "small" if depth_mm < 20 else ("moderate" if depth_mm < 50 else "large")


def fleischner(f: Finding, high_risk: bool) -> tuple[str, str]:
    """Fleischner-style (2017) follow-up for an incidental pulmonary nodule: (code, text)."""
    size = f.size_mm
    comp = f.attrs.get("composition", "solid")
    if comp == "solid":
        if size < 6:
            return ("fleischner_optional_12m", "Optional CT at 12 months (high-risk patient).") \
                if high_risk else ("fleischner_none", "No routine follow-up required.")
        if size <= 8:
            return ("fleischner_6_12m", "Recommend CT at 6-12 months, then consider CT at "
                    "18-24 months.")
        return ("fleischner_3m_pet_biopsy", "Consider CT at 3 months, PET/CT, or tissue sampling.")
    if size < 6:
        return ("fleischner_none", "No routine follow-up required.")
    if comp == "ground_glass":
        return ("fleischner_ggn_6_12m", "Recommend CT at 6-12 months to confirm persistence, "
                "then CT every 2 years until 5 years.")
    return ("fleischner_partsolid_3_6m", "Recommend CT at 3-6 months to confirm persistence; "
            "if unchanged, annual CT for 5 years.")


def finding_sentence(g: _G, f: Finding) -> str:
    a = f.attrs
    loc = f.location
    k = f.kind
    if k == "lung_nodule":
        comp = a.get("composition", "solid").replace("_", "-")
        margin = a.get("margin", "smooth")
        return g(
            f"A {_mm(f.size_mm)} {comp} nodule with {margin} margins is seen in the {loc}.",
            f"There is a {margin} {comp} nodule in the {loc} measuring {_mm(f.size_mm)}.",
            f"{_cap(loc)}: {_mm(f.size_mm)} {comp} nodule, {margin} margins.",
        )
    if k == "lung_mass":
        margin = a.get("margin", "lobulated")
        return g(
            f"A {margin} mass in the {loc} measures {_cm(f.size_mm)}.",
            f"There is a {_cm(f.size_mm)} {margin} mass in the {loc}.",
        )
    if k == "consolidation":
        return g(
            f"Consolidation in the {loc} spans approximately {_cm(f.size_mm)}, with air "
            "bronchograms.",
            f"There is airspace consolidation in the {loc} measuring about {_cm(f.size_mm)}.",
        )
    if k == "pleural_effusion":
        grade = effusion_grade(f.size_mm)
        return g(
            f"{_cap(grade)} {f.side} pleural effusion layering posteriorly, up to "
            f"{_mm(f.size_mm)} in depth.",
            f"There is a {grade} {f.side} pleural effusion, layering dependently and measuring "
            f"{_mm(f.size_mm)} in maximal depth.",
        )
    if k == "pneumothorax":
        grade = "small" if f.size_mm < 15 else "large"
        return g(
            f"{_cap(grade)} {f.side} pneumothorax with an anterior rim of up to "
            f"{_mm(f.size_mm)}.",
            f"There is a {grade} {f.side} pneumothorax, maximal rim {_mm(f.size_mm)} anteriorly.",
        )
    if k == "emphysema":
        sev = a.get("severity", "mild")
        return g(
            f"{_cap(sev)} centrilobular emphysema, upper lobe predominant; the largest lucency "
            f"measures {_mm(f.size_mm)}.",
            f"There is {sev} upper lobe predominant emphysema, with lucencies up to "
            f"{_mm(f.size_mm)}.",
        )
    if k == "mediastinal_lymphadenopathy":
        return g(
            f"Enlarged {loc} lymph node measuring {_mm(f.size_mm)} in short axis.",
            f"There is an enlarged lymph node in the {loc} region, {_mm(f.size_mm)} short axis.",
        )
    if k == "pericardial_effusion":
        return g(
            f"Pericardial effusion measuring up to {_mm(f.size_mm)} in thickness.",
            f"There is a pericardial effusion, maximal thickness {_mm(f.size_mm)}.",
        )
    if k == "cardiomegaly":
        return g(
            f"The heart is enlarged (cardiothoracic ratio approximately {f.size_mm:.2f}).",
            f"Cardiomegaly, with a cardiothoracic ratio of about {f.size_mm:.2f}.",
        )
    if k == "liver_lesion":
        dens = "hypoattenuating" if a.get("density") == "hypodense" else "hyperattenuating"
        return g(
            f"A {_mm(f.size_mm)} {dens} lesion is present in the {loc}.",
            f"There is a {dens} lesion in the {loc} measuring {_mm(f.size_mm)}.",
        )
    if k == "rib_fracture":
        n = ordinal(int(a["rib"]))
        return g(
            f"Acute fracture of the {f.side} {n} rib, {a['segment']} aspect.",
            f"There is an acute {a['segment']} {f.side} {n} rib fracture.",
        )
    raise ValueError(k)


def impression_items(p: Profile, findings: Sequence[Finding]) -> list[ImpressionItem]:
    """EMR-aware impression codes and texts (deterministic: the rules, not the phrasing)."""
    items: list[ImpressionItem] = []
    by: dict[str, list[Finding]] = {}
    for f in findings:
        by.setdefault(f.kind, []).append(f)
    nods = by.get("lung_nodule", [])
    if nods:
        big = max(nods, key=lambda f: f.size_mm)
        idx = tuple(f.index for f in nods)
        where = ", ".join(sorted({f.location for f in nods}))
        plural = "nodules" if len(nods) > 1 else "nodule"
        if p.known_primary:
            items.append(ImpressionItem(
                "metastatic_disease_suspected",
                f"Pulmonary {plural} ({where}) in a patient with known {p.known_primary}, "
                "suspicious for metastatic disease.", idx))
        elif p.heavy_smoker and any(f.attrs.get("margin") == "spiculated" for f in nods):
            code, rec = fleischner(big, True)
            items.append(ImpressionItem(
                "primary_lung_malignancy_suspected",
                f"Spiculated pulmonary {plural} ({where}) in a heavy smoker "
                f"({p.pack_years} pack-years), suspicious for primary lung malignancy. {rec}",
                idx))
            items.append(ImpressionItem(code, rec, idx))
        else:
            code, rec = fleischner(big, p.smoking != "never")
            items.append(ImpressionItem(
                "pulmonary_nodule", f"Pulmonary {plural} ({where}), largest {_mm(big.size_mm)}. "
                f"{rec}", idx))
            items.append(ImpressionItem(code, rec, idx))
    for f in by.get("lung_mass", []):
        txt = (f"{_cm(f.size_mm)} mass in the {f.location}: metastasis versus primary lung "
               "malignancy; tissue sampling recommended." if p.known_primary else
               f"{_cm(f.size_mm)} mass in the {f.location}, suspicious for primary lung "
               "malignancy; recommend PET/CT and tissue sampling.")
        items.append(ImpressionItem("lung_mass_malignancy_suspected", txt, (f.index,)))
    for f in by.get("consolidation", []):
        if p.fever and p.leukocytosis:
            items.append(ImpressionItem(
                "pneumonia", f"Consolidation in the {f.location}, in the setting of fever and "
                "leukocytosis consistent with pneumonia.", (f.index,)))
        else:
            items.append(ImpressionItem(
                "consolidation_nonspecific", f"Consolidation in the {f.location}, nonspecific; "
                "infection, aspiration or atelectasis; clinical correlation recommended.",
                (f.index,)))
    effs = by.get("pleural_effusion", [])
    if effs:
        side = "Bilateral" if len(effs) > 1 else _cap(effs[0].side)
        idx = tuple(f.index for f in effs)
        if p.heart_failure:
            items.append(ImpressionItem("effusion_cardiogenic",
                                        f"{side} pleural effusion, likely cardiogenic given the "
                                        "history of heart failure.", idx))
        else:
            items.append(ImpressionItem("effusion_nonspecific",
                                        f"{side} pleural effusion, nonspecific.", idx))
    for f in by.get("pneumothorax", []):
        items.append(ImpressionItem("pneumothorax", f"{_cap(f.side)} pneumothorax. Findings "
                                    "require prompt communication to the referring team.",
                                    (f.index,)))
    for f in by.get("mediastinal_lymphadenopathy", []):
        items.append(ImpressionItem(
            "lymphadenopathy_metastasis_suspected" if p.known_primary else "lymphadenopathy",
            f"Mediastinal lymphadenopathy ({f.location}), "
            + ("suspicious for nodal metastasis." if p.known_primary else
               "nonspecific; reactive versus neoplastic."), (f.index,)))
    for f in by.get("cardiomegaly", []):
        items.append(ImpressionItem(
            "cardiomegaly", "Cardiomegaly" + (", consistent with the known heart failure."
                                              if p.heart_failure else "."), (f.index,)))
    for f in by.get("pericardial_effusion", []):
        items.append(ImpressionItem("pericardial_effusion", "Pericardial effusion.", (f.index,)))
    for f in by.get("emphysema", []):
        items.append(ImpressionItem("emphysema",
                                    f"{_cap(f.attrs.get('severity', 'mild'))} emphysema.",
                                    (f.index,)))
    for f in by.get("liver_lesion", []):
        if f.attrs.get("density") == "hypodense" and p.known_primary:
            items.append(ImpressionItem("liver_metastasis_suspected",
                                        f"Hypoattenuating lesion in the {f.location}, suspicious "
                                        "for hepatic metastasis; MRI recommended.", (f.index,)))
        elif f.attrs.get("density") == "hypodense":
            items.append(ImpressionItem("liver_lesion_indeterminate",
                                        f"Indeterminate hypoattenuating lesion in the "
                                        f"{f.location}; ultrasound or MRI recommended.",
                                        (f.index,)))
        else:
            items.append(ImpressionItem("liver_lesion_hyperattenuating",
                                        f"Hyperattenuating lesion in the {f.location}, possibly "
                                        "a hemangioma; MRI recommended.", (f.index,)))
    for f in by.get("rib_fracture", []):
        items.append(ImpressionItem("rib_fracture", f"Acute {f.side} {ordinal(int(f.attrs['rib']))}"
                                    " rib fracture.", (f.index,)))
    if not items:
        items.append(ImpressionItem("normal", "No acute cardiopulmonary abnormality.", ()))
    return items


def technique_text(g: _G, acq: Acquisition) -> str:
    con = "with" if acq.contrast else "without"
    thick = f"{acq.thickness_mm:g}"
    return g(
        f"CT of the chest {con} intravenous contrast. Axial images reconstructed at {thick} mm "
        f"slice thickness with a {acq.kernel} kernel; {acq.kvp:g} kVp, {round(acq.mas)} mAs.",
        f"Helical CT of the chest was performed {con} IV contrast at {acq.kvp:g} kVp and "
        f"{round(acq.mas)} mAs. Images were reconstructed at {thick} mm using the {acq.kernel} "
        "kernel.",
    )


def make_report(rng: np.random.Generator, p: Profile, findings: Sequence[Finding],
                acq: Acquisition, note: Note) -> Report:
    g = _G(rng)
    kinds = {f.kind for f in findings}
    groups: list[tuple[str, list[str]]] = []

    def sentences(ks: Sequence[str]) -> list[str]:
        return [finding_sentence(g, f) for f in findings if f.kind in ks]

    lungs = sentences(["lung_nodule", "lung_mass", "consolidation", "emphysema"])
    if not kinds & {"lung_nodule", "lung_mass"}:
        lungs.append(g("No suspicious pulmonary nodule or mass.", "No pulmonary nodule or mass."))
    if "consolidation" not in kinds:
        lungs.append(g("No focal consolidation.", "The lungs are without focal consolidation."))
    groups.append(("Lungs and airways", lungs))
    pleura = sentences(["pleural_effusion", "pneumothorax"])
    if "pleural_effusion" not in kinds:
        pleura.append("No pleural effusion.")
    if "pneumothorax" not in kinds:
        pleura.append("No pneumothorax.")
    groups.append(("Pleura", pleura))
    med = sentences(["mediastinal_lymphadenopathy", "cardiomegaly", "pericardial_effusion"])
    if "mediastinal_lymphadenopathy" not in kinds:
        med.append(g("No mediastinal lymphadenopathy.", "No enlarged mediastinal lymph nodes."))
    if "cardiomegaly" not in kinds:
        med.append(g("Heart size is normal.", "The heart is normal in size."))
    if "pericardial_effusion" not in kinds:
        med.append("No pericardial effusion.")
    groups.append(("Mediastinum and heart", med))
    abd = sentences(["liver_lesion"])
    if "liver_lesion" not in kinds:
        abd.append(g("No focal liver lesion in the imaged upper abdomen.",
                     "The imaged upper abdomen is unremarkable."))
    groups.append(("Upper abdomen", abd))
    bones = sentences(["rib_fracture"])
    if "rib_fracture" not in kinds:
        bones.append(g("No acute osseous abnormality.", "No acute fracture."))
    groups.append(("Bones", bones))

    headers = bool(rng.random() < 0.6)
    if headers:
        findings_text = "\n".join(f"{h}: {' '.join(s)}" for h, s in groups)
    else:
        findings_text = " ".join(" ".join(s) for _h, s in groups)
    items = impression_items(p, findings)
    numbered = bool(rng.random() < 0.7)
    imp = "\n".join(f"{i + 1}. {it.text}" if numbered else f"- {it.text}"
                    for i, it in enumerate(_dedupe(items)))
    technique = technique_text(g, acq)
    text = (f"INDICATION: {note.indication}\n\nTECHNIQUE: {technique}\n\nFINDINGS:\n"
            f"{findings_text}\n\nIMPRESSION:\n{imp}\n")
    return Report(indication=note.indication, technique=technique, findings=findings_text,
                  impression=tuple(items), text=text)


def _dedupe(items: Sequence[ImpressionItem]) -> list[ImpressionItem]:
    """Recommendation items repeat the text of their parent item; show each text once."""
    out: list[ImpressionItem] = []
    shown = ""
    for it in items:
        if it.code.startswith("fleischner") and it.text in shown:
            continue
        out.append(it)
        shown += it.text
    return out
