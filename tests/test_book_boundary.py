import pytest
import torch

from stagewise.book import DEVICE_ENV, book_device


def test_device_defaults_to_cpu_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert book_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "CPU")
    assert book_device() == torch.device("cpu")


def test_unavailable_device_names_the_valid_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="valid devices here are: cpu$"):
        book_device("cuda:3")
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="'tpu'"):
        book_device()
