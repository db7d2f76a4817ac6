"""Peak memory of loading a ~124M-parameter GPT-2-shaped random checkpoint with lmlab.

Writes the checkpoint (transformers, float32 safetensors) in one subprocess, then loads it with
``lmlab.interop.load_hf`` in a fresh subprocess and reports the peak RSS growth during the load
(ru_maxrss after − RSS before) as a ratio of the weights' size; the same for transformers'
``from_pretrained`` side by side.

    python benchmarks/load_pretrained_rss.py [--layers 12] [--width 768] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE = """
import sys, torch, transformers
torch.manual_seed(0)
cfg = transformers.GPT2Config(n_layer={layers}, n_embd={width}, n_head={width} // 64, vocab_size=50257, n_positions=1024)
transformers.GPT2LMHeadModel(cfg).save_pretrained(sys.argv[1])
"""
MEASURE = """
import json, resource, sys, time
import psutil, torch
import {module}
before = psutil.Process().memory_info().rss
start = time.perf_counter()
{load}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"before": before, "peak": peak, "seconds": seconds,
                  "params": sum(p.numel() for p in model.parameters())}}))
"""
LOADERS = {
    "lmlab": ("lmlab.interop", "model = lmlab.interop.load_hf(sys.argv[1]).model"),
    "transformers": ("transformers", "model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1])"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--keep", help="directory to write the checkpoint to (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp) / "gpt2-random"
        if not (folder / "model.safetensors").is_file():
            subprocess.run([sys.executable, "-c", WRITE.format(layers=args.layers, width=args.width), str(folder)], check=True)
        weights = (folder / "model.safetensors").stat().st_size
        report = {"weights_bytes": weights}
        for name, (module, load) in LOADERS.items():
            out = subprocess.run([sys.executable, "-c", MEASURE.format(module=module, load=load), str(folder)],
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            growth = result["peak"] - result["before"]
            report[name] = {"params": result["params"], "peak_growth_bytes": growth,
                            "ratio_to_weights": round(growth / weights, 3), "seconds": round(result["seconds"], 2)}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
