"""bonn_serve.settings: env parsing, and workers x threads never exceeding the usable CPUs."""

from __future__ import annotations

import pytest

from bonn_serve import settings as st


@pytest.fixture
def cpus(monkeypatch):
    def set_cpus(n: int) -> None:
        monkeypatch.setattr(st, "usable_cpus", lambda: n)

    for var in ("BONN_WORKERS", "BONN_THREADS", "BONN_MAX_BATCH", "BONN_MAX_WAIT_MS", "BONN_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return set_cpus


def test_defaults_use_all_cpus_in_one_worker(cpus):
    cpus(8)
    s = st.load_settings()
    assert (s.workers, s.threads) == (1, 8)
    assert s.max_body_bytes == 8 << 20 and s.max_batch == 32 and s.max_wait_ms == 0.0


def test_threads_default_splits_cpus_between_workers(cpus, monkeypatch):
    cpus(8)
    monkeypatch.setenv("BONN_WORKERS", "3")
    s = st.load_settings()
    assert (s.workers, s.threads) == (3, 2)


def test_oversubscription_is_capped(cpus, monkeypatch):
    cpus(4)
    monkeypatch.setenv("BONN_WORKERS", "2")
    monkeypatch.setenv("BONN_THREADS", "4")
    s = st.load_settings()
    assert s.workers * s.threads <= 4 and s.threads == 2
    monkeypatch.setenv("BONN_WORKERS", "16")
    s = st.load_settings()
    assert s.workers == 4 and s.threads == 1


@pytest.mark.parametrize(
    "var,value",
    [
        ("BONN_WORKERS", "abc"),
        ("BONN_THREADS", "0"),
        ("BONN_MAX_BATCH", "-1"),
        ("BONN_MAX_WAIT_MS", "soon"),
        ("BONN_MAX_BODY_BYTES", "10"),
    ],
)
def test_invalid_values_name_the_variable(cpus, monkeypatch, var, value):
    cpus(2)
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        st.load_settings()


def test_more_images_per_request_than_the_queue_holds_is_refused(cpus, monkeypatch):
    cpus(2)
    monkeypatch.setenv("BONN_MAX_QUEUE", "8")
    monkeypatch.setenv("BONN_MAX_IMAGES", "16")
    with pytest.raises(ValueError, match="BONN_MAX_IMAGES .16. must not exceed BONN_MAX_QUEUE .8."):
        st.load_settings()
    monkeypatch.setenv("BONN_MAX_IMAGES", "8")
    assert st.load_settings().max_images == 8


def test_model_list_parsing(cpus, monkeypatch):
    cpus(2)
    monkeypatch.setenv("BONN_MODELS", " bonn-a , fp-a:v1,, ")
    assert st.load_settings().models == ("bonn-a", "fp-a:v1")


def test_usable_cpus_is_positive():
    assert st.usable_cpus() >= 1
