"""Two CPU processes with B/2 images each must take exactly the step one process takes with B images."""

import torch

from ddp_utils import assert_same_state, one_step
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.simclr import SimCLR, SimCLROptions
from selfsup_lab.models import build_backbone


def build_simclr():
    context = MethodContext(num_train=64, num_classes=4, batch_size=8, epochs=1, steps_per_epoch=1, image_size=16)
    return SimCLR(build_backbone("convnet"), SimCLROptions(proj_hidden=32, proj_dim=16), context)


def test_simclr_two_ranks_match_one_rank():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    indices = torch.arange(8)
    single = one_step(build_simclr, views, indices, world=1)
    double = one_step(build_simclr, views, indices, world=2)
    assert_same_state(single["state"], double["state"])
    # and the step did something: weights moved away from initialisation
    torch.manual_seed(0)
    initial = build_simclr().state_dict()
    moved = max((single["state"][k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point())
    assert moved > 1e-4


def test_gather_without_process_group_is_identity():
    from selfsup_lab import distributed

    x = torch.randn(3, 2)
    assert distributed.gather(x) is x
    assert distributed.world_size() == 1 and distributed.rank() == 0
