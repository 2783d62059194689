"""A self-describing, self-checking bank.

The manifest's own checksum, a schema check of every key the loader reads, finiteness at build
and load, the previous format loading with a warning, and ``semanom-bank info`` / ``info --verify``
/ ``upgrade`` on sound, legacy and damaged banks.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from semanom_ros.core.bank import BANK_FORMAT_VERSION, ModelSignature, NominalBank
from semanom_ros.core.bank import persist
from semanom_ros.core.bank.schema import DIGEST_KEY, manifest_digest
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import BankError
from semanom_ros.core.monitor import Monitor
from semanom_ros.core.scoring import calibrate
from semanom_ros.tools.bank_cli import main

DIM = 16


def _sig() -> ModelSignature:
    return ModelSignature(model="synthetic", fingerprint="f" * 16, input_height=224, dim=DIM)


def _bank(frames: int = 8, per_frame: int = 6, seed: int = 0, **config: Any) -> NominalBank:
    rng = np.random.default_rng(seed)
    bank = NominalBank(_sig(), config=config)
    for i in range(frames):
        v = rng.standard_normal((per_frame, DIM))
        bank.add_frame(v / np.linalg.norm(v, axis=1, keepdims=True), source="drive", index=i, stamp_ns=1000 + i,
                       topic="/cam")
    calibrate(bank, alpha=0.9, window=1)
    return bank


@pytest.fixture
def saved(tmp_path) -> Path:
    return _bank().save(tmp_path / "bank")


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict[str, Any], *, reseal: bool) -> None:
    """Write ``manifest``; ``reseal`` recomputes its checksum (a consistent but wrong manifest)."""
    if reseal and DIGEST_KEY in manifest:
        manifest[DIGEST_KEY] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _edit(path: Path, change: Callable[[dict[str, Any]], None], *, reseal: bool = True) -> None:
    manifest = _manifest(path)
    change(manifest)
    _write_manifest(path, manifest, reseal=reseal)


def _rewrite_array(path: Path, name: str, array: np.ndarray, *, reseal_files: bool = True) -> None:
    """Replace an array file; ``reseal_files`` records its new size and checksum in the manifest."""
    np.save(path / name, array, allow_pickle=False)
    if reseal_files:
        def change(m: dict[str, Any]) -> None:
            m["files"][name] = {"bytes": (path / name).stat().st_size, "blake2b": persist.file_digest(path / name)}
        _edit(path, change)


def _make_legacy(path: Path, *, keep_files: bool = True) -> None:
    """What format 1 wrote: the same manifest without its checksum (and, before that, maybe no files)."""
    def change(m: dict[str, Any]) -> None:
        m.pop(DIGEST_KEY)
        m["format_version"] = 1
        if not keep_files:
            m.pop("files")
    _edit(path, change, reseal=False)


def _cli(capsys, *argv: Any) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ manifest checksum
def test_manifest_carries_the_checksum_of_the_rest(saved):
    manifest = _manifest(saved)
    assert manifest["format_version"] == BANK_FORMAT_VERSION == 2
    assert manifest[DIGEST_KEY] == manifest_digest(manifest)
    assert set(manifest["files"]) == {"embeddings.npy", "vector_meta.npy", "frames.npy"}
    # The checksum is over the parsed content: re-indenting the file changes nothing.
    (saved / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    assert len(NominalBank.load(saved)) == 48


@pytest.mark.parametrize("change", [
    lambda m: m["calibration"].update(threshold=0.01),  # a hand edit of the threshold
    lambda m: m.pop("files"),  # what used to skip every checksum without a word
    lambda m: m["files"].pop("embeddings.npy"),
    lambda m: m.update(num_vectors=47),
])
def test_any_edit_without_a_new_checksum_is_refused(saved, change):
    _edit(saved, change, reseal=False)
    with pytest.raises(BankError, match=f"does not match its {DIGEST_KEY}.*semanom-bank calibrate"):
        NominalBank.load(saved)


def test_removing_the_checksum_itself_is_refused(saved):
    _edit(saved, lambda m: m.pop(DIGEST_KEY), reseal=False)
    with pytest.raises(BankError, match=f"key '{DIGEST_KEY}': expected 64 hex digits .*found no such key"):
        NominalBank.load(saved)


def test_files_table_is_mandatory_in_the_current_format(saved):
    _edit(saved, lambda m: m.pop("files"))  # even with a recomputed checksum
    with pytest.raises(BankError, match=r"manifest.json: key 'files': expected an object .*found no such key"):
        NominalBank.load(saved)


# ------------------------------------------------------------------------------ schema
@pytest.mark.parametrize("key, change, expected, found", [
    ("model", lambda m: m.pop("model"), "an object", "no such key"),
    ("num_vectors", lambda m: m.update(num_vectors="abc"), "an integer >= 0", "the string 'abc'"),
    ("num_frames", lambda m: m.update(num_frames=True), "an integer >= 0", "the boolean True"),
    ("dim", lambda m: m.update(dim=3), f"the integer {DIM} (model.dim)", "the integer 3"),
    ("model.dim", lambda m: m["model"].update(dim=16.0), "an integer >= 1", "the number 16.0"),
    ("model.input_height", lambda m: m["model"].pop("input_height"), "an integer >= 1", "no such key"),
    ("model.fingerprint", lambda m: m["model"].update(fingerprint=None), "a non-empty string", "null"),
    ("kind", lambda m: m.update(kind=["patch"]), "a non-empty string", "a list of 1 items"),
    ("config", lambda m: m.update(config="fast"), "an object", "the string 'fast'"),
    ("calibration", lambda m: m.update(calibration=[0.3]), "null or a calibration object", "a list"),
    ("calibration.threshold", lambda m: m["calibration"].update(threshold="0.3"), "a finite number", "the string"),
    ("calibration.threshold", lambda m: m["calibration"].update(threshold=float("nan")), "a finite number",
     "the number nan"),
    ("calibration.patch_scores.table.value", lambda m: m["calibration"]["patch_scores"]["table"]["value"].pop(),
     "a list of", "a list of"),
    ("sources[0].frames", lambda m: m["sources"][0].update(frames="8"), "an integer >= 0", "the string '8'"),
    ("sources[0].colour", lambda m: m["sources"][0].update(colour=1), "only the keys", "an unknown key"),
    ("files.frames.npy.blake2b", lambda m: m["files"]["frames.npy"].update(blake2b=7), "32 hex digits",
     "the integer 7"),
    ("files.embeddings.npy", lambda m: m["files"].pop("embeddings.npy"), "an object with bytes", "no such key"),
    ("index.type", lambda m: m.update(index={"type": 3}), "an index type name", "the integer 3"),
    ("created_unix_ns", lambda m: m.update(created_unix_ns=-1), "an integer >= 0", "the integer -1"),
    ("format_version", lambda m: m.update(format_version="2"), "2 (or legacy 1)", "the string '2'"),
])
def test_missing_or_mistyped_keys_name_file_key_expected_and_found(saved, key, change, expected, found):
    _edit(saved, change)
    with pytest.raises(BankError) as info:
        NominalBank.load(saved)
    message = str(info.value)
    assert str(saved / "manifest.json") in message and f"key {key!r}" in message, message
    assert f"expected {expected}" in message and f"found {found}" in message, message
    with pytest.raises(BankError, match=re.escape(f"key '{key}'")):  # the manifest alone (eval, settings, info) too
        NominalBank.read_manifest(saved)


def test_a_newer_format_asks_for_a_newer_semanom_ros(saved):
    _edit(saved, lambda m: m.update(format_version=BANK_FORMAT_VERSION + 1))
    with pytest.raises(BankError, match="newer than this semanom_ros reads.*update semanom_ros"):
        NominalBank.load(saved)


def test_an_unusable_recorded_setting_is_a_bank_error(saved):
    _edit(saved, lambda m: m["config"].update(index_type="bogus"))
    with pytest.raises(BankError, match="key 'config' holds an unusable setting: index_type: 'bogus'"):
        NominalBank.load(saved)
    _edit(saved, lambda m: m["config"].update(index_type="flat", calibration_window="12"))
    with pytest.raises(BankError, match="key 'config'.*calibration_window"):
        NominalBank.load(saved)


# ------------------------------------------------------------------------------ arrays
def _with_nan(path: Path, row: int) -> np.ndarray:
    vectors = np.load(path / "embeddings.npy").copy()
    vectors[row, 3] = np.nan
    return vectors


def test_nan_vectors_are_refused_with_or_without_matching_checksums(saved):
    vectors = _with_nan(saved, 13)
    _rewrite_array(saved, "embeddings.npy", vectors, reseal_files=False)
    with pytest.raises(BankError, match="embeddings.npy is corrupt: checksum differs"):
        NominalBank.load(saved)
    _rewrite_array(saved, "embeddings.npy", vectors)  # checksums recomputed: the finiteness check finds it
    with pytest.raises(BankError, match=r"embeddings.npy: vector 13 \(frame 2\) holds NaN or inf.*score 2.0"):
        NominalBank.load(saved)


def test_nan_is_found_where_checksums_are_not_checked(saved, monkeypatch):
    _rewrite_array(saved, "embeddings.npy", _with_nan(saved, 47), reseal_files=False)
    monkeypatch.setattr(persist, "VERIFY_DEFAULT_MAX_BYTES", 0)  # as for a bank over 512 MB
    with pytest.raises(BankError, match=r"vector 47 \(frame 7\) holds NaN or inf"):
        NominalBank.load(saved)


def test_removing_the_files_table_no_longer_lets_a_nan_bank_load(saved):
    """The bug this format fixes: no files table, no checksums, a NaN bank scoring 2.0 everywhere."""
    vectors = np.full((48, DIM), np.nan, np.float16)
    np.save(saved / "embeddings.npy", vectors)
    _make_legacy(saved, keep_files=False)  # the only format that may lack the table
    with pytest.raises(BankError, match="vector 0 .* holds NaN or inf"):
        NominalBank.load(saved)


@pytest.mark.parametrize("rows", [1, 1000, 5000])
def test_first_non_finite_row_finds_inf_and_nan_across_chunks(monkeypatch, rows):
    monkeypatch.setattr(persist, "FINITE_CHECK_CHUNK_BYTES", 64 * DIM)  # many chunks
    vectors = np.zeros((rows, DIM), np.float16)
    assert persist.first_non_finite_row(vectors) is None
    vectors[rows - 1, DIM - 1] = -np.inf
    assert persist.first_non_finite_row(vectors) == rows - 1
    vectors[rows // 2, 0] = np.nan
    assert persist.first_non_finite_row(vectors) == rows // 2
    assert persist.first_non_finite_row(vectors.astype(np.float32)) == rows // 2
    vectors[:] = np.float16(65504)  # the largest finite float16 is finite
    assert persist.first_non_finite_row(vectors) is None


def test_arrays_of_another_dtype_or_a_broken_frame_table_are_refused(saved):
    good = np.load(saved / "embeddings.npy")
    _rewrite_array(saved, "embeddings.npy", good.astype(np.float32))
    with pytest.raises(BankError, match="holds a 2-d float32 array, expected 2-d float16"):
        NominalBank.load(saved)
    _rewrite_array(saved, "embeddings.npy", good)
    frames = np.load(saved / "frames.npy")
    frames["vec_start"][3] += 1
    _rewrite_array(saved, "frames.npy", frames)
    with pytest.raises(BankError, match=r"frames.npy is damaged: frame 3 claims vectors \[19, 25\)"):
        NominalBank.load(saved)
    frames["vec_start"][3] -= 1
    frames["source"][5] = 4
    _rewrite_array(saved, "frames.npy", frames)
    with pytest.raises(BankError, match="frame 5 names source 4, the manifest lists 1"):
        NominalBank.load(saved)
    frames["source"][5] = 0
    _rewrite_array(saved, "frames.npy", frames)
    meta = np.load(saved / "vector_meta.npy")
    meta["frame"][40] = 99
    _rewrite_array(saved, "vector_meta.npy", meta)
    with pytest.raises(BankError, match="vector 40 names frame 99, the bank has 8"):
        NominalBank.load(saved)


# ------------------------------------------------------------------------------ building
def test_add_frame_and_from_vectors_refuse_non_finite_vectors():
    bank = NominalBank(_sig())
    vectors = np.ones((4, DIM), np.float32)
    vectors[2, 5] = np.inf
    with pytest.raises(ValueError, match=r"frame 7 of drive.bag \(/cam\): vector 2 of 4 holds NaN or inf"):
        bank.add_frame(vectors, source="drive.bag", index=7, topic="/cam")
    assert len(bank) == 0 and bank.num_frames == 0 and bank.sources == []
    vectors[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"from_vectors: vector 2 \(frame 1\) of 4 from features.npy holds NaN"):
        NominalBank.from_vectors(vectors, _sig(), frame_of_vector=np.array([0, 0, 1, 1]), source="features.npy")
    # float16 overflow of a finite float32 vector is caught too (it would be stored as inf)
    with pytest.raises(ValueError, match="holds NaN or inf"):
        bank.add_frame(np.full((1, DIM), 1e6, np.float32), source="drive.bag", index=8)


# ------------------------------------------------------------------------------ legacy format
def test_format_1_banks_load_with_a_warning_naming_the_upgrade(saved, caplog):
    _make_legacy(saved)
    bank = NominalBank.load(saved)
    assert len(bank) == 48 and bank.calibration["alpha"] == 0.9
    assert len(bank.warnings) == 1
    assert "format version 1" in bank.warnings[0] and f"semanom-bank upgrade {saved}" in bank.warnings[0]
    assert "no file checksums" not in bank.warnings[0]
    # Its file checksums are still checked, and its keys too.
    vectors = np.load(saved / "embeddings.npy").copy()
    vectors[0, 0] = 0.5
    np.save(saved / "embeddings.npy", vectors)
    with pytest.raises(BankError, match="checksum differs"):
        NominalBank.load(saved)


def test_format_1_without_files_table_says_checksums_were_skipped_and_keys_are_still_checked(saved):
    _make_legacy(saved, keep_files=False)
    bank = NominalBank.load(saved)
    assert "no file checksums (they were skipped)" in bank.warnings[0]
    _edit(saved, lambda m: m.update(num_vectors="abc"), reseal=False)
    with pytest.raises(BankError, match="key 'num_vectors': expected an integer >= 0, found the string 'abc'"):
        NominalBank.load(saved)
    _edit(saved, lambda m: m.update(num_vectors=48, model={"dim": DIM}), reseal=False)
    with pytest.raises(BankError, match="key 'model.model'"):
        NominalBank.load(saved)


def test_unknown_old_format_is_refused(saved):
    _edit(saved, lambda m: m.update(format_version=0))
    with pytest.raises(BankError, match="format_version.*found the integer 0; rebuild the bank"):
        NominalBank.load(saved)


def test_upgrade_resaves_a_legacy_bank_in_the_current_format(saved, capsys, tmp_path):
    before = NominalBank.load(saved)
    vectors, threshold = np.asarray(before.vectors).copy(), before.calibration["threshold"]
    _make_legacy(saved, keep_files=False)
    rc, out, err = _cli(capsys, "info", saved)
    assert rc == 0 and "format 1" in out and "WARNING" in err and "semanom-bank upgrade" in err
    rc, out, err = _cli(capsys, "upgrade", saved)
    assert rc == 0 and "format 1 -> 2" in out, err
    manifest = _manifest(saved)
    assert manifest["format_version"] == 2 and manifest[DIGEST_KEY] == manifest_digest(manifest)
    after = NominalBank.load(saved)
    assert after.warnings == []
    np.testing.assert_array_equal(after.vectors, vectors)
    assert after.calibration["threshold"] == threshold
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]  # the atomic save left no temporary directory


# ------------------------------------------------------------------------------ semanom-bank info
def test_info_verify_prints_what_it_checked(saved, capsys):
    rc, out, err = _cli(capsys, "info", saved, "--verify")
    assert rc == 0, err
    verified = out[out.index("verified"):]
    for part in (f"{DIGEST_KEY} matches", "embeddings.npy: ", "blake2b matches", "frame table",
                 f"all 48 x {DIM} values finite", "config"):
        assert part in verified, (part, out)
    rc, out, _ = _cli(capsys, "info", saved, "--json", "--verify")
    report = json.loads(out)
    assert report["num_vectors"] == 48 and any("finite" in line for line in report["verified"])
    rc, out, _ = _cli(capsys, "info", saved, "--json")
    assert "verified" not in json.loads(out)


def test_verify_rehashes_banks_too_big_for_the_default_check(saved, capsys, monkeypatch):
    data = bytearray((saved / "vector_meta.npy").read_bytes())
    data[-1] ^= 0x01  # a row number, still in range: only its checksum can tell
    (saved / "vector_meta.npy").write_bytes(bytes(data))
    monkeypatch.setattr(persist, "VERIFY_DEFAULT_MAX_BYTES", 0)
    rc, out, err = _cli(capsys, "info", saved)
    assert rc == 0, err
    rc, out, err = _cli(capsys, "info", saved, "--verify")
    assert rc == 1 and out == ""
    assert "vector_meta.npy is corrupt: checksum differs" in _one_error_line(err)


@pytest.mark.parametrize("damage", ["no_files_table", "mistyped", "nan", "truncated", "missing"])
def test_info_exits_1_with_one_line_on_a_damaged_bank(saved, capsys, damage):
    if damage == "no_files_table":
        _edit(saved, lambda m: m.pop("files"), reseal=False)
        part = "does not match"
    elif damage == "mistyped":
        _edit(saved, lambda m: m.update(num_vectors="abc"))
        part = "key 'num_vectors'"
    elif damage == "nan":
        _rewrite_array(saved, "embeddings.npy", _with_nan(saved, 1))
        part = "holds NaN or inf"
    elif damage == "truncated":
        (saved / "frames.npy").write_bytes((saved / "frames.npy").read_bytes()[:-8])
        part = "truncated"
    else:
        (saved / "vector_meta.npy").unlink()
        part = "missing vector_meta.npy"
    for extra in ([], ["--json"], ["--verify"]):
        rc, out, err = _cli(capsys, "info", saved, *extra)
        assert rc == 1 and out == ""
        line = _one_error_line(err)
        assert line.startswith("semanom-bank info: error:") and part in line, line


def _hnsw_bank(path: Path) -> Path:
    bank = _bank(frames=20, per_frame=10, index_type="hnsw", nprobe=16)
    bank.search_index.ensure()
    bank.save(path)
    assert (path / "index.faiss").is_file()
    return path


def test_a_damaged_index_file_loads_rebuilt_but_info_reports_it_and_upgrade_repairs_it(tmp_path, capsys):
    path = _hnsw_bank(tmp_path / "bank")
    data = bytearray((path / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "index.faiss").write_bytes(bytes(data))
    bank = NominalBank.load(path)  # derived data: the monitor rebuilds it
    assert len(bank.warnings) == 1 and "rebuilding the index" in bank.warnings[0]
    rc, out, err = _cli(capsys, "info", path)
    assert rc == 1 and "index.faiss is corrupt" in _one_error_line(err) and "semanom-bank upgrade" in err
    rc, out, err = _cli(capsys, "upgrade", path)
    assert rc == 0, err
    assert _cli(capsys, "info", path, "--verify")[0] == 0
    assert NominalBank.load(path).warnings == []


# ------------------------------------------------------------------------------ the monitor
@pytest.mark.parametrize("reseal", [False, True])
@pytest.mark.parametrize("change", [
    lambda m: m.pop("model"),
    lambda m: m.update(num_vectors="abc"),
    lambda m: m.pop("files"),
])
def test_monitor_on_a_damaged_bank_raises_bank_error(saved, change, reseal):
    _edit(saved, change, reseal=reseal)
    with pytest.raises(BankError, match="manifest.json"):
        Monitor(PipelineConfig(), saved)
