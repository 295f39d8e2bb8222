"""Spec files: round trip, and every malformed input is a clear SpecError/SchemaMismatch."""

import json

import numpy as np
import pytest

from shared.errors import InvalidInput, SchemaMismatch, SpecError
from shared.privacy import DPReport
from shared.spec.record import Specification, load_specs, save_specs, specs_from_bytes
from shared.spec.schema import MarketSchema, PaveSchema, RkmeSchema, schema_from_params

RKME = RkmeSchema(encoder_id="enc", encoder_sha256="a" * 64, dim=8)
PAVE = PaveSchema(model_name="tiny", model_id="tiny-v1", model_sha256="b" * 64, raw_dim=6)
REPORT = DPReport("gaussian", 4.0, 1e-5, 1.16, noise_std=0.01)


def spec(kind="rkme", vector=None, schema=RKME):
    vec = np.arange(schema.spec_dim, dtype=np.float32) if vector is None else vector
    return Specification(kind=kind, schema_id=schema.schema_id, vector=vec, n=10, privacy=REPORT)


def test_round_trip_bytes_and_files(tmp_path):
    one, two = spec(), spec("pave", schema=PAVE)
    back = Specification.from_bytes(one.to_bytes())
    np.testing.assert_array_equal(back.vector, one.vector)
    assert back.metadata() == one.metadata()
    path = save_specs(tmp_path / "s.safetensors", [one, two])
    assert [s.kind for s in load_specs(path)] == ["pave", "rkme"]
    assert not list(tmp_path.glob(".*tmp"))


def test_spec_is_small():
    big = RkmeSchema(encoder_id="enc", encoder_sha256="a" * 64, dim=512)
    assert len(spec(schema=big).to_bytes()) < 64 * 1024


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused(bad):
    vec = np.ones(8, dtype=np.float32)
    vec[3] = bad
    with pytest.raises(SpecError, match="finite"):
        spec(vector=vec)


def test_wrong_shapes_are_refused():
    with pytest.raises(SpecError, match="1-D"):
        spec(vector=np.ones((2, 4), dtype=np.float32))
    with pytest.raises(SpecError, match="floats"):
        spec(vector=np.ones(8, dtype=np.int64))
    short = Specification("rkme", RKME.schema_id, np.ones(7, np.float32), 10, REPORT)
    with pytest.raises(SpecError, match="expects 8"):
        short.check_against(RKME)


def test_wrong_schema_is_a_schema_mismatch():
    other = RkmeSchema(encoder_id="enc", encoder_sha256="a" * 64, dim=8, gamma=0.1)
    with pytest.raises(SchemaMismatch, match="schema"):
        spec().check_against(other)
    with pytest.raises(SchemaMismatch, match="kind"):
        spec().check_against(PAVE)


@pytest.mark.parametrize("payload", [b"", b"garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_files_are_spec_errors(payload):
    with pytest.raises(SpecError):
        specs_from_bytes(payload)


def test_tampered_metadata_is_caught():
    data = bytearray(spec().to_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["lwm.spec.rkme"])
    meta["dim"] = 9
    header["__metadata__"]["lwm.spec.rkme"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (header_len - len(raw)) if len(raw) <= header_len else b""
    rebuilt = len(raw).to_bytes(8, "little") + raw + bytes(data[8 + header_len :])
    with pytest.raises(SpecError, match="dim"):
        specs_from_bytes(rebuilt)


def test_unknown_format_version_and_kind():
    with pytest.raises(SpecError, match="version"):
        Specification("rkme", "x", np.ones(2, np.float32), 1, REPORT, format_version=99)
    with pytest.raises(SpecError, match="kind"):
        Specification("mystery", "x", np.ones(2, np.float32), 1, REPORT)
    with pytest.raises(SpecError, match="at least one"):
        Specification("rkme", "x", np.ones(2, np.float32), 0, REPORT)


def test_market_schema_round_trips_and_validates():
    market = MarketSchema(rkme=RKME, pave=PAVE, default_kind="rkme")
    back = MarketSchema.from_json(market.to_json())
    assert back == market
    assert back.for_kind("pave").schema_id == PAVE.schema_id
    with pytest.raises(SchemaMismatch, match="accepts"):
        MarketSchema(rkme=RKME).for_kind("pave")
    with pytest.raises(InvalidInput, match="unknown rkme schema parameters"):
        schema_from_params("rkme", {**RKME.params(), "surprise": 1})
    with pytest.raises(InvalidInput, match="even"):
        RkmeSchema(encoder_id="enc", encoder_sha256="a", dim=7)
    with pytest.raises(InvalidInput, match="clip_norm"):
        PaveSchema(model_name="t", model_id="t", model_sha256="b", raw_dim=4, clip_norm=0.0)
