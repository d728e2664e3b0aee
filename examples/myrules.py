"""A method of your own: naive swapped prediction with DINO's centering of the teacher's scores.

This is the class notebook 03 builds (§4), as a file, so the command line can name it by its import path.
From this folder (the current directory is searched first):

    selfsup-lab methods myrules.Centering                                    # its --set options
    selfsup-lab train --method myrules.Centering --set center_momentum=0.5
    selfsup-lab compare-balancing --methods naive excb myrules.Centering

or from Python: `from myrules import Centering; selfsup_lab.train(Centering, "digits")`. Copy the file next to
your own work to start a rule of your own; `selfsup_lab/methods/base.py` is the contract a method keeps.
"""
from dataclasses import dataclass

import torch

from selfsup_lab import distributed
from selfsup_lab.methods.base import StepOutput
from selfsup_lab.methods.naive import Naive, NaiveOptions, swapped_cross_entropy


@dataclass
class CenteringOptions(NaiveOptions):
    center_momentum: float = 0.9  # m, DINO's default; --set center_momentum=0.5 on the command line


class Centering(Naive):
    """Naive swapped prediction with DINO's centering: q = softmax((s − c)/τ_t), c ← m·c + (1 − m)·mean(s)."""
    name = "centering"
    Options = CenteringOptions

    def __init__(self, backbone, options, context):
        super().__init__(backbone, options, context)
        self.register_buffer("center", torch.zeros(self.num_clusters))  # c: a buffer, so checkpoints keep it

    def training_step(self, views, indices):
        s1, s2 = (self.scores(v) for v in views[:2])
        with torch.no_grad():
            q1, q2 = (torch.softmax((s - self.center) / self.options.teacher_temperature, dim=1) for s in (s1, s2))
            m = self.options.center_momentum
            batch_mean = distributed.gather_no_grad(torch.cat([s1, s2])).mean(dim=0)  # over all processes
            self.center.mul_(m).add_((1 - m) * batch_mean)
        tau = self.options.student_temperature
        loss = 0.5 * (swapped_cross_entropy(q1, s2, tau) + swapped_cross_entropy(q2, s1, tau))
        # assignments: what the occupancy plots count; without the rule: the plain argmax of the same scores
        return StepOutput(loss=loss, assignments=q1.argmax(dim=1), assignments_without_rule=s1.argmax(dim=1))
