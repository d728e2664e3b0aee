"""The course auto-checks: model answers pass, typical mistakes fail with the right hint, grading works.

Fast (a few seconds): everything runs in-process except one `python -m selfsup_lab.assignments` call.
The notebooks themselves are executed end to end in tests/test_notebooks.py.
"""
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch

from selfsup_lab import assignments as A
from selfsup_lab import balancing
from selfsup_lab.errors import UserError
from selfsup_lab.methods.simclr import nt_xent_loss

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ROOT / "notebooks" / "assignments"


def student(name: str, source: str):
    """Define a student's function from source text, as a notebook cell would (in the grader's namespace)."""
    namespace = {"__name__": "__submission__", "torch": torch, "F": torch.nn.functional}
    exec(textwrap.dedent(source), namespace)
    return namespace[A.EXERCISES[name].function]


def model_answer(name: str):
    return student(name, A.SOLUTIONS[name])


# --- the model answers and the references pass -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(A.EXERCISES))
def test_model_answer_passes(name):
    result = A.EXERCISES[name].check(model_answer(name), strict=True)
    assert result.passed and len(result.cases) >= 8
    assert all(c.passed for c in result.cases)


@pytest.mark.parametrize("name, reference", [
    ("nt_xent", nt_xent_loss),  # returns (loss, rank): the checker grades the loss
    ("sinkhorn", balancing.sinkhorn),
    ("coke_dual_step", balancing.coke_dual_step),
    ("excb_balancing", balancing.excb_balance_scores),
])
def test_package_reference_passes_every_check_but_is_not_a_submission(name, reference):
    result = A.EXERCISES[name].check(reference)
    assert [case.name for case in result.cases] == ["your own code (it does not call the lab's reference)"]
    assert not result.passed  # 0 of 1: the reference's own answers pass every other check and count for nothing
    assert f"`{reference.__module__}.{reference.__name__}` from the lab" in result.failures[0].detail


REFERENCE_IN_DISGUISE = [  # (exercise, how, source): each used to pass every check
    ("nt_xent", "a wrapper", """
        from selfsup_lab.methods.simclr import nt_xent_loss

        def nt_xent(z1, z2, temperature):
            return nt_xent_loss(z1, z2, temperature)[0]
        """),
    ("sinkhorn", "an attribute path", """
        import selfsup_lab.balancing

        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            return selfsup_lab.balancing.sinkhorn(scores, epsilon, iterations)
        """),
    ("coke_dual_step", "the reference itself, imported", """
        from selfsup_lab.balancing import coke_dual_step
        """),
    ("sinkhorn", "functools.partial", """
        import functools
        from selfsup_lab import balancing

        sinkhorn = functools.partial(balancing.sinkhorn, epsilon=0.05)
        """),
    ("coke_dual_step", "a closure", """
        def make():
            from selfsup_lab.balancing import coke_dual_step as reference

            def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
                return reference(duals, counts, batch_size, min_fraction, step_size)
            return coke_dual_step

        coke_dual_step = make()
        """),
    ("excb_balancing", "an import inside a helper", """
        def helper(scores, relative_sizes, boost):
            from selfsup_lab import balancing
            return balancing.excb_balance_scores(scores, relative_sizes, boost)

        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            return helper(scores, relative_sizes, boost)
        """),
    ("sinkhorn", "a static method of a class", """
        from selfsup_lab import balancing

        class Solver:
            @staticmethod
            def solve(scores, epsilon, iterations):
                return balancing.sinkhorn(scores, epsilon, iterations)

        def sinkhorn(scores, epsilon=0.05, iterations=3):
            return Solver.solve(scores, epsilon, iterations)
        """),
    ("nt_xent", "a callable object", """
        class Loss:
            def __init__(self):
                from selfsup_lab.methods import simclr
                self.reference = simclr.nt_xent_loss

            def __call__(self, z1, z2, temperature):
                return self.reference(z1, z2, temperature)[0]

        nt_xent = Loss()
        """),
    ("coke_dual_step", "an object's method, through a dict", """
        from selfsup_lab.balancing import coke_dual_step as reference

        class Steps:
            def dual(self, *args):
                return TOOLS["dual"](*args)

        TOOLS = {"dual": reference}
        steps = Steps()

        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return steps.dual(duals, counts, batch_size, min_fraction, step_size)
        """),
    ("sinkhorn", "a class with no function of its own", """
        from selfsup_lab import balancing

        class Tools:
            balance = staticmethod(balancing.sinkhorn)

        def sinkhorn(scores, epsilon=0.05, iterations=3):
            return Tools.balance(scores, epsilon, iterations)
        """),
    ("excb_balancing", "an object whose class inherits the call", """
        from selfsup_lab.balancing import excb_balance_scores as reference

        class Base:
            def __call__(self, scores, relative_sizes, boost=1.01):
                return reference(scores, relative_sizes, boost)

        class Balancer(Base):
            pass

        excb_balance_scores = Balancer()
        """),
    ("coke_dual_step", "a default argument", """
        from selfsup_lab import balancing

        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size, *, impl=balancing.coke_dual_step):
            return impl(duals, counts, batch_size, min_fraction, step_size)
        """),
    ("sinkhorn", "a SimpleNamespace", """
        import types
        from selfsup_lab import balancing

        tools = types.SimpleNamespace(balance=balancing.sinkhorn)

        def sinkhorn(scores, epsilon=0.05, iterations=3):
            return tools.balance(scores, epsilon, iterations)
        """),
]


@pytest.mark.parametrize("name, how, source", REFERENCE_IN_DISGUISE, ids=[f"{r[0]}:{r[1]}" for r in REFERENCE_IN_DISGUISE])
def test_calling_the_lab_reference_fails(name, how, source):
    result = A.EXERCISES[name].check(student(name, source))
    assert [case.name for case in result.failures] == ["your own code (it does not call the lab's reference)"]
    assert "write it yourself" in result.report()


def test_own_code_in_a_class_or_callable_object_passes():
    # Classes, objects and lists are followed only to find the lab's reference: the student's own code in them
    # is graded like any other.
    namespace = {"torch": torch}
    exec(textwrap.dedent(A.SOLUTIONS["sinkhorn"]).replace("def sinkhorn(", "def _model(", 1), namespace)
    exec(textwrap.dedent("""
        class Sinkhorn:
            steps = [_model]

            def __call__(self, scores, epsilon=0.05, iterations=3):
                return self.steps[0](scores, epsilon, iterations)

        sinkhorn = Sinkhorn()
        """), namespace)
    result = A.check_sinkhorn(namespace["sinkhorn"])
    assert result.passed, result.report()


def test_the_labs_plain_data_in_a_students_list_is_not_calling_the_reference():
    # A settings object of the lab's (no code to call) in a list the function touches, next to many numbers.
    from selfsup_lab.widgets import PlaygroundParams

    namespace = {"torch": torch, "LOG": [PlaygroundParams()], "WEIGHTS": [0.5] * 100_000}
    exec(textwrap.dedent(A.SOLUTIONS["sinkhorn"]).replace("    return ", "    LOG.append(WEIGHTS[0])\n    return ", 1),
         namespace)
    assert A._lab_code_in(namespace["sinkhorn"]) is None
    result = A.check_sinkhorn(namespace["sinkhorn"])
    assert result.passed, result.report()


def test_an_attribute_named_like_a_lab_import_is_not_the_lab():
    # `scores.data` is the tensor's attribute, whatever the notebook bound to a global `data`.
    import selfsup_lab.data

    namespace = {"torch": torch, "data": selfsup_lab.data}
    exec(textwrap.dedent(A.SOLUTIONS["excb_balancing"]).replace("z = scores.float()", "z = scores.data.float()"),
         namespace)
    assert A.check_excb_balance(namespace["excb_balance_scores"], strict=True).passed


# --- typical mistakes fail, and the report names the mistake ------------------------------------------------

MISTAKES = [
    ("nt_xent", "self-similarity kept", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            return F.cross_entropy(z @ z.t() / temperature, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        """, "j = i in the denominator"),
    ("nt_xent", "no normalisation", """
        def nt_xent(z1, z2, temperature):
            z = torch.cat([z1, z2])
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        """, "normalise"),
    ("nt_xent", "returns a float", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)])).item()
        """, "Python float"),
    ("nt_xent", "candidates detached", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.detach().t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        """, "the value is right but the gradient is not"),  # only the gradients tell
    ("sinkhorn", "exp without subtracting the max", """
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            q = torch.exp(scores / epsilon)
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return (q * B).detach()
        """, "overflowed"),
    *[("sinkhorn", f"the {which} s/ε subtracted (overflows once s/ε spans more than 88)", f"""
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.{reduction}())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "subtract the largest s/ε") for which, reduction in (("smallest", "min"), ("mean", "mean"))],
    ("sinkhorn", "rows not rescaled", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q
        """, "rows sum to 1/B"),
    ("sinkhorn", "columns normalised last", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (B * q.sum(1, keepdim=True))
                q = q / (K * q.sum(0, keepdim=True))
            return q * B
        """, "last normalisation must be the row step"),
    ("sinkhorn", "gradient flows", """
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "stop-gradient"),
    ("coke_dual_step", "no projection", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return duals + step_size * (min_fraction - counts.float() / batch_size)
        """, "projection is missing"),
    ("coke_dual_step", "sign flipped", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (counts.float() / batch_size - min_fraction)).clamp_min(0)
        """, "sign is flipped"),
    ("coke_dual_step", "a small positive floor instead of max(0, ·)", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts.float() / batch_size)).clamp_min(1e-4)
        """, "expected 0, got 0.0001"),  # every property holds: only the comparison with the reference tells
    ("coke_dual_step", "counts instead of fractions", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts.float())).clamp_min(0)
        """, "fractions, not counts"),
    ("coke_dual_step", "in place", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            duals += step_size * (min_fraction - counts.float() / batch_size)
            return duals.clamp_(min=0)
        """, "in place"),
    ("excb_balancing", "formulas swapped", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, (1 + z) / r - 1, 1 - (1 - z) * r)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1)
        """, "swapped"),
    ("coke_dual_step", "integer division", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts // batch_size)).clamp_min(0)
        """, "integer division"),
    ("excb_balancing", "no clamp", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost)
        """, "clamp"),
    ("excb_balancing", "clamp before the boost", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1).clamp(-1, 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost)
        """, "comes before the boost"),
    ("excb_balancing", "no boost", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            return torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1).clamp(-1, 1)
        """, "boost is missing"),
    ("excb_balancing", "boost before balancing", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            top = z.argmax(1, keepdim=True)
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1)
        """, "AFTER balancing"),
    ("excb_balancing", "a negative winner boosted upwards", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            best = z.gather(1, top)
            return z.scatter(1, top, best + best.abs() * (boost - 1)).clamp(-1, 1)
        """, "✗ edge case: a row whose best score is negative"),
    ("excb_balancing", "returns a tuple", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1), top
        """, "one torch.Tensor of that shape (not a tuple"),
    ("coke_dual_step", "float counts divided in place", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            counts = counts.float()
            counts /= batch_size
            return (duals + step_size * (min_fraction - counts)).clamp_min(0)
        """, "instead of changing `counts` (no `+=`, `/=`, `.clamp_()` or `x[...] = `; `.float()` of a float32"),
    ("sinkhorn", "renamed parameters", """
        @torch.no_grad()
        def sinkhorn(S, eps=0.05, n_iter=3):
            s = S.float() / eps
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(n_iter):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "keep the scaffold's `def` line as it was"),
    ("sinkhorn", "float16 targets for float16 scores", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.double() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return (q * B).to(scores.dtype)
        """, "return float32 targets"),
    ("nt_xent", "self-similarity set to 0 instead of excluded", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), 0.0)
            return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        """, "✗ matches the reference: B=8, d=16, τ=0.5, seed 0"),  # 2% off there: the tolerance is tight
    ("nt_xent", "a TypeError in the student's own line", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat(z1, z2), dim=1)
            return z.sum()
        """, "read the traceback"),  # raised inside their code: not the hint about the `def` line
    ("nt_xent", "value exact, gradient 2% short", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            loss = F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
            return loss.detach() + 0.98 * (loss - loss.detach())
        """, "the value is right but the gradient is not"),  # only the gradient check's tolerance tells
    ("sinkhorn", "one alternation too many", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations + 1):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "you did 4 alternations instead of `iterations` = 3"),
    ("coke_dual_step", "no step size", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + (min_fraction - counts.float() / batch_size)).clamp_min(0)
        """, "the step size η is missing"),
    ("coke_dual_step", "NaN for the empty clusters", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            new = (duals + step_size * (min_fraction - counts.float() / batch_size)).clamp_min(0)
            return new.masked_fill(counts == 0, float("nan"))
        """, "1 of 3 entries are NaN or infinite (expected all finite)"),  # K=3 with one empty cluster
    ("nt_xent", "reduction sum", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]), reduction="sum")
        """, "you summed the 2B anchors' losses"),
    ("nt_xent", "the two views' means added", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return (F.cross_entropy(logits[:n], torch.arange(n, 2 * n)) + F.cross_entropy(logits[n:], torch.arange(n)))
        """, "your loss is twice the reference"),
    ("nt_xent", "targets point at the anchor itself (masked)", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits, torch.arange(n).repeat(2))
        """, "the loss is infinite: a target points at a masked"),
    ("nt_xent", "targets point at the anchor itself (unmasked)", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            return F.cross_entropy(z @ z.t() / temperature, torch.arange(2 * z1.shape[0]))
        """, "each row's target is the row itself"),
    ("sinkhorn", "per-row max subtracted", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max(dim=1, keepdim=True).values)
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "you subtracted each row's own max"),
    ("nt_xent", "τ applied twice", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits / temperature, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        """, "τ is applied twice"),
    ("nt_xent", "normalised over dim 0", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=0)
            n = z1.shape[0]
            logits = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        """, "you normalised over dim 0"),
    ("nt_xent", "positive left out of the denominator", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            sim = z @ z.t() / temperature
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
            positive = sim[torch.arange(2 * n), partner]
            others = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            others[torch.arange(2 * n), partner] = float("-inf")
            return (torch.logsumexp(others, dim=1) - positive).mean()
        """, "you left the positive out of the denominator"),
    ("nt_xent", "partner masked instead of the diagonal", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            n = z1.shape[0]
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
            logits = (z @ z.t() / temperature).index_put((torch.arange(2 * n), partner), torch.tensor(float("-inf")))
            return F.cross_entropy(logits, partner)
        """, "Mask only the diagonal"),
    ("sinkhorn", "ε missing", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float()
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "ε is missing"),
    ("sinkhorn", "sum dimensions swapped", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(1, keepdim=True))
                q = q / (B * q.sum(0, keepdim=True))
            return q * B
        """, "the sums run over the wrong dimension"),
    ("sinkhorn", "float16 kept (max subtracted)", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return (q * B).float()
        """, "compute in float32 (scores.float()): in float16"),
    ("sinkhorn", "defaults changed", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.5, iterations=10):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max())
            q = q / q.sum()
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """, "keep the scaffold's defaults (epsilon=0.05, iterations=3) in the `def` line"),
    ("coke_dual_step", "divided by K", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts.float() / len(counts))).clamp_min(0)
        """, "not by the number of clusters K"),
    ("coke_dual_step", "min_fraction divided by K again", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction / len(counts) - counts.float() / batch_size)).clamp_min(0)
        """, "do not divide it by K again"),
    ("coke_dual_step", "the step clamped, not the dual", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return duals + (step_size * (min_fraction - counts.float() / batch_size)).clamp_min(0)
        """, "clamp the new dual, not the step"),
    ("coke_dual_step", "empty clusters skipped", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            new = (duals + step_size * (min_fraction - counts.float() / batch_size)).clamp_min(0)
            return torch.where(counts > 0, new, duals)
        """, "their duals must rise too"),
    ("excb_balancing", "clamp to [0, 1]", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(0, 1)
        """, "not [0, 1]"),
    ("excb_balancing", "boost added", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) + (boost - 1)).clamp(-1, 1)
        """, "it is not added"),
    ("excb_balancing", "ρ normalised again", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            r = r * r.numel() / r.sum()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1)
        """, "use it as given"),
    ("excb_balancing", "default boost changed", """
        def excb_balance_scores(scores, relative_sizes, boost=1.1):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1)
        """, "keep the scaffold's defaults (boost=1.01)"),
    ("excb_balancing", "boost by column (argmax over dim 0)", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(0, keepdim=True)
            return z.scatter(0, top, z.gather(0, top) * boost).clamp(-1, 1)
        """, "you boosted each column's largest score"),
]


EQUIVALENT = [  # (exercise, how, source): right answers written differently from the model answer
    ("coke_dual_step", "counts.sum() for B (the batch's counts add up to B)", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return torch.relu(duals + step_size * (min_fraction - counts / counts.sum()))
        """),
    ("sinkhorn", "log space", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            log_q = scores.float() / epsilon
            B, K = log_q.shape
            for _ in range(iterations):
                log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)
                log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
            return log_q.exp()
        """),
    ("sinkhorn", "each column's max subtracted (the column step cancels it)", """
        @torch.no_grad()
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            s = scores.float() / epsilon
            q = torch.exp(s - s.max(dim=0, keepdim=True).values)
            B, K = q.shape
            for _ in range(iterations):
                q = q / (K * q.sum(0, keepdim=True))
                q = q / (B * q.sum(1, keepdim=True))
            return q * B
        """),
]


@pytest.mark.parametrize("name, how, source", EQUIVALENT, ids=[f"{e[0]}:{e[1]}" for e in EQUIVALENT])
def test_equivalent_answers_pass(name, how, source):
    A.EXERCISES[name].check(student(name, source), strict=True)


@pytest.mark.parametrize("name, mistake, source, hint", MISTAKES, ids=[f"{m[0]}:{m[1]}" for m in MISTAKES])
def test_typical_mistake_fails_with_a_helpful_hint(name, mistake, source, hint):
    result = A.EXERCISES[name].check(student(name, source))
    assert not result.passed and not result
    report = result.report()
    assert hint in report, report
    assert report.startswith("✗") and "✓" in report  # some checks still pass: the report shows which
    with pytest.raises(AssertionError, match="✗"):
        A.EXERCISES[name].check(student(name, source), strict=True)


def mistake(what: str) -> str:
    (source,) = [m[2] for m in MISTAKES if m[1] == what]
    return source


PROPERTY_MISTAKES = [  # (exercise, mistake, source, the property check that must fail, words of its detail)
    ("sinkhorn", "iterations hard-coded to 3", mistake("one alternation too many").replace("iterations + 1", "3"),
     "property: rows sum to 1 and columns to ≈ B/K", "with iterations=100 every column should hold B/K"),
    ("coke_dual_step", "no projection", mistake("no projection"), "property: duals stay ≥ 0", "became"),
    ("coke_dual_step", "add-one smoothing of the counts", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - (counts.float() + 1) / batch_size)).clamp_min(0)
        """, "property: under-filled clusters' duals rise, over-filled ones fall", "its dual should not move"),
    ("coke_dual_step", "integer division", mistake("integer division"), "property: the rise is monotone in the "
     "shortfall", "the rises should strictly decrease"),  # all rises equal: not strictly decreasing
    ("excb_balancing", "ρ inverted (mean size over size)", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), 1 / relative_sizes.float()
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1)
        """, "property: small clusters' scores go up, big ones' go down (boost=1)", "should go UP"),
    ("excb_balancing", "no clamp", mistake("no clamp"), "property: results are clamped to [−1, 1]",
     "max 1.0095"),  # only 0.0095 past 1
    ("excb_balancing", "clamped above only", mistake("no clamp").replace(
        "z.gather(1, top) * boost)", "z.gather(1, top) * boost).clamp(max=1)"),
     "property: results are clamped to [−1, 1]", "got min -1.005"),  # −0.995 × 1.01
    ("excb_balancing", "jitter to break ties", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            z, r = scores.float(), relative_sizes.float()
            z = z + 1e-2 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
            z = torch.where(r < 1, 1 - (1 - z) * r, (1 + z) / r - 1)
            top = z.argmax(1, keepdim=True)
            return z.scatter(1, top, z.gather(1, top) * boost).clamp(-1, 1)
        """, "property: keeps the order of images within a cluster", "a higher cosine ended with a lower"),
]


@pytest.mark.parametrize("name, what, source, prop, detail", PROPERTY_MISTAKES,
                         ids=[f"{m[0]}:{m[1]}" for m in PROPERTY_MISTAKES])
def test_property_check_fails_a_function_that_breaks_its_property(name, what, source, prop, detail):
    # The README lists the properties each check tests: each one runs, and is strict enough to see a small breach.
    result = A.EXERCISES[name].check(student(name, source))
    (case,) = [c for c in result.cases if c.name == prop]
    assert not case.passed and detail in case.detail and case.hint, result.report()


@pytest.mark.parametrize("what, hint", [("no step size", "the step size η is missing"),
                                        ("sign flipped", "the sign is flipped"),
                                        ("no projection", "the projection is missing")])
def test_a_recognised_mistake_is_named_in_every_comparison_it_fails(what, hint):
    # not only in a case whose inputs happen to make another variant coincide with it
    result = A.check_coke_dual_step(student("coke_dual_step", mistake(what)))
    compared = [case for case in result.failures if case.name.startswith("matches the reference")]
    assert len(compared) >= 2 and all(case.hint.startswith(hint) for case in compared), result.report()


def test_report_explains_the_first_failures_in_full_and_a_repeated_hint_once():
    result = A.CheckResult("x", "Some exercise", [A.Case("fine", True)] + [
        A.Case(f"case {i}", False, f"detail {i}", "the same hint") for i in range(6)])
    report = result.report()
    assert report.splitlines()[0] == "✗ Some exercise: 6 of 7 checks failed"
    assert all(f"detail {i}" in report for i in range(result.max_details))  # the first four in full
    assert "detail 4" not in report and "detail 5" not in report and "  ✗ case 5" in report  # then by name only
    assert report.count("hint: the same hint") == 1 and report.count("hint: (as above)") == result.max_details - 1


def test_as_above_refers_only_to_the_hint_just_above():
    result = A.CheckResult("x", "Some exercise", [A.Case("a", False, "detail a", "hint one"),
                                                  A.Case("b", False, "detail b", "hint two"),
                                                  A.Case("c", False, "detail c", "hint one")])
    hints = [line.strip() for line in result.report().splitlines() if line.strip().startswith("hint:")]
    assert hints == ["hint: hint one", "hint: hint two", "hint: hint one"]  # not "(as above)": that is hint two


def test_a_hint_not_shown_yet_is_explained_after_the_first_failures_too():
    # Five comparisons share a generic hint; the property check after them names the actual mistake
    result = A.CheckResult("x", "Some exercise", [
        A.Case(f"case {i}", False, f"detail {i}", "the generic hint") for i in range(5)] + [
        A.Case("the property", False, "rows sum to 2", "normalise each row")])
    report = result.report()
    assert "detail 4" not in report  # the fifth repeat of a hint: by name only
    assert "rows sum to 2" in report and "hint: normalise each row" in report


def test_an_in_place_write_that_leaves_the_values_unchanged_still_counts():
    # scores are cosines, already in [-1, 1]: clamp_ changes no value but writes into the caller's tensor (an
    # expanded one raises) — the check must say so
    source = A.SOLUTIONS["excb_balancing"].replace("def excb_balance_scores(scores, relative_sizes, boost=1.01):",
                                                   "def excb_balance_scores(scores, relative_sizes, boost=1.01):\n"
                                                   "    scores.clamp_(-1, 1)")
    assert source != A.SOLUTIONS["excb_balancing"]
    result = A.check_excb_balance(student("excb_balancing", source))
    assert [case.name for case in result.failures] == ["leaves its inputs unchanged"]
    assert "`scores`" in result.failures[0].detail


def test_a_function_that_never_returns_gets_no_credit_for_leaving_its_inputs_alone():
    result = A.check_coke_dual_step(student("coke_dual_step", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts / batch_siz)).clamp(min=0)  # a typo: NameError
    """))
    assert [case.name for case in result.cases if case.passed] == ["your own code (it does not call the lab's reference)"]
    assert "NameError" in result.report()


def test_swapped_sinkhorn_marginals_are_named_in_every_case():
    source = """
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            with torch.no_grad():
                B, K = scores.shape
                Q = torch.exp((scores.float() - scores.float().max()) / epsilon)
                Q = Q / Q.sum()
                for _ in range(iterations):
                    Q = Q / Q.sum(dim=0, keepdim=True) / B  # columns get 1/B (should be 1/K)
                    Q = Q / Q.sum(dim=1, keepdim=True) / K  # rows get 1/K (should be 1/B)
                return Q * B
    """
    result = A.check_sinkhorn(student("sinkhorn", source))
    compared = [case for case in result.failures if case.name.startswith("matches the reference")]
    assert len(compared) == 5 and all(case.hint.startswith("the marginals are swapped") for case in compared)


def test_failure_report_shows_input_expected_and_got():
    (source,) = [m[2] for m in MISTAKES if m[1] == "sign flipped"]
    result = A.check_coke_dual_step(student("coke_dual_step", source))
    failed = result.failures[0]
    assert "input:" in failed.detail and "expected" in failed.detail and "got" in failed.detail
    assert failed.hint


@pytest.mark.parametrize("name", sorted(A.EXERCISES))
def test_scaffold_reports_not_implemented(name):
    def scaffold(*args, **kwargs):
        raise NotImplementedError

    result = A.EXERCISES[name].check(scaffold)
    assert not result.passed
    assert [c.name for c in result.cases] == ["not implemented yet"]
    with pytest.raises(AssertionError, match="not implemented"):
        A.EXERCISES[name].check(scaffold, strict=True)


def test_crash_in_student_code_points_at_the_line():
    fn = student("coke_dual_step", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            shares = counts / batch_size
            return duals + step_size * (min_fraction - shares[None, None, :].squeeze(5))
        """)
    result = A.check_coke_dual_step(fn)
    assert not result.passed
    assert "IndexError" in result.report() and "line 4" in result.report()


WRONG_SHAPES = [  # (exercise, what the student returned, source): each used to crash the check itself
    ("nt_xent", "one loss per anchor", """
        def nt_xent(z1, z2, temperature):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            logits = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
            b = z1.shape[0]
            partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
            return F.cross_entropy(logits, partner, reduction="none")
        """),
    ("sinkhorn", "a flattened matrix", """
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            return torch.softmax(scores / epsilon, dim=1).flatten()
        """),
    ("coke_dual_step", "a (1, K) row", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts / batch_size)).clamp_min(0)[None, :]
        """),
    ("coke_dual_step", "a 0-dim tensor", """
        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            return (duals + step_size * (min_fraction - counts / batch_size)).clamp_min(0).sum()
        """),
    ("excb_balancing", "the transpose", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            return scores.t().clone()
        """),
]


@pytest.mark.parametrize("name, returned, source", WRONG_SHAPES, ids=[f"{w[0]}:{w[1]}" for w in WRONG_SHAPES])
def test_wrong_shape_is_reported_in_every_case_not_raised(name, returned, source):
    result = A.EXERCISES[name].check(student(name, source))  # used to raise out of the property checks
    assert not result.passed
    said = [case for case in result.failures if "shape" in case.detail or "returned a" in case.detail]
    assert len(said) >= len(result.cases) - 3  # besides "your own code", "leaves its inputs unchanged", "no gradient"


def test_an_output_the_check_cannot_read_fails_the_case_instead_of_raising():
    # right shape, but a 'meta' tensor has no values: the check's own arithmetic on it fails
    fn = student("excb_balancing", """
        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            return torch.empty(scores.shape, device="meta")
        """)
    result = A.check_excb_balance(fn)
    assert not result.passed and len(result.failures) >= len(result.cases) - 2  # not "your own code", "inputs unchanged"
    assert "the check could not use what your function returned" in result.report()


def test_not_a_function():
    result = A.check_sinkhorn(A.SOLUTIONS["sinkhorn"])  # the source text, not the function
    assert not result.passed and "no parentheses" in result.report()


def test_result_renders_in_a_notebook():
    ok = A.check_excb_balance(model_answer("excb_balancing"))
    assert "✓" in ok._repr_html_() and "all" in repr(ok)
    (source,) = [m[2] for m in MISTAKES if m[1] == "no clamp"]
    bad = A.check_excb_balance(student("excb_balancing", source))
    html = bad._repr_html_()
    assert "✗" in html and "hint" in html and "<script" not in html


# --- the student notebooks ---------------------------------------------------------------------------------

def test_every_exercise_has_a_student_notebook_and_vice_versa():
    files = {p.name for p in ASSIGNMENTS.glob("*.ipynb")}
    assert {ex.notebook for ex in A.EXERCISES.values()} <= files
    for path in ASSIGNMENTS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["selfsup_lab"]["exercise"] in A.EXERCISES, path.name


@pytest.mark.parametrize("name", sorted(A.EXERCISES))
def test_notebook_is_the_student_version(name):
    ex = A.EXERCISES[name]
    nb = nbformat.read(ASSIGNMENTS / ex.notebook, as_version=4)
    tagged = lambda tag: [c for c in nb.cells if tag in c.metadata.get("tags", [])]  # noqa: E731
    (solution,) = original = tagged(A.SOLUTION_TAG)
    assert f"def {ex.function}(" in solution.source and "raise NotImplementedError" in solution.source
    assert tagged(A.SETUP_TAG)
    (check,) = tagged(A.CHECK_TAG)
    assert f"{ex.check.__name__}({ex.function})" in check.source
    assert any("$$" in c.source for c in nb.cells if c.cell_type == "markdown"), "the equation is missing"
    assert "raise NotImplementedError" not in A.SOLUTIONS[name]
    filled = A.fill_solution(nb)
    (solution,) = [c for c in filled.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    assert solution.source == A.SOLUTIONS[name].rstrip("\n")
    assert "raise NotImplementedError" in original[0].source  # fill_solution works on a copy


# --- grading a notebook: in-process, the CLI, and python -m ---------------------------------------------------

@pytest.fixture
def solved(tmp_path):
    """name -> path of a copy of the student notebook with the model answer filled in."""
    def make(name):
        nb = A.fill_solution(nbformat.read(ASSIGNMENTS / A.EXERCISES[name].notebook, as_version=4))
        path = tmp_path / A.EXERCISES[name].notebook
        nbformat.write(nb, str(path))
        return path
    return make


@pytest.mark.parametrize("name", sorted(A.EXERCISES))
def test_grade_notebook(name, solved):
    assert A.grade_notebook(solved(name), strict=True).passed
    student_version = A.grade_notebook(ASSIGNMENTS / A.EXERCISES[name].notebook)
    assert not student_version.passed and "not implemented" in student_version.report()


def test_one_submission_cannot_change_the_grades_of_those_after_it(solved, tmp_path):
    # A solution cell that switches gradients off for the process, or replaces the lab's reference with its own
    # (wrong) function, must neither pass itself nor fail the next, correct, submission.
    nb = nbformat.read(solved("coke_dual_step"), as_version=4)
    (solution,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    solution.source = textwrap.dedent("""
        import torch
        import selfsup_lab.balancing

        torch.set_grad_enabled(False)  # "targets carry no gradient"
        torch.set_default_dtype(torch.float64)

        def coke_dual_step(duals, counts, batch_size, gamma, eta):
            return duals - eta * (gamma - counts / batch_size)  # sign flipped, no max(0, ·)

        selfsup_lab.balancing.coke_dual_step = coke_dual_step  # "matches the reference"
    """)
    nbformat.write(nb, str(tmp_path / "patching.ipynb"))
    reference = balancing.coke_dual_step
    patched = A.grade_notebook(tmp_path / "patching.ipynb")
    compared = [case for case in patched.cases if case.name.startswith("matches the reference")]
    assert compared and not any(case.passed for case in compared)  # graded against the real reference
    assert balancing.coke_dual_step is reference
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32
    for name in ("coke_dual_step", "nt_xent"):  # gradients checked after it still work
        assert A.grade_notebook(solved(name)).passed


def test_grading_survives_lost_tags_magics_and_finds_crashes(solved, tmp_path):
    path = solved("sinkhorn")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("tags", None)  # students copy cells around and lose the tags
    nb.cells[0:0] = [nbformat.v4.new_code_cell("%matplotlib inline\n!echo hi")]
    nbformat.write(nb, str(path))
    assert A.grade_notebook(path).passed

    nb = nbformat.read(solved("sinkhorn"), as_version=4)
    (setup,) = [c for c in nb.cells if A.SETUP_TAG in c.metadata.get("tags", [])]
    setup.source += "\nimport no_such_module_here"
    nbformat.write(nb, str(tmp_path / "broken.ipynb"))
    result = A.grade_notebook(tmp_path / "broken.ipynb")
    assert not result.passed and "ModuleNotFoundError" in result.report()


def test_grading_without_tags_runs_the_import_cells_the_solution_relies_on(solved):
    path = solved("nt_xent")
    nb = nbformat.read(path, as_version=4)
    (solution,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    solution.source = "\n".join(line for line in solution.source.splitlines() if not line.startswith("import"))
    assert "import" not in solution.source and "F.normalize" in solution.source  # needs the setup cell's F
    for cell in nb.cells:
        cell.metadata.pop("tags", None)
    nbformat.write(nb, str(path))
    assert A.grade_notebook(path).passed  # not a NameError for F


def test_grading_quotes_the_failing_line_of_the_cell_and_keeps_prints_out(solved, tmp_path, capsys):
    nb = nbformat.read(solved("coke_dual_step"), as_version=4)
    (cell,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    index = nb.cells.index(cell)
    cell.source = ("def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):\n"
                   "    shares = counts / batch_size\n"
                   "    return duals + step_size * shares[None, None, :].squeeze(5)\n"
                   "print('debugging output')")
    nbformat.write(nb, str(tmp_path / "crash.ipynb"))
    capsys.readouterr()
    report = A.grade_notebook(tmp_path / "crash.ipynb").report()
    assert f"raised at line 3 of crash.ipynb [cell {index + 1}]: return duals + step_size" in report
    assert "debugging output" not in capsys.readouterr().out


def test_grading_names_a_cell_that_fails_to_run_and_how_cells_are_counted(solved, tmp_path):
    nb = nbformat.read(solved("excb_balancing"), as_version=4)
    (cell,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    index = nb.cells.index(cell)
    assert any(c.cell_type == "markdown" for c in nb.cells[:index])  # the count includes text cells
    cell.source += "\ntoy_scores = torch.ones(2, 3) @ torch.ones(2, 3)"  # a trial run left in the cell, and wrong
    nbformat.write(nb, str(tmp_path / "toplevel.ipynb"))
    result = A.grade_notebook(tmp_path / "toplevel.ipynb")
    (case,) = result.cases
    assert case.name == f"cell {index + 1} of the notebook runs (counting every cell from the top, text cells too)"
    assert not case.passed and "toy_scores = torch.ones(2, 3) @" in case.detail and "top to bottom" in case.hint


def test_grading_says_that_only_the_tagged_cells_run(solved, tmp_path):
    nb = nbformat.read(solved("nt_xent"), as_version=4)
    (solution,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    index = nb.cells.index(solution)
    nb.cells.insert(index, nbformat.v4.new_code_cell("def normalised(z):\n    return F.normalize(z, dim=1)"))
    solution.source = solution.source.replace("z = F.normalize(torch.cat([z1, z2]), dim=1)",
                                              "z = normalised(torch.cat([z1, z2]))")
    assert "normalised(" in solution.source
    nbformat.write(nb, str(tmp_path / "helper.ipynb"))  # runs in Jupyter; the helper's cell has no tag
    result = A.grade_notebook(tmp_path / "helper.ipynb")
    assert not result.passed and "NameError: name 'normalised' is not defined" in result.report()
    assert "`normalised` comes from a cell the grader does not run: the grader runs only the cells tagged " \
           "'setup' and 'solution' (here cells " in result.report()

    solution.source = solution.source.replace("normalised(", "F.normalise(")  # a typo: not about the cells
    nb.cells.pop(index)
    nbformat.write(nb, str(tmp_path / "typo.ipynb"))
    assert "AttributeError" in A.grade_notebook(tmp_path / "typo.ipynb").report()
    solution.source = solution.source.replace("F.normalise(", "normalize(")
    nbformat.write(nb, str(tmp_path / "typo.ipynb"))
    report = A.grade_notebook(tmp_path / "typo.ipynb").report()
    assert "NameError: name 'normalize' is not defined" in report and "grader does not run" not in report


def test_grading_refuses_two_graded_definitions_and_names_the_notebook_when_strict(solved, tmp_path):
    nb = nbformat.read(ASSIGNMENTS / "sinkhorn.ipynb", as_version=4)
    (scaffold,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    index = nb.cells.index(scaffold)
    written = nbformat.from_dict(copy.deepcopy(dict(scaffold)))  # copy/paste keeps the cell's tags
    written.source, written.id = A.SOLUTIONS["sinkhorn"], "pasted"
    nb.cells.insert(index, written)  # the student's answer above, the untouched scaffold below
    nbformat.write(nb, str(tmp_path / "copied.ipynb"))
    result = A.grade_notebook(tmp_path / "copied.ipynb")
    assert [c.name for c in result.cases] == ["one graded cell defines `sinkhorn`"]
    assert (f"cells {index + 1}, {index + 2} (counting every cell from the top, text cells too) each define it, "
            "and the grader runs every graded cell") in result.report()
    with pytest.raises(AssertionError, match=f"^\n{tmp_path / 'copied.ipynb'}\n✗ Sinkhorn-Knopp"):
        A.grade_notebook(tmp_path / "copied.ipynb", strict=True)


def test_grading_times_out_on_an_endless_loop(tmp_path):
    nb = nbformat.read(ASSIGNMENTS / "coke_dual_step.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    cell.source = "def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):\n    while True:\n        pass"
    nbformat.write(nb, str(tmp_path / "loop.ipynb"))
    result = A.grade_notebook(tmp_path / "loop.ipynb", timeout=1)
    assert not result.passed and "finishes within 1 s" in result.report()
    # under pytest (the instructor's grade_submissions.py) the failure is the report alone, no chained traceback
    with pytest.raises(AssertionError, match="finishes within 1 s") as failure:
        A.grade_notebook(tmp_path / "loop.ipynb", timeout=1, strict=True)
    assert failure.value.__suppress_context__ and failure.value.__cause__ is None
    (tmp_path / "truncated.ipynb").write_text('{"cells": [')
    with pytest.raises(UserError, match="truncated.ipynb: not a readable notebook") as unreadable:
        A.grade_notebook(tmp_path / "truncated.ipynb")
    assert unreadable.value.__suppress_context__


def test_cli_check(solved, capsys, tmp_path):
    assert A.main(["check", str(solved("excb_balancing"))]) == 0
    assert "✓ ExCB balancing: all" in capsys.readouterr().out
    assert A.main(["check", "--quiet", str(ASSIGNMENTS / "nt_xent.ipynb"), str(solved("coke_dual_step"))]) == 1
    out = capsys.readouterr().out
    assert "nt_xent.ipynb: ✗" in out and "coke_dual_step.ipynb: ✓" in out
    assert A.main(["check", str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err
    out_path = tmp_path / "solved.ipynb"
    assert A.main(["solve", str(ASSIGNMENTS / "sinkhorn.ipynb"), "-o", str(out_path)]) == 0
    assert A.main(["check", str(out_path)]) == 0
    assert A.main(["solve", str(ASSIGNMENTS / "sinkhorn.ipynb"), "-o", str(tmp_path / "no" / "x.ipynb")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {tmp_path / 'no' / 'x.ipynb'} (")
    # the report heads the same whether the check ran or the notebook never got that far
    assert A.main(["check", "--quiet", str(ASSIGNMENTS / "excb_balancing.ipynb")]) == 1
    assert "✗ ExCB balancing: not implemented yet" in capsys.readouterr().out


def test_cli_check_csv_has_a_row_per_notebook(solved, tmp_path, capsys):
    import csv

    chatty = solved("coke_dual_step")
    nb = nbformat.read(chatty, as_version=4)
    (solution,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    solution.source = solution.source.replace("    shortfall =", "    print('debugging', duals.shape)\n    shortfall =")
    assert "print(" in solution.source
    nbformat.write(nb, str(chatty))  # what the function prints must not land in the grade sheet
    notebooks = [chatty, ASSIGNMENTS / "nt_xent.ipynb", tmp_path / "missing.ipynb"]
    assert A.main(["check", "--csv", "--jobs", "2", *map(str, notebooks)]) == 2
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [row["notebook"] for row in rows] == list(map(str, notebooks))  # in the order given, whatever finished first
    assert rows[0]["exercise"] == "coke_dual_step" and rows[0]["passed"] == rows[0]["checks"] != "0"
    assert (rows[1]["passed"], rows[1]["checks"]) == ("0", "1") and "not implemented" in rows[1]["summary"]
    assert rows[2]["summary"].startswith("not graded:") and "no such notebook" in rows[2]["summary"]


def test_cli_check_csv_counts_the_checks_a_partly_right_answer_passes(solved, capsys):
    import csv

    path = solved("coke_dual_step")
    nb = nbformat.read(path, as_version=4)
    (solution,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    solution.source = textwrap.dedent(mistake("sign flipped"))
    nbformat.write(nb, str(path))
    result = A.grade_notebook(path)
    assert A.main(["check", "--csv", str(path)]) == 1
    (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
    passed = sum(case.passed for case in result.cases)
    assert 0 < passed < len(result.cases) - 1  # several checks fail, several pass
    assert (row["passed"], row["checks"]) == (str(passed), str(len(result.cases)))


def test_cli_exit_status_2_for_an_ungradable_notebook_whatever_the_order(tmp_path, capsys):
    missing, failing = str(tmp_path / "missing.ipynb"), str(ASSIGNMENTS / "nt_xent.ipynb")  # the scaffold fails
    assert A.main(["check", "--quiet", missing, failing]) == 2
    assert A.main(["check", "--quiet", failing, missing]) == 2
    capsys.readouterr()


def test_cli_grades_every_notebook_even_after_a_broken_one(solved, tmp_path, capsys):
    nb = nbformat.read(ASSIGNMENTS / "nt_xent.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    cell.source = textwrap.dedent(WRONG_SHAPES[0][2])
    nbformat.write(nb, str(tmp_path / "per_anchor.ipynb"))
    assert A.main(["check", "--quiet", "--jobs", "2", str(tmp_path / "per_anchor.ipynb"), str(solved("sinkhorn"))]) == 1
    out = capsys.readouterr().out
    assert "per_anchor.ipynb: ✗ NT-Xent loss" in out and "sinkhorn.ipynb: ✓" in out


def _with_solution_cell(tmp_path, exercise: str, name: str, edit) -> str:
    """A copy of the exercise's notebook whose solution cell is edit(model answer), written as NAME.ipynb."""
    nb = A.fill_solution(nbformat.read(ASSIGNMENTS / A.EXERCISES[exercise].notebook, as_version=4))
    (cell,) = [c for c in nb.cells if A.SOLUTION_TAG in c.metadata.get("tags", [])]
    cell.source = edit(cell.source)
    nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
    return str(tmp_path / f"{name}.ipynb")


def test_exit_in_a_cell_or_in_the_function_fails_that_check_instead_of_ending_the_grading(tmp_path):
    in_cell = _with_solution_cell(tmp_path, "coke_dual_step", "exit_in_cell", lambda src: src + "\nexit()")
    (case,) = A.grade_notebook(in_cell).cases
    assert not case.passed and case.detail.startswith("SystemExit") and "remove the exit() call" in case.hint
    in_function = _with_solution_cell(tmp_path, "coke_dual_step", "exit_in_function", lambda src: src.replace(
        "def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):",
        "def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):\n    import sys\n    sys.exit(1)"))
    result = A.grade_notebook(in_function)
    assert not result.passed and "SystemExit: 1" in result.report()
    assert "leaves its inputs unchanged" in [c.name for c in result.failures]  # it never returned


def test_cli_grades_each_notebook_in_its_own_process(tmp_path, capsys):
    import csv

    wrong = _with_solution_cell(tmp_path, "coke_dual_step", "wrong", lambda src: textwrap.dedent(mistake("sign flipped")))
    alone = A.grade_notebook(wrong, isolate=True)
    passed_alone = sum(c.passed for c in alone.cases)
    assert 0 < passed_alone < len(alone.cases) - 1
    patcher = _with_solution_cell(tmp_path, "coke_dual_step", "patcher",  # right, then patches torch for everyone
                                  lambda src: src + "\nimport torch\ntorch.allclose = lambda *a, **k: True")
    crasher = _with_solution_cell(tmp_path, "coke_dual_step", "crasher", lambda src: "import os\nos._exit(3)\n" + src)
    assert A.main(["check", "--csv", patcher, crasher, wrong]) == 1
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["notebook"] for r in rows] == [patcher, crasher, wrong]
    assert rows[0]["passed"] == rows[0]["checks"]
    assert (rows[1]["passed"], rows[1]["checks"]) == ("0", "1") and "lets the grader finish" in rows[1]["summary"]
    assert rows[2]["passed"] == str(passed_alone)  # the patch did not follow it into the next notebook
    crashed = A.grade_notebook(crasher, isolate=True)
    assert "ended (exit code 3) before the checks reported" in crashed.report()


def test_a_fresh_grading_process_that_outlives_its_time_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "_PROCESS_MARGIN", 0)  # 1 s in all: less than the fresh process needs to start
    right = _with_solution_cell(tmp_path, "sinkhorn", "right", str)
    result = A.grade_notebook(right, timeout=1, isolate=True)
    assert [c.name for c in result.cases] == ["finishes within 1 s"] and not result.passed
    monkeypatch.undo()
    assert A.grade_notebook(right, timeout=1, isolate=True).passed  # the same notebook with the usual margin


def test_cli_refuses_a_jobs_count_below_one_and_a_timeout_that_is_not_positive(capsys):
    assert A.main(["check", "--jobs", "0", str(ASSIGNMENTS / "sinkhorn.ipynb")]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert A.main(["check", "--timeout", "-5", str(ASSIGNMENTS / "sinkhorn.ipynb")]) == 2
    assert "--timeout must be a positive number of seconds, got -5" in capsys.readouterr().err


def test_cli_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "grade_notebook", interrupted)
    assert A.main(["check", str(ASSIGNMENTS / "sinkhorn.ipynb")]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "selfsup_lab.assignments", "list"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for ex in A.EXERCISES.values():
        assert ex.name in done.stdout and ex.notebook in done.stdout
