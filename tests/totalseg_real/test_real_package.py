"""Our error messages against the real TotalSegmentator package (`make test-totalseg`).

Skipped unless TotalSegmentator is installed. The network is cut off inside these tests (no
request leaves the machine) and TotalSegmentator's home folder is a fresh temporary one, so
these are the situations of a new user: no licence, or a licence but no weights and no internet.
"""

import json
import socket

import pytest

from ctbrainage.lobes import totalseg as ts
from ctbrainage.synth import generate_cohort

pytest.importorskip("totalsegmentator")


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    manifest = generate_cohort(out, n=1, seed=1, workers=1, progress=False)
    return out / manifest["image"].iloc[0]


@pytest.fixture
def home(monkeypatch, tmp_path):
    """A fresh TotalSegmentator home folder, no licence in the environment, no network."""

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.delenv(ts.LICENCE_ENV, raising=False)
    return tmp_path / "home"


def run(ct_path, tmp_path, licence_number) -> ts.TotalSegmentatorUnavailable:
    with pytest.raises(ts.TotalSegmentatorUnavailable) as info:
        ts.run_brain_structures(ct_path, tmp_path / "out", licence_number)
    print(f"\n{type(info.value.__cause__).__name__}: {info.value.__cause__}\n-> {info.value}")
    return info.value


def test_no_licence(ct_path, tmp_path, home):
    error = run(ct_path, tmp_path, ts.licence())
    assert isinstance(error.__cause__, SystemExit)
    assert "TOTALSEG_LICENSE" in str(error) and "lobes.totalseg_license" in str(error)


def test_new_licence_cannot_be_validated_offline(ct_path, tmp_path, home):
    error = run(ct_path, tmp_path, "A" * 18)
    assert isinstance(error.__cause__, SystemExit)
    assert "validate the licence" in str(error) and "internet" in str(error)


def test_no_weights_offline(ct_path, tmp_path, home):
    """A licence already stored (validated earlier) but no weights and no internet."""
    home.mkdir()
    config = {"totalseg_id": "totalseg_TEST0000", "send_usage_stats": False,
              "prediction_counter": 0, "statistics_disclaimer_shown": True,
              "license_number": "A" * 18}  # fmt: skip
    (home / "config.json").write_text(json.dumps(config))
    error = run(ct_path, tmp_path, "")
    assert isinstance(error.__cause__, OSError)
    assert "weights" in str(error) and "internet" in str(error)
    assert "TOTALSEG_HOME_DIR" in str(error)
