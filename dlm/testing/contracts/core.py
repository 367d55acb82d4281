"""The kit's vocabulary: :class:`ContractViolation` (a broken rule), :class:`NotApplicable` (a check that
does not apply), the :class:`Outcome` of one check and the :class:`ContractReport` of a component (which
names the plugin API version the component was checked against, :data:`dlm.messages.PLUGIN_API`), and the
settings every check shares (float64 on CPU, three left-padded prompts, 16-token generations, tolerances)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.messages import PLUGIN_API


DTYPE = torch.float64
CPU = torch.device("cpu")
PROMPTS = ([5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19])  # lengths differ: left padding
OTHER_PROMPTS = ([20, 21, 22, 23], [24, 25, 26, 27, 28, 29], [30, 31])  # a second generation's prompts
SMALL_ITERATION = {"gen_length": 16, "block_length": 8, "steps": 16}
ATOL, RTOL = 1e-8, 1e-6


class ContractViolation(AssertionError):
    """A component breaks its interface's contract; the message names the component and each check."""


class NotApplicable(Exception):
    """A check that does not apply to this component (e.g. a cache the test model cannot serve)."""


@dataclass(frozen=True)
class Outcome:
    check: str
    status: str  # "passed", "skipped" or "failed"
    detail: str = ""


@dataclass
class ContractReport:
    """What :func:`check_component` found, one :class:`Outcome` per check."""

    kind: str
    component: str
    outcomes: list[Outcome] = field(default_factory=list)
    api: str = PLUGIN_API  # the plugin API version the component was checked against

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def raise_for_failures(self) -> "ContractReport":
        if self.failures:
            lines = "\n".join(f"  [{o.check}] {o.detail}" for o in self.failures)
            raise ContractViolation(f"{self.kind} component {self.component} breaks its contract (plugin API "
                                    f"{self.api}):\n{lines}")
        return self


def _fail(message: str) -> None:
    raise ContractViolation(message)
