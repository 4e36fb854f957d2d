"""Checks a student runs on their own answers: ``jdm.checks.q_sample(my_q_sample)``.

Each check calls the student's function on inputs with known answers (shapes, values against the
reference within a stated tolerance, edge cases such as t = 0, t = T − 1 and a batch of one) and
raises an ``AssertionError`` that says what is wrong, never the solution; on the untouched stub it
raises ``NotImplementedError`` naming the exercise. One module per notebook; ``harness`` holds the
shared machinery. The notebooks' check cells (nbgrader's graded cells) call these.
"""
from .harness import CheckFailed
from .forward import *          # noqa: F401,F403  notebook 01
from .unet import *             # noqa: F401,F403  notebook 02
from .training import *         # noqa: F401,F403  notebook 03
from .features import *         # noqa: F401,F403  notebook 04
from .joint import *            # noqa: F401,F403  notebook 05
from .guidance import *         # noqa: F401,F403  notebook 06
from .counterfactuals import *  # noqa: F401,F403  notebook 07
from .labels import *           # noqa: F401,F403  notebook 08
from . import counterfactuals, features, forward, guidance, joint, labels, training, unet

__all__ = ["CheckFailed"] + [name for module in (forward, unet, training, features, joint, guidance,
                                                 counterfactuals, labels) for name in module.__all__]
