"""numbeam.gpu: devices (``cuda:N`` through CuPy, ``fake:N`` on the CPU) and per-device workers."""
