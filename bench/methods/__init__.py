"""The built-in methods, package ``bench.methods``. Their source is the repository's ``methods/`` folder.

The wheel installs that folder here (pyproject.toml maps ``bench.methods`` to ``methods/``, so this file is not in
it). In a checkout (``PYTHONPATH`` or ``pip install -e .``) this file stands in for the package and points it at
the folder, so the same modules load under the same names either way: ``bench.methods.coop``, ...
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent.parent / "methods")]
