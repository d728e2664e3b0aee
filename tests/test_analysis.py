"""Under/over-clustering measures give the values they must on constructed examples."""
import math

import numpy as np
import pytest
import torch

from selfsup_lab import analysis

CLASSES = torch.arange(4).repeat_interleave(10)  # 4 classes × 10 images


def test_perfect_clustering():
    clusters = (CLASSES + 7) % 4  # relabelled, still perfect
    hc = analysis.homogeneity_completeness(CLASSES, clusters)
    assert hc["homogeneity"] == pytest.approx(1.0) and hc["completeness"] == pytest.approx(1.0)
    assert analysis.fragmentation(CLASSES, clusters)["mean"] == 1.0
    assert analysis.mixing(CLASSES, clusters)["mean"] == 1.0


def test_one_merged_cluster_is_complete_but_not_homogeneous():
    hc = analysis.homogeneity_completeness(CLASSES, torch.zeros(40, dtype=torch.long))
    assert hc["completeness"] == pytest.approx(1.0) and hc["homogeneity"] == pytest.approx(0.0)
    assert analysis.mixing(CLASSES, torch.zeros(40, dtype=torch.long))["per_cluster"] == [4]  # 4 × 25% needed


def test_one_class_split_in_two_is_homogeneous_but_not_complete():
    clusters = CLASSES.clone()
    clusters[:5] = 9  # half of class 0 goes to a new cluster
    hc = analysis.homogeneity_completeness(CLASSES, clusters)
    assert hc["homogeneity"] == pytest.approx(1.0) and hc["completeness"] < 1.0
    frag = analysis.fragmentation(CLASSES, clusters)
    assert frag["per_class"] == [2, 1, 1, 1]
    assert analysis.mixing(CLASSES, clusters)["mean"] == 1.0


def test_coverage_threshold():
    # a class with 19 images in one cluster and 1 elsewhere: 95% in one cluster → fragmentation 1 at 90%
    y = torch.zeros(20, dtype=torch.long)
    c = torch.zeros(20, dtype=torch.long)
    c[0] = 1
    assert analysis.fragmentation(y, c)["per_class"] == [1]
    assert analysis.fragmentation(y, c, coverage=0.99)["per_class"] == [2]
    c[:3] = 1  # 85% in one cluster: short of 90%, so both clusters are needed
    assert analysis.fragmentation(y, c)["per_class"] == [2]
    # read the other way (one cluster holding two classes, 85% and 15%): both classes are needed
    assert analysis.mixing(true_labels=c, cluster_ids=y)["per_cluster"] == [2]


def test_same_class_negative_rate_and_its_references():
    # one batch: classes [0, 0, 0, 1]: pairs sharing a class 3·2 = 6 of 4·3 = 12
    assert analysis.same_class_negative_rate(torch.tensor([0, 0, 0, 1])) == pytest.approx(0.5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    batches = [torch.tensor([0, 2, 4]), torch.tensor([0, 1, 3])]  # rates 0 and 1/3
    assert analysis.same_class_negative_rate(labels, batches) == pytest.approx(1 / 6)
    assert analysis.same_class_negative_counts(labels, batches).tolist() == [0, 0, 0, 1, 1, 0]
    assert analysis.expected_same_class_negative_rate(num_classes=10) == pytest.approx(0.1)
    # exact for random batches from a finite balanced set: (N/C − 1)/(N − 1)
    assert analysis.expected_same_class_negative_rate(CLASSES) == pytest.approx(9 / 39)
    assert analysis.min_same_class_negative_rate(512, 10) == pytest.approx((2 * 52 * 51 + 8 * 51 * 50) / (512 * 511))
    assert analysis.min_same_class_negative_rate(8, 20) == 0.0
    # unlabelled images (-1, STL-10's unlabelled split) are neither anchors nor negatives
    assert analysis.same_class_negative_rate(torch.tensor([0, 0, -1, -1, 0, 1])) == pytest.approx(0.5)
    assert analysis.same_class_negative_counts(torch.tensor([-1, 0, 0, -1]), [torch.arange(4)]).tolist() == [1, 1]
    assert analysis.expected_same_class_negative_rate(torch.tensor(CLASSES.tolist() + [-1] * 7)) == pytest.approx(9 / 39)
    # random batches match the expectation on average
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (5000,), generator=g)
    batches = list(torch.randperm(5000, generator=g).split(100))
    assert analysis.same_class_negative_rate(y, batches) == pytest.approx(analysis.expected_same_class_negative_rate(y), abs=0.005)


def test_same_class_negative_references_reject_degenerate_input():
    with pytest.raises(ValueError, match="at least 2 labelled images"):
        analysis.expected_same_class_negative_rate(torch.tensor([0]))
    with pytest.raises(ValueError, match="batch_size 1"):
        analysis.min_same_class_negative_rate(1, 10)


def test_binomial_pmf():
    pmf = analysis.binomial_pmf(511, 0.1)
    assert pmf.sum() == pytest.approx(1.0) and int(np.argmax(pmf)) == 51
    assert analysis.binomial_pmf(3, 0.5) == pytest.approx([1 / 8, 3 / 8, 3 / 8, 1 / 8])


def test_cosine_distributions_separate_clustered_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16)
    x = centres[CLASSES] + 0.05 * torch.randn(40, 16, generator=g)
    d = analysis.cosine_distributions(x, CLASSES)
    assert d["intra"].size == 4 * 45 and d["inter"].size == 40 * 39 // 2 - 4 * 45
    assert d["separation"] == pytest.approx(1.0) and d["gap"] > 0.9
    shuffled = analysis.cosine_distributions(torch.randn(40, 16, generator=g), CLASSES)
    assert abs(shuffled["separation"] - 0.5) < 0.15


def test_alignment_and_uniformity_on_known_cases():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g)
    assert analysis.alignment(z, z) == pytest.approx(0.0, abs=1e-6)
    assert analysis.alignment(z, -z) == pytest.approx(4.0, rel=1e-5)
    assert analysis.uniformity(z[:1].repeat(10, 1)) == pytest.approx(0.0, abs=1e-6)  # collapsed
    # uniform on S²: E exp(−2‖x − y‖²) = (1 − e^{−8})/8
    assert analysis.uniformity(torch.randn(3000, 3, generator=g)) == pytest.approx(math.log((1 - math.exp(-8)) / 8), abs=0.05)


def test_clustering_report_on_separated_features():
    g = torch.Generator().manual_seed(0)
    x = torch.eye(4, 8)[CLASSES] + 0.05 * torch.randn(40, 8, generator=g)
    report = analysis.clustering_report(x, CLASSES)
    assert report["homogeneity"] == pytest.approx(1.0) and report["completeness"] == pytest.approx(1.0)
    assert report["fragmentation"] == 1.0 and report["mixing"] == 1.0


def test_nothing_to_measure_is_nan_or_one_sentence_not_a_number_that_reads_as_a_result():
    # no batch with two labelled images: not "no false negatives"
    assert math.isnan(analysis.same_class_negative_rate(torch.tensor([-1, -1, -1])))
    assert analysis.same_class_negative_counts(torch.tensor([0, 1]), []).tolist() == []
    # one class: no inter-class pairs, so no separation to speak of (was 0.0, "perfectly reversed")
    one_class = analysis.cosine_distributions(torch.randn(10, 4), torch.zeros(10))
    assert math.isnan(one_class["separation"]) and math.isnan(one_class["gap"]) and one_class["inter"].size == 0
    assert math.isnan(analysis.cosine_distributions(torch.randn(6, 4), torch.arange(6))["separation"])
    with pytest.raises(ValueError, match="differ in length"):
        analysis.cosine_distributions(torch.randn(6, 4), torch.arange(5))
    with pytest.raises(ValueError, match="at least 2, got 1"):
        analysis.uniformity(torch.randn(1, 3))
    with pytest.raises(ValueError, match="no labelled samples"):
        analysis.fragmentation([], [])
    with pytest.raises(ValueError, match="no labelled samples"):
        analysis.mixing([-1, -1], [0, 1])


def test_unlabelled_samples_are_left_out_of_every_clustering_measure():
    y = torch.tensor([0, 0, 1, 1, -1, -1])
    clusters = torch.tensor([0, 0, 1, 1, 0, 1])
    labelled = slice(0, 4)
    assert analysis.homogeneity_completeness(y, clusters) == analysis.homogeneity_completeness(y[labelled], clusters[labelled])
    assert analysis.fragmentation(y, clusters)["per_class"] == [1, 1]  # two classes, not three
    assert analysis.mixing(y, clusters)["per_cluster"] == [1, 1]  # −1 is not a class mixed into the clusters
    x = torch.eye(2, 4)[y.clamp_min(0)] + 0.01 * torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert len(set(analysis.clustering_report(x, y)["cluster_ids"])) == 2  # K = the 2 classes, not 3
    with_unlabelled = analysis.cosine_distributions(x, y)
    assert with_unlabelled["intra"].size == 2 and with_unlabelled["inter"].size == 4  # pairs of the 4 labelled


def test_history_leaves_the_same_class_rate_out_when_no_batch_can_measure_it():
    from selfsup_lab import samplers

    unlabelled = torch.full((8,), -1)
    assert "same_class_neg_rate" not in samplers.epoch_statistics(None, [torch.arange(8)], unlabelled)  # not NaN
    assert samplers.epoch_statistics(None, [torch.arange(4)], torch.tensor([0, 0, 1, 1]))["same_class_neg_rate"] == \
        pytest.approx(1 / 3)


def test_same_class_negative_rate_averages_batches_and_skips_those_without_a_pair():
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 0, 1, -1])
    # rates 1, 0, 0: the mean over batches is 1/3 (a median would say 0)
    batches = [torch.tensor([0, 1]), torch.tensor([2, 4]), torch.tensor([3, 5])]
    assert analysis.same_class_negative_rate(labels, batches) == pytest.approx(1 / 3)
    # a batch with a single labelled image has no (anchor, negative) pair: left out, not NaN and not 0
    assert analysis.same_class_negative_rate(labels, [torch.tensor([0, 1]), torch.tensor([6, 8])]) == pytest.approx(1.0)


def test_min_same_class_negative_rate_rejects_zero_classes():
    with pytest.raises(ValueError, match="num_classes 0"):
        analysis.min_same_class_negative_rate(8, 0)


def test_binomial_pmf_at_the_degenerate_probabilities():
    assert analysis.binomial_pmf(4, 0.0).tolist() == [1, 0, 0, 0, 0]  # never a success
    assert analysis.binomial_pmf(4, 1.0).tolist() == [0, 0, 0, 0, 1]  # always


def test_coverage_is_reached_at_exactly_the_threshold():
    # 9 of 10 images in one cluster cover exactly 90%: one cluster suffices ("reaches", not "exceeds")
    y = torch.zeros(10, dtype=torch.long)
    c = torch.zeros(10, dtype=torch.long)
    c[0] = 1
    assert analysis.fragmentation(y, c)["per_class"] == [1]
    assert analysis.mixing(true_labels=c, cluster_ids=y)["per_cluster"] == [1]


def test_cosine_distributions_subsample_at_most_max_points_by_seed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g)
    d = analysis.cosine_distributions(x, CLASSES, max_points=12)
    assert d["intra"].size + d["inter"].size == 12 * 11 // 2  # all pairs of exactly 12 points
    again = analysis.cosine_distributions(x, CLASSES, max_points=12)
    other = analysis.cosine_distributions(x, CLASSES, max_points=12, seed=1)
    assert np.array_equal(d["inter"], again["inter"])  # the seed fixes the subsample...
    assert not (d["inter"].size == other["inter"].size and np.allclose(d["inter"], other["inter"]))  # ...and picks it


def test_alignment_exponent_and_uniformity_subsample():
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    assert analysis.alignment(z, -z, alpha=1.0) == pytest.approx(2.0, rel=1e-5)  # antipodal: ‖ẑ1 − ẑ2‖ = 2
    assert analysis.alignment(z, -z, alpha=3.0) == pytest.approx(8.0, rel=1e-5)
    # three points, max_points=2: the value of a single pair (here t = 1, ‖x − y‖² = 2 − 2 cos)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pair_values = {-2.0, -4.0}  # orthogonal pairs and the antipodal one
    value = analysis.uniformity(x, t=1.0, max_points=2)
    assert any(value == pytest.approx(v, abs=1e-6) for v in pair_values)


def test_a_boolean_mask_as_a_batch_selects_images_rather_than_indexing_0_and_1():
    from selfsup_lab import analysis

    labels = torch.tensor([0, 1, 0, 1])
    mask = torch.tensor([True, False, True, False])  # images 0 and 2: both class 0
    assert analysis.same_class_negative_rate(labels, [mask]) == 1.0
    assert analysis.same_class_negative_rate(labels, [mask]) == analysis.same_class_negative_rate(labels, [
        torch.tensor([0, 2])])


def test_degenerate_inputs_to_the_geometry_measures_are_one_sentence():
    from selfsup_lab import analysis

    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match="z1 and z2 must have one shape"):
        analysis.alignment(z, z[:5])
    with pytest.raises(ValueError, match="max_points must be at least 2, got 1"):
        analysis.uniformity(z, max_points=1)
    nan = z.clone()
    nan[0, 0] = float("nan")
    for call in (lambda: analysis.uniformity(nan), lambda: analysis.alignment(nan, z),
                 lambda: analysis.cosine_distributions(nan, torch.tensor([0, 0, 1, 1, 2, 2]))):
        with pytest.raises(ValueError, match="NaN or infinite values in 1 of 6 rows"):
            call()
    with pytest.raises(ValueError, match="no point has a label"):
        analysis.clustering_report(z, torch.full((6,), -1))
