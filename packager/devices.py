"""Which device work runs on: the default, checking a device the user named, and naming the hardware.

A device named on the command line or in the Python API is checked here before any model is loaded:
an unknown name (`tpu9`) or a device this machine does not have (`cuda` without CUDA, `cuda:3` with
two GPUs) is a `UsageError` (exit 2) with one line, never a traceback halfway through a load. The
syntax is checked before torch is imported, so a typo fails at once.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from packager.errors import UsageError

#: `cpu`, `cuda` or `cuda:<index>`: the devices the pipeline runs on.
_DEVICE = re.compile(r"^(cpu|cuda(?::(\d{1,4}))?)$")


def default_device() -> str:
    """"cuda" when this torch build sees a CUDA device, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None, *, allow_auto: bool = False, flag: str = "--device") -> str | None:
    """Return `device` unchanged if this machine can run on it; raise UsageError otherwise (None passes).

    Args:
        device: `cpu`, `cuda`, `cuda:<i>`, or (with `allow_auto`) `auto`.
        allow_auto: accept `auto` (the whole model spread over every visible device by accelerate).
        flag: the option named in the message.

    Raises:
        UsageError: an unknown device name, or a CUDA device this torch build does not see.
    """
    if device is None:
        return None
    text = str(device).strip()
    if allow_auto and text == "auto":
        return text
    match = _DEVICE.match(text)
    if match is None:
        choices = "cpu, cuda, cuda:<index> or auto" if allow_auto else "cpu, cuda or cuda:<index>"
        raise UsageError(f"{flag} {device!r} is unknown; use {choices}")
    if text == "cpu":
        return text
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {text}: this torch build sees no CUDA device; pass {flag} cpu")
    index = match.group(2)
    if index is not None and int(index) >= torch.cuda.device_count():
        raise UsageError(f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return text


def hardware_name(device: str) -> str:
    """What ran a measurement, in words: the GPU's name, or the CPU model and core count."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def available_memory(device) -> int:
    """Bytes that can still be allocated on `device` (a torch.device; CUDA: free memory; CPU: the kernel's
    MemAvailable)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
