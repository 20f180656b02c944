"""The built-in methods, installed as the package ``bench.methods`` (one module per method; ``_``-prefixed modules
are their shared helpers). The registry imports every module here; see bench/registry.py."""
