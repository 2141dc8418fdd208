"""Test setup: four forced CPU devices, so multi-device code paths run in every test session.

The flag must be set before jax is imported anywhere, which is why it lives here.
"""
import os

# The forced devices share the machine's cores; on a loaded machine one device's thread can
# reach a cross-device all-reduce long after the others, and XLA's CPU runtime aborts the
# process after 40 s by default. Slow is not wrong here, so allow 15 minutes.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    " --xla_cpu_collective_call_terminate_timeout_seconds=900"
    " --xla_cpu_collective_timeout_seconds=900").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
