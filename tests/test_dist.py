"""The torchrun environment, single-process fallbacks, and the key DDP property: 2 gloo ranks with batch b
give the loss and gradients of one process with batch 2b.

This file is also the torchrun worker script (see `_worker`, run when executed as __main__).
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

from helpers.torchrun import run_torchrun
from imaginet_train import dist
from imaginet_train.dist import DistEnv
from imaginet_train.losses import gathered_imaginet_selfcon_loss, imaginet_selfcon_loss
from imaginet_train.model import build_model

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
SPLITS = {"even": (4, 4), "uneven": (6, 2)}  # rows per rank; rank 1 holds no synthetic sample in "uneven"
TIMEOUT_S = 150


# --- the environment --------------------------------------------------------------------------------

def test_env_defaults_to_a_single_process():
    assert DistEnv.from_env({}) == DistEnv(rank=0, world_size=1, local_rank=0)
    assert not DistEnv.from_env({}).distributed and DistEnv.from_env({}).is_main


def test_env_reads_torchrun_variables():
    env = DistEnv.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.distributed, env.is_main) == (3, 4, 1, True, False)


@pytest.mark.parametrize("environ, match", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, r"RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK 2 is not in 0..1"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"WORLD_SIZE must be >= 1"),
    ({"LOCAL_RANK": "0"}, r"not all of RANK and WORLD_SIZE"),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "2"}, r"LOCAL_RANK 2 is not in 0..RANK"),
])
def test_env_rejects_inconsistent_variables(environ, match):
    with pytest.raises(ValueError, match=match):
        DistEnv.from_env(environ)


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = dist.init_distributed()
    assert env == DistEnv() and not torch.distributed.is_initialized()
    assert dist.is_main() and dist.group_size() == 1 and dist.group_rank() == 0
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert dist.device_for(env) == expected
    x = torch.randn(3, 2)
    assert dist.all_gather_with_grad(x) is x and dist.all_gather_sizes(3, x.device) == [3]
    dist.barrier()
    dist.cleanup()


# --- two gloo ranks against one process -------------------------------------------------------------

def _problem():
    """A small float64 model in eval mode (BatchNorm on running stats: samples independent), 8 samples."""
    torch.manual_seed(0)
    model = build_model("small", feat_dim=16).double().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64)
    origin = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0])
    family = torch.tensor([2, 0, 2, 3, 0, 1, 0, 0])
    labels = torch.stack([origin, torch.zeros_like(origin), family, torch.zeros_like(origin)], 1)
    features = torch.nn.functional.normalize(torch.randn(8, 2, 6, generator=g, dtype=torch.float64), dim=2)
    return model, images, labels, features


def _rows(split: str, rank: int) -> slice:
    sizes = SPLITS[split]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _worker(out_dir: str) -> None:
    """One torchrun rank: DDP-wrapped model and bare features, with this rank's rows of the batch."""
    torch.set_num_threads(1)
    env = dist.init_distributed()
    if not (torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"):
        raise RuntimeError("expected a gloo process group")
    model, images, labels, features = _problem()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    result = {}
    for split in SPLITS:
        rows = _rows(split, env.rank)
        ddp.zero_grad()
        loss = gathered_imaginet_selfcon_loss(torch.stack(ddp(images[rows]), dim=1), labels[rows])
        loss.backward()
        result[f"{split}/loss"] = loss.detach()
        result[f"{split}/grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        local = features[rows].clone().requires_grad_()
        loss = gathered_imaginet_selfcon_loss(local, labels[rows])
        loss.backward()
        result[f"{split}/features_loss"] = loss.detach()
        result[f"{split}/features_grad"] = local.grad
    result["is_main"] = dist.is_main()
    dist.barrier()
    torch.save(result, Path(out_dir) / f"rank{env.rank}.pt")
    dist.cleanup()


def _torchrun(out_dir: Path) -> None:
    run_torchrun([__file__, str(out_dir)], nproc=WORLD, timeout=TIMEOUT_S)


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_whole_batch(tmp_path):
    _torchrun(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["is_main"] for r in ranks] == [True, False]
    model, images, labels, features = _problem()
    loss = imaginet_selfcon_loss(torch.stack(model(images), dim=1), labels)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    bare = features.clone().requires_grad_()
    bare_loss = imaginet_selfcon_loss(bare, labels)
    bare_loss.backward()
    tol = {"rtol": 1e-9, "atol": 1e-12}
    for split in SPLITS:
        # The mean of the ranks' shares is the loss; DDP's averaged gradients are the gradients.
        torch.testing.assert_close(sum(r[f"{split}/loss"] for r in ranks) / WORLD, loss.detach(), **tol)
        for r in ranks:
            assert r[f"{split}/grads"].keys() == grads.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(r[f"{split}/grads"][name], grad, **tol, msg=f"{split} {name}")
        # Bare features get the gradient of the sum of all ranks' shares: WORLD x the global gradient.
        mean_share = sum(r[f"{split}/features_loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean_share, bare_loss.detach(), **tol)
        for rank, r in enumerate(ranks):
            expected = WORLD * bare.grad[_rows(split, rank)]
            torch.testing.assert_close(r[f"{split}/features_grad"], expected, **tol)


if __name__ == "__main__":
    _worker(sys.argv[1])
