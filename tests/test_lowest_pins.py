"""The oldest transformers and sentence-transformers that pyproject allows (GPU images often pin them) train with our
arguments and gradient checkpointing. The venv holds newer ones, so the run is skipped unless DOMAIN_EMBED_LOWEST_SITE
names a folder that `pip install --no-deps --target` filled with the lowest pins (.ci/run makes one); it then happens
in a subprocess with that folder first on the path, over the rest of the venv."""

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOWEST = {"transformers": "5.17.0", "sentence-transformers": "6.0.1"}
SITE = os.environ.get("DOMAIN_EMBED_LOWEST_SITE")

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import sentence_transformers
    import transformers
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from domain_embed.config import TrainingConfig
    from domain_embed.tuning.trainer import train_model

    lowest, model_path, out = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    found = {"transformers": transformers.__version__, "sentence-transformers": sentence_transformers.__version__}
    assert found == lowest, f"imported {found} from {transformers.__file__}, not the lowest pins {lowest}"

    cfg = TrainingConfig(gradient_checkpointing=True, num_negatives=0, batch_size=2, max_steps=1, save_steps=1,
                         warmup=0.0)
    model = SentenceTransformer(model_path, device="cpu")
    rows = Dataset.from_dict({"anchor": [f"question {i}" for i in range(4)],
                              "positive": [f"answer {i}" for i in range(4)]})
    result = train_model(model, rows, None, cfg, out, seed=0)
    print(json.dumps({"steps": result.global_step,
                      "checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in model.modules())}))
""")


def test_lowest_pins_are_the_floors_of_pyproject():
    """Keeps LOWEST (and so what the subprocess insists on importing) in step with the declared floors."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {r.name: Version(s.version) for r in map(Requirement, project["dependencies"]) if r.name in LOWEST
              for s in r.specifier if s.operator == ">="}
    assert floors == {name: Version(v) for name, v in LOWEST.items()}


@pytest.mark.skipif(not SITE, reason="DOMAIN_EMBED_LOWEST_SITE is unset (.ci/run sets it)")
def test_gradient_checkpointing_trains_under_the_lowest_pins(tiny_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(LOWEST), str(tiny_model), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"steps": 1, "checkpointing": True}
