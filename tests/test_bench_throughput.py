import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="bench/throughput.py compares against transformers: pip install transformers")
def test_throughput_smoke_writes_every_row(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "bench/throughput.py", "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    sizes = ["1m", "10m", "50m"]

    assert [row["size"] for row in result["train"]] == sizes
    for row in result["train"]:
        for side in ("tinylm", "tinylm compiled", "transformers"):
            assert row[side]["tokens_per_s"] > 0 and 0 < row[side]["mfu"] < 1
            assert len(row["bursts"][side]) == 2
        assert row["compile_s"] > 0 and row["ratio_compiled"] > 0
        assert row["logit_max_abs_diff"] <= 1e-4

    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    decoders = ["tinylm", "tinylm compiled", "transformers"] + ["llama.cpp"] * has_llama_cpp
    assert [row["size"] for row in result["decode"]] == sizes
    for row in result["decode"]:
        for side in decoders:
            # a toy model's decode step is a difference of two short times, which machine noise can swamp
            assert math.isfinite(row[side]["decode_ms_per_token"]) and row[side]["prefill_tokens_per_s"] > 0
            # same weights, greedy: every side picks the same tokens (these seeded models have no near-ties)
            assert row[side]["greedy_tokens_equal_to_tinylm"] == result["new_tokens"]
        assert (row["llama_cpp_skipped"] is None) == has_llama_cpp
        assert row["compile_s"] > 0 and "decode_speedup_compiled_vs_transformers" in row
        assert max(row["logit_max_abs_diff"].values()) <= 1e-4

    tokenizers = result["prepare"]["tokenizers"]
    assert len(tokenizers) == 3
    assert tokenizers["byte"]["mb_per_s"] > 0
    assert all("mb_per_s" in row or row["skipped"] for row in tokenizers.values())
