"""G-SimCLR and the guided batch sampler: distinct pseudo-classes per batch, fewer same-class negatives than
random batches, any method can use it, the trainer logs the rate, and the loss is exact under two processes."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import selfsup_lab
from ddp_utils import assert_same_state, one_step
from selfsup_lab.analysis import expected_same_class_negative_rate, same_class_negative_rate
from selfsup_lab.api import make_config
from selfsup_lab.data import RandomBatches
from selfsup_lab.errors import UserError
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.gsimclr import GSimCLR, GSimCLROptions
from selfsup_lab.methods.simclr import SimCLROptions
from selfsup_lab.models import build_backbone
from selfsup_lab.samplers import (GuidedBatches, GuidedOptions, autoencoder_codes, build_sampler, cluster_codes,
                                  guided_batches)

QUICK = dict(dataset="synthetic:n=64,classes=4,size=16", batch_size=16, backbone="convnet", device="cpu",
             progress=False, figures=False, proj_hidden=32, proj_dim=16)


def test_batches_hold_distinct_pseudo_classes_while_possible():
    # 24 clusters of unequal size (3..6 images), batches of 8: taking the largest clusters first keeps at
    # least 8 of them alive to the end, so no batch repeats a pseudo-class.
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(3, 7, (24,), generator=g)
    labels = torch.repeat_interleave(torch.arange(24), sizes)[torch.randperm(int(sizes.sum()), generator=g)]
    batches = guided_batches(labels, 8, torch.Generator().manual_seed(1))
    assert len(batches) == len(labels) // 8 and all(b.numel() == 8 for b in batches)
    used = torch.cat(batches)
    assert used.unique().numel() == used.numel()  # every image at most once per epoch
    assert all(labels[b].unique().numel() == 8 for b in batches)
    # A plain "take the next image of each cluster in turn" would fail here: the small clusters run out
    # first and the last batches are made of the big ones only.


def test_images_left_out_by_drop_last_are_a_random_few_not_the_largest_classes():
    # 1,003 images in 16 unequal pseudo-classes, batches of 16: 11 images sit out each epoch. Left to the
    # largest-first rounds they would always be the biggest class's; drawn uniformly, every class loses some.
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([208] + [53] * 15)
    labels = torch.repeat_interleave(torch.arange(16), sizes)[torch.randperm(1003, generator=g)]
    dropped = torch.zeros(16)
    for epoch in range(30):
        batches = guided_batches(labels, 16, torch.Generator().manual_seed(epoch))
        used = torch.zeros(1003, dtype=torch.bool)
        used[torch.cat(batches)] = True
        assert int((~used).sum()) == 1003 % 16
        dropped += torch.bincount(labels[~used], minlength=16)
    share = dropped / (30 * sizes)  # per class: the fraction of its images left out per epoch
    assert (share > 0).all()  # before the fix: 0.053 for the big class, 0 for all the others
    assert share.max() < 3 * (11 / 1003)


def test_fewer_clusters_than_batch_spread_evenly():
    labels = torch.arange(4).repeat(16)  # 4 pseudo-classes, batches of 8: two of each
    for b in guided_batches(labels, 8, torch.Generator().manual_seed(0)):
        assert torch.bincount(labels[b], minlength=4).tolist() == [2, 2, 2, 2]


def test_guided_batches_have_fewer_same_class_negatives_than_random():
    # 20 true classes, batches of 8; pseudo-labels = true labels with 30% of them scrambled.
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(20).repeat(20)[torch.randperm(400, generator=g)]
    pseudo = torch.where(torch.rand(400, generator=g) < 0.3, torch.randint(0, 20, (400,), generator=g), truth)
    sampler = GuidedBatches(400, 8)
    sampler.set_pseudo_labels(pseudo)
    random_rates, guided_rates = [], []
    for epoch in range(3):
        random_rates.append(same_class_negative_rate(truth, RandomBatches(400, 8).batches(epoch, torch.Generator().manual_seed(0))))
        guided_rates.append(same_class_negative_rate(truth, sampler.batches(epoch, torch.Generator().manual_seed(0))))
    random_rate, guided_rate = sum(random_rates) / 3, sum(guided_rates) / 3
    assert random_rate == pytest.approx(expected_same_class_negative_rate(truth), abs=0.015)  # ≈ 1/20
    assert guided_rate < 0.75 * random_rate  # measured: 0.024 vs 0.045


def test_guided_batches_reshuffle_every_epoch_and_replay_exactly():
    sampler = GuidedBatches(48, 8)
    sampler.set_pseudo_labels(torch.arange(8).repeat(6))
    gen = torch.Generator().manual_seed(3)
    a, b = sampler.batches(0, gen), sampler.batches(1, gen)
    assert not all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a, sampler.batches(0, torch.Generator().manual_seed(3))))


def test_sampler_choice_follows_the_method_and_config():
    assert isinstance(build_sampler("auto", {}, GSimCLROptions(), 64, 16), GuidedBatches)
    assert isinstance(build_sampler("auto", {}, SimCLROptions(), 64, 16), RandomBatches)
    assert type(build_sampler("random", {}, GSimCLROptions(), 64, 16)) is RandomBatches  # G-SimCLR → SimCLR
    guided = build_sampler("guided", {"pseudo_labels": "encoder"}, GSimCLROptions(num_pseudo=5), 64, 16)
    assert guided.options.pseudo_labels == "encoder" and guided.num_pseudo == 5
    assert build_sampler("guided", {}, SimCLROptions(), 64, 16).num_pseudo == 16  # K_pseudo = batch size
    with pytest.raises(UserError, match="unknown sampler"):
        build_sampler("greedy", {}, SimCLROptions(), 64, 16)
    with pytest.raises(UserError, match="unknown option 'pseudo'"):
        build_sampler("guided", {"pseudo": "x"}, SimCLROptions(), 64, 16)
    # options built directly (not parsed from --set) get the same range checks
    with pytest.raises(UserError, match="option 'refresh_every' of the guided sampler must be 1 or more"):
        GuidedBatches(64, 16, GuidedOptions(refresh_every=0))
    with pytest.raises(UserError, match="option 'ae_noise' of the guided sampler must be above 0"):
        GuidedBatches(64, 16, GuidedOptions(ae_noise=0.0))
    config = make_config("simclr", "digits", sampler="guided", **{"sampler.pseudo_labels": "encoder"}, temperature=0.5)
    assert config.sampler == "guided" and config.sampler_options == {"pseudo_labels": "encoder"}
    assert config.method_options == {"temperature": 0.5}


def test_autoencoder_codes_shape():
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    codes = autoencoder_codes(images, GuidedOptions(ae_epochs=1, ae_width=4), seed=0)
    assert codes.shape == (20, 32) and torch.isfinite(codes).all()


def test_any_method_logs_the_same_class_negative_rate_and_resume_keeps_pseudo_labels(tmp_path):
    run = selfsup_lab.train("gsimclr", epochs=2, out=str(tmp_path / "g"), ae_epochs=1, **QUICK)
    history = [json.loads(line) for line in (tmp_path / "g" / "history.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["same_class_neg_rate"] <= 1.0 and "pseudo_nmi" in r for r in history)
    assert json.loads((tmp_path / "g" / "config.json").read_text())["resolved"]["sampler"] == "GuidedBatches"
    reopened = selfsup_lab.load_run(tmp_path / "g", device="cpu")
    assert torch.equal(reopened.trainer.sampler.pseudo_labels, run.trainer.sampler.pseudo_labels)
    # the same option on another method, with the encoder's own features as pseudo-labels
    other = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "s"), sampler="guided",
                              sampler_options={"pseudo_labels": "encoder", "num_pseudo": 8}, **QUICK)
    assert isinstance(other.trainer.sampler, GuidedBatches) and other.trainer.sampler.pseudo_labels.max() < 8


def build_gsimclr():
    context = MethodContext(num_train=64, num_classes=4, batch_size=8, epochs=1, steps_per_epoch=1, image_size=16)
    return GSimCLR(build_backbone("convnet"), GSimCLROptions(proj_hidden=32, proj_dim=16), context)


def test_gsimclr_loss_and_step_match_under_two_ranks():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    single = one_step(build_gsimclr, views, torch.arange(8), world=1)
    double = one_step(build_gsimclr, views, torch.arange(8), world=2)
    # Rank 0's loss is the mean over its own 4 images' 8 anchors against all 16 views (global negatives):
    # recompute it by hand on one process.
    torch.manual_seed(0)
    method = build_gsimclr().train()
    z1, z2 = (F.normalize(method.projector(method.backbone(v)), dim=1) for v in views)
    candidates = torch.cat([z1, z2])
    terms = []
    for i in range(4):
        for anchor, self_index, positive in ((z1[i], i, 8 + i), (z2[i], 8 + i, i)):
            logits = candidates @ anchor / 0.2
            logits[self_index] = float("-inf")
            terms.append(-torch.log_softmax(logits, 0)[positive])
    assert double["loss"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-4)
    assert_same_state(single["state"], double["state"])


def test_encoder_pseudo_labels_are_refreshed_exactly_every_n_epochs():
    sampler = GuidedBatches(64, 16, GuidedOptions(pseudo_labels="encoder", refresh_every=3))
    assert sampler.needs_labels(0)
    sampler.set_pseudo_labels(torch.zeros(64, dtype=torch.long), epoch=0)
    assert [sampler.needs_labels(e) for e in range(1, 6)] == [False, False, True, True, True]
    sampler.set_pseudo_labels(torch.zeros(64, dtype=torch.long), epoch=3)
    assert [sampler.needs_labels(e) for e in range(4, 7)] == [False, False, True]
    once = GuidedBatches(64, 16, GuidedOptions(pseudo_labels="autoencoder", refresh_every=1))
    once.set_pseudo_labels(torch.zeros(64, dtype=torch.long), epoch=0)
    assert not once.needs_labels(5)  # the original's autoencoder labels are made once


def test_the_denoising_autoencoder_reconstructs_the_clean_image(monkeypatch):
    from selfsup_lab import samplers

    targets = []
    real_mse = F.mse_loss

    def spy(prediction, target, *args, **kwargs):
        targets.append(target.detach().clone())
        return real_mse(prediction, target, *args, **kwargs)

    monkeypatch.setattr(samplers.F, "mse_loss", spy)
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    autoencoder_codes(images, GuidedOptions(ae_epochs=2, ae_width=4, ae_noise=0.5), seed=0, batch_size=10)
    assert len(targets) == 4  # 2 epochs of 2 batches
    clean = {tuple(image.flatten().tolist()) for image in images}
    for target in targets:
        levels = target * 255
        assert (levels - levels.round()).abs().max() < 1e-3  # whole uint8 levels: no noise in the target
        assert all(tuple(t.flatten().round().long().tolist()) in clean for t in levels)


def test_guided_batches_vary_the_company_of_a_pseudo_class_across_epochs():
    # 16 equal pseudo-classes, batches of 4: ties between equal classes are broken at random, so a class
    # does not always meet the same 3 others (with a fixed tie-break it would, every epoch)
    labels = torch.arange(16).repeat(4)
    met = set()
    for epoch in range(4):
        for b in guided_batches(labels, 4, torch.Generator().manual_seed(epoch)):
            classes = set(labels[b].tolist())
            if 0 in classes:
                met |= classes - {0}
    assert len(met) > 3


def test_guided_batch_order_is_reshuffled():
    # 12 images of pseudo-class 0 and 4 of class 1, batches of 2: four mixed batches and four of class 0 only.
    # The mixed ones are composed first; the batch order is shuffled, so they are not always the first four.
    labels = torch.tensor([0] * 12 + [1] * 4)
    firsts = set()
    for seed in range(10):
        batches = guided_batches(labels, 2, torch.Generator().manual_seed(seed))
        assert sorted(int(labels[b].sum()) for b in batches) == [0] * 4 + [1] * 4
        firsts.add(int(labels[batches[0]].sum()))
    assert firsts == {0, 1}


def test_guided_batches_depend_on_the_generator_seed():
    sampler = GuidedBatches(48, 8)
    sampler.set_pseudo_labels(torch.arange(8).repeat(6))
    a = sampler.batches(0, torch.Generator().manual_seed(1))
    b = sampler.batches(0, torch.Generator().manual_seed(2))
    assert not all(torch.equal(x, y) for x, y in zip(a, b))


def test_guided_sampler_rejects_bad_pseudo_labels_and_the_random_sampler_rejects_options():
    sampler = GuidedBatches(48, 8)
    with pytest.raises(UserError, match="one pseudo-label per training image"):
        sampler.set_pseudo_labels(torch.zeros(47, dtype=torch.long))
    with pytest.raises(UserError, match="random sampler takes no options"):
        build_sampler("random", {"num_pseudo": 4}, SimCLROptions(), 64, 16)


def test_resume_keeps_when_the_pseudo_labels_were_made():
    sampler = GuidedBatches(64, 16, GuidedOptions(pseudo_labels="encoder", refresh_every=3))
    sampler.set_pseudo_labels(torch.arange(64) % 16, epoch=3)
    resumed = GuidedBatches(64, 16, GuidedOptions(pseudo_labels="encoder", refresh_every=3))
    resumed.load_state_dict(sampler.state_dict())
    assert torch.equal(resumed.pseudo_labels, sampler.pseudo_labels)
    assert [resumed.needs_labels(e) for e in range(4, 7)] == [False, False, True]  # next refresh at epoch 6


def test_the_denoising_autoencoder_sees_noisy_inputs(monkeypatch):
    from selfsup_lab import samplers

    inputs, targets = [], []
    real_forward, real_mse = samplers.DenoisingAutoencoder.forward, F.mse_loss

    def forward_spy(self, x):
        inputs.append(x.detach().clone())
        return real_forward(self, x)

    def mse_spy(prediction, target, *args, **kwargs):
        targets.append(target.detach().clone())
        return real_mse(prediction, target, *args, **kwargs)

    monkeypatch.setattr(samplers.DenoisingAutoencoder, "forward", forward_spy)
    monkeypatch.setattr(samplers.F, "mse_loss", mse_spy)
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    autoencoder_codes(images, GuidedOptions(ae_epochs=1, ae_width=4, ae_noise=0.5), seed=0, batch_size=10)
    assert len(inputs) == len(targets) == 2
    for noisy, clean in zip(inputs, targets):
        assert (noisy - clean).std().item() == pytest.approx(0.5, rel=0.05)  # Gaussian noise of std ae_noise
        assert (noisy - clean).mean().abs().item() < 0.02


def test_pseudo_labels_cluster_mean_centred_codes():
    # two groups of codes on one ray from the origin (ReLU codes are all positive): same direction, different
    # length. Spherical k-means sees only directions, so it can tell them apart only after centring.
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0] * 10 + [3.0] * 10)
    codes = scale[:, None] * torch.ones(20, 6) + 0.01 * torch.randn(20, 6, generator=g)
    labels = cluster_codes(codes, 2)
    assert labels[:10].unique().numel() == 1 and labels[10:].unique().numel() == 1 and labels[0] != labels[10]


def test_oracle_pseudo_labels_are_the_true_labels():
    truth = torch.arange(4).repeat(16)
    trainer = SimpleNamespace(train_set=SimpleNamespace(labels=truth, num_unlabelled=0, images=None),
                              train_images=None, device=torch.device("cpu"),
                              features=lambda images: pytest.fail("oracle labels need no features"))
    sampler = GuidedBatches(64, 16, GuidedOptions(pseudo_labels="oracle"))
    sampler.on_epoch_start(0, trainer)
    assert torch.equal(sampler.pseudo_labels, truth) and sampler.info["pseudo_nmi"] == pytest.approx(1.0)
