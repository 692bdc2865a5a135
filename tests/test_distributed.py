"""A two-process gloo job on the CPU samples what one process samples."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stagewise.distributed import share
from stagewise.sampling import SamplerDivergence, SGLDConfig, sample_losses


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))


def cliff(model, rows):
    """Linear losses that end (NaN) past ``w_0 = 5``, so a checkpoint near the edge diverges."""
    return torch.where(model.w[0] > 5, float("nan"), rows @ model.w)


ROWS = torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(10, 2)
CHECKPOINTS = [{"w": torch.tensor(w, dtype=torch.float64)} for w in ([0.0, 0.0], [1.0, -1.0], [-0.5, 2.0])]
CONFIG = SGLDConfig(epsilon=1e-3, nbeta=5.0, gamma=50.0, chains=3, draws=25, batch_size=4, seed=11)


def _worker(rank: int, size: int, port: int, results: dict, checkpoints: list) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        draws = sample_losses(Linear(), cliff, ROWS, CONFIG, ROWS[:3], checkpoints=checkpoints, progress=False)
        results[rank] = (draws.sampling, draws.observables, draws.loss_trace)
    except Exception as error:
        results[rank] = (type(error).__name__, str(error))
    finally:
        dist.destroy_process_group()


def _torchrun_worker(rank: int, size: int, port: int, results: dict, checkpoints: list) -> None:
    """A user's script under torchrun: the environment describes the job, nobody initialises it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    draws = sample_losses(Linear(), cliff, ROWS, CONFIG, ROWS[:3], checkpoints=checkpoints, progress=False)
    results[rank] = (draws.sampling, dist.get_world_size())
    dist.destroy_process_group()


def _run_job(checkpoints: list, size: int = 2, worker=_worker) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(size, port, results, checkpoints), nprocs=size, join=True)
        return dict(results)


def test_shares_cover_the_work_once():
    assert [list(share(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert list(share(1, 1, 2)) == []


def test_two_ranks_sample_what_one_process_samples_and_failures_name_the_rank():
    single = sample_losses(Linear(), cliff, ROWS, CONFIG, ROWS[:3], checkpoints=CHECKPOINTS, progress=False)
    results = _run_job(CHECKPOINTS)
    for rank in (0, 1):  # 9 checkpoint x chain sets split 5 / 4: the split cuts checkpoint 1 in half
        sampling, observables, trace = results[rank]
        torch.testing.assert_close(sampling, single.sampling, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(observables, single.observables, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(trace, single.loss_trace, rtol=1e-12, atol=1e-12)

    # the second checkpoint sits at the cliff: rank 1's share diverges, and every rank says so
    edge = [CHECKPOINTS[0], {"w": torch.tensor([4.99, 0.0], dtype=torch.float64)}]  # 6 sets: 3 / 3
    with pytest.raises(SamplerDivergence):
        sample_losses(Linear(), cliff, ROWS, CONFIG, checkpoints=edge, progress=False)
    failed = _run_job(edge)
    for rank in (0, 1):
        name, message = failed[rank]
        assert name == "SamplerDivergence"
        assert "rank 1 of 2 (checkpoints [1])" in message


def test_a_torchrun_job_is_joined_from_the_environment():
    single = sample_losses(Linear(), cliff, ROWS, CONFIG, ROWS[:3], checkpoints=CHECKPOINTS, progress=False)
    results = _run_job(CHECKPOINTS, worker=_torchrun_worker)
    for rank in (0, 1):
        sampling, world = results[rank]
        assert world == 2
        assert torch.equal(sampling, single.sampling)
