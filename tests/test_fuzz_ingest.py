"""Mutation fuzzing of DICOM CT ingestion over real CT files (see ``tests/fuzz_cases.py``).

Every case must end in a typed :class:`~dicom_io.errors.DicomIOError` (raised by
``read_header``/``assemble``, or listed in ``scan``'s ``rejected``) or in a correct volume; no
case may run past 5 s or need more than 2 GiB of address space.  ``bench/fuzz_ingest.py`` runs
the same harness at scale.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fuzz_cases import (
    HANG_LIMIT_S,
    MUTATORS,
    NEST_VARIANTS,
    SEED_FILES,
    SEED_NAMES,
    TRAVERSAL_UID,
    FuzzReport,
    run_fuzz,
    shared_data_dir,
)

N_CASES = 300
RUN_SEED = 0

UID_SPECS = [f"uid_traversal:{kw}@{seed}" for seed in SEED_NAMES
             for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "MediaStorageSOPInstanceUID_only")]
NAMED = [
    *(f"identity@{seed}" for seed in SEED_NAMES),
    *(f"nested_sequence:{v}@{seed}" for seed in SEED_NAMES for v in NEST_VARIANTS),
    *(f"pixel_length_overflow:{v}@{seed}" for seed in SEED_NAMES
      for v in ("plus_two", "max_defined")),
    *UID_SPECS,
    *(f"uid_traversal:MediaStorageSOPInstanceUID@{seed}" for seed in SEED_NAMES),
    "zero_length@lung_implicit",
]


@pytest.fixture(scope="module")
def seed_files() -> None:
    """The seed files are read from the shared data at run time; missing data fails."""
    missing = [rel for rel in SEED_FILES.values() if not (shared_data_dir() / rel).is_file()]
    if missing:
        pytest.fail(f"fuzz seed files missing under {shared_data_dir()}: {missing}; "
                    "set MEDASSIST_SHARED_DATA")


@pytest.fixture(scope="module")
def fuzz_run(seed_files: None) -> FuzzReport:
    return run_fuzz(cases=N_CASES, seed=RUN_SEED)


@pytest.fixture(scope="module")
def named(seed_files: None) -> dict[str, dict[str, Any]]:
    report = run_fuzz(named=NAMED)
    assert not report.restarts, report.failure_text()
    return report.by_id()


def _ok(result: dict[str, Any]) -> None:
    if result["failures"]:
        pytest.fail(FuzzReport([result], 0, 0, 0, 0).failure_text(), pytrace=False)


def test_mutation_fuzz_ends_in_typed_error_or_correct_read(fuzz_run: FuzzReport) -> None:
    assert len(fuzz_run.results) == N_CASES
    if fuzz_run.failures:
        pytest.fail(fuzz_run.failure_text(), pytrace=False)


def test_fuzz_run_exercises_every_mutation_and_outcome(fuzz_run: FuzzReport) -> None:
    assert {r["mutation"] for r in fuzz_run.results} >= set(MUTATORS)
    assert {r["seed"] for r in fuzz_run.results} >= set(SEED_NAMES)
    outcomes = fuzz_run.outcome_counts()
    # Not a harness that rejects (or accepts) everything: both kinds of ending occur.
    assert outcomes["volume"] >= N_CASES // 10, outcomes
    assert outcomes["rejected:UnreadableFileError"] >= N_CASES // 10, outcomes
    assert outcomes["rejected:InvalidUIDError"] > 0, outcomes
    assert any(k.startswith("assemble:") for k in outcomes), outcomes
    slowest = fuzz_run.slowest()
    assert slowest is not None and slowest["seconds"] < HANG_LIMIT_S, slowest


def test_unmutated_seed_files_read_through_the_harness(named: dict[str, dict[str, Any]]
                                                       ) -> None:
    for seed in SEED_NAMES:
        result = named[f"identity@{seed}"]
        _ok(result)
        assert result["outcome"] == "volume"
        assert result["header"] == "ok" and result["rejected"] == []


@pytest.mark.parametrize("seed", SEED_NAMES)
@pytest.mark.parametrize("variant", ["undefined-private", "undefined-standard"])
def test_undefined_length_sequences_nested_300_deep_are_unreadable(
        named: dict[str, dict[str, Any]], seed: str, variant: str) -> None:
    result = named[f"nested_sequence:{variant}@{seed}"]
    _ok(result)
    assert result["header"] == "UnreadableFileError"
    assert [err for err, _ in result["rejected"]] == ["UnreadableFileError"]
    assert "nested deeper than 32" in result["rejected"][0][1]


@pytest.mark.parametrize("seed", SEED_NAMES)
@pytest.mark.parametrize("variant", ["defined-private", "defined-standard"])
def test_defined_length_sequences_nested_300_deep_are_skipped_and_read_correctly(
        named: dict[str, dict[str, Any]], seed: str, variant: str) -> None:
    # The header walker skips a defined-length sequence by its length without descending, and
    # pydicom converts it lazily: the file reads, and the volume equals the unmutated one
    # (the EQUAL oracle, checked in the child).
    result = named[f"nested_sequence:{variant}@{seed}"]
    _ok(result)
    assert result["oracle"] == "equal"
    assert result["outcome"] == "volume"


@pytest.mark.parametrize("seed", SEED_NAMES)
@pytest.mark.parametrize("variant", ["plus_two", "max_defined"])
def test_pixel_data_longer_than_the_file_is_rejected(named: dict[str, dict[str, Any]],
                                                     seed: str, variant: str) -> None:
    result = named[f"pixel_length_overflow:{variant}@{seed}"]
    _ok(result)
    assert result["header"] in ("UnreadableFileError", "PixelDataError")
    assert result["volumes"] == []
    assert [err for err, _ in result["rejected"]] == [result["header"]]


@pytest.mark.parametrize("spec", UID_SPECS)
def test_traversal_uid_is_rejected_as_invalid_uid(named: dict[str, dict[str, Any]],
                                                  spec: str) -> None:
    result = named[spec]
    _ok(result)
    assert result["header"] == "ok"  # read_header reports the UID; scan refuses it
    assert [err for err, _ in result["rejected"]] == ["InvalidUIDError"]
    assert TRAVERSAL_UID in result["rejected"][0][1]
    assert result["series"] == 0 and result["volumes"] == []


@pytest.mark.parametrize("seed", SEED_NAMES)
def test_traversal_uid_in_file_meta_only_is_not_used(named: dict[str, dict[str, Any]],
                                                     seed: str) -> None:
    # The data set's own SOPInstanceUID wins over MediaStorageSOPInstanceUID; the volume is
    # the unmutated one and no indexed UID is invalid (both checked in the child).
    result = named[f"uid_traversal:MediaStorageSOPInstanceUID@{seed}"]
    _ok(result)
    assert result["outcome"] == "volume"


def test_zero_length_file_is_rejected(named: dict[str, dict[str, Any]]) -> None:
    result = named["zero_length@lung_implicit"]
    _ok(result)
    assert result["header"] == "UnreadableFileError"
    assert [err for err, _ in result["rejected"]] == ["UnreadableFileError"]


def test_harness_catches_untyped_errors_hangs_memory_and_crashes(seed_files: None) -> None:
    """The guards themselves: each sabotage is reported as a failure naming the case, and the
    cases after it still run (the child is restarted after a crash or a blocked hang)."""
    specs = ["selftest:raise", "selftest:hang", "selftest:oom", "selftest:hang_blocked",
             "selftest:exit", "identity@ge_explicit"]
    report = run_fuzz(named=specs, timeout_s=1.0, grace_s=3.0)
    by_id = report.by_id()
    expected = {"selftest:raise": ("exception", "ValueError"),
                "selftest:hang": ("hang", ""), "selftest:oom": ("memory", "MemoryError"),
                "selftest:hang_blocked": ("hang", ""), "selftest:exit": ("crash", "")}
    for spec, (kind, exc_type) in expected.items():
        failures = by_id[spec]["failures"]
        assert [(f["kind"], f["type"]) for f in failures] == [(kind, exc_type)], failures
        assert spec in report.failure_text()
    assert report.restarts == 2
    assert by_id["identity@ge_explicit"]["outcome"] == "volume"
    assert len(report.failures) == len(expected)
