"""A method of your own: a Method subclass outside the package trains, resumes, reloads and compares like the
built-in ones, named by its import path (from Python, the command line and a comparison)."""
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import selfsup_lab
from selfsup_lab.cli import main
from selfsup_lab.errors import UserError
from selfsup_lab.methods import METHODS, Method, StepOutput, get_method_class, method_path, parse_options, short_name
from selfsup_lab.methods.naive import Naive

TINY = dict(dataset="synthetic:n=64,classes=4,size=16", batch_size=16, backbone="convnet", device="cpu",
            progress=False, figures=False, proj_hidden=32, proj_dim=16)

# Naive swapped prediction with DINO's centering of the teacher's scores: the example the README's commands use
# (notebook 03 builds the same class; a test below keeps the two equal), plus a name that is not a method.
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "myrules.py"
OWN_MODULE = EXAMPLE.read_text() + "\n\nNOT_A_METHOD = 3\n"


class NoStep(Method):  # forgot training_step
    pass


class PlainOptions(Method):
    Options = dict  # not a dataclass

    def training_step(self, views, indices):
        raise AssertionError("never trained")


class Minimal(Method):
    """The least a method needs: a training_step (no options of its own, no clusters)."""

    def __init__(self, backbone, options, context):
        super().__init__(backbone, options, context)
        self.head = torch.nn.Linear(backbone.feature_dim, 8)

    def training_step(self, views, indices):
        z1, z2 = (torch.nn.functional.normalize(self.head(self.backbone(v)), dim=1) for v in views[:2])
        return StepOutput(loss=-(z1 * z2).sum(1).mean())


def test_the_least_a_method_needs_is_a_training_step(tmp_path):
    run = selfsup_lab.train(Minimal, epochs=1, out=tmp_path / "run", **{k: v for k, v in TINY.items()
                                                                     if k not in ("proj_hidden", "proj_dim")})
    assert run.trainer.config.method == f"{__name__}.Minimal" and "knn_top1" in run.metrics
    assert "occupancy" not in run.history[-1]  # no clusters, no occupancy


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """myrules.py in a fresh working directory that is not on sys.path (as for the `selfsup-lab` console script)."""
    (tmp_path / "myrules.py").write_text(textwrap.dedent(OWN_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "myrules", raising=False)
    yield tmp_path
    sys.modules.pop("myrules", None)


def test_a_method_of_your_own_trains_resumes_and_reloads_by_its_import_path(own_module):
    cls = get_method_class("myrules.Centering")  # found in the current directory
    assert issubclass(cls, Method) and method_path(cls) == "myrules.Centering"

    run = selfsup_lab.train(cls, epochs=1, center_momentum=0.5, **TINY)  # the class itself, with its own option
    assert run.trainer.config.method == "myrules.Centering"
    assert run.out.resolve() == own_module / "runs" / "Centering-synthetic"  # named after the class
    assert run.trainer.method.options.center_momentum == 0.5
    center = run.trainer.method.center.clone()
    assert center.abs().sum() > 0 and "occupancy" in run.history[-1] and "knn_top1" in run.metrics

    resumed = selfsup_lab.train(resume=True, out=run.out, epochs=2)  # the run's own method, found again by path
    assert resumed.trainer.epoch == 2 and not torch.equal(resumed.trainer.method.center, center)
    assert len(resumed.history) == 2
    loaded = selfsup_lab.load_run(run.out)
    assert type(loaded.trainer.method).__name__ == "Centering"
    assert torch.equal(loaded.trainer.method.center, resumed.trainer.method.center)  # the buffer is checkpointed


def test_the_command_line_takes_an_import_path(own_module, capsys):
    assert main(["train", "--method", "myrules.Centering", "--dataset", "synthetic:n=64,classes=4,size=16",
                 "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress", "--no-figures",
                 "--set", "proj_hidden=32", "proj_dim=16", "center_momentum=0.8", "--out", "runs/own"]) == 0
    assert (own_module / "runs" / "own" / "checkpoint.pt").exists()
    assert main(["eval", "runs/own"]) == 0
    assert main(["train", "--method", "myrules.Centering", "--set", "centre_momentum=0.8", "--out", "runs/x"]) == 2
    assert "unknown option 'centre_momentum' for myrules.Centering" in capsys.readouterr().err
    assert main(["methods", "myrules.Centering", "excb"]) == 0
    out = capsys.readouterr().out
    assert "--set center_momentum=<float>  (default 0.9)" in out and "--set size_momentum=" in out
    assert "simclr" not in out  # only the methods asked for
    assert main(["methods", "myrules.Centred"]) == 2 and "has no Centred" in capsys.readouterr().err


def test_a_comparison_takes_a_class_of_your_own(own_module):
    from selfsup_lab.experiments import parse_methods
    from selfsup_lab.experiments.balancing import compare_balancing

    cls = get_method_class("myrules.Centering")
    result = compare_balancing(methods=("naive", cls), batch_sizes=(16,), dataset="synthetic:n=64,classes=4,size=16",
                               epochs=1, backbone="convnet", device="cpu", progress=False, out=own_module / "cmp",
                               shared_options={"proj_hidden": 32, "proj_dim": 16})
    assert not result["failed"] and [r["method"] for r in result["rows"]] == ["naive", "Centering"]
    assert (own_module / "cmp" / "Centering-b16" / "checkpoint.pt").exists()
    assert parse_methods(["myrules.Centering:center_momentum=0.5"]) == [  # as the command line writes it
        ("myrules.Centering:center_momentum=0.5", "myrules.Centering", {"center_momentum": "0.5"})]


def test_wrong_methods_of_your_own_are_one_sentence(own_module):
    with pytest.raises(UserError, match="cannot import nowhere"):
        get_method_class("nowhere.Centering")
    with pytest.raises(UserError, match=r"myrules \(.*myrules.py\) has no Centred"):
        get_method_class("myrules.Centred")
    with pytest.raises(UserError, match="not a subclass of selfsup_lab.methods.Method"):
        get_method_class("myrules.NOT_A_METHOD")
    with pytest.raises(UserError, match="unknown method 'centering'; choose one of: simclr"):
        get_method_class("centering")
    for malformed in (".Centering", "..x.C", "myrules.2nd"):
        with pytest.raises(UserError, match=f"unknown method '{re.escape(malformed)}'"):
            get_method_class(malformed)
    with pytest.raises(UserError, match="options go in --set key=value"):
        get_method_class("coke:dual_lr=0.5")
    with pytest.raises(UserError, match=r"__main__ \(.*\) has no Centering|was defined in a notebook or script"):
        get_method_class("__main__.Centering")
    (own_module / "shadow.py").write_text("X = 1\n")
    with pytest.raises(UserError, match=r"shadow \(.*shadow.py\) has no Centering; .* rename your file"):
        get_method_class("shadow.Centering")

    class Local(Method):
        pass

    with pytest.raises(UserError, match="defined inside a function"):
        method_path(Local)
    with pytest.raises(UserError, match="does not define training_step"):
        method_path(NoStep)
    with pytest.raises(UserError, match="its Options must be a dataclass"):
        method_path(PlainOptions)
    with pytest.raises(UserError, match="not a subclass"):
        selfsup_lab.train(dict, **TINY)
    assert method_path(get_method_class("excb")) == "excb"  # a built-in class keeps its short name


def test_every_built_in_name_gives_its_own_class_and_every_path_its_class_name():
    for name in METHODS:
        cls = get_method_class(name)
        assert cls.name == name and method_path(cls) == name, name  # no name resolves to another method's class
    assert short_name("excb") == "excb" and short_name("lab.rules.Centering") == "Centering"


def test_a_class_of_your_own_named_like_a_built_in_keeps_its_import_path(own_module):
    (own_module / "myswav.py").write_text("from selfsup_lab.methods.swav import SwAV as Base\n\n\n"
                                          "class SwAV(Base):\n    pass\n")
    try:
        assert method_path(get_method_class("myswav.SwAV")) == "myswav.SwAV"  # not recorded as the built-in 'swav'
    finally:
        sys.modules.pop("myswav", None)


def test_set_values_take_the_options_declared_types():
    """`--set key=value` text becomes the declared type; a word that is not one is a one-sentence error."""
    simclr, excb = get_method_class("simclr").Options, get_method_class("excb").Options
    for text, value in (("true", True), ("false", False), ("On", True), ("off", False), ("1", True), ("0", False),
                        ("no", False)):
        assert parse_options(simclr, {"one_pass": text}).one_pass is value, text
    with pytest.raises(UserError, match="option 'one_pass' expects bool, got 'maybe'"):
        parse_options(simclr, {"one_pass": "maybe"})
    assert parse_options(get_method_class("coke").Options, {"num_clusters": "10,20"}).num_clusters == (10, 20)
    assert parse_options(excb, {"size_momentum": "none"}).size_momentum is None  # None only where it is allowed
    with pytest.raises(UserError, match="option 'temperature' expects float, got 'none'"):
        parse_options(simclr, {"temperature": "none"})


@pytest.mark.parametrize("method, option, accepted, refused, wanted", [
    ("excb", "size_momentum", ("0", "1"), ("1.01", "-0.1"), r"in \[0, 1\]"),  # 1 freezes the size estimate
    ("excb", "teacher_momentum", ("1",), ("1.5",), r"in \[0, 1\]"),
    ("byol", "base_momentum", ("1",), ("1.5",), r"in \[0, 1\]"),
    ("coke", "alpha", ("1",), ("1.5",), r"in \[0, 1\]"),  # 1 = cross-entropy to last epoch's label alone
    ("coke", "ratio", ("1",), ("0",), r"in \(0, 1\]"),
    ("deepcluster", "kmeans_iters", ("1",), ("0",), "1 or more"),
    ("naive", "num_prototypes", ("2",), ("1",), "2 or more"),
])
def test_option_ranges_include_exactly_their_stated_ends(method, option, accepted, refused, wanted):
    cls = get_method_class(method)
    for text in accepted:
        assert getattr(parse_options(cls.Options, {option: text}, method), option) == float(text)
    for text in refused:
        with pytest.raises(UserError, match=f"option '{option}' of {method} must be {wanted}, got {text}"):
            parse_options(cls.Options, {option: text}, method)


def test_a_class_defined_in_a_notebook_is_found_in_main(monkeypatch, tmp_path):
    """In a notebook the class lives in __main__ (the kernel's namespace): its path is __main__.ClassName."""
    main_module = sys.modules["__main__"]
    namespace = {"__name__": "__main__"}
    exec(textwrap.dedent(OWN_MODULE), namespace)  # what running the notebook cell does
    monkeypatch.setattr(main_module, "Centering", namespace["Centering"], raising=False)
    run = selfsup_lab.train(namespace["Centering"], epochs=1, out=tmp_path / "run", **TINY)
    assert run.trainer.config.method == "__main__.Centering"
    assert type(selfsup_lab.load_run(tmp_path / "run").trainer.method) is namespace["Centering"]


def build_centering():
    """A tiny Centering for the two-process test (imported in each process from the test's myrules.py)."""
    from myrules import Centering, CenteringOptions
    from selfsup_lab.methods import MethodContext
    from selfsup_lab.models import build_backbone

    context = MethodContext(num_train=400, num_classes=4, batch_size=8, epochs=1, steps_per_epoch=50, image_size=16)
    method = Centering(build_backbone("convnet"), CenteringOptions(proj_hidden=32, proj_dim=16, num_prototypes=8,
                                                                   center_momentum=0.5), context)
    method.center.copy_(torch.linspace(-0.2, 0.2, 8))  # a centre that already differs between clusters
    return method


def test_the_centering_example_takes_the_same_step_on_two_processes_as_on_one(own_module, monkeypatch):
    """Its centre is a mean over the global batch (distributed.gather_no_grad), so torchrun trains it exactly."""
    from ddp_utils import assert_same_state, one_step

    monkeypatch.syspath_prepend(str(own_module))  # the spawned processes import myrules too
    g = torch.Generator().manual_seed(1)
    views, indices = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)], torch.arange(8)
    single = one_step(build_centering, views, indices, world=1)
    double = one_step(build_centering, views, indices, world=2)
    assert_same_state(single["state"], double["state"])
    assert torch.equal(single["assignments"], double["assignments"])
    assert not torch.allclose(single["state"]["center"], torch.linspace(-0.2, 0.2, 8))  # the centre moved


class SameAsNaive(Naive):
    """Changes nothing: trained as a method of your own, it must give the built-in naive's run exactly."""


def test_a_subclass_that_changes_nothing_trains_exactly_as_the_built_in(tmp_path):
    own = selfsup_lab.train(SameAsNaive, epochs=2, out=tmp_path / "own", **TINY)
    builtin = selfsup_lab.train("naive", epochs=2, out=tmp_path / "builtin", **TINY)
    assert own.trainer.config.method.endswith(".SameAsNaive") and builtin.trainer.config.method == "naive"
    own_state, builtin_state = own.trainer.method.state_dict(), builtin.trainer.method.state_dict()
    assert own_state.keys() == builtin_state.keys()
    assert all(torch.equal(own_state[k], builtin_state[k]) for k in own_state)
    assert own.metrics["knn_top1"] == builtin.metrics["knn_top1"]


def test_the_example_file_is_the_class_notebook_03_builds():
    """examples/myrules.py (what the README's commands name) and the notebook's cell must not drift apart."""
    notebook = json.loads((EXAMPLE.parents[1] / "notebooks" / "03_cluster_size_playground.ipynb").read_text())
    cell = next("".join(c["source"]) for c in notebook["cells"] if "class Centering(Naive)" in "".join(c["source"]))
    assert cell[cell.index("@dataclass"):].strip() in EXAMPLE.read_text()
