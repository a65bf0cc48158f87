"""Every Triton kernel variant the ops can launch compiles ahead of time for sm_75, sm_80 and sm_90 (no GPU
needed): no spills for head_dim <= 64 on sm_80/sm_90, tensor-core MMA in the SASS on sm_80/sm_90 where the dot
runs on 16-bit (or TF32) operands, shared memory within each arch's limit. The table is printed (run pytest
with -s, or see the captured output of a failure)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def aot_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The default run covers head_dim 32 (every released config) and 64; the slow run adds 16 and 128.
    dims = [] if os.environ.get("YOLOV12_FAST_SLOW") == "1" else ["--head-dim", "32", "--head-dim", "64"]
    p = subprocess.run([sys.executable, "-m", "yolov12_fast._aot", "--json", *dims], capture_output=True, text=True,
                       env=env, timeout=1800)
    assert p.stdout.strip(), f"AOT compile printed nothing:\n{p.stderr[-4000:]}"
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    from yolov12_fast._aot import format_table

    print("\n" + format_table(rows))
    return rows


def _d(row):
    return int(row["kernel"].split(",d")[1].split(",")[0])


def _must_not_spill(row):
    """Attention/PE kernels: head_dim <= 64 (128 may spill by design); others (MLP) say so in their variants."""
    return row["must_not_spill"] if "must_not_spill" in row else _d(row) <= 64


def test_every_variant_compiles_for_every_arch(aot_rows):
    failed = [(r["kernel"], r["arch"], r.get("error")) for r in aot_rows if not r.get("ok")]
    assert not failed, f"{len(failed)} variants failed to compile, first: {failed[:3]}"
    assert {r["arch"] for r in aot_rows} == {"sm_75", "sm_80", "sm_90"}


def test_no_spills_for_head_dim_up_to_64_on_sm80_sm90(aot_rows):
    spilling = [(r["kernel"], r["arch"], r["spills"]) for r in aot_rows
                if r["arch"] in ("sm_80", "sm_90") and _must_not_spill(r) and r["spills"] > 0]
    assert not spilling, f"spills: {spilling[:5]}"


def test_tensor_cores_on_sm80_sm90(aot_rows):
    missing = [(r["kernel"], r["arch"]) for r in aot_rows
               if r["arch"] in ("sm_80", "sm_90") and r["tensor_cores_expected"] and "preprocess" not in r["kernel"]
               and r["mma"] == 0]
    assert not missing, f"no HMMA/HGMMA in the SASS of {missing[:5]}"


def test_shared_memory_within_limits(aot_rows):
    over = [(r["kernel"], r["arch"], r["smem"], r["smem_limit"]) for r in aot_rows if r["smem"] > r["smem_limit"]]
    assert not over, f"shared memory over the arch limit: {over[:5]}"
