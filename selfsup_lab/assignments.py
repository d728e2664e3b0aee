"""Auto-checks for the course exercises in notebooks/assignments/.

Four exercises, one per idea the course builds on. In each the student writes one short function; the
checker runs it next to the lab's own reference on several random inputs (shapes, seeds, edge cases) and
on the property that matters — the reason the function exists:

    exercise          student writes                                          reference (in the package)
    nt_xent           nt_xent(z1, z2, temperature) -> loss                      methods.simclr.nt_xent_loss
    sinkhorn          sinkhorn(scores, epsilon=0.05, iterations=3) -> q          balancing.sinkhorn
    coke_dual_step    coke_dual_step(duals, counts, batch_size,                  balancing.coke_dual_step
                                     min_fraction, step_size) -> duals
    excb_balancing    excb_balance_scores(scores, relative_sizes, boost=1.01)    balancing.excb_balance_scores

In a notebook (the last line of the cell displays a ✓/✗ report):

    from selfsup_lab.assignments import check_sinkhorn
    check_sinkhorn(sinkhorn)                 # strict=True raises AssertionError instead

Outside Jupyter, grade a submitted notebook (runs its cells tagged `setup` and `solution`, then the check, in
a Python process of its own; exit status 0 = all checks pass, 1 = some failed, 2 = the notebook could not be
graded):

    python -m selfsup_lab.assignments check submissions/alice/sinkhorn.ipynb
    python -m selfsup_lab.assignments check --csv submissions/*/*.ipynb > grades.csv   # checks passed per notebook
    python -m selfsup_lab.assignments list                  # the exercises
    python -m selfsup_lab.assignments solve NB.ipynb -o OUT.ipynb   # instructor: fill in the model answer

With pytest (one test per submitted notebook; the AssertionError message is the report):

    # grade_submissions.py
    import glob, pytest
    from selfsup_lab.assignments import grade_notebook

    @pytest.mark.parametrize("notebook", sorted(glob.glob("submissions/*/*.ipynb")))
    def test_submission(notebook):
        grade_notebook(notebook, strict=True, isolate=True)   # each in a fresh Python process

The model answers are kept here as source text (`SOLUTIONS[name]`), not as importable functions, so that
`from selfsup_lab.assignments import *` hands a student nothing to copy (the package's references can be
imported, of course: every check fails a function that uses them); the notebooks are committed as the student
version and the test-suite fills the model answer in (`fill_solution`).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import csv
import dis
import functools
import html
import inspect
import linecache
import math
import numbers
import os
import signal
import sys
import textwrap
import threading
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "check_nt_xent", "check_sinkhorn", "check_coke_dual_step", "check_excb_balance",
    "CheckResult", "Case", "EXERCISES", "SOLUTIONS", "grade_notebook", "fill_solution", "main",
]

SOLUTION_TAG = "solution"  # the cell the student edits
SETUP_TAG = "setup"        # imports the solution cell relies on; run before it when grading
CHECK_TAG = "check"        # the auto-check cell (not run by the grader: it runs the check itself)


# --- the report --------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One check: a name saying what was tried and, on failure, what went wrong and what to try."""
    name: str
    passed: bool
    detail: str = ""
    hint: str = ""


@dataclass
class CheckResult:
    """The outcome of one exercise's checks. Truthy when everything passed; shows itself as a ✓/✗ report."""
    exercise: str
    title: str
    cases: list[Case] = field(default_factory=list)
    max_details: int = 4  # failures explained in full; further failures are listed by name only

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.passed]

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        n, bad = len(self.cases), len(self.failures)
        if self.passed:
            return f"✓ {self.title}: all {n} checks passed"
        if n == 1:
            return f"✗ {self.title}: {self.cases[0].name}"
        return f"✗ {self.title}: {bad} of {n} checks failed"

    def report(self) -> str:
        lines = [self.summary()]
        for case, hint in self._explained():
            lines.append(f"  {'✓' if case.passed else '✗'} {case.name}")
            for text in (case.detail, f"hint: {hint}" if hint else ""):
                if text:
                    lines.extend("      " + line for line in text.splitlines())
        return "\n".join(lines)

    def _explained(self):
        """(case, hint to show) pairs: the first `max_details` failures in full, the hint of the failure just above
        as "(as above)"; a later failure whose hint has not been shown yet is explained too (it may be the one that
        names the mistake)."""
        shown_hints, explained, last_hint = set(), 0, None
        for case in self.cases:
            new_hint = bool(case.hint) and case.hint not in shown_hints
            if case.passed or (explained >= self.max_details and not new_hint):
                yield (case if case.passed else Case(case.name, False)), ""
                continue
            explained += 1
            hint = "(as above)" if case.hint and case.hint == last_hint else case.hint  # else said in full again
            shown_hints.add(case.hint)
            last_hint = case.hint
            yield case, hint

    __str__ = report

    def __repr__(self) -> str:
        return self.report()

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        rows = []
        for case, hint in self._explained():
            mark, c = ("✓", "#1a7f37") if case.passed else ("✗", "#cf222e")
            body = ""
            if case.detail:
                body += f"<pre style='margin:2px 0 2px 1.6em;white-space:pre-wrap'>{html.escape(case.detail)}</pre>"
            if hint:
                body += f"<div style='margin:0 0 4px 1.6em'><b>hint:</b> {html.escape(hint)}</div>"
            rows.append(f"<div><span style='color:{c};font-weight:bold'>{mark}</span> {html.escape(case.name)}</div>{body}")
        return (f"<div class='selfsup-check' style='font-family:var(--jp-code-font-family,monospace);font-size:90%'>"
                f"<div style='color:{colour};font-weight:bold;margin-bottom:4px'>{html.escape(self.summary())}</div>"
                + "".join(rows) + "</div>")

    def raise_if_failed(self, source: str = "") -> "CheckResult":
        """Raise AssertionError with the report (headed by `source`, e.g. the notebook graded) unless all passed."""
        if not self.passed:
            # from None: the report is the whole story (not "during handling of" a timeout or a student's error)
            raise AssertionError("\n" + (f"{source}\n" if source else "") + self.report()) from None
        return self


# --- running the student's function --------------------------------------------------------------------------

class _NotImplemented(Exception):
    pass


class _StudentError(Exception):
    """The student's function raised: carries a readable message pointing at their line, and a hint."""

    def __init__(self, message: str, hint: str = "run your function on a small input in a cell of its own and "
                                                 "read the traceback"):
        super().__init__(message)
        self.hint = hint


SIGNATURE_HINT = ("keep the scaffold's `def` line as it was (the names and order of its parameters): the check "
                  "calls your function with those names, e.g. `epsilon=...`")


def _student_error(exc: Exception) -> _StudentError:
    """What the student's function raised, as a report line; a TypeError raised by the call itself (no line of
    the student's code in the traceback) means the function does not take the scaffold's arguments."""
    called_only = not _student_frames(exc)
    return _StudentError(_describe_exception(exc), SIGNATURE_HINT) if isinstance(exc, TypeError) and called_only \
        else _StudentError(_describe_exception(exc))


def _student_frames(exc: BaseException) -> list:
    """The traceback's frames in the student's code (not this checker's, not torch's or another library's)."""
    here = Path(__file__).resolve().as_posix()
    return [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().as_posix() != here
            and "site-packages" not in f.filename and "/torch/" not in f.filename]


def _describe_exception(exc: BaseException) -> str:
    own = _student_frames(exc)
    where = ""
    if own:
        f = own[-1]
        place = f.filename if "[cell " in f.filename else "your code"  # the grader names the notebook's cell
        where = f"\n  raised at line {f.lineno} of {place}" + (f": {f.line.strip()}" if f.line else "")
    return f"{type(exc).__name__}: {exc}{where}"


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    return x


class _Runner:
    """Calls the student's function on copies of the inputs and notices in-place modification."""

    def __init__(self, fn: Callable, unpack_first: bool = False):
        self.fn = fn
        self.unpack_first = unpack_first
        self.mutated: list[str] = []
        self.returned = 0  # calls that came back without an exception
        try:
            self.names = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            self.names = []

    def __call__(self, *args, **kwargs):
        call_args = [_clone(a) for a in args]
        call_kwargs = {k: _clone(v) for k, v in kwargs.items()}
        before = [_clone(a) for a in call_args]
        # torch counts every in-place write to a tensor: one that happens to leave the values as they were (a
        # clamp_ of cosines already in [-1, 1]) still breaks a caller's expanded or shared tensor
        versions = [a._version if isinstance(a, torch.Tensor) else None for a in call_args]
        try:
            out = self.fn(*call_args, **call_kwargs)
        except NotImplementedError as exc:
            raise _NotImplemented() from exc
        except (Exception, SystemExit) as exc:  # the student's bug (exit() too), reported as such
            raise _student_error(exc) from exc
        self.returned += 1
        for i, (a, b, version) in enumerate(zip(call_args, before, versions)):
            if isinstance(a, torch.Tensor) and (a._version != version or a.shape != b.shape
                                                or not torch.equal(a.detach(), b)):
                self.mutated.append(f"`{self.names[i]}`" if i < len(self.names) else f"argument {i + 1}")
        if self.unpack_first and isinstance(out, (tuple, list)) and out:
            out = out[0]
        return out


def _fmt(t: torch.Tensor) -> str:
    t = t.detach().float().cpu()
    if t.dim() == 0:
        return f"{t.item():.6g}"
    if t.numel() <= 8:
        return "[" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + "]" + (
            f" (shape {tuple(t.shape)})" if t.dim() > 1 else "")
    return f"tensor of shape {tuple(t.shape)}"


def _as_tensor_problem(got) -> str | None:
    if isinstance(got, torch.Tensor):
        return None
    if got is None:
        return "your function returned None — did you forget the `return`?"
    kind = type(got).__name__
    if kind == "ndarray":
        return "your function returned a numpy array; return a torch.Tensor (stay in torch: no .numpy())"
    if isinstance(got, float):
        return "your function returned a Python float (`.item()`?); return the torch.Tensor itself"
    return f"your function returned a {kind}; expected a torch.Tensor"


def _output_problem(got, shape: tuple) -> str | None:
    """None when `got` is a tensor of this shape; otherwise what is wrong with it. Checked before a property is
    tested on the output, so a wrong shape is reported as such instead of failing inside the check."""
    problem = _as_tensor_problem(got)
    if problem is None and tuple(got.shape) != tuple(shape):
        problem = f"shape: expected {tuple(shape)}, got {tuple(got.shape)}"
    return problem


def _first_output_problem(outputs, shape: tuple) -> str | None:
    """What is wrong with the first of several outputs that is not a tensor of this shape (None: all are)."""
    return next((problem for got in outputs if (problem := _output_problem(got, shape))), None)


def _mismatch(got, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    """None when `got` matches `expected`; otherwise a sentence saying how it differs."""
    problem = _output_problem(got, expected.shape)
    if problem:
        return problem
    g, e = got.detach().float().cpu(), expected.detach().float().cpu()
    bad = ~torch.isfinite(g)
    if bad.any() and torch.isfinite(e).all():
        shown = f"\nexpected {_fmt(e)}\ngot      {_fmt(g)}" if g.numel() <= 8 else ""
        return f"{int(bad.sum())} of {g.numel()} entries are NaN or infinite (expected all finite){shown}"
    if torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True):
        return None
    diff = (g - e).abs().nan_to_num(float("inf"))
    worst = int(diff.flatten().argmax())
    where = ""
    if g.dim() > 0:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), g.shape))
        where = f"\nlargest difference at index {list(index)}: expected {e.flatten()[worst].item():.6g}, " \
                f"got {g.flatten()[worst].item():.6g}"
    if g.numel() > 8:  # too big to print: the worst entry says more
        return f"{tuple(g.shape)} tensor differs from the reference{where}"
    return f"expected {_fmt(e)}\ngot      {_fmt(g)}{where}"


class _Check:
    """Collects the cases of one exercise; a student exception fails only the case it happened in."""

    def __init__(self, exercise: str, student_fn: Callable, unpack_first: bool = False):
        self.result = CheckResult(exercise, EXERCISES[exercise].report_title)
        self.run = _Runner(student_fn, unpack_first)
        self.stopped = False
        if not callable(student_fn):
            self.result.cases.append(Case("the argument is a function", False,
                                          f"got {type(student_fn).__name__}",
                                          "pass the function itself, e.g. check_x(my_function) — no parentheses"))
            self.stopped = True

    def case(self, name: str, body: Callable[[], tuple[str, str] | str | None]) -> None:
        """Run one case. `body` returns None when it passes, else a detail string or (detail, hint)."""
        if self.stopped:
            return
        try:
            outcome = body()
        except _NotImplemented:
            self.result.cases = [Case("not implemented yet", False,
                                      "your function still raises NotImplementedError",
                                      "replace the `raise NotImplementedError` line with your implementation")]
            self.stopped = True
            return
        except _StudentError as exc:
            outcome = (str(exc), exc.hint)
        except Exception as exc:  # the check itself tripped over the output (an odd dtype, say): fail this case only
            outcome = (f"the check could not use what your function returned ({type(exc).__name__}: {exc})",
                       "compare the type, shape and dtype of your result with the docstring's `Returns`")
        if outcome is None:
            self.result.cases.append(Case(name, True))
        elif isinstance(outcome, tuple):
            self.result.cases.append(Case(name, False, outcome[0], outcome[1]))
        else:
            self.result.cases.append(Case(name, False, outcome))

    def finish(self, strict: bool, why_inputs_matter: str) -> CheckResult:
        borrowed = None if self.stopped else _lab_code_in(self.run.fn)
        if borrowed:  # every other check would pass on the reference's own answers: they count for nothing
            self.result.cases = [Case("your own code (it does not call the lab's reference)", False,
                                      f"your function uses {borrowed} from the lab",
                                      "the exercise is to write it yourself from the equation, with torch operations")]
        elif not self.stopped:
            self.result.cases.insert(0, Case("your own code (it does not call the lab's reference)", True))
            mutated = sorted(set(self.run.mutated))
            if not self.run.returned:  # a function that never ran to the end earns no credit for what it did not do
                self.result.cases.append(Case(
                    "leaves its inputs unchanged", False, "your function never returned, so this could not be checked",
                    "fix the error the first failed check shows"))
            else:
                self.result.cases.append(Case(
                    "leaves its inputs unchanged", not mutated,
                    f"your function modified {', '.join(mutated)} in place" if mutated else "",
                    f"compute new tensors instead of changing {', '.join(mutated)} (no `+=`, `/=`, `.clamp_()` or "
                    f"`x[...] = `; `.float()` of a float32 tensor is that same tensor, not a copy): "
                    f"{why_inputs_matter}" if mutated else ""))
        if strict:
            self.result.raise_if_failed()
        return self.result


def _lab_code_in(fn) -> str | None:
    """The lab function, class or module that `fn` is, or that its code uses — a global name such as an imported
    reference, an attribute path such as selfsup_lab.balancing.sinkhorn, an import inside the function, a
    variable it closes over or a default argument, functools.partial, a helper function of the student's that
    does so, or a class, object, list or dict of the student's that holds one; None if none. Wrapping the
    reference would pass every other check."""
    student_scope = _student_scope(fn)  # where the student's own names live
    # asked once per type: a list of many objects of one class is one question
    students = functools.lru_cache(maxsize=None)(lambda cls: _is_students_class(cls, student_scope))
    seen, stack = set(), [fn]
    while stack:
        f = stack.pop()
        if id(f) in seen or isinstance(f, (numbers.Number, str, bytes, torch.Tensor)) or f is None:
            continue  # data, not code (checked first: a global list may hold millions of numbers)
        seen.add(id(f))
        if isinstance(f, functools.partial):
            stack.append(f.func)
            continue
        if isinstance(f, (list, tuple, set, frozenset, dict, types.SimpleNamespace)):  # HELPERS = {"f": reference}
            stack.extend(vars(f).values() if isinstance(f, types.SimpleNamespace)
                         else f.values() if isinstance(f, dict) else f)
            continue
        f = inspect.unwrap(f) if callable(f) else f  # under @torch.no_grad() and the like: the function itself
        lab = _lab_name(f)
        if lab:
            return lab
        if inspect.isclass(f):
            if students(f):  # its methods and class attributes, and what it derives from
                stack.extend(_unwrap_descriptor(value) for value in vars(f).values())
                stack.extend(f.__bases__)
            continue
        if not inspect.isroutine(f) and not inspect.ismodule(f) and students(type(f)):
            stack.append(type(f))  # an object of the student's class: its methods and what it was given
            stack.extend(getattr(f, "__dict__", {}).values())
            continue
        if getattr(f, "__globals__", None) is not student_scope or not hasattr(f, "__code__"):
            continue  # torch's or another library's code: not the student's to read
        stack.extend(cell.cell_contents for cell in f.__closure__ or ())
        stack.extend([*(f.__defaults__ or ()), *(f.__kwdefaults__ or {}).values()])  # def f(..., impl=reference)
        codes = [f.__code__]
        while codes:
            code = codes.pop()
            for step in dis.get_instructions(code):
                # Names looked up as globals (not attributes: `scores.data` is no use of a global `data`).
                if step.opname == "IMPORT_NAME" and str(step.argval).split(".")[0] == "selfsup_lab":
                    return f"`{step.argval}`"  # `import selfsup_lab...` inside the function
                if step.opname in ("LOAD_GLOBAL", "LOAD_NAME") and step.argval in student_scope:
                    stack.append(student_scope[step.argval])
            codes.extend(c for c in code.co_consts if inspect.iscode(c))
    return None


def _lab_name(f) -> str | None:
    """`selfsup_lab...` if `f` is one of the lab's modules, classes, functions or callable objects, else None.
    (The lab's plain data — a settings object in a list, say — runs no code, so it is no way to call a reference.)"""
    if inspect.ismodule(f):
        owner, name = f.__name__, None
    elif inspect.isclass(f) or inspect.isroutine(f):
        owner, name = getattr(f, "__module__", None), getattr(f, "__qualname__", None)
    elif callable(f):
        owner, name = type(f).__module__, f"{type(f).__qualname__} object"
    else:
        return None
    if not isinstance(owner, str) or owner.split(".")[0] != "selfsup_lab":
        return None
    return f"`{owner}`" if name is None else f"`{owner}.{name}`"


def _student_scope(fn) -> dict | None:
    """The globals of the notebook that defined `fn` (a function, a functools.partial, or an object whose
    class — or a class it derives from — the notebook defined)."""
    candidates = [fn.func if isinstance(fn, functools.partial) else fn]
    if not inspect.isroutine(candidates[0]):
        candidates += [_unwrap_descriptor(v) for cls in type(candidates[0]).__mro__ for v in vars(cls).values()]
    for candidate in candidates:
        scope = getattr(inspect.unwrap(candidate) if callable(candidate) else candidate, "__globals__", None)
        # A class of the student's with no function of its own reaches torch's (an nn.Module's methods): that
        # is torch's scope, not the student's.
        if scope is not None and scope.get("__name__", "").split(".")[0] != "torch":
            return scope
    return None


def _is_students_class(cls: type, student_scope: dict | None) -> bool:
    """Whether the notebook defined `cls`: it was created there (its module is the notebook's), or one of its
    functions, or of the classes it derives from, has the notebook's globals."""
    if student_scope is None:
        return False
    if "__name__" in student_scope and cls.__module__ == student_scope["__name__"]:
        return True
    return any(getattr(_unwrap_descriptor(value), "__globals__", None) is student_scope
               for klass in cls.__mro__ for value in vars(klass).values())


def _unwrap_descriptor(value):
    """The function inside a staticmethod, classmethod or property (the getter)."""
    if isinstance(value, (staticmethod, classmethod)):
        return value.__func__
    return value.fget if isinstance(value, property) else value


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _defaults_case(chk: "_Check", args: tuple, defaults: dict, expected: torch.Tensor, rtol: float, atol: float):
    """A case body: the function called without its defaulted arguments must give what it gives with the
    scaffold's values written out (the training code relies on the defaults)."""
    got = chk.run(*args)
    problem = _mismatch(got, expected, rtol, atol)
    if problem is None:
        return None
    written_out = ", ".join(f"{k}={v}" for k, v in defaults.items())
    explicit_right = _mismatch(chk.run(*args, **defaults), expected, rtol, atol) is None
    return (f"called without {', '.join(defaults)}:\n{problem}",
            f"keep the scaffold's defaults ({written_out}) in the `def` line" if explicit_right
            else "fix the comparisons above first")


def _diagnose(got, shape: tuple, variants: list[tuple[str, Callable[[], torch.Tensor]]], rtol: float, atol: float,
              default: str) -> str:
    """If the student's output equals a known wrong variant, say which mistake that is. An output that is not a
    tensor of the expected `shape` gets a hint about that: its values were never compared."""
    if _output_problem(got, shape):
        return ("return what the docstring's `Returns` says: one torch.Tensor of that shape (not a tuple, a numpy "
                "array or a transposed matrix); the values are compared after that")
    for hint, variant in variants:
        try:
            v = variant()
        except Exception:
            continue
        if tuple(v.shape) == tuple(got.shape) and torch.allclose(got.detach().float(), v.float(), rtol=rtol,
                                                                  atol=atol):
            return hint
    return default


# --- 1. NT-Xent ---------------------------------------------------------------------------------------------

def _nt_xent_reference(z1, z2, temperature):
    from .methods.simclr import nt_xent_loss
    return nt_xent_loss(z1, z2, temperature)[0]


def _nt_xent_mistakes(z1, z2, t):
    """Known wrong versions, only to recognise a mistake and name it in the hint."""
    n = z1.shape[0]

    def variant(mask=True, normalise=True, both=True, cross_only=False, temp=t, target_self=False,
                columns=False, positive_in_denominator=True):
        a, b = (F.normalize(z1, dim=1), F.normalize(z2, dim=1)) if normalise else (z1, z2)
        if columns:  # normalised over the 2B embeddings (dim=0) instead of each embedding's d entries
            a, b = F.normalize(torch.cat([z1, z2]), dim=0).split(n)
        if cross_only:
            logits = a @ b.t() / temp
            return (F.cross_entropy(logits, torch.arange(n)) + F.cross_entropy(logits.t(), torch.arange(n))) / 2
        z = torch.cat([a, b])
        logits = z @ z.t() / temp
        if mask:
            logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        target = torch.arange(2 * n) if target_self else torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        if not positive_in_denominator:  # −s_ip/τ + log Σ_{k ≠ i, p} exp(s_ik/τ)
            positive = logits.gather(1, target[:, None]).squeeze(1)
            return (torch.logsumexp(logits.scatter(1, target[:, None], float("-inf")), dim=1) - positive).mean()
        if not both:
            return F.cross_entropy(logits[:n], target[:n])
        return F.cross_entropy(logits, target)

    return [
        ("you kept j = i in the denominator: an embedding's similarity to itself (always 1/τ) must be "
         "excluded — set the diagonal of the logits to -inf", lambda: variant(mask=False)),
        ("you used raw dot products: normalise z1 and z2 to unit length first (F.normalize(z, dim=1))",
         lambda: variant(normalise=False)),
        ("you averaged over the B view-1 anchors only: every one of the 2B embeddings is an anchor",
         lambda: variant(both=False)),
        ("your negatives come only from the other view (B−1 of them); NT-Xent uses all 2B−2 other embeddings, "
         "same view included", lambda: variant(cross_only=True)),
        ("the temperature is missing: divide the cosine similarities by τ", lambda: variant(temp=1.0)),
        ("you summed the 2B anchors' losses: NT-Xent is their mean (F.cross_entropy's default reduction, or "
         "divide the sum by 2B)", lambda: variant() * 2 * n),
        ("your loss is twice the reference: it is the mean over all 2B anchors (did you add the two views' mean "
         "losses, or divide a sum by B?)", lambda: variant() * 2),
        ("you divided the mean by 2B again: F.cross_entropy already averages over the rows",
         lambda: variant() / (2 * n)),
        ("τ is applied twice: divide the cosine similarities by τ once", lambda: variant(temp=t * t)),
        ("you normalised over dim 0 (across the embeddings): normalise each embedding to unit length, "
         "F.normalize(z, dim=1)", lambda: variant(columns=True)),
        ("you left the positive out of the denominator: Σ_{k ≠ i} runs over all 2B − 1 others, the partner included",
         lambda: variant(positive_in_denominator=False)),
        ("each row's target is the row itself: the positive of anchor i is the other view of the same image, "
         "row i + B (and of row i + B, row i)", lambda: variant(mask=False, target_self=True)),
    ]


def check_nt_xent(student_fn: Callable, strict: bool = False) -> CheckResult:
    """Check `student_fn(z1, z2, temperature) -> scalar loss` against `methods.simclr.nt_xent_loss`.

    Returning the reference's `(loss, positive_rank)` tuple is accepted too (the first element is graded).
    """
    chk = _Check("nt_xent", student_fn, unpack_first=True)
    ref = _nt_xent_reference
    rtol, atol = 1e-4, 1e-5

    def compare(z1, z2, t):
        got = chk.run(z1, z2, t)
        expected = ref(z1, z2, t)
        problem = _mismatch(got, expected, rtol, atol)
        if problem is None and got.dim() != 0:
            return ("the loss should be a single number (a 0-dim tensor)",
                    "average over the 2B anchors, e.g. F.cross_entropy(...) with the default reduction")
        if problem is None:
            return None
        hint = _diagnose(got, (), _nt_xent_mistakes(z1, z2, t), 1e-4, 1e-5,
                         "compare with the equation term by term on B = 2, where you can write out the "
                         "4×4 similarity matrix by hand")
        if isinstance(got, torch.Tensor) and got.dim() == 0 and got.detach().float().isposinf():
            # cross-entropy is +inf only when a target's logit is -inf: the masked diagonal
            hint = ("the loss is infinite: a target points at a masked (−inf) logit. Mask only the diagonal (each "
                    "anchor's similarity to itself) and let row i's target be row i + B (row i + B's: row i)")
        return (f"input: z1, z2 of shape {tuple(z1.shape)}, temperature {t}\n{problem}", hint)

    for batch, dim, t, seed in [(8, 16, 0.5, 0), (32, 128, 0.2, 1), (5, 3, 1.0, 2), (2, 8, 0.1, 3),
                                (64, 32, 0.07, 4)]:
        g = _generator(seed)
        z1, z2 = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
        chk.case(f"matches the reference: B={batch}, d={dim}, τ={t}, seed {seed}",
                 lambda z1=z1, z2=z2, t=t: compare(z1, z2, t))

    g = _generator(10)
    z = torch.randn(1, 4, generator=g)
    chk.case("edge case B = 1: the partner is the only candidate, so the loss is 0",
             lambda: compare(z, torch.randn(1, 4, generator=_generator(11)), 0.5))
    z = torch.randn(16, 8, generator=g)
    chk.case("edge case: identical views (z2 = z1)", lambda: compare(z, z.clone(), 0.2))

    # gradients: the loss must be differentiable and give the reference's gradient
    def gradient():
        g = _generator(20)
        z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
        a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        try:
            loss = student_fn(a1, a2, 0.3)
        except NotImplementedError as exc:
            raise _NotImplemented() from exc
        except (Exception, SystemExit) as exc:
            raise _student_error(exc) from exc
        if isinstance(loss, (tuple, list)):
            loss = loss[0]
        problem = _output_problem(loss, ())
        if problem:
            return problem
        if not loss.requires_grad:
            return ("the returned loss has no gradient (requires_grad is False)",
                    "stay in torch: no .item(), .numpy(), .detach() or torch.no_grad() in the loss")
        loss.float().sum().backward()
        b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        expected_loss = ref(b1, b2, 0.3)
        expected_loss.backward()
        value_right = torch.allclose(loss.detach().float(), expected_loss.detach(), rtol=rtol, atol=atol)
        hint = ("the value is right but the gradient is not: part of the loss is cut from the graph (a .detach(), "
                ".data, or a tensor rebuilt with torch.tensor); every term must depend on z1 and z2 through torch ops"
                if value_right else "the loss value is off too: fix the failing comparisons above first")
        for name, got, exp in (("z1", a1.grad, b1.grad), ("z2", a2.grad, b2.grad)):
            if got is None:
                return f"no gradient reached {name}", "make sure the loss is computed from both inputs"
            problem = _mismatch(got, exp, 1e-3, 1e-5)
            if problem:
                return f"gradient with respect to {name}:\n{problem}", hint
        return None

    chk.case("gradients match the reference (the loss is differentiable)", gradient)

    # the properties that matter
    def scale_invariance():
        g = _generator(30)
        z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
        base, scaled = chk.run(z1, z2, 0.5), chk.run(10.0 * z1, 0.01 * z2, 0.5)
        problem = _first_output_problem((base, scaled), ())
        if problem:
            return problem
        if not torch.allclose(base.detach().float(), scaled.detach().float(), rtol=1e-4, atol=1e-5):
            return (f"loss(z1, z2) = {float(base):.5f} but loss(10·z1, 0.01·z2) = {float(scaled):.5f}",
                    "the loss uses cosine similarity: normalise each embedding to unit length first")
        return None

    chk.case("property: invariant to the scale of the embeddings", scale_invariance)

    def alignment():
        g = _generator(40)
        z1 = torch.randn(32, 64, generator=g)
        noise = torch.randn(32, 64, generator=g)
        other = torch.randn(32, 64, generator=g)
        levels = [0.05, 0.5, 2.0]
        losses = [chk.run(z1, z1 + s * noise, 0.2) for s in levels] + [chk.run(z1, other, 0.2)]
        problem = _first_output_problem(losses, ())
        if problem:
            return problem
        values = [float(v) for v in losses]
        if not all(a < b for a, b in zip(values, values[1:])):
            shown = ", ".join(f"{v:.3f}" for v in values)
            return (f"losses for z2 = z1 + noise·{levels} and for unrelated z2: {shown} (should increase)",
                    "the positive pair (i, its partner view) belongs in the numerator: the better the views "
                    "agree, the smaller the loss")
        return None

    chk.case("property: lower when the positive pairs align", alignment)

    def symmetric():
        g = _generator(50)
        z1, z2 = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
        a, b = chk.run(z1, z2, 0.5), chk.run(z2, z1, 0.5)
        problem = _first_output_problem((a, b), ())
        if problem:
            return problem
        if not torch.allclose(a.detach().float(), b.detach().float(), rtol=1e-4, atol=1e-5):
            return (f"loss(z1, z2) = {float(a):.5f} but loss(z2, z1) = {float(b):.5f}",
                    "treat the two views alike: all 2B embeddings are anchors (average over all of them, not "
                    "only view 1's), and both views are normalised the same way")
        return None

    chk.case("property: symmetric in the two views", symmetric)
    return chk.finish(strict, "the embeddings belong to the model (F.normalize(z, dim=1) returns a new tensor)")


# --- 2. Sinkhorn-Knopp ----------------------------------------------------------------------------------------

def _cosines(batch: int, clusters: int, dim: int, seed: int) -> torch.Tensor:
    g = _generator(seed)
    z = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(clusters, dim, generator=g), dim=1)
    return z @ c.t()


def check_sinkhorn(student_fn: Callable, strict: bool = False) -> CheckResult:
    """Check `student_fn(scores, epsilon=0.05, iterations=3) -> (B, K) targets` against `balancing.sinkhorn`."""
    from .balancing import sinkhorn as ref

    chk = _Check("sinkhorn", student_fn)
    rtol, atol = 1e-4, 1e-6

    def compare(scores, eps, iters, tol=(rtol, atol)):
        got = chk.run(scores, epsilon=eps, iterations=iters)
        expected = ref(scores, epsilon=eps, iterations=iters)
        problem = _mismatch(got, expected, *tol)
        if problem is None and got.dtype in (torch.float16, torch.bfloat16):  # right values, too few digits
            return (f"the targets came back as {str(got.dtype).replace('torch.', '')}",
                    "compute in float32 (scores.float()) and return float32 targets, as the docstring's `Returns` says")
        if problem is None:
            return None
        batch, clusters = scores.shape
        s = scores.float()

        def alternations(q, swapped=False):  # the reference's loop on a positive matrix q (swapped: sum dims)
            q = q / q.sum()
            for _ in range(iters):
                q = q / (clusters * q.sum(1 if swapped else 0, keepdim=True))
                q = q / (batch * q.sum(0 if swapped else 1, keepdim=True))
            return q * batch

        variants = [
            ("the marginals are swapped: the column step gives each cluster 1/K of the mass and the row step each "
             "image 1/B (your rows sum to 1/K before the final ×B)", lambda: expected * batch / clusters),
            ("your rows sum to 1/B: rescale the result so every row sums to 1 (multiply by B)",
             lambda: expected / batch),
            ("the last normalisation must be the row step (so every image's q_i is a distribution); you end "
             "with the column step", lambda: ref(s.t(), epsilon=eps, iterations=iters).t() * batch / clusters),
            ("that is a plain softmax of s/ε: the column normalisation (each cluster gets B/K) is missing",
             lambda: torch.softmax(s / eps, dim=1)),
            (f"you did {iters + 1} alternations instead of `iterations` = {iters}",
             lambda: ref(scores, epsilon=eps, iterations=iters + 1)),
            (f"you did {iters - 1} alternations instead of `iterations` = {iters}",
             lambda: ref(scores, epsilon=eps, iterations=max(iters - 1, 0))),
            ("ε multiplies instead of divides: Q = exp(S / ε)",
             lambda: ref(scores * eps * eps, epsilon=eps, iterations=iters)),
            ("you subtracted each row's own max before exp(): that rescales every image's row before the first "
             "column step and changes the result; subtract one constant for the whole matrix (its largest s/ε), "
             "which the normalisations cancel",
             lambda: alternations(torch.exp(s / eps - (s / eps).max(dim=1, keepdim=True).values))),
            ("ε is missing: Q = exp(S/ε) (ε = 0.05 sharpens the scores 20×)",
             lambda: ref(scores, epsilon=1.0, iterations=iters)),
            ("the sums run over the wrong dimension: the cluster step divides by q.sum(dim=0) (over the B images, "
             "one total per cluster), the image step by q.sum(dim=1)",
             lambda: alternations(torch.exp(s / eps - (s / eps).max()), swapped=True)),
        ]
        hint = _diagnose(got, expected.shape, variants, 1e-4, 1e-6,
                         "write the loop out on a 3×2 matrix by hand: scale columns to 1/K of the mass, then "
                         "rows to 1/B, `iterations` times; return rows rescaled to sum to 1")
        if isinstance(got, torch.Tensor) and not torch.isfinite(got.detach().float()).all():
            hint = ("exp(s/ε) overflowed: compute in float32 and subtract the largest s/ε before exp() "
                    "(the normalisations cancel the constant)")
            if scores.dtype in (torch.float16, torch.bfloat16):  # subtracting the max is not enough in float16
                hint = ("compute in float32 (scores.float()): in float16 exp(s/ε) over- or underflows (whole rows "
                        "become 0, then 0/0), even with the largest s/ε subtracted")
        return (f"input: scores of shape {tuple(scores.shape)} ({str(scores.dtype).replace('torch.', '')}), "
                f"epsilon={eps}, iterations={iters}\n{problem}", hint)

    for batch, clusters, eps, iters, seed in [(16, 4, 0.05, 3, 0), (64, 10, 0.05, 3, 1), (7, 3, 0.1, 1, 2),
                                              (4, 10, 0.05, 3, 3), (32, 8, 0.5, 10, 4)]:
        s = _cosines(batch, clusters, 16, seed)
        chk.case(f"matches the reference: B={batch}, K={clusters}, ε={eps}, iterations={iters}, seed {seed}",
                 lambda s=s, eps=eps, iters=iters: compare(s, eps, iters))

    s_half = _cosines(32, 6, 8, 5).half()
    chk.case("edge case: float16 scores (exp(1/0.05) = 5e8 overflows float16)",
             lambda: compare(s_half, 0.05, 3, (1e-3, 1e-5)))
    s_sharp = 0.5 + 0.5 * torch.rand(24, 5, generator=_generator(6))
    chk.case("edge case: ε = 0.01 and scores in [0.5, 1] (exp(100) overflows float32)",
             lambda: compare(s_sharp, 0.01, 3))
    # Confident images: each is near +0.9 to one cluster and near -0.9 to the rest. s/ε spans 180, so only the
    # largest s/ε is a safe constant to subtract: less the smallest, the mean or the median, exp() overflows.
    s_confident = -0.9 + 0.05 * torch.rand(30, 5, generator=_generator(10))
    s_confident[torch.arange(30), torch.arange(30) % 5] = 0.9 + 0.05 * torch.rand(30, generator=_generator(11))
    chk.case("edge case: ε = 0.01 and confident scores from -0.9 to 0.95 (the largest s/ε is the constant to "
             "subtract; less the smallest or the mean, exp() still overflows)",
             lambda: compare(s_confident, 0.01, 3))

    s_default = _cosines(12, 4, 8, 7)
    chk.case("keeps the scaffold's defaults: sinkhorn(scores) uses ε = 0.05 and 3 iterations",
             lambda: _defaults_case(chk, (s_default,), dict(epsilon=0.05, iterations=3), ref(s_default), rtol, atol))

    def marginals():
        scores = _cosines(48, 6, 16, 7)
        batch, clusters = scores.shape
        q = chk.run(scores, epsilon=0.05, iterations=3)
        problem = _output_problem(q, scores.shape)
        if problem:
            return problem
        q = q.detach().float()
        if (q < 0).any() or not torch.isfinite(q).all():
            return "some entries are negative or not finite", "Q = exp(...) is positive; keep it so"
        rows = q.sum(dim=1)
        if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
            return (f"row sums should all be 1, got {_fmt(rows[:6])}… (min {rows.min():.4g}, max {rows.max():.4g})",
                    "finish with the row normalisation and rescale rows to sum to 1")
        q = chk.run(scores, epsilon=0.05, iterations=100)
        problem = _output_problem(q, scores.shape)
        if problem:
            return f"with iterations=100: {problem}"
        cols = q.detach().float().sum(dim=0)
        target = torch.full_like(cols, batch / clusters)
        if not torch.allclose(cols, target, rtol=0.02):
            return (f"with iterations=100 every column should hold B/K = {batch / clusters:g} images' worth of "
                    f"mass, got column sums {_fmt(cols)}",
                    "the column step scales each cluster's total to 1/K of the mass (then rows to 1/B)")
        return None

    chk.case("property: rows sum to 1 and columns to ≈ B/K", marginals)

    def collapse_prone():
        # every image prefers cluster 0: softmax would put everyone there; Sinkhorn must not
        g = _generator(8)
        scores = torch.full((20, 5), -0.2) + 0.01 * torch.randn(20, 5, generator=g)
        scores[:, 0] = 0.9
        q = chk.run(scores, epsilon=0.05, iterations=3)
        problem = _output_problem(q, scores.shape)
        if problem:
            return problem
        cols = q.detach().float().sum(dim=0)
        if not torch.allclose(cols, torch.full_like(cols, 4.0), rtol=0.05):
            return (f"all 20 images score cluster 0 highest; column sums should be ≈ B/K = 4 each, "
                    f"got {_fmt(cols)}",
                    "this is the collapse Sinkhorn prevents: the column normalisation spreads the images out")
        return None

    chk.case("property: spreads a collapsed batch (every image's favourite is cluster 0)", collapse_prone)

    def no_gradient():
        scores = _cosines(8, 4, 8, 9).requires_grad_()
        try:
            q = student_fn(scores, epsilon=0.05, iterations=3)
        except NotImplementedError as exc:
            raise _NotImplemented() from exc
        except (Exception, SystemExit) as exc:
            raise _student_error(exc) from exc
        if isinstance(q, torch.Tensor) and q.requires_grad:
            return ("the targets carry a gradient (requires_grad is True)",
                    "targets are a stop-gradient: decorate the function with @torch.no_grad() (or detach)")
        return None

    chk.case("property: the targets carry no gradient", no_gradient)
    return chk.finish(strict, "the scores belong to the model, which still needs them")


# --- 3. CoKe dual step ---------------------------------------------------------------------------------------

def check_coke_dual_step(student_fn: Callable, strict: bool = False) -> CheckResult:
    """Check `student_fn(duals, counts, batch_size, min_fraction, step_size) -> new duals`
    against `balancing.coke_dual_step`."""
    from .balancing import coke_dual_step as ref

    chk = _Check("coke_dual_step", student_fn)
    rtol, atol = 1e-5, 1e-6

    def compare(duals, counts, batch, gamma, eta):
        got = chk.run(duals, counts, batch, gamma, eta)
        expected = ref(duals, counts, batch, gamma, eta)
        problem = _mismatch(got, expected, rtol, atol)
        if problem is None:
            return None
        n = counts.float()
        variants = [
            ("the projection is missing: duals are multipliers of an inequality constraint and must stay ≥ 0 "
             "(clamp at 0 after the step)", lambda: duals + eta * (gamma - n / batch)),
            ("the sign is flipped: an under-filled cluster (n_k/B < γ) must get a LARGER dual, so step along "
             "γ − n_k/B", lambda: (duals + eta * (n / batch - gamma)).clamp_min(0)),
            ("compare fractions, not counts: use n_k / batch_size", lambda: (duals + eta * (gamma - n)).clamp_min(0)),
            ("`counts // batch_size` is integer division (0 for every cluster smaller than the batch): divide with "
             "`/`, or `counts.float() / batch_size`",
             lambda: (duals + eta * (gamma - torch.div(counts, batch, rounding_mode="floor"))).clamp_min(0)),
            ("the step size η is missing", lambda: (duals + (gamma - n / batch)).clamp_min(0)),
            ("divide the counts by the batch size B, not by the number of clusters K",
             lambda: (duals + eta * (gamma - n / n.numel())).clamp_min(0)),
            ("min_fraction is already γ, the smallest share one cluster may have (ratio/K): do not divide it by K "
             "again", lambda: (duals + eta * (gamma / n.numel() - n / batch)).clamp_min(0)),
            ("clamp the new dual, not the step: an over-filled cluster's dual must be able to fall (down to 0)",
             lambda: duals + (eta * (gamma - n / batch)).clamp_min(0)),
            ("empty clusters (n_k = 0) are the most under-filled of all: their duals must rise too",
             lambda: torch.where(counts > 0, (duals + eta * (gamma - n / batch)).clamp_min(0), duals)),
        ]
        hint = _diagnose(got, expected.shape, variants, 1e-5, 1e-6,
                         "ρ_k ← max(0, ρ_k + η·(γ − n_k/B)), elementwise over the K clusters")
        return (f"input: K={duals.numel()}, duals {_fmt(duals)}, counts {_fmt(counts)}, batch_size={batch}, "
                f"min_fraction={gamma:.4g}, step_size={eta}\n{problem}", hint)

    for clusters, batch, ratio, eta, seed in [(10, 128, 0.9, 0.1, 0), (3, 32, 0.4, 20.0, 1), (100, 256, 0.9, 1.0, 2),
                                               (5, 7, 0.5, 0.5, 3)]:
        g = _generator(seed)
        probs = torch.rand(clusters, generator=g) ** 3 + 1e-3  # skewed: some clusters under-filled
        labels = torch.multinomial(probs, batch, replacement=True, generator=g)
        counts = torch.bincount(labels, minlength=clusters)  # int64, as the training code produces them
        duals = torch.rand(clusters, generator=g) * 0.5
        duals[torch.rand(clusters, generator=g) < 0.3] = 0.0
        chk.case(f"matches the reference: K={clusters}, B={batch}, γ={ratio}/K, η={eta}, seed {seed}",
                 lambda d=duals, c=counts, b=batch, gm=ratio / clusters, e=eta: compare(d, c, b, gm, e))

    k = 6
    collapsed = torch.tensor([64, 0, 0, 0, 0, 0])
    chk.case("edge case: collapse — all 64 images in cluster 0, duals start at 0",
             lambda: compare(torch.zeros(k), collapsed, 64, 0.9 / k, 1.0))
    chk.case("edge case: float counts and a large step (η = 50) on over-filled clusters",
             lambda: compare(torch.tensor([0.01, 2.0, 0.0, 0.3]), torch.tensor([10.0, 10.0, 12.0, 0.0]), 32,
                             0.9 / 4, 50.0))

    def stays_nonnegative():
        g = _generator(30)
        for trial in range(20):
            clusters = 8
            duals = torch.rand(clusters, generator=g) * 0.05
            counts = torch.bincount(torch.randint(0, 3, (64,), generator=g), minlength=clusters)
            new = chk.run(duals, counts, 64, 0.5 / clusters, 5.0)
            problem = _output_problem(new, duals.shape)
            if problem:
                return problem
            if (new.detach() < 0).any():
                return (f"duals {_fmt(duals)} with counts {_fmt(counts)} became {_fmt(new)}",
                        "project onto ρ ≥ 0 after the step: .clamp_min(0) (or torch.clamp(..., min=0))")
        return None

    chk.case("property: duals stay ≥ 0", stays_nonnegative)

    def direction():
        duals = torch.full((5,), 0.2)
        counts = torch.tensor([0, 3, 8, 12, 17])  # B = 40, γ = 8/40: under, under, exact, over, over
        new = chk.run(duals, counts, 40, 0.2, 0.5)
        problem = _output_problem(new, duals.shape)
        if problem:
            return problem
        delta = new.detach().float() - duals
        if not (delta[0] > 0 and delta[1] > 0):
            return (f"counts {counts.tolist()} of B=40 with γ=0.2: the under-filled clusters 0 and 1 should get "
                    f"larger duals, changes were {_fmt(delta)}",
                    "the dual grows with the shortfall γ − n_k/B, which is positive for under-filled clusters")
        if abs(float(delta[2])) > 1e-6:
            return (f"cluster 2 holds exactly γ·B = 8 images; its dual should not move, it changed by "
                    f"{float(delta[2]):.4g}", "at n_k/B = γ the constraint is met: the step is 0")
        if not (delta[3] < 0 and delta[4] < 0):
            return (f"over-filled clusters 3 and 4 should get smaller duals, changes were {_fmt(delta)}",
                    "over-filled means γ − n_k/B < 0, so the dual decreases (down to 0)")
        return None

    chk.case("property: under-filled clusters' duals rise, over-filled ones fall", direction)

    def monotone():
        duals = torch.zeros(6)
        counts = torch.tensor([0, 1, 2, 3, 4, 90])  # shortfall decreasing along k; the batch's counts add up to B
        new = chk.run(duals, counts, 100, 0.1, 2.0)
        problem = _output_problem(new, duals.shape)
        if problem:
            return problem
        rise = new.detach().float()
        if not all(a > b for a, b in zip(rise.tolist(), rise.tolist()[1:])):
            return (f"counts {counts.tolist()} of B=100 with γ=0.1 (shortfalls 10%, 9%, … 6%, then over-filled): "
                    f"the rises should strictly decrease, got {_fmt(rise)}",
                    "the step is proportional to the shortfall γ − n_k/B")
        return None

    chk.case("property: the rise is monotone in the shortfall", monotone)
    return chk.finish(strict, "return the new duals (`duals + ...`): the caller decides when to copy them into "
                              "its buffer, and its counts are logged after the step")


# --- 4. ExCB balancing --------------------------------------------------------------------------------------

def check_excb_balance(student_fn: Callable, strict: bool = False) -> CheckResult:
    """Check `student_fn(scores, relative_sizes, boost=1.01) -> balanced scores`
    against `balancing.excb_balance_scores`."""
    from .balancing import excb_balance_scores as ref
    from .balancing import excb_relative_sizes

    chk = _Check("excb_balancing", student_fn)
    rtol, atol = 1e-5, 1e-6

    def compare(scores, rho, boost):
        got = chk.run(scores, rho, boost=boost)
        expected = ref(scores, rho, boost=boost)
        problem = _mismatch(got, expected, rtol, atol)
        if problem is None:
            return None
        z, r = scores.float(), rho.float()
        small = 1 - (1 - z) * r
        big = (1 + z) / r - 1

        def boosted(x, clamp=True, dim=1, added=False):  # dim=0: each cluster's top image, not each image's top
            top = x.argmax(dim=dim, keepdim=True)
            x = x.scatter(dim, top, x.gather(dim, top) + (boost - 1) if added else x.gather(dim, top) * boost)
            return x.clamp(-1, 1) if clamp else x

        variants = [
            ("the two formulas are swapped: ρ_k < 1 (too small) uses z' = 1 − (1 − z)·ρ_k",
             lambda: boosted(torch.where(r < 1, big, small))),
            ("the clamp to [−1, 1] is missing, or comes before the boost: clamp last (×1.01 can push a cosine past 1)",
             lambda: boosted(torch.where(r < 1, small, big), clamp=False)),
            ("the top-1 boost is missing: multiply each row's largest balanced score by `boost`",
             lambda: torch.where(r < 1, small, big).clamp(-1, 1)),
            ("you boosted every entry; only the top-1 entry of each row gets ×boost",
             lambda: (torch.where(r < 1, small, big) * boost).clamp(-1, 1)),
            ("you boosted the top-1 of the raw scores; boost the winner AFTER balancing",
             lambda: torch.where(r < 1, small, big).scatter(
                 1, z.argmax(1, keepdim=True),
                 torch.where(r < 1, small, big).gather(1, z.argmax(1, keepdim=True)) * boost).clamp(-1, 1)),
            ("you boosted each column's largest score (argmax over dim 0, the images); the boost goes to each "
             "row's top-1 cluster: argmax over dim 1", lambda: boosted(torch.where(r < 1, small, big), dim=0)),
            ("clamp to [−1, 1], not [0, 1]: cosines can be negative",
             lambda: boosted(torch.where(r < 1, small, big), clamp=False).clamp(0, 1)),
            ("the boost multiplies the row's top score (z_top·boost), it is not added",
             lambda: boosted(torch.where(r < 1, small, big), added=True)),
            ("relative_sizes is already ρ_k (each cluster's size over the mean size): use it as given, without "
             "normalising it again", lambda: boosted(torch.where(r * r.numel() / r.sum() < 1,
                                                                 1 - (1 - z) * r * r.numel() / r.sum(),
                                                                 (1 + z) / (r * r.numel() / r.sum()) - 1))),
        ]
        hint = _diagnose(got, expected.shape, variants, 1e-5, 1e-6,
                         "apply the formula per column (ρ_k < 1 or > 1), then boost each row's maximum, then clamp")
        return (f"input: scores of shape {tuple(scores.shape)}, relative sizes {_fmt(rho)}, boost={boost}\n{problem}",
                hint)

    for batch, clusters, boost, seed in [(16, 5, 1.01, 0), (64, 32, 1.01, 1), (3, 4, 1.0, 2), (40, 8, 1.05, 3)]:
        g = _generator(seed)
        scores = _cosines(batch, clusters, 8, seed + 100)
        sizes = torch.rand(clusters, generator=g) ** 2 + 0.01
        rho = excb_relative_sizes(sizes)
        chk.case(f"matches the reference: B={batch}, K={clusters}, boost={boost}, seed {seed}",
                 lambda s=scores, r=rho, b=boost: compare(s, r, b))

    s = _cosines(10, 4, 8, 20)
    chk.case("edge case: all clusters exactly average (ρ = 1): only the boost acts",
             lambda: compare(s, torch.ones(4), 1.01))
    chk.case("edge case: a never-visited cluster (ρ_k ≈ 1e-8 from excb_relative_sizes)",
             lambda: compare(s, excb_relative_sizes(torch.tensor([0.0, 0.5, 0.3, 0.2])), 1.01))
    chk.case("edge case: ρ as given, not summing to K (ρ = 0.5, 2, 1, 3)",
             lambda: compare(s, torch.tensor([0.5, 2.0, 1.0, 3.0]), 1.01))
    negative = torch.tensor([[-0.3, -0.6, -0.9], [0.4, -0.2, -0.5]])
    chk.case("edge case: a row whose best score is negative (×boost applies to it as to any other: it goes down)",
             lambda: compare(negative, torch.ones(3), 1.05))
    rho_default = excb_relative_sizes(torch.tensor([0.1, 0.4, 0.2, 0.3]))
    chk.case("keeps the scaffold's default: excb_balance_scores(scores, relative_sizes) boosts by 1.01",
             lambda: _defaults_case(chk, (s, rho_default), dict(boost=1.01), ref(s, rho_default), rtol, atol))

    def direction():
        scores = _cosines(30, 6, 8, 21)
        rho = torch.tensor([0.2, 0.6, 1.0, 1.0, 1.7, 3.0])
        new = chk.run(scores, rho, boost=1.0)
        problem = _output_problem(new, scores.shape)
        if problem:
            return problem
        delta = new.detach().float() - scores
        if not (delta[:, :2] > 0).all():
            return (f"clusters 0 and 1 are too small (ρ = 0.2, 0.6) so their scores should go UP; "
                    f"smallest change {float(delta[:, :2].min()):.4g}",
                    "for ρ_k < 1 use z' = 1 − (1 − z)·ρ_k: the distance to +1 shrinks")
        if not (delta[:, 4:] < 0).all():
            return (f"clusters 4 and 5 are too big (ρ = 1.7, 3.0) so their scores should go DOWN; "
                    f"largest change {float(delta[:, 4:].max()):.4g}",
                    "for ρ_k > 1 use z' = (1 + z)/ρ_k − 1: the distance to −1 shrinks")
        if not torch.allclose(delta[:, 2:4], torch.zeros_like(delta[:, 2:4]), atol=1e-6):
            return ("clusters with ρ = 1 are exactly average: with boost=1.0 their scores must not change",
                    "both formulas reduce to z' = z at ρ = 1")
        return None

    chk.case("property: small clusters' scores go up, big ones' go down (boost=1)", direction)

    def clamp():
        scores = torch.tensor([[0.999, 0.2, -0.5], [0.3, 0.995, -0.999], [-1.0, -0.98, -0.99]])
        rho = torch.tensor([0.5, 0.9, 4.0])
        near_minus_one = torch.tensor([[-0.995, -1.0, -1.0]])  # ×1.01 pushes the winner below −1
        outputs = [chk.run(scores, rho, boost=1.01), chk.run(near_minus_one, torch.ones(3), boost=1.01)]
        problem = _output_problem(outputs[0], scores.shape) or _output_problem(outputs[1], near_minus_one.shape)
        if problem:
            return problem
        v = torch.cat([o.detach().float().flatten() for o in outputs])
        if v.max() > 1 + 1e-6 or v.min() < -1 - 1e-6:
            return (f"values must stay in [−1, 1], got min {float(v.min()):.5g}, max {float(v.max()):.5g}",
                    "clamp the result to [−1, 1] after the ×boost, at both ends (a negative winner ×1.01 can "
                    "fall below −1)")
        return None

    chk.case("property: results are clamped to [−1, 1]", clamp)

    def order_within_cluster():
        scores = _cosines(50, 5, 8, 22)
        rho = torch.tensor([0.3, 0.8, 1.0, 1.5, 2.5])
        new = chk.run(scores, rho, boost=1.0)
        problem = _output_problem(new, scores.shape)
        if problem:
            return problem
        for k in range(5):
            order = scores[:, k].argsort()
            if not (new.detach().float()[order, k].diff() >= -1e-7).all():
                return (f"in cluster {k} (ρ = {float(rho[k])}) a higher cosine ended with a lower balanced score",
                        "both maps are increasing in z: balancing changes which cluster wins, never who is "
                        "most typical of a cluster")
        return None

    chk.case("property: keeps the order of images within a cluster", order_within_cluster)
    return chk.finish(strict, "the raw scores are still needed elsewhere")


# --- the exercises, their model answers, and grading notebooks ---------------------------------------------

@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    function: str  # the name the student's function has in the notebook
    check: Callable[..., CheckResult]
    notebook: str  # file name under notebooks/assignments/
    report_title: str  # the heading of its ✓/✗ report, in Jupyter and from the grader alike


EXERCISES: dict[str, Exercise] = {
    "nt_xent": Exercise("nt_xent", "SimCLR's NT-Xent loss (METHODS.md §1)", "nt_xent", check_nt_xent,
                        "nt_xent.ipynb", "NT-Xent loss"),
    "sinkhorn": Exercise("sinkhorn", "SwAV's Sinkhorn-Knopp equipartition (§4.2)", "sinkhorn", check_sinkhorn,
                         "sinkhorn.ipynb", "Sinkhorn-Knopp"),
    "coke_dual_step": Exercise("coke_dual_step", "CoKe's dual step for minimum cluster sizes (§4.4)",
                               "coke_dual_step", check_coke_dual_step, "coke_dual_step.ipynb", "CoKe dual step"),
    "excb_balancing": Exercise("excb_balancing", "ExCB's explicit balancing of teacher scores (§4.5)",
                               "excb_balance_scores", check_excb_balance, "excb_balancing.ipynb", "ExCB balancing"),
}

# Model answers: what a good student submission looks like (written from METHODS.md's equations, in the
# notebooks' style). The checks compare against the package's reference functions, not against these.
SOLUTIONS: dict[str, str] = {
    "nt_xent": textwrap.dedent('''\
        import torch
        import torch.nn.functional as F


        def nt_xent(z1, z2, temperature):
            """NT-Xent over the 2B embeddings of B images seen twice; returns the mean loss (a scalar)."""
            batch = z1.shape[0]
            z = F.normalize(torch.cat([z1, z2]), dim=1)            # (2B, d) unit vectors: view 1, then view 2
            logits = z @ z.t() / temperature                       # cosine similarity / τ for every pair
            itself = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(itself, float("-inf"))     # j ≠ i: exp(-inf) = 0 in the denominator
            partner = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
            return F.cross_entropy(logits, partner)                # mean over the 2B anchors of −log softmax
        '''),
    "sinkhorn": textwrap.dedent('''\
        import torch


        @torch.no_grad()  # the targets are a stop-gradient
        def sinkhorn(scores, epsilon=0.05, iterations=3):
            """Rows sum to 1, columns to ≈ B/K: every cluster gets an equal share of the batch."""
            batch, clusters = scores.shape
            logits = scores.float() / epsilon
            q = torch.exp(logits - logits.max())                   # subtract the max: no overflow, same result
            q = q / q.sum()                                        # total mass 1
            for _ in range(iterations):
                q = q / (clusters * q.sum(dim=0, keepdim=True))    # each column (cluster) holds 1/K
                q = q / (batch * q.sum(dim=1, keepdim=True))       # each row (image) holds 1/B
            return q * batch                                       # rows now sum to 1
        '''),
    "coke_dual_step": textwrap.dedent('''\
        import torch


        def coke_dual_step(duals, counts, batch_size, min_fraction, step_size):
            """Projected gradient ascent on ρ for the constraint n_k/B ≥ γ: ρ ← max(0, ρ + η(γ − n/B))."""
            shortfall = min_fraction - counts.float() / batch_size  # > 0 for an under-filled cluster
            return (duals + step_size * shortfall).clamp_min(0.0)   # multipliers of "≥" constraints stay ≥ 0
        '''),
    "excb_balancing": textwrap.dedent('''\
        import torch


        def excb_balance_scores(scores, relative_sizes, boost=1.01):
            """Move cosines toward +1 for too-small clusters (ρ < 1), toward −1 for too-big ones (ρ > 1)."""
            z = scores.float()
            rho = relative_sizes.float()
            z = torch.where(rho < 1, 1 - (1 - z) * rho, (1 + z) / rho - 1)  # column k uses its own ρ_k
            best = z.argmax(dim=1, keepdim=True)                           # each row's winner after balancing
            z = z.scatter(1, best, z.gather(1, best) * boost)               # "boost the choice"
            return z.clamp(-1.0, 1.0)
        '''),
}


def _cell_tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _exercise_of(nb, path: Path, name: str | None) -> Exercise:
    from .errors import UserError

    name = name or nb.get("metadata", {}).get("selfsup_lab", {}).get("exercise")
    if name is None:
        by_file = {ex.notebook: ex.name for ex in EXERCISES.values()}
        name = by_file.get(path.name) or path.stem
    if name not in EXERCISES:
        raise UserError(f"{path}: don't know which exercise this is ('{name}'); pass --exercise with one of "
                        f"{', '.join(EXERCISES)}")
    return EXERCISES[name]


def _source(cell) -> str:
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    # IPython magics and shell escapes are not Python: keep the line numbers, drop the commands
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())


def _grading_cells(nb, exercise: Exercise, path: Path) -> list[tuple[int, str]]:
    from .errors import UserError

    cells = [(i, c) for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]
    chosen = [(i, _source(c)) for i, c in cells if {SETUP_TAG, SOLUTION_TAG} & set(_cell_tags(c))]
    if not any(SOLUTION_TAG in _cell_tags(c) for _, c in cells):
        # Tags get lost when cells are copied between notebooks: fall back to the cell defining the function,
        # after the cells before it that only import (the setup cell, whose imports the solution may rely on).
        defining = [(i, _source(c)) for i, c in cells if f"def {exercise.function}(" in _source(c)]
        if not defining:
            raise UserError(f"{path}: no code cell tagged '{SOLUTION_TAG}' and none defining "
                            f"`{exercise.function}(...)` — was the solution cell deleted?")
        imports = [(i, _source(c)) for i, c in cells if i < defining[-1][0] and _only_imports(_source(c))]
        chosen = sorted({*chosen, *imports, *defining})
    return chosen


def _names_bound_outside(nb, graded: set[int]) -> set[str]:
    """Names that the code cells not run by the grader define at their top level (imports, functions, classes,
    assignments)."""
    names = set()
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code" or index in graded:
            continue
        try:
            body = ast.parse(_source(cell)).body
        except SyntaxError:
            continue
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _only_imports(source: str) -> bool:
    """True for a cell of import statements (and comments) only: safe to run, needed by the cells after it."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that the checks' `except Exception` cannot swallow it."""


def _timed_out(ex: "Exercise", timeout: float) -> CheckResult:
    return CheckResult(ex.name, ex.report_title, [Case(
        f"finishes within {timeout:g} s", False, "the solution was still running when time ran out",
        "look for a loop that never ends, or work on a huge tensor")])


class _GlobalState:
    """What a submission's cells may change for the whole process, noted before they run and put back before
    its function is checked and after: torch's grad mode and default dtype, and the lab's own module namespaces
    (a solution cell that sets `selfsup_lab.balancing.sinkhorn = sinkhorn` would replace the reference it is
    checked against, for this notebook and every one graded after it)."""

    def __init__(self):
        self.grad, self.dtype = torch.is_grad_enabled(), torch.get_default_dtype()
        self.namespaces = {name: dict(vars(module)) for name, module in list(sys.modules.items())
                           if name == "selfsup_lab" or name.startswith("selfsup_lab.")}

    def restore(self) -> None:
        torch.set_grad_enabled(self.grad)
        torch.set_default_dtype(self.dtype)
        for name, saved in self.namespaces.items():
            if name in sys.modules:
                vars(sys.modules[name]).update(saved)  # names added since (a submodule imported) may stay


def _read_submission(path: Path, exercise: str | None):
    """(notebook, Exercise) of a submitted notebook, or a UserError saying why it cannot be graded."""
    import nbformat

    from .errors import UserError

    if not path.exists():
        raise UserError(f"{path}: no such notebook")
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise UserError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})") from None  # said here
    return nb, _exercise_of(nb, path, exercise)


def grade_notebook(path, exercise: str | None = None, strict: bool = False,
                   timeout: float | None = 120, isolate: bool = False) -> CheckResult:
    """Run a notebook's `setup` and `solution` cells in a fresh namespace, then check the student's function.

    The exercise is read from the notebook's metadata (`selfsup_lab.exercise`), else from the file name.
    `timeout` (seconds, POSIX main thread only) stops a solution that never returns.
    `isolate=True` grades in a fresh Python process (what the command line does): whatever the submission does
    to its process — patch torch, end it with os._exit(), crash it — cannot change the grade of the notebooks
    graded after it, and a crash becomes this notebook's failed check. It costs a few seconds per notebook.
    """
    path = Path(path)
    if isolate:
        result = _grade_in_fresh_process(path, exercise, timeout)
        return result.raise_if_failed(str(path)) if strict else result
    nb, ex = _read_submission(path, exercise)
    namespace: dict = {"__name__": "__submission__"}
    cells = _grading_cells(nb, ex, path)
    graded = ", ".join(str(index + 1) for index, _ in cells)
    counted = "counting every cell from the top, text cells too"  # Jupyter shows no cell numbers: say how we count
    # Jupyter ran every cell; the grader runs these only: a name defined elsewhere is missing here.
    only_these = (f"the grader runs only the cells tagged '{SETUP_TAG}' and '{SOLUTION_TAG}' (here cells {graded}, {counted}), "
                  f"in order: import or define what your function uses in the solution cell")

    elsewhere = _names_bound_outside(nb, {index for index, _ in cells})

    def finish(result: CheckResult) -> CheckResult:
        for case in result.cases:  # a name Jupyter had from a cell the grader does not run (not a mere typo)
            missing = case.detail.split("'")[1] if case.detail.startswith("NameError: name '") else None
            if missing in elsewhere:
                case.hint = f"`{missing}` comes from a cell the grader does not run: {only_these}"
        return result.raise_if_failed(str(path)) if strict else result

    defining = [index + 1 for index, source in cells if f"def {ex.function}(" in source]
    if len(defining) > 1:  # a copied cell keeps its tag: the last copy, perhaps still the scaffold, would count
        return finish(CheckResult(ex.name, ex.report_title, [Case(
            f"one graded cell defines `{ex.function}`", False,
            f"cells {', '.join(map(str, defining))} ({counted}) each define it, and the grader runs every graded "
            f"cell: only the last definition would count",
            "delete the copy you are not submitting (a copied cell keeps the 'solution' tag)")]))

    state = _GlobalState()
    use_alarm = timeout and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if use_alarm:
        def on_alarm(signum, frame):
            raise _Timeout()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(math.ceil(timeout)))
    try:
        for index, source in cells:
            filename = f"{path.name} [cell {index + 1}]"
            # Registered so that a traceback (and _describe_exception) can quote the line that failed.
            linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
            try:
                # What the cells print (a check call left in the solution cell, debugging output) is not the
                # grade: discarded (not collected: a print loop must not fill the memory until the timeout).
                with open(os.devnull, "w") as discard, contextlib.redirect_stdout(discard):
                    exec(compile(source, filename, "exec"), namespace)
            except _Timeout:
                raise
            except NotImplementedError:
                continue  # e.g. a scaffold that raises at import time: reported by the check below
            except (Exception, SystemExit) as exc:  # exit() in a cell ends that cell, not the grading
                return finish(CheckResult(ex.name, ex.report_title, [Case(
                    f"cell {index + 1} of the notebook runs ({counted})", False, _describe_exception(exc),
                    "remove the exit() call: the grader runs the cell to its end" if isinstance(exc, SystemExit)
                    else "run the notebook top to bottom in Jupyter and fix the first error")]))
        fn = namespace.get(ex.function)
        if fn is None:
            return finish(CheckResult(ex.name, ex.report_title, [Case(
                f"the notebook defines `{ex.function}`", False, "no function of that name after running the cells",
                f"keep the name and signature of the scaffold: def {ex.function}(...)")]))
        state.restore()  # the function is graded, not what the cells did to the process
        with open(os.devnull, "w") as discard, contextlib.redirect_stdout(discard):  # prints in the function
            result = ex.check(fn)
        return finish(result)
    except _Timeout:
        return finish(_timed_out(ex, timeout))
    finally:
        state.restore()
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


# Seconds a fresh process may take beyond the notebook's own timeout: starting Python, importing torch, the checks.
_PROCESS_MARGIN = 60


def _grade_in_fresh_process(path: Path, exercise: str | None, timeout: float | None) -> CheckResult:
    """`grade_notebook(path)` run by a new Python process, which hands the result back as a JSON file."""
    import json
    import subprocess
    import tempfile

    from .errors import UserError

    _, ex = _read_submission(path, exercise)  # a notebook that cannot be graded is said so here, at once
    package_root = str(Path(__file__).resolve().parents[1])  # so that the child imports this same selfsup_lab
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, "-c", "import sys; from selfsup_lab.assignments import _grade_to_file; "
                   "_grade_to_file(*sys.argv[1:])", str(path), ex.name, str(timeout or 0), str(result_file)]
        # stderr goes to a file, not to memory: a submission printing in a loop until its timeout fills neither
        try:
            with open(Path(tmp) / "stderr.txt", "w+b") as stderr:
                done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=stderr, timeout=timeout + _PROCESS_MARGIN if timeout else None)
                stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 2000))
                error_output = stderr.read().decode(errors="replace")
        except subprocess.TimeoutExpired:  # the alarm in the child did not fire (a long call inside C code)
            return _timed_out(ex, timeout)
        if not result_file.exists():
            last = (error_output.strip().splitlines() or ["no error output"])[-1]
            return CheckResult(ex.name, ex.report_title, [Case(
                "the notebook lets the grader finish", False,
                f"the Python process grading it ended (exit code {done.returncode}) before the checks reported: "
                f"{last}", "look for os._exit(), os.kill() or code that crashes Python in the graded cells")])
        payload = json.loads(result_file.read_text())
    if "user_error" in payload:
        raise UserError(payload["user_error"])
    result = payload["result"]
    return CheckResult(result["exercise"], result["title"], [Case(**case) for case in result["cases"]],
                       result["max_details"])


def _grade_to_file(path: str, exercise: str, timeout: str, result_file: str) -> None:
    """The fresh process's side of `_grade_in_fresh_process`: grade, then write the result (or the reason the
    notebook cannot be graded) as JSON."""
    import dataclasses
    import json

    from .errors import UserError

    try:
        payload = {"result": dataclasses.asdict(grade_notebook(path, exercise, timeout=float(timeout) or None))}
    except UserError as exc:
        payload = {"user_error": str(exc)}
    Path(result_file).write_text(json.dumps(payload))


def fill_solution(nb, exercise: str | None = None):
    """A copy of a (student) notebook with the solution cell replaced by the model answer."""
    nb = copy.deepcopy(nb)
    name = exercise or nb.get("metadata", {}).get("selfsup_lab", {}).get("exercise")
    if name not in SOLUTIONS:
        raise KeyError(f"no model answer for exercise {name!r}; known: {', '.join(SOLUTIONS)}")
    cells = [c for c in nb.cells if c.get("cell_type") == "code" and SOLUTION_TAG in _cell_tags(c)]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one cell tagged '{SOLUTION_TAG}', found {len(cells)}")
    cells[0]["source"] = SOLUTIONS[name].rstrip("\n")
    return nb


# --- command line --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    parser = argparse.ArgumentParser(
        prog="python -m selfsup_lab.assignments",
        description="Grade the course exercises in notebooks/assignments/.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="run a notebook's solution cells and check them (exit 0 = all pass)")
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--exercise", choices=sorted(EXERCISES), help="default: read from the notebook")
    p.add_argument("--timeout", type=float, default=120, help="seconds per notebook (default 120)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once, each in its own Python process "
                                                       "(default 1)")
    p.add_argument("--quiet", action="store_true", help="one summary line per notebook")
    p.add_argument("--csv", action="store_true",
                   help="a table instead of reports: notebook, exercise, checks passed, checks run, summary")
    sub.add_parser("list", help="the exercises and the function each asks for")
    p = sub.add_parser("solve", help="instructor: write a copy of a notebook with the model answer filled in")
    p.add_argument("notebook", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p = sub.add_parser("solution", help="instructor: print the model answer of an exercise")
    p.add_argument("exercise", choices=sorted(SOLUTIONS))
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # ✓/✗ on a console that cannot print them: degrade, don't crash
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="replace")

    if args.command == "list":
        for ex in EXERCISES.values():
            print(f"{ex.name:16s} {ex.function}(...)  — {ex.title}  [notebooks/assignments/{ex.notebook}]")
        return 0
    if args.command == "solution":
        print(SOLUTIONS[args.exercise], end="")
        return 0
    if args.command == "solve":
        import nbformat

        try:
            nb = fill_solution(nbformat.read(str(args.notebook), as_version=4))
        except (OSError, KeyError, ValueError) as exc:
            print(f"error: {args.notebook}: {exc}", file=sys.stderr)
            return 2
        try:
            nbformat.write(nb, str(args.output))
        except OSError as exc:
            print(f"error: cannot write {args.output} ({exc.strerror or exc}); choose a path in an existing, "
                  f"writable folder", file=sys.stderr)
            return 2
        print(f"wrote {args.output}")
        return 0

    if args.jobs < 1 or args.timeout <= 0:
        problem = f"--jobs must be at least 1, got {args.jobs}" if args.jobs < 1 else \
            f"--timeout must be a positive number of seconds, got {args.timeout:g}"
        print(f"error: {problem}", file=sys.stderr)
        return 2

    def grade(path: Path) -> CheckResult | UserError:
        # Each notebook in a fresh process: one submission cannot change another's grade.
        try:
            return grade_notebook(path, exercise=args.exercise, timeout=args.timeout, isolate=True)
        except UserError as exc:
            return exc

    status = 0
    table = csv.writer(sys.stdout) if args.csv else None
    if table:
        table.writerow(["notebook", "exercise", "passed", "checks", "summary"])
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=args.jobs)  # threads that wait on the grading processes
    try:
        for path, result in zip(args.notebooks, pool.map(grade, args.notebooks)):  # in order, each when ready
            if isinstance(result, UserError):
                print(f"error: {result}", file=sys.stderr)
                if table:  # a row all the same, so that no submission goes missing from the grade sheet
                    table.writerow([path, "", 0, 0, f"not graded: {result}"])
                status = 2
                continue
            prefix = f"{path}: " if len(args.notebooks) > 1 or args.quiet else ""
            if table:
                table.writerow([path, result.exercise, len(result.cases) - len(result.failures), len(result.cases),
                                result.summary()])
            else:
                print(prefix + (result.summary() if args.quiet else result.report()), flush=True)
            if not result.passed:
                status = max(status, 1)
    except KeyboardInterrupt:  # Ctrl-C reaches the grading processes too: they stop at once
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # the notebooks not yet started are not started
        pool.shutdown(cancel_futures=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
