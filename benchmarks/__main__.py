import importlib
import pkgutil
import sys
from pathlib import Path

names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
if len(sys.argv) < 2 or sys.argv[1] not in names:
    print("usage: python -m benchmarks NAME [args]   (NAME all: the default suite, then docs)\n"
          "names: " + ", ".join(names))
    sys.exit(0 if len(sys.argv) < 2 else 2)
sys.exit(importlib.import_module(f"benchmarks.{sys.argv[1]}").main(sys.argv[2:]))
