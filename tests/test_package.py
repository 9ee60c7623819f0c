"""The package as a user installs it: the wheel builds without a warning, installs into a fresh
virtual environment and runs a fit there, outside the repository; importing it loads none of the
heavy optional libraries.

The fresh environment reuses the installed dependencies (torch, Lightning, ...) through a
``.pth`` file naming this interpreter's site-packages (what ``--system-site-packages`` does for
a system interpreter; this one is itself a virtual environment), so nothing is downloaded. The
wheel's own copy of ``svd_callback`` comes first on the path: the test checks that it, not the
source tree or an editable install, is what runs, and that the installed dependency versions
satisfy the wheel's ``Requires-Dist``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("hypernetx", "tensorly", "pandas", "sklearn", "matplotlib", "scipy.sparse",
         "scipy.optimize")
"""Libraries used by a few functions only (class hypergraphs, factorization rank, run tables,
figures): an import of the package must not load them."""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put the source tree on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def loaded_by(statement: str) -> list[str]:
    """The :data:`HEAVY` modules in ``sys.modules`` after ``statement``, in a fresh process."""
    code = (f"import sys\n{statement}\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), check=True)
    return json.loads(out.stdout.strip().replace("'", '"'))


def test_importing_the_package_loads_no_heavy_optional_library():
    assert loaded_by("import svd_callback, svd_callback.cli") == []
    # the callback imports Lightning, which loads some of them itself (the check sees them),
    # and nothing more
    lightning = set(loaded_by("import lightning.pytorch"))
    assert "matplotlib" in lightning
    assert set(loaded_by("from svd_callback import SpectralMonitor")) == lightning


FIT = textwrap.dedent('''
    import importlib.metadata as md, json, sys
    from pathlib import Path
    from packaging.requirements import Requirement
    import svd_callback
    import lightning.pytorch as pl
    from svd_callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule, SmallCNN

    unmet = []
    for line in md.requires("svd-callback"):
        req = Requirement(line)
        if req.marker is None and md.version(req.name) not in req.specifier:
            unmet.append(f"{req} (installed {md.version(req.name)})")
    pl.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(figures_every_n=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=4,
                         limit_val_batches=1, callbacks=[monitor], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=sys.argv[1])
    trainer.fit(SmallCNN(), DigitsDataModule(batch_size=64))
    report = monitor.last_result.report
    print(json.dumps({
        "file": svd_callback.__file__,
        "dist": str(md.distribution("svd-callback").locate_file("")),
        "typed": (Path(svd_callback.__file__).parent / "py.typed").is_file(),
        "unmet": unmet,
        "analyses": monitor.schedule.analyses,
        "analysed": [r.name for r in report.analysed()],
        "history": Path(sys.argv[1], "spectral_history.jsonl").is_file(),
    }))
''')


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_installs_into_a_fresh_environment_and_fits_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # a copy: the build leaves build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "svd_callback", source / "svd_callback",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-v", "-w", str(wheels), str(source)],
        capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-3000:]
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)  # the license table, byte-compiling, ...
    (wheel,) = wheels.glob("svd_callback-*.whl")

    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(env_dir)], check=True, env=clean_env())
    python = env_dir / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True, env=clean_env())
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(own.stdout.strip(), "_parent_environment.pth").write_text("\n".join(parents) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall",
         str(wheel)], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert install.returncode == 0, (install.stdout + install.stderr)[-3000:]

    outside = tmp_path / "outside"  # neither the repository nor the source copy
    outside.mkdir()
    (outside / "fit.py").write_text(FIT)
    run = subprocess.run([str(python), "fit.py", str(outside / "run")], capture_output=True,
                         text=True, cwd=outside, env=clean_env(PYTHONWARNINGS="ignore"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(env_dir)  # the wheel's copy, not the source
    assert Path(result["dist"]).is_relative_to(env_dir)
    assert result["typed"] and result["unmet"] == []
    assert result["analyses"] >= 2 and result["history"]
    from svd_callback.examples import SmallCNN
    from svd_callback.layers import find_layers

    assert result["analysed"] == [spec.name for spec in find_layers(SmallCNN())[0]]

    torch_model = outside / "model.pt"  # the console script of the wheel
    subprocess.run([str(python), "-c", "import torch; torch.manual_seed(0); torch.save("
                    f"torch.nn.Sequential(torch.nn.Linear(30, 20)), {str(torch_model)!r})"],
                   check=True, cwd=outside, env=clean_env())
    cli = subprocess.run([str(env_dir / "bin" / "svd-callback"), "analyze", str(torch_model),
                          "--no-progress"], capture_output=True, text=True, cwd=outside,
                         env=clean_env(PYTHONWARNINGS="ignore"))
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "stable_rank" in cli.stdout
