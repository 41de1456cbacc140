"""One training run in its own process: ``python -m mambadyn.train.worker KIND CONFIG_JSON [--resume]``.

The library entry point that experiment grids start (never the CLI's flags), through
``mambadyn.experiments.grid.worker_command``, which ties the child's life to its parent's so that
stopping an experiment never leaves a trainer writing into its folder; the run folder's lock catches
any other second trainer.
"""

from __future__ import annotations

import json
import sys

from ..jsonio import dumps
from .config import ImageTrainConfig, LMTrainConfig, SyntheticTrainConfig, from_dict
from .loop import train
from .tasks import ImageTask, LMTask, SyntheticTask

KINDS = {"lm": (LMTrainConfig, LMTask), "image": (ImageTrainConfig, ImageTask),
         "synthetic": (SyntheticTrainConfig, SyntheticTask)}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in KINDS or (len(argv) == 3 and argv[2] != "--resume"):
        print("usage: python -m mambadyn.train.worker lm|image|synthetic CONFIG_JSON [--resume]", file=sys.stderr)
        return 2
    cfg_cls, task_cls = KINDS[argv[0]]
    cfg = from_dict(cfg_cls, json.loads(argv[1]))
    print(dumps(train(task_cls, cfg, resume=len(argv) == 3), indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
