"""The device and precision policy (lvm_base.hardware) on mocked hardware, and `lvm env`."""

import json

import pytest

from lvm_base import hardware
from lvm_base.errors import InputError
from lvm_base.hardware import GPU, Hardware, resolve

AVX2 = Hardware("AMD EPYC (AVX2)", "AVX2", frozenset({"avx2", "fma3"}))
AVX512 = Hardware("Intel Skylake-SP", "AVX512", frozenset({"avx2", "avx512_f"}))
ZEN4 = Hardware("AMD EPYC Zen4", "AVX512", frozenset({"avx2", "avx512_f", "avx512_bf16"}))
AMX = Hardware("Intel Sapphire Rapids", "AVX512",
               frozenset({"avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile"}))
# A Zen4 told to behave as AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2): the flags stay.
ZEN4_AS_AVX2 = Hardware("AMD EPYC Zen4", "AVX2", ZEN4.cpu_flags, onednn_max_isa="AVX2")
ZEN4_ONEDNN_AVX512 = Hardware("AMD EPYC Zen4", "AVX512", ZEN4.cpu_flags, onednn_max_isa="AVX512_CORE")


@pytest.mark.parametrize("hw, expected", [
    (AVX2, "fp32"), (AVX512, "fp32"), (ZEN4, "bf16"), (AMX, "bf16"),
    (ZEN4_AS_AVX2, "fp32"), (ZEN4_ONEDNN_AVX512, "fp32"),
])
@pytest.mark.parametrize("purpose", ["inference", "training"])
def test_cpu_auto_picks_bf16_only_where_native(hw, expected, purpose):
    plan = resolve("auto", "auto", purpose, hw)
    assert (plan.device, plan.precision) == ("cpu", expected)
    assert plan.mixed_precision == ("no" if expected == "fp32" else "bf16")


@pytest.mark.parametrize("cap, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_cuda_auto_picks_bf16_from_ampere_else_fp16(cap, expected, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    hw = Hardware("x", "AVX2", frozenset(), gpus=(GPU(0, "gpu", 16.0, cap),))
    plan = resolve("auto", "auto", "training", hw)
    assert (plan.device, plan.precision) == ("cuda:0", expected)
    assert resolve("cpu", "auto", "training", hw).device == "cpu"


def test_cuda_device_follows_local_rank(monkeypatch):
    hw = Hardware("x", "AVX2", frozenset(), gpus=(GPU(0, "a", 80, (9, 0)), GPU(1, "b", 80, (9, 0))))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve("auto", "auto", hw=hw).device == "cuda:1"
    assert resolve("cuda", "auto", hw=hw).device == "cuda:1"
    assert resolve("cuda:0", "auto", hw=hw).device == "cuda:0"
    with pytest.raises(InputError, match="2 CUDA GPU"):
        resolve("cuda:2", "auto", hw=hw)


def test_mps_auto_is_fp32():
    hw = Hardware("Apple M2", "DEFAULT", frozenset(), mps=True)
    assert (resolve(hw=hw).device, resolve(hw=hw).precision) == ("mps", "fp32")
    with pytest.raises(InputError, match="MPS is not available"):
        resolve("mps", hw=AVX2)


def test_missing_gpu_is_one_line_error():
    with pytest.raises(InputError, match="no CUDA GPU") as e:
        resolve("cuda", "auto", hw=AVX2)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="expected auto, cpu"):
        resolve("tpu", hw=AVX2)
    with pytest.raises(InputError, match="expected one of"):
        resolve("cpu", "int8", hw=AVX2)


def test_explicit_bf16_on_emulating_cpu_runs_and_warns_once(capsys, monkeypatch):
    monkeypatch.setattr(hardware, "_warned", set())
    for _ in range(3):
        plan = resolve("cpu", "bf16", "training", AVX2)
        assert plan.precision == "bf16" and plan.notes
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "100x slower" in err and "precision=auto" in err
    resolve("cpu", "bf16", "training", ZEN4)  # native: no warning
    resolve("cpu", "fp32", "training", AVX2)
    assert capsys.readouterr().err == ""


def test_aliases_and_dtype():
    import torch

    assert resolve("cpu", "bfloat16", hw=AVX2).dtype == torch.bfloat16
    assert resolve("cpu", "float32", hw=ZEN4).dtype == torch.float32
    assert resolve("cpu", "fp32", hw=ZEN4).autocast().__class__.__name__ == "nullcontext"
    assert resolve("cpu", torch.bfloat16, hw=ZEN4).precision == "bf16"  # a torch dtype names a precision too
    assert hardware.precision_name("half") == "fp16" and hardware.precision_name(None) == "auto"


def test_detect_honours_the_avx2_simulation(tmp_path):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA reach the policy of a fresh process."""
    import os
    import subprocess
    import sys

    code = ("from lvm_base.hardware import detect, resolve; h = detect(); "
            "print(h.cpu_capability, h.onednn_max_isa, resolve(hw=h).precision)")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "AVX2", "fp32"]


def test_lvm_env_prints_the_choice(capsys):
    from lvm.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "transformers", "CPU:", "torch capability", "auto for inference", "auto for training",
                 "CPU decode kernels"):
        assert word in out


@pytest.mark.parametrize("speedup, expected", [(None, "bf16"), (1.6, "bf16"), (1.2, "fp32"), (0.5, "fp32")])
def test_cpu_auto_keeps_bf16_only_where_it_measures_faster(speedup, expected, capsys, monkeypatch):
    from dataclasses import replace

    hw = replace(ZEN4, cpu_bf16_speedup=speedup)
    assert resolve("auto", "auto", "training", hw).precision == expected
    assert replace(AVX2, cpu_bf16_speedup=3.0).cpu_bf16_pays is False  # a timing never makes emulation native
    monkeypatch.setattr(hardware, "_warned", set())
    plan = resolve("cpu", "bf16", "training", hw)  # asked for: obeyed, with one line where it is slow here
    assert plan.precision == "bf16"
    err = capsys.readouterr().err
    assert (err.count("warning:") == 1 and f"{speedup:.2f}x fp32" in err) if expected == "fp32" else err == ""
    assert ("x fp32's speed" in hw.cpu_summary()) == (speedup is not None)


def test_bf16_speedup_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    from lvm_base import cpu_probe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake(value):
        return lambda: calls.append(value) or value

    assert cpu_probe.bf16_speedup("machine-a", fake(0.6)) == 0.6
    assert cpu_probe.bf16_speedup("machine-a", fake(9.0)) == 0.6  # read back, not measured again
    assert cpu_probe.bf16_speedup("machine-b", fake(1.7)) == 1.7
    assert calls == [0.6, 1.7]
    path = tmp_path / "lvm" / cpu_probe.CACHE_NAME
    assert json.loads(path.read_text()) == {"machine-a": 0.6, "machine-b": 1.7}
    path.write_text("{not json")  # a damaged cache is measured again and rewritten, not an error
    assert cpu_probe.bf16_speedup("machine-a", fake(2.0)) == 2.0
    assert json.loads(path.read_text()) == {"machine-a": 2.0}


def test_the_probe_times_real_matmuls_in_both_precisions():
    from lvm_base.cpu_probe import measure_speedup

    assert 0 < measure_speedup(tokens=128, width=64, hidden=96, reps=1) < 1000


def test_detect_measures_bf16_only_where_the_flags_say_native(tmp_path):
    """A fresh process with an empty cache: the verdict is stored under this machine's key iff bf16 is native."""
    import os
    import subprocess
    import sys

    code = ("from lvm_base.hardware import detect; h = detect(); "
            "print(h.cpu_bf16_native, h.cpu_bf16_speedup is not None)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    native, measured = out.stdout.split()
    assert native == measured
    cache = tmp_path / "lvm" / "cpu_precision.json"
    assert cache.is_file() == (native == "True")
