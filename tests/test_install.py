"""A wheel of fastgan carries the C++ sources, and in a fresh virtual environment its ops run on
the C++ kernels, built into the cache on first use as in a source checkout."""

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys, torch, fastgan
from fastgan.backends.select import backend_for
x, w = torch.randn(5, 3), torch.randn(4, 3)
out = fastgan.ops.fused_dense(x, w, activation="relu")
torch.testing.assert_close(out, torch.relu(x @ w.T))
print(fastgan.__file__, fastgan.__version__, backend_for(torch.device("cpu")))
"""


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow  # builds the C++ kernels from the wheel's sources: about a minute
def test_a_wheel_in_a_fresh_venv_runs_the_cpp_kernels(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT))
    [wheel] = (tmp_path / "dist").glob("fastgan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"fastgan/csrc/fastgan_cpu.cpp", "fastgan/csrc/native_step.cpp",
            "fastgan/csrc/vec_math.h"} <= set(names)

    # A fresh venv without pip; torch (and the rest) from this environment's site-packages,
    # named by a .pth file so that this environment's own fastgan is not seen.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
                     ).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel))

    cache = tmp_path / "cache"
    # ninja, a dependency the wheel would have installed into the venv, is this one's.
    env = {"PATH": f"{sysconfig.get_path('scripts')}:/usr/bin:/bin", "HOME": str(tmp_path),
           # cpp: fail rather than fall back to PyTorch
           "FASTGAN_CACHE_DIR": str(cache), "FASTGAN_BACKEND": "cpp"}
    where, version, backend = _run(str(python), "-c", CHECK, cwd=tmp_path,
                                   env=env).stdout.split()
    assert Path(where).is_relative_to(site) and backend == "cpp"
    assert [p.name for p in cache.iterdir()][0].startswith("fastgan_cpu-torch")
    assert _run(str(python), "-m", "fastgan", "--version", cwd=tmp_path,
                env=env).stdout.strip() == f"fastgan {version}"
