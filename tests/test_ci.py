"""CI runs exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    command = next(block.strip() for block in blocks if "pytest" in block)
    assert "LMLAB_NATIVE_KERNELS=0 python -m pytest" in command, "the fallback pass is part of the test command"
    run = ROOT.joinpath(".ci", "run").read_text(encoding="utf-8").strip().splitlines()
    assert run[-1] == command, ".ci/run and the README's test command differ"
