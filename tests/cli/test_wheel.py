"""The built wheel carries every study config, and `load_config` finds them in an installed copy."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wheel_holds_every_config_and_loads_digits_from_its_contents(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build's own folders stay out of the repository
    shutil.copytree(os.path.join(REPO, "ast_jax"), source / "ast_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = glob.glob(str(tmp_path / "dist" / "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "installed")
    configs = sorted(os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, "ast_jax", "configs", "*.py")))
    assert "ast_jax/configs/digits.py" in configs
    assert [name for name in configs if name not in names] == [], "config files missing from the wheel"

    code = ("import ast_jax; from ast_jax.cli.config import load_config; "
            "print(ast_jax.__file__); print(load_config('digits').name)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "installed"), JAX_PLATFORMS="cpu")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    module, name = loaded.stdout.strip().splitlines()[-2:]
    assert module.startswith(str(tmp_path / "installed")) and name == "digits"
