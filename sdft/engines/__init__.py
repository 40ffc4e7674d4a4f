"""Engines: loading models (`models`), generating (`generation`: the lean CPU engine, HF and vLLM), training
(`training`, `onpolicy`), the CPU dtype probe (`dtype_probe`), the process's thread and allocator settings
(`runtime`) and the engines' option groups (`options`)."""
