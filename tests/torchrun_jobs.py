"""Run several `saekit` commands in one torchrun job (one process-group start for a test module).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/torchrun_jobs.py OUT \
        train cfg.yaml run_dir=a -- collect cfg.yaml out_dir=b

Each command goes through `saekit.cli.main`, exactly as `-m saekit` would run it; the exit status of each is
written to OUT/rc-<rank>.json (the job goes on after a failing command, so a test can check refusals).
"""

import json
import os
import sys
from pathlib import Path

from saekit.cli import main


def split_commands(argv: list[str]) -> list[list[str]]:
    commands, current = [], []
    for item in argv:
        if item == "--":
            commands.append(current)
            current = []
        else:
            current.append(item)
    return [*commands, current]


if __name__ == "__main__":
    out = Path(sys.argv[1])
    codes = [main(command) for command in split_commands(sys.argv[2:])]
    (out / f"rc-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(codes))
